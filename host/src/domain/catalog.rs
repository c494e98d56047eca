//! The gateway catalog: every loaded supplier's products under gateway product ids, priced
//! for one reseller.

use std::sync::Arc;

use serde::Serialize;

use super::supplier::{DataAllowance, Money, SupplierProduct};

/// Gateway products the operator offers from several suppliers, by name (`[routing]`
/// in the config):
///
/// ```toml
/// [routing.products]
/// jp-5gb-30d = ["esim-access:PJP5G30D", "sandbox:SBX-JP-5GB-30D"]
/// ```
///
/// A routed product's id is its name (no `:`, so it never reads as `<plugin>:<sku>`). An
/// order for it goes to the first offer that is loaded and listed, and fails over to the
/// next on out of stock, or once retries of an unavailable or rate-limited supplier are
/// spent, before any supplier took it (no pending reference). It is priced at the
/// highest of its offers' prices, so its one hold covers whichever supplier serves it and
/// is captured once. Offers that need eKYC, or priced in another currency than the first,
/// are left out.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Routes {
    /// Routed product name to offers (`<plugin>:<sku>`), in order of preference.
    pub products: std::collections::BTreeMap<String, Vec<String>>,
}

impl Routes {
    /// The offers of routed product `id`, if it is one.
    pub fn offers(&self, id: &str) -> Option<&[String]> {
        self.products.get(id).map(Vec::as_slice)
    }
}

/// The plugins the operator marks as sandboxes: test-mode keys see and order only their
/// products, live keys never do (`[test_mode] sandbox_plugins`). `"*"` marks every plugin
/// (a staging gateway that buys nothing for real).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Sandboxes {
    /// Plugin ids.
    pub sandbox_plugins: Vec<String>,
}

impl Default for Sandboxes {
    /// The sandbox supplier shipped with the gateway.
    fn default() -> Self {
        Sandboxes {
            sandbox_plugins: vec!["sandbox".into()],
        }
    }
}

impl Sandboxes {
    /// Whether `plugin` is one.
    pub fn contains(&self, plugin: &str) -> bool {
        self.sandbox_plugins.iter().any(|p| p == plugin || p == "*")
    }
}

/// A product as a reseller sees it.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Product {
    /// Gateway product id: `<plugin>:<sku>`, or a routed product's name.
    pub id: String,
    /// Title.
    pub title: String,
    /// ISO 3166-1 alpha-2 countries.
    pub countries: Vec<String>,
    /// Region, if multi-country.
    pub region: Option<String>,
    /// Included data in bytes; `None` when unlimited.
    pub data_bytes: Option<u64>,
    /// Whether data is unlimited.
    pub unlimited: bool,
    /// Validity in days.
    pub validity_days: u32,
    /// The reseller's price.
    pub price: Money,
    /// Needs eKYC first.
    pub needs_kyc: bool,
    /// Usable for top-ups.
    pub top_up_able: bool,
}

/// A plugin's catalog as last fetched, kept in the store so a restart or a slow supplier
/// does not empty the catalog.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct CachedCatalog {
    /// Plugin id.
    pub plugin: String,
    /// Plugin version it came from.
    pub version: String,
    /// When it was fetched, ms since the epoch.
    pub fetched_at_ms: u64,
    /// The products, with wholesale prices.
    pub products: Vec<CachedProduct>,
}

/// A supplier product as cached (wholesale price; the reseller price is computed per call).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct CachedProduct {
    /// Supplier SKU.
    pub sku: String,
    /// Title.
    pub title: String,
    /// Countries.
    pub countries: Vec<String>,
    /// Region.
    pub region: Option<String>,
    /// Data bytes; `None` when unlimited.
    pub data_bytes: Option<u64>,
    /// Validity.
    pub validity_days: u32,
    /// Wholesale price.
    pub wholesale: Money,
    /// Needs eKYC.
    pub needs_kyc: bool,
    /// Top-up-able.
    pub top_up_able: bool,
}

impl From<&SupplierProduct> for CachedProduct {
    fn from(p: &SupplierProduct) -> CachedProduct {
        CachedProduct {
            sku: p.sku.clone(),
            title: p.title.clone(),
            countries: p.countries.clone(),
            region: p.region.clone(),
            data_bytes: match p.data {
                DataAllowance::Bytes(b) => Some(b),
                DataAllowance::Unlimited => None,
            },
            validity_days: p.validity_days,
            wholesale: p.wholesale.clone(),
            needs_kyc: p.needs_kyc,
            top_up_able: p.top_up_able,
        }
    }
}

/// Gateway product id of a supplier SKU.
pub fn product_id(plugin: &str, sku: &str) -> String {
    format!("{plugin}:{sku}")
}

/// Split a gateway product id into plugin id and SKU.
pub fn split_product_id(id: &str) -> Option<(&str, &str)> {
    id.split_once(':')
        .filter(|(p, s)| !p.is_empty() && !s.is_empty())
}

/// Wholesale plus markup, rounded up to the minor unit (never sell below cost).
pub fn price_with_markup(wholesale: &Money, markup_bps: u32) -> Option<Money> {
    let minor = i128::from(wholesale.minor);
    let scaled = minor.checked_mul(10_000 + i128::from(markup_bps))?;
    // Round up (prices are never negative, so this is a ceiling division).
    let marked = scaled.checked_add(9_999)? / 10_000;
    Some(Money {
        minor: i64::try_from(marked).ok()?,
        currency: wholesale.currency.clone(),
    })
}

/// The reseller's view of a cached supplier product; `None` when its price with the
/// markup is out of range (such a product cannot be sold to this reseller).
pub fn for_reseller(plugin: &str, p: &CachedProduct, markup_bps: u32) -> Option<Product> {
    Some(Product {
        id: product_id(plugin, &p.sku),
        title: p.title.clone(),
        countries: p.countries.clone(),
        region: p.region.clone(),
        data_bytes: p.data_bytes,
        unlimited: p.data_bytes.is_none(),
        validity_days: p.validity_days,
        price: price_with_markup(&p.wholesale, markup_bps)?,
        needs_kyc: p.needs_kyc,
        top_up_able: p.top_up_able,
    })
}

/// Catalog filters.
#[derive(Debug, Clone, Default)]
pub struct ProductFilter {
    /// ISO country code.
    pub country: Option<String>,
    /// Region name.
    pub region: Option<String>,
}

impl ProductFilter {
    /// Whether a product passes.
    pub fn accepts(&self, p: &Product) -> bool {
        self.country
            .as_ref()
            .is_none_or(|c| p.countries.iter().any(|pc| pc.eq_ignore_ascii_case(c)))
            && self.region.as_ref().is_none_or(|r| {
                p.region
                    .as_deref()
                    .is_some_and(|pr| pr.eq_ignore_ascii_case(r))
            })
    }
}

/// The catalogs read so far and the fetches that failed, by plugin id.
#[derive(Default)]
pub struct CatalogCache {
    /// Catalogs read or fetched so far: every order looks its product up, and decoding
    /// the stored catalog each time would cost more than the order's writes.
    pub(crate) catalogs: std::sync::Mutex<std::collections::HashMap<String, Arc<CachedCatalog>>>,
    /// Catalog fetches that failed, so reads do not ask again at once.
    pub(crate) failures: std::sync::Mutex<std::collections::HashMap<String, CatalogFailure>>,
    /// One lock per plugin id, held while its catalog is fetched (one fetch at a time).
    flights: std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl CatalogCache {
    /// The lock a fetch of `plugin`'s catalog holds.
    pub(crate) fn flight(&self, plugin: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.flights
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(plugin.to_string())
            .or_default()
            .clone()
    }
}

/// A plugin version whose catalog fetch failed, and when to ask again.
pub(crate) struct CatalogFailure {
    /// The plugin version that failed (a new version is asked at once).
    pub(crate) version: String,
    /// Failures in a row.
    pub(crate) count: u32,
    /// When to ask again, ms since the epoch.
    pub(crate) retry_at_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_rounds_up_and_never_sells_below_cost() {
        let w = Money {
            minor: 999,
            currency: "USD".into(),
        };
        assert_eq!(price_with_markup(&w, 1500).unwrap().minor, 1149); // 1148.85 -> 1149
        assert_eq!(price_with_markup(&w, 0).unwrap().minor, 999);
        let huge = Money {
            minor: i64::MAX,
            currency: "USD".into(),
        };
        assert_eq!(
            price_with_markup(&huge, 1),
            None,
            "out of range, not saturated"
        );
    }

    #[test]
    fn product_ids_split_at_the_first_colon() {
        assert_eq!(
            split_product_id("sandbox:SBX:1"),
            Some(("sandbox", "SBX:1"))
        );
        assert_eq!(split_product_id("nocolon"), None);
        assert_eq!(split_product_id(":x"), None);
    }
}

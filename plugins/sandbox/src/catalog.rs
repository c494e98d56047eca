//! The fixed product table. Everything the sandbox does with a SKU is decided here, so the
//! tests and the demo can rely on each product's behaviour.

use simgate_sdk::v0_1::{DataAllowance, Money, Product, SupplierError};

/// 1 GiB: the sandbox counts plan sizes in binary units, as most supplier APIs do.
pub const GIB: u64 = 1024 * 1024 * 1024;

/// How `provision` treats a product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Delivered at once.
    Instant,
    /// Answered with `pending`; `poll` or an `order.delivered` webhook completes it.
    Async,
    /// Always fails with `out-of-stock`.
    OutOfStock,
}

/// One row of the table.
#[derive(Debug)]
pub struct Entry {
    pub sku: &'static str,
    pub title: &'static str,
    pub countries: &'static [&'static str],
    /// `None` for single-country plans.
    pub region: Option<&'static str>,
    /// Included data in GiB; `None` for unlimited.
    pub gib: Option<u64>,
    pub validity_days: u32,
    /// Wholesale price in US cents.
    pub usd_cents: i64,
    pub needs_kyc: bool,
    pub top_up_able: bool,
    pub behaviour: Behaviour,
}

const EUROPE: &[&str] = &["FR", "DE", "ES", "IT", "NL"];
const ASIA: &[&str] = &["JP", "KR", "SG", "TH", "VN"];
const GLOBAL: &[&str] = &[
    "US", "CA", "MX", "BR", "GB", "FR", "DE", "ES", "IT", "JP", "KR", "TH", "AU",
];

/// A single-country product delivered at once; the builder methods below change that.
const fn entry(
    sku: &'static str,
    title: &'static str,
    countries: &'static [&'static str],
    gib: Option<u64>,
    validity_days: u32,
    usd_cents: i64,
) -> Entry {
    Entry {
        sku,
        title,
        countries,
        region: None,
        gib,
        validity_days,
        usd_cents,
        needs_kyc: false,
        top_up_able: false,
        behaviour: Behaviour::Instant,
    }
}

impl Entry {
    const fn region(mut self, name: &'static str) -> Self {
        self.region = Some(name);
        self
    }

    const fn top_up_able(mut self) -> Self {
        self.top_up_able = true;
        self
    }

    const fn needs_kyc(mut self) -> Self {
        self.needs_kyc = true;
        self
    }

    const fn behaviour(mut self, behaviour: Behaviour) -> Self {
        self.behaviour = behaviour;
        self
    }
}

/// Every product, in catalog order.
#[rustfmt::skip]
pub const PRODUCTS: &[Entry] = &[
    //    sku                   title                                        countries GiB      days  cents
    entry("SBX-US-5GB-30D",     "United States 5 GB / 30 days",              &["US"],  Some(5),  30, 1200).top_up_able(),
    entry("SBX-JP-5GB-30D",     "Japan 5 GB / 30 days",                      &["JP"],  Some(5),  30, 1100).top_up_able(),
    entry("SBX-JP-UNL-7D",      "Japan Unlimited / 7 days",                  &["JP"],  None,      7, 1900),
    entry("SBX-FR-3GB-15D",     "France 3 GB / 15 days",                     &["FR"],  Some(3),  15,  600),
    entry("SBX-DE-10GB-30D",    "Germany 10 GB / 30 days",                   &["DE"],  Some(10), 30, 1500).top_up_able(),
    entry("SBX-GB-1GB-7D",      "United Kingdom 1 GB / 7 days",              &["GB"],  Some(1),   7,  300),
    entry("SBX-TH-UNL-15D",     "Thailand Unlimited / 15 days",              &["TH"],  None,     15, 1400),
    entry("SBX-BR-2GB-15D",     "Brazil 2 GB / 15 days",                     &["BR"],  Some(2),  15,  700),
    entry("SBX-EU-10GB-30D",    "Europe 10 GB / 30 days",                    EUROPE,   Some(10), 30, 1800).region("europe").top_up_able(),
    entry("SBX-ASIA-5GB-15D",   "Asia 5 GB / 15 days",                       ASIA,     Some(5),  15, 1300).region("asia"),
    entry("SBX-GLOBAL-3GB-30D", "Global 3 GB / 30 days",                     GLOBAL,   Some(3),  30, 2500).region("global").top_up_able(),
    entry("SBX-CN-3GB-15D",     "China 3 GB / 15 days (ID check)",           &["CN"],  Some(3),  15,  900).needs_kyc(),
    entry("SBX-ASYNC-1GB-7D",   "Canada 1 GB / 7 days (delivered later)",    &["CA"],  Some(1),   7,  400).behaviour(Behaviour::Async),
    entry("SBX-XX-OOS",         "Iceland 1 GB / 7 days (always sold out)",   &["IS"],  Some(1),   7,  500).behaviour(Behaviour::OutOfStock),
];

/// The product with this SKU, or `invalid-request`.
pub fn find(sku: &str) -> Result<&'static Entry, SupplierError> {
    PRODUCTS
        .iter()
        .find(|entry| entry.sku == sku)
        .ok_or_else(|| SupplierError::InvalidRequest(format!("unknown sku {sku:?}")))
}

impl Entry {
    /// The WIT record for this row.
    pub fn to_product(&self) -> Product {
        Product {
            sku: self.sku.into(),
            title: self.title.into(),
            countries: self.countries.iter().map(|c| c.to_string()).collect(),
            region: self.region.map(String::from),
            data: match self.gib {
                Some(gib) => DataAllowance::Bytes(gib * GIB),
                None => DataAllowance::Unlimited,
            },
            validity_days: self.validity_days,
            wholesale: Money {
                minor: self.usd_cents,
                currency: "USD".into(),
            },
            needs_kyc: self.needs_kyc,
            top_up_able: self.top_up_able,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(pred: impl Fn(&Entry) -> bool) -> usize {
        PRODUCTS.iter().filter(|e| pred(e)).count()
    }

    #[test]
    fn exactly_one_product_needs_kyc_one_is_async_and_one_is_out_of_stock() {
        assert_eq!(count(|e| e.needs_kyc), 1);
        assert_eq!(count(|e| e.behaviour == Behaviour::Async), 1);
        assert_eq!(count(|e| e.behaviour == Behaviour::OutOfStock), 1);
        assert!(find("SBX-CN-3GB-15D").unwrap().needs_kyc);
        assert_eq!(find("SBX-XX-OOS").unwrap().behaviour, Behaviour::OutOfStock);
        assert_eq!(
            find("SBX-ASYNC-1GB-7D").unwrap().behaviour,
            Behaviour::Async
        );
    }

    #[test]
    fn skus_are_unique_and_countries_are_upper_case_alpha_2() {
        let mut skus: Vec<_> = PRODUCTS.iter().map(|e| e.sku).collect();
        skus.sort();
        skus.dedup();
        assert_eq!(skus.len(), PRODUCTS.len());
        for e in PRODUCTS {
            assert!(!e.countries.is_empty(), "{}", e.sku);
            for c in e.countries {
                assert!(
                    c.len() == 2 && c.bytes().all(|b| b.is_ascii_uppercase()),
                    "{c}"
                );
            }
            assert_eq!(e.region.is_some(), e.countries.len() > 1, "{}", e.sku);
            assert!(e.usd_cents > 0);
        }
    }

    #[test]
    fn unknown_skus_are_invalid_requests() {
        assert!(matches!(
            find("nope"),
            Err(SupplierError::InvalidRequest(_))
        ));
    }
}

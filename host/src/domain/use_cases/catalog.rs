//! The catalog: each plugin's products, cached (in memory and in the store), refreshed
//! when stale, backed off when a plugin's catalog fails, priced for the caller.

use std::sync::Arc;
use std::time::Duration;

use crate::domain::accounts::KeyMode;
use crate::domain::catalog::{
    self, CachedCatalog, CachedProduct, CatalogFailure, Product, ProductFilter,
};
use crate::domain::gateway::{DomainError, Gateway, Principal};
use crate::domain::supplier::{Money, Supplier, SupplierInfo};

/// The pause after a first failed catalog fetch.
const CATALOG_RETRY_FIRST: Duration = Duration::from_secs(5);

impl Gateway {
    /// The cached catalog of one plugin, refreshed when stale or from another version.
    /// A supplier that fails keeps its last good catalog, and is asked again only after
    /// a pause. One fetch per plugin runs at a time: readers of a stale catalog (and the
    /// scheduled refresh) that arrive meanwhile wait for it and use what it found.
    pub async fn plugin_catalog(
        &self,
        supplier: &Arc<dyn Supplier>,
    ) -> Result<Option<Arc<CachedCatalog>>, DomainError> {
        let info = supplier.info();
        let (cached, usable) = self.cached_catalog(info).await?;
        if usable {
            return Ok(cached);
        }
        let flight = self.catalogs.flight(&info.id);
        let _fetching = flight.lock().await;
        let (cached, usable) = self.cached_catalog(info).await?;
        if usable {
            return Ok(cached);
        }
        self.fetch_or_back_off(supplier, cached).await
    }

    /// The catalog cached for a plugin, and whether it may be served as it is: fresh for
    /// this version, or the plugin's catalog is failing and backing off.
    async fn cached_catalog(
        &self,
        info: &SupplierInfo,
    ) -> Result<(Option<Arc<CachedCatalog>>, bool), DomainError> {
        let cached = match self.remembered_catalog(&info.id) {
            Some(c) => Some(c),
            // First read since the start: the store's copy, if any.
            None => self
                .store
                .catalog(&info.id)
                .await?
                .map(|c| self.remember_catalog(c)),
        };
        let fresh = cached.as_ref().is_some_and(|c| {
            c.version == info.version
                && self.clock.now_ms().saturating_sub(c.fetched_at_ms)
                    < self.tuning.catalog_ttl.as_millis() as u64
        });
        Ok((cached, fresh || self.catalog_backing_off(info)))
    }

    /// Fetch a plugin's catalog now; if the supplier fails, serve `cached` and back off.
    async fn fetch_or_back_off(
        &self,
        supplier: &Arc<dyn Supplier>,
        cached: Option<Arc<CachedCatalog>>,
    ) -> Result<Option<Arc<CachedCatalog>>, DomainError> {
        let info = supplier.info();
        match self.fetch_catalog(supplier).await {
            Ok(catalog) => Ok(Some(catalog)),
            Err(DomainError::Supplier(e)) => {
                let wait = self.catalog_failed(info);
                tracing::warn!(plugin = %info.id, error = %e, retry_in_s = wait.as_secs(), "catalog refresh failed; serving the cached one");
                Ok(cached)
            }
            Err(e) => Err(e),
        }
    }

    /// Whether a failed catalog fetch of this plugin version is still backing off: a
    /// plugin whose catalog fails is asked again after a pause, not on every read.
    fn catalog_backing_off(&self, info: &SupplierInfo) -> bool {
        let failures = self
            .catalogs
            .failures
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        failures
            .get(&info.id)
            .is_some_and(|f| f.version == info.version && self.clock.now_ms() < f.retry_at_ms)
    }

    /// Count a failed catalog fetch; returns how long to wait before the next one
    /// (doubling from 5 s up to the catalog TTL).
    fn catalog_failed(&self, info: &SupplierInfo) -> Duration {
        let mut failures = self
            .catalogs
            .failures
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let f = failures
            .entry(info.id.clone())
            .or_insert_with(|| CatalogFailure {
                version: info.version.clone(),
                count: 0,
                retry_at_ms: 0,
            });
        if f.version != info.version {
            f.version = info.version.clone();
            f.count = 0;
        }
        f.count = f.count.saturating_add(1);
        let wait = CATALOG_RETRY_FIRST
            .saturating_mul(1 << f.count.saturating_sub(1).min(16))
            .min(self.tuning.catalog_ttl.max(CATALOG_RETRY_FIRST));
        f.retry_at_ms = self.clock.now_ms().saturating_add(wait.as_millis() as u64);
        wait
    }

    fn remembered_catalog(&self, plugin: &str) -> Option<Arc<CachedCatalog>> {
        let catalogs = self
            .catalogs
            .catalogs
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        catalogs.get(plugin).cloned()
    }

    fn remember_catalog(&self, catalog: CachedCatalog) -> Arc<CachedCatalog> {
        let catalog = Arc::new(catalog);
        let mut catalogs = self
            .catalogs
            .catalogs
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        catalogs.insert(catalog.plugin.clone(), catalog.clone());
        catalog
    }

    /// Ask a supplier for its catalog now and cache it.
    async fn fetch_catalog(
        &self,
        supplier: &Arc<dyn Supplier>,
    ) -> Result<Arc<CachedCatalog>, DomainError> {
        let info = supplier.info();
        let products = supplier.list_products().await?;
        let catalog = CachedCatalog {
            plugin: info.id.clone(),
            version: info.version.clone(),
            fetched_at_ms: self.clock.now_ms(),
            products: products.iter().map(CachedProduct::from).collect(),
        };
        self.store.put_catalog(&catalog).await?;
        self.catalogs
            .failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&info.id);
        Ok(self.remember_catalog(catalog))
    }

    /// Refresh every loaded plugin's catalog now (scheduled, and after a plugin changes).
    pub async fn refresh_catalogs(&self) {
        for supplier in self.suppliers.all() {
            let info = supplier.info();
            let flight = self.catalogs.flight(&info.id);
            let _fetching = flight.lock().await;
            if self.catalog_backing_off(info) {
                continue;
            }
            let cached = self.remembered_catalog(&info.id);
            if let Err(e) = self.fetch_or_back_off(&supplier, cached).await {
                tracing::warn!(plugin = %info.id, error = %e, "scheduled catalog refresh failed");
            }
        }
    }

    /// Every loaded supplier's products, priced for the caller.
    pub async fn catalog(
        &self,
        who: &Principal,
        filter: &ProductFilter,
    ) -> Result<Vec<Product>, DomainError> {
        let markup = self.reseller_of(who).await?.markup_bps;
        let mut out = Vec::new();
        for supplier in self.suppliers.all() {
            if !self.reachable(who.mode, &supplier.info().id) {
                continue;
            }
            if let Some(catalog) = self.plugin_catalog(&supplier).await? {
                out.extend(
                    catalog
                        .products
                        .iter()
                        .filter_map(|p| catalog::for_reseller(&catalog.plugin, p, markup))
                        .filter(|p| filter.accepts(p)),
                );
            }
        }
        for name in self.tuning.routes.products.keys() {
            if let Ok(found) = self.find_routed(name, "/product_id", who.mode).await
                && let Some(mut product) =
                    catalog::for_reseller(&found.plugin, &found.product, markup)
                && filter.accepts(&product)
            {
                product.id = name.clone();
                product.top_up_able = false;
                out.push(product);
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// What an order for `product_id` by a key of `mode` goes to: a supplier's product, or
    /// for a routed product (see [`catalog::Routes`]) the first offer available now,
    /// priced at the highest of the available offers, with the others to fail over to.
    /// Only suppliers the key's mode may reach count (see [`Gateway::reachable`]).
    pub(crate) async fn find_offer(
        &self,
        product_id: &str,
        field: &'static str,
        mode: KeyMode,
    ) -> Result<Found, DomainError> {
        if !product_id.contains(':') && self.tuning.routes.offers(product_id).is_some() {
            return self.find_routed(product_id, field, mode).await;
        }
        let (supplier, product) = self.find_product(product_id, field, mode).await?;
        Ok(Found {
            plugin: supplier.info().id.clone(),
            supplier,
            product,
            fallbacks: Vec::new(),
        })
    }

    async fn find_routed(
        &self,
        name: &str,
        field: &'static str,
        mode: KeyMode,
    ) -> Result<Found, DomainError> {
        let offers = self
            .tuning
            .routes
            .offers(name)
            .ok_or(DomainError::NotFound("product"))?;
        let mut usable = Vec::new();
        for offer in offers {
            // An offer that is not loaded, not listed or needs eKYC is skipped.
            if let Ok((supplier, product)) = self.find_product(offer, field, mode).await
                && !product.needs_kyc
            {
                usable.push((offer.clone(), supplier, product));
            }
        }
        let currency = usable
            .first()
            .map(|(_, _, p)| p.wholesale.currency.clone())
            .ok_or_else(|| DomainError::SupplierNotLoaded(name.to_string()))?;
        usable.retain(|(_, _, p)| p.wholesale.currency == currency);
        let highest = usable
            .iter()
            .map(|(_, _, p)| p.wholesale.minor)
            .max()
            .unwrap_or(0);
        let mut rest = usable.into_iter();
        let (_, supplier, mut product) = rest.next().expect("one usable offer at least");
        product.wholesale.minor = highest;
        Ok(Found {
            plugin: supplier.info().id.clone(),
            supplier,
            product,
            fallbacks: rest.map(|(offer, _, _)| offer).collect(),
        })
    }

    /// Find a product by gateway id in its plugin's catalog. A plugin a key of `mode` may
    /// not reach has no products for it: a test key cannot learn what live suppliers
    /// sell, nor a live key buy from a sandbox.
    pub(crate) async fn find_product(
        &self,
        product_id: &str,
        field: &'static str,
        mode: KeyMode,
    ) -> Result<(Arc<dyn Supplier>, CachedProduct), DomainError> {
        let (plugin, sku) = catalog::split_product_id(product_id).ok_or(DomainError::Invalid {
            field,
            message: "expected <plugin>:<sku> as listed by GET /v1/products".into(),
        })?;
        if !self.reachable(mode, plugin) {
            return Err(DomainError::NotFound("product"));
        }
        let Some(supplier) = self.suppliers.get(plugin) else {
            // A plugin that exists (or served before) but is not loaded now is ours to
            // fix; a plugin nobody ever deployed is a product that does not exist.
            return Err(
                if self.suppliers.known(plugin) || self.store.catalog(plugin).await?.is_some() {
                    DomainError::SupplierNotLoaded(product_id.to_string())
                } else {
                    DomainError::NotFound("product")
                },
            );
        };
        let catalog = self
            .plugin_catalog(&supplier)
            .await?
            .ok_or_else(|| DomainError::SupplierNotLoaded(product_id.to_string()))?;
        let product = catalog
            .products
            .iter()
            .find(|p| p.sku == sku)
            .cloned()
            .ok_or(DomainError::NotFound("product"))?;
        Ok((supplier, product))
    }
}

/// What an order for a product goes to.
pub(crate) struct Found {
    /// The plugin id of the supplier it goes to first.
    pub plugin: String,
    /// That supplier.
    pub supplier: Arc<dyn Supplier>,
    /// Its product; for a routed product, priced at the highest of its offers.
    pub product: CachedProduct,
    /// Routed products: the other offers (`<plugin>:<sku>`), in order of preference.
    pub fallbacks: Vec<String>,
}

/// What one unit of `product` costs a reseller with `markup_bps`.
pub(crate) fn unit_price(product: &CachedProduct, markup_bps: u32) -> Result<Money, DomainError> {
    catalog::price_with_markup(&product.wholesale, markup_bps).ok_or(DomainError::Invalid {
        field: "/product_id",
        message: "this product's price is out of the range the ledger can hold".into(),
    })
}

//! The supplier contract as the domain sees it: the records and the [`Supplier`] trait
//! live in the plugin runtime crate (`simgate_runtime::supplier`), which implements them
//! on WebAssembly plugins; the domain uses them through this module, and its tests use the
//! in-memory fakes below.

pub use simgate_runtime::supplier::*;

#[cfg(test)]
use std::sync::Arc;

#[cfg(test)]
use super::ekyc::{EkycRedirect, EkycRequest, EkycUpdate, Inbound};

/// A native supplier for the domain's own tests: its catalog and provisioning are
/// closures; every other operation is not supported.
#[cfg(test)]
pub(crate) struct FakeSupplier {
    /// Identity.
    pub info: SupplierInfo,
    /// Answers `list_products`.
    pub catalog: Box<dyn Fn() -> SupplierResult<Vec<SupplierProduct>> + Send + Sync>,
    /// Answers `provision`.
    pub provision: Box<dyn Fn(ProvisionRequest) -> SupplierResult<ProvisionOutcome> + Send + Sync>,
    /// Answers `poll` (order ref, supplier ref).
    pub poll: Box<dyn Fn(String, String) -> SupplierResult<ProvisionOutcome> + Send + Sync>,
    /// Answers `usage`.
    pub usage: Box<dyn Fn(String) -> SupplierResult<Usage> + Send + Sync>,
    /// Answers `ekyc_start`.
    pub ekyc_start: Box<dyn Fn(EkycRequest) -> SupplierResult<EkycRedirect> + Send + Sync>,
    /// Answers `ekyc_callback`.
    pub ekyc_callback: Box<dyn Fn(Inbound) -> SupplierResult<EkycUpdate> + Send + Sync>,
}

#[cfg(test)]
impl FakeSupplier {
    /// Plugin `id`, version 1.0.0, with an empty catalog, provisioning nothing.
    pub fn new(id: &str) -> FakeSupplier {
        FakeSupplier {
            info: SupplierInfo {
                id: id.into(),
                version: "1.0.0".into(),
                supplier: format!("Fake {id}"),
                features: Vec::new(),
            },
            catalog: Box::new(|| Ok(Vec::new())),
            provision: Box::new(|_| Err(SupplierError::NotSupported)),
            poll: Box::new(|_, _| Err(SupplierError::NotSupported)),
            usage: Box::new(|_| Err(SupplierError::NotSupported)),
            ekyc_start: Box::new(|_| Err(SupplierError::NotSupported)),
            ekyc_callback: Box::new(|_| Err(SupplierError::NotSupported)),
        }
    }
}

#[cfg(test)]
impl Supplier for FakeSupplier {
    fn info(&self) -> &SupplierInfo {
        &self.info
    }
    fn list_products(&self) -> BoxFuture<'_, SupplierResult<Vec<SupplierProduct>>> {
        let answer = (self.catalog)();
        Box::pin(async move { answer })
    }
    fn provision(&self, req: ProvisionRequest) -> BoxFuture<'_, SupplierResult<ProvisionOutcome>> {
        let answer = (self.provision)(req);
        Box::pin(async move { answer })
    }
    fn poll(
        &self,
        order_ref: String,
        supplier_ref: String,
    ) -> BoxFuture<'_, SupplierResult<ProvisionOutcome>> {
        let answer = (self.poll)(order_ref, supplier_ref);
        Box::pin(async move { answer })
    }
    fn usage(&self, iccid: String) -> BoxFuture<'_, SupplierResult<Usage>> {
        let answer = (self.usage)(iccid);
        Box::pin(async move { answer })
    }
    fn top_up(&self, _: String, _: String, _: String) -> BoxFuture<'_, SupplierResult<String>> {
        Box::pin(async { Err(SupplierError::NotSupported) })
    }
    fn cancel(&self, _: String, _: String) -> BoxFuture<'_, SupplierResult<()>> {
        Box::pin(async { Err(SupplierError::NotSupported) })
    }
    fn ekyc_start(&self, req: EkycRequest) -> BoxFuture<'_, SupplierResult<EkycRedirect>> {
        let answer = (self.ekyc_start)(req);
        Box::pin(async move { answer })
    }
    fn ekyc_callback(&self, req: Inbound) -> BoxFuture<'_, SupplierResult<EkycUpdate>> {
        let answer = (self.ekyc_callback)(req);
        Box::pin(async move { answer })
    }
}

/// Exactly one loaded supplier (tests).
#[cfg(test)]
pub(crate) struct OnlySupplier(pub Arc<dyn Supplier>);

#[cfg(test)]
impl Suppliers for OnlySupplier {
    fn get(&self, id: &str) -> Option<Arc<dyn Supplier>> {
        (id == self.0.info().id).then(|| self.0.clone())
    }
    fn all(&self) -> Vec<Arc<dyn Supplier>> {
        vec![self.0.clone()]
    }
}

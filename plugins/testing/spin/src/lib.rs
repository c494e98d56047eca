//! Test plugin `spin`: `provision` loops forever. The host must interrupt it at the
//! per-call deadline and fail over, without a stuck worker.

use simgate_sdk::v0_1::*;

struct Spin;

impl Provisioning for Spin {
    fn provision(_req: ProvisionRequest) -> Result<ProvisionOutcome, SupplierError> {
        let mut n = 0u64;
        loop {
            // black_box keeps the optimiser from proving the loop has no effect.
            n = core::hint::black_box(n.wrapping_add(1));
        }
    }
}

impl Plugin for Spin {
    fn describe() -> Info {
        testing_common::info("spin", env!("CARGO_PKG_VERSION"))
    }
}

impl Catalog for Spin {
    fn list_products() -> Result<Vec<Product>, SupplierError> {
        Ok(vec![testing_common::product("spin-1")])
    }
}

impl Ekyc for Spin {}
impl Webhooks for Spin {}

simgate_sdk::export_v0_1!(Spin);

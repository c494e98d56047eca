//! Test plugin `trap`: `provision` panics. Plugins build with `panic = "abort"`, so after
//! printing the message to stderr the instance traps; the host must report the trap and
//! drop the instance.

use simgate_sdk::v0_1::*;

struct Trap;

impl Provisioning for Trap {
    fn provision(_req: ProvisionRequest) -> Result<ProvisionOutcome, SupplierError> {
        panic!("trap plugin: provision always panics")
    }
}

impl Plugin for Trap {
    fn describe() -> Info {
        testing_common::info("trap", env!("CARGO_PKG_VERSION"))
    }
}

impl Catalog for Trap {
    fn list_products() -> Result<Vec<Product>, SupplierError> {
        Ok(vec![testing_common::product("trap-1")])
    }
}

impl Ekyc for Trap {}
impl Webhooks for Trap {}

simgate_sdk::export_v0_1!(Trap);

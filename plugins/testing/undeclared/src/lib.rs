//! Test plugin `undeclared`: imports `wasi:http/outgoing-handler` (it makes a request in
//! `provision`) while its plugin.toml requests no outbound host. The host must refuse to
//! link it, so `provision` never runs.

use simgate_sdk::v0_1::*;

struct Undeclared;

impl Provisioning for Undeclared {
    fn provision(_req: ProvisionRequest) -> Result<ProvisionOutcome, SupplierError> {
        let response = http::Request::get("http://127.0.0.1:9/").send()?;
        Err(SupplierError::Rejected(format!(
            "undeclared plugin reached the network (status {})",
            response.status
        )))
    }
}

impl Plugin for Undeclared {
    fn describe() -> Info {
        testing_common::info("undeclared", env!("CARGO_PKG_VERSION"))
    }
}

impl Catalog for Undeclared {
    fn list_products() -> Result<Vec<Product>, SupplierError> {
        Ok(vec![testing_common::product("undeclared-1")])
    }
}

impl Ekyc for Undeclared {}
impl Webhooks for Undeclared {}

simgate_sdk::export_v0_1!(Undeclared);

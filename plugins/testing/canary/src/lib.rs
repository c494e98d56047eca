//! Test plugin `canary`: behaves like a supplier that records every request it receives.
//!
//! Each export POSTs the full input record it got from the host (its `Debug` form) to the
//! URL in config `report_url`, then answers normally (provision delivers one eSIM). A test
//! plants unique canary strings in an order's `subject_ref`, `metadata` and the reseller's
//! name and checks that none of them ever arrives: the supplier sees only what the WIT
//! records carry.

use simgate_sdk::v0_1::*;

struct Canary;

fn report(what: &str, input: String) {
    if let Some(url) = config::get("report_url") {
        let body = serde_json::json!({ "export": what, "input": input });
        // A supplier that cannot log still answers.
        let _ = http::Request::post(url).json(&body).send();
    }
}

impl Provisioning for Canary {
    fn provision(req: ProvisionRequest) -> Result<ProvisionOutcome, SupplierError> {
        report("provision", format!("{req:?}"));
        Ok(ProvisionOutcome::Delivered(
            (0..req.quantity)
                .map(|i| Esim {
                    // A fixed, Luhn-valid test ICCID per position.
                    iccid: ["8999000000000000005", "8999000000000000013"][i as usize % 2].into(),
                    smdp_address: "smdp.canary.test".into(),
                    matching_id: format!("CANARY-MATCH-{i}"),
                    confirmation_code_required: false,
                })
                .collect(),
        ))
    }

    fn usage(iccid: String) -> Result<Usage, SupplierError> {
        report("usage", format!("{iccid:?}"));
        Err(SupplierError::NotSupported)
    }
}

impl Plugin for Canary {
    fn describe() -> Info {
        testing_common::info("canary", env!("CARGO_PKG_VERSION"))
    }
}

impl Catalog for Canary {
    fn list_products() -> Result<Vec<Product>, SupplierError> {
        Ok(vec![testing_common::product("canary-1")])
    }
}

impl Ekyc for Canary {}
impl Webhooks for Canary {}

simgate_sdk::export_v0_1!(Canary);

//! Test plugin `egress`: probes the host's outbound rules and reports what it saw.
//!
//! `provision` GETs the URL in config `target_url` (or `forbidden_url` for SKU
//! `egress-forbidden`) with `authorization: Bearer ${secret:PROBE_TOKEN}` (SKU
//! `egress-body` POSTs there instead, with [`BODY`], a placeholder in the body, which
//! contract 0.1 leaves as written), then fails with
//! `rejected` carrying a JSON report, so a test can read it from the order's failure:
//! `{"status": 200, "body": "...", "sent_authorization": "Bearer ${secret:PROBE_TOKEN}"}`
//! on a response (the placeholder as the plugin knows it: the host substitutes it at
//! egress), or `{"error": "<HttpError>"}` when the request failed or was denied.

use serde_json::json;
use simgate_sdk::v0_1::*;

struct Egress;

/// The body SKU `egress-body` sends: contract 0.1 fills placeholders in headers only.
const BODY: &str = r#"{"token":"${secret:PROBE_TOKEN}"}"#;

impl Provisioning for Egress {
    fn provision(req: ProvisionRequest) -> Result<ProvisionOutcome, SupplierError> {
        let key = match req.sku.as_str() {
            "egress-forbidden" => "forbidden_url",
            _ => "target_url",
        };
        let url = config::get(key)
            .ok_or_else(|| SupplierError::InvalidRequest(format!("config {key} is not set")))?;
        let authorization = format!("Bearer {}", secret_ref("PROBE_TOKEN"));
        let request = match req.sku.as_str() {
            "egress-body" => http::Request::post(url)
                .header("content-type", "application/json")
                .body(BODY),
            _ => http::Request::get(url),
        };
        let report = match request
            .header("authorization", authorization.as_str())
            .send()
        {
            Ok(response) => json!({
                "status": response.status,
                "body": response.text(),
                "sent_authorization": authorization,
            }),
            Err(err) => json!({ "error": err.to_string() }),
        };
        Err(SupplierError::Rejected(report.to_string()))
    }
}

impl Plugin for Egress {
    fn describe() -> Info {
        testing_common::info("egress", env!("CARGO_PKG_VERSION"))
    }
}

impl Catalog for Egress {
    fn list_products() -> Result<Vec<Product>, SupplierError> {
        Ok(vec![
            testing_common::product("egress-1"),
            testing_common::product("egress-forbidden"),
            testing_common::product("egress-body"),
        ])
    }
}

impl Ekyc for Egress {}
impl Webhooks for Egress {}

simgate_sdk::export_v0_1!(Egress);

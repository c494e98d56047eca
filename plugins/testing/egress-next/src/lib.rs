//! Test plugin `egress-next`: the egress probe (`testing/egress`) built against contract
//! 0.2, which fills `${secret:NAME}` in request bodies and `${oauth:CLIENT}` in headers.
//!
//! `provision` POSTs [`BODY`] (a `${secret:PROBE_TOKEN}` placeholder in JSON) to config
//! `target_url` (SKU `egress-next-other`: `other_url`) with `x-key: ${secret:PROBE_TOKEN}`,
//! or, when config `use_oauth` is `1`, with `authorization: Bearer ${oauth:probe}`. It then
//! fails with `rejected` carrying a JSON report, so a test reads it from the order's
//! failure: `{"status", "echo_auth", "echo_body"}` when the destination is a reflector
//! (what it echoed of the credential header and of the body, as the plugin read it back),
//! `{"status", "body"}` for any other answer, `{"error"}` when the request failed or was
//! denied. The host caps a reason at 512 characters, so the report keeps only that.

use serde_json::{Value, json};
use simgate_sdk::*;

struct EgressNext;

/// The body sent: the host fills the placeholder in (contract 0.2) where the secret is
/// bound to the destination, and refuses the request elsewhere.
const BODY: &str = r#"{"probe":"egress-next","token":"${secret:PROBE_TOKEN}"}"#;

/// Characters of a non-reflector answer kept in the report.
const BODY_EXCERPT: usize = 200;

/// The report of one answer: what a reflector echoed of `credential` and of the body.
fn report(status: u16, body: &str, credential: &str) -> Value {
    let Ok(echo) = serde_json::from_str::<Value>(body) else {
        let excerpt: String = body.chars().take(BODY_EXCERPT).collect();
        return json!({ "status": status, "body": excerpt });
    };
    let echoed_header = echo["headers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|h| h["name"] == credential)
        .map(|h| h["value"].clone())
        .unwrap_or(Value::Null);
    json!({ "status": status, "echo_auth": echoed_header, "echo_body": echo["body"] })
}

impl Provisioning for EgressNext {
    fn provision(req: ProvisionRequest) -> Result<ProvisionOutcome, SupplierError> {
        let key = match req.sku.as_str() {
            "egress-next-other" => "other_url",
            _ => "target_url",
        };
        let url = config::get(key)
            .ok_or_else(|| SupplierError::InvalidRequest(format!("config {key} is not set")))?;
        let (credential, value) = match config::get("use_oauth").as_deref() {
            Some("1") => (
                "authorization",
                format!("Bearer {}", secrets::oauth_ref("probe")),
            ),
            _ => ("x-key", secret_ref("PROBE_TOKEN")),
        };
        let sent = http::Request::post(url)
            .header("content-type", "application/json")
            .header(credential, value)
            .body(BODY)
            .send();
        let report = match sent {
            Ok(response) => report(response.status, &response.text(), credential),
            Err(err) => json!({ "error": err.to_string() }),
        };
        Err(SupplierError::Rejected(report.to_string()))
    }
}

impl Plugin for EgressNext {
    fn describe() -> Info {
        testing_common::v0_2::info("egress-next", env!("CARGO_PKG_VERSION"))
    }
}

impl Catalog for EgressNext {
    fn list_products() -> Result<Vec<Product>, SupplierError> {
        Ok(vec![
            testing_common::v0_2::product("egress-next-1"),
            testing_common::v0_2::product("egress-next-other"),
        ])
    }
}

impl Ekyc for EgressNext {}
impl Webhooks for EgressNext {}

simgate_sdk::export!(EgressNext);

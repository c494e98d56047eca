//! Test plugin `hostile`: what a plugin written by an attacker returns, one attack per SKU.
//!
//! | SKU | `provision` |
//! |---|---|
//! | `hostile-fixed` | delivers the same ICCID, [`FIXED_ICCID`], to every order: ordered by a second reseller, it tries to take over the first one's eSIM |
//! | `hostile-twice` | delivers one ICCID twice in one order (quantity 2) |
//! | `hostile-fields` | clones a `wasi:http` fields map of ~12 KiB until the host stops it: memory outside its own cap |
//! | `hostile-long-iccid` | delivers an ICCID of 3 MB |
//! | `hostile-debug` | reads config `target_url` (an answer larger than the egress cap), then fails with `rejected` carrying `to-debug-string` of the stream error |
//! | `hostile-pending` | answers `pending` with a supplier reference of 1 MB |
//! | `hostile-forge` | logs, and fails with a reason, that hold line breaks and a terminal escape, to forge log lines |
//!
//! Its catalog always holds one product per SKU above plus `hostile-zzz` (currency `ZZZ`)
//! and `hostile-negative` (a negative price), which the host must leave out alone. Config
//! `catalog = "huge-sku"` adds a product with an 8 MB SKU and one with a 1 MB title;
//! `catalog = "too-big"` adds 30,000 good products, together larger than the output cap.

use simgate_sdk::bindings::wasi::http::outgoing_handler;
use simgate_sdk::bindings::wasi::http::types::{Fields, OutgoingRequest, Scheme};
use simgate_sdk::bindings::wasi::io::streams::StreamError;
use simgate_sdk::v0_1::*;

/// The ICCID `hostile-fixed` hands to every order (Luhn-valid).
pub const FIXED_ICCID: &str = "8999100000000000006";

struct Hostile;

fn esim(iccid: String, order_ref: &str) -> Esim {
    Esim {
        iccid,
        smdp_address: "smdp.hostile.test".into(),
        matching_id: format!("HOSTILE-{order_ref}"),
        confirmation_code_required: false,
    }
}

/// An ICCID of 19 digits derived from the order reference.
fn iccid_for(order_ref: &str) -> String {
    let mut n: u64 = 1469598103934665603;
    for b in order_ref.bytes() {
        n = (n ^ u64::from(b)).wrapping_mul(1099511628211);
    }
    format!("8999200{:012}", n % 1_000_000_000_000)
}

/// Clone a fields map until the host refuses (a trap ends the call).
fn clone_fields_forever() -> Result<ProvisionOutcome, SupplierError> {
    let fields = Fields::new();
    let value = vec![b'x'; 1000];
    for i in 0..12 {
        let _ = fields.append(&format!("x-pad-{i}"), &value);
    }
    let mut held = Vec::new();
    for _ in 0..200_000 {
        held.push(fields.clone());
    }
    Err(SupplierError::Rejected(format!(
        "held {} clones of a 12 KiB fields map",
        held.len()
    )))
}

/// GET `target_url` with the raw `wasi:http` calls and read its body until it fails.
fn debug_string_of_a_stream_error() -> Result<ProvisionOutcome, SupplierError> {
    let url = config::get("target_url")
        .ok_or_else(|| SupplierError::InvalidRequest("config target_url is not set".into()))?;
    let rest = url.strip_prefix("http://").unwrap_or(&url);
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let request = OutgoingRequest::new(Fields::new());
    let _ = request.set_scheme(Some(&Scheme::Http));
    let _ = request.set_authority(Some(authority));
    let _ = request.set_path_with_query(Some(if path.is_empty() { "/" } else { path }));
    let pending = outgoing_handler::handle(request, None)
        .map_err(|e| SupplierError::Rejected(format!("handle: {e:?}")))?;
    pending.subscribe().block();
    let response = match pending.get() {
        Some(Ok(Ok(response))) => response,
        other => return Err(SupplierError::Rejected(format!("no response: {other:?}"))),
    };
    let body = response
        .consume()
        .map_err(|_| SupplierError::Rejected("no body".into()))?;
    let stream = body
        .stream()
        .map_err(|_| SupplierError::Rejected("no stream".into()))?;
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(_) => continue,
            Err(StreamError::LastOperationFailed(error)) => {
                return Err(SupplierError::Rejected(error.to_debug_string()));
            }
            Err(StreamError::Closed) => {
                return Err(SupplierError::Rejected(
                    "the body ended without error".into(),
                ));
            }
        }
    }
}

impl Provisioning for Hostile {
    fn provision(req: ProvisionRequest) -> Result<ProvisionOutcome, SupplierError> {
        match req.sku.as_str() {
            "hostile-fixed" => Ok(ProvisionOutcome::Delivered(vec![esim(
                FIXED_ICCID.into(),
                &req.order_ref,
            )])),
            "hostile-twice" => {
                let iccid = iccid_for(&req.order_ref);
                let one = esim(iccid, &req.order_ref);
                Ok(ProvisionOutcome::Delivered(
                    (0..req.quantity).map(|_| one.clone()).collect(),
                ))
            }
            "hostile-fields" => clone_fields_forever(),
            "hostile-long-iccid" => Ok(ProvisionOutcome::Delivered(vec![esim(
                "7".repeat(3_000_000),
                &req.order_ref,
            )])),
            "hostile-debug" => debug_string_of_a_stream_error(),
            "hostile-pending" => Ok(ProvisionOutcome::Pending("R".repeat(1_000_000))),
            "hostile-forge" => {
                log::warn("done\n2030-01-01T00:00:00Z  INFO simgate: FORGED-LOG-LINE \u{1b}[2J");
                Err(SupplierError::Rejected(
                    "no\n2030-01-01T00:00:00Z  INFO simgate: FORGED-REASON-LINE".into(),
                ))
            }
            other => Err(SupplierError::InvalidRequest(format!(
                "unknown sku {other}"
            ))),
        }
    }
}

impl Plugin for Hostile {
    fn describe() -> Info {
        testing_common::info("hostile", env!("CARGO_PKG_VERSION"))
    }
}

impl Catalog for Hostile {
    fn list_products() -> Result<Vec<Product>, SupplierError> {
        let mut products: Vec<Product> = [
            "hostile-fixed",
            "hostile-twice",
            "hostile-fields",
            "hostile-long-iccid",
            "hostile-debug",
            "hostile-pending",
            "hostile-forge",
        ]
        .into_iter()
        .map(testing_common::product)
        .collect();
        let mut zzz = testing_common::product("hostile-zzz");
        zzz.wholesale.currency = "ZZZ".into();
        products.push(zzz);
        let mut negative = testing_common::product("hostile-negative");
        negative.wholesale.minor = -100;
        products.push(negative);
        match config::get("catalog").as_deref() {
            Some("huge-sku") => {
                products.push(testing_common::product(&"S".repeat(8_000_000)));
                let mut titled = testing_common::product("hostile-titled");
                titled.title = "T".repeat(1_000_000);
                products.push(titled);
            }
            Some("too-big") => {
                // Each product is fine alone; together they pass the output cap.
                for i in 0..30_000 {
                    let mut p = testing_common::product(&format!("hostile-bulk-{i}"));
                    p.title = "T".repeat(200);
                    products.push(p);
                }
            }
            _ => {}
        }
        Ok(products)
    }
}

impl Ekyc for Hostile {}
impl Webhooks for Hostile {}

simgate_sdk::export_v0_1!(Hostile);

//! simgate adapter for an eSIM Access-style wholesale API: host-signed requests, async
//! orders finished by poll or webhook, eSIM states and usage from webhooks. See README.md.

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};

use serde::Deserialize;
use serde_json::{Value, json};
use simgate_sdk::http::Request;
use simgate_sdk::secrets::{Encoding, HmacAlgorithm};
use simgate_sdk::*;

mod map;

use map::{esim_of, plan_of, products_of, profile_of, supplier_error};

/// The secret that signs requests.
const SECRET: &str = "ESIM_ACCESS_SECRET";
/// Where the API lives unless the operator says otherwise.
const DEFAULT_BASE: &str = "https://api.esimaccess.com";
/// The `state` key of the package prices (1/10000 USD by package code).
const PRICES: &str = "prices";

struct EsimAccess;

/// The supplier's answer envelope.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    #[serde(default)]
    success: bool,
    #[serde(default)]
    error_code: Option<String>,
    #[serde(default)]
    error_msg: Option<String>,
    #[serde(default)]
    obj: Value,
}

/// A random request id in UUID form (the API asks for one per request).
fn request_id() -> String {
    let mut bytes = [0u8; 16];
    for chunk in bytes.chunks_mut(8) {
        // `RandomState` is seeded from the host's random source (wasi:random).
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(clock::now_ms());
        chunk.copy_from_slice(&h.finish().to_be_bytes());
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// One signed call: `obj` of a successful answer, or the error the host acts on.
fn call(path: &str, body: &Value) -> Result<Value, SupplierError> {
    let base = config::get("base_url").unwrap_or_else(|| DEFAULT_BASE.to_string());
    let access_code = config::get("access_code")
        .ok_or_else(|| SupplierError::Unavailable("config access_code is not set".into()))?;
    let body = serde_json::to_vec(body)
        .map_err(|e| SupplierError::InvalidRequest(format!("cannot encode request: {e}")))?;
    let timestamp = clock::now_ms().to_string();
    let request_id = request_id();
    let mut message = Vec::with_capacity(body.len() + 96);
    message.extend_from_slice(timestamp.as_bytes());
    message.extend_from_slice(request_id.as_bytes());
    message.extend_from_slice(access_code.as_bytes());
    message.extend_from_slice(&body);
    let signature = secrets::sign(SECRET, HmacAlgorithm::Sha256, &message, Encoding::Hex)
        .map_err(|e| SupplierError::Unavailable(format!("cannot sign: {e:?}")))?;
    let envelope: Envelope = Request::post(format!("{}{path}", base.trim_end_matches('/')))
        .header("content-type", "application/json")
        .header("RT-AccessCode", access_code)
        .header("RT-RequestID", request_id)
        .header("RT-Timestamp", timestamp)
        .header("RT-Signature", signature)
        .body(body)
        .send_json()?;
    if envelope.success {
        return Ok(envelope.obj);
    }
    Err(supplier_error(
        envelope.error_code.as_deref().unwrap_or(""),
        envelope.error_msg.as_deref().unwrap_or("no message"),
    ))
}

/// The package prices, from `state` or (when absent) the package list.
fn prices() -> Result<BTreeMap<String, i64>, SupplierError> {
    if let Some(prices) = state::get_json(PRICES) {
        return Ok(prices);
    }
    let (_, prices) = products_of(&call("/api/v1/open/package/list", &json!({}))?);
    remember(&prices);
    Ok(prices)
}

fn remember(prices: &BTreeMap<String, i64>) {
    if let Err(e) = state::set_json(PRICES, prices) {
        log_warn!("package prices not kept", error = format!("{e:?}"));
    }
}

impl Plugin for EsimAccess {
    fn describe() -> Info {
        Info {
            id: "esim-access".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            supplier: "eSIM Access".into(),
            features: vec![
                Feature::AsyncProvisioning,
                Feature::Cancel,
                Feature::Usage,
                Feature::Webhooks,
            ],
        }
    }
}

impl Catalog for EsimAccess {
    fn list_products() -> Result<Vec<Product>, SupplierError> {
        let (products, prices) = products_of(&call("/api/v1/open/package/list", &json!({}))?);
        remember(&prices);
        Ok(products)
    }
}

impl Provisioning for EsimAccess {
    fn provision(req: ProvisionRequest) -> Result<ProvisionOutcome, SupplierError> {
        log_debug!("placing order", order = req.order_ref, package = req.sku);
        let price = *prices()?
            .get(&req.sku)
            .ok_or_else(|| SupplierError::InvalidRequest(format!("unknown package {}", req.sku)))?;
        let amount = price
            .checked_mul(i64::from(req.quantity))
            .ok_or_else(|| SupplierError::InvalidRequest("order total out of range".into()))?;
        // transactionId: the supplier answers a repeated id with the same order.
        let obj = call(
            "/api/v1/open/esim/order",
            &json!({
                "transactionId": req.order_ref,
                "amount": amount,
                "packageInfoList": [{"packageCode": req.sku, "count": req.quantity, "price": price}],
            }),
        )?;
        let order_no = obj["orderNo"]
            .as_str()
            .ok_or_else(|| SupplierError::Unavailable("order answer without orderNo".into()))?;
        Ok(ProvisionOutcome::Pending(order_no.to_string()))
    }

    fn poll(req: PollRequest) -> Result<ProvisionOutcome, SupplierError> {
        let answer = call(
            "/api/v1/open/esim/query",
            &json!({"orderNo": req.supplier_ref, "pager": {"pageNum": 1, "pageSize": 100}}),
        );
        let obj = match answer {
            Err(SupplierError::Unavailable(why)) if why.starts_with(map::NOT_YET_ALLOCATED) => {
                return Ok(ProvisionOutcome::Pending(req.supplier_ref));
            }
            other => other?,
        };
        let list = obj["esimList"].as_array().cloned().unwrap_or_default();
        let esims = list.iter().map(esim_of).collect::<Result<Vec<_>, _>>()?;
        Ok(ProvisionOutcome::Delivered(esims))
    }

    fn cancel(req: CancelRequest) -> Result<(), SupplierError> {
        call("/api/v1/open/esim/cancel", &json!({"iccid": req.iccid}))?;
        Ok(())
    }

    fn usage(iccid: String) -> Result<Usage, SupplierError> {
        let obj = call(
            "/api/v1/open/esim/query",
            &json!({"iccid": iccid, "pager": {"pageNum": 1, "pageSize": 1}}),
        )?;
        let esim = obj["esimList"]
            .get(0)
            .ok_or_else(|| SupplierError::InvalidRequest(format!("unknown eSIM {iccid}")))?;
        let smdp = esim["smdpStatus"].as_str().unwrap_or("");
        let status = esim["esimStatus"].as_str().unwrap_or("");
        Ok(Usage {
            used_bytes: esim["orderUsage"].as_u64().unwrap_or(0),
            total_bytes: esim["totalVolume"].as_u64(),
            profile: profile_of(smdp).unwrap_or(ProfileState::Released),
            plan: plan_of(status).unwrap_or(PlanState::Ready),
            raw_status: format!("{smdp}/{status}"),
            expires_at_ms: None,
        })
    }
}

impl Ekyc for EsimAccess {}

impl Webhooks for EsimAccess {
    /// Unsigned by the supplier: the operator's source allow-list stands in front.
    fn parse(req: Inbound) -> Result<Webhook, SupplierError> {
        map::webhook_of(&req.body)
    }
}

simgate_sdk::export!(EsimAccess);

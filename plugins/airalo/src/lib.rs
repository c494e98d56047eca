//! simgate adapter for the Airalo Partner API v2: an OAuth2 client-credentials token the
//! host fetches and attaches, the package catalog, async orders finished by Airalo's signed
//! webhook, low-data notices and usage. See README.md.
//!
//! What lives where: this file makes the calls (host imports, HTTP, `state`); `map` turns
//! Airalo's records into the contract's and is unit tested natively.

use serde_json::{Value, json};
use simgate_sdk::http::Request;
use simgate_sdk::secrets::HmacAlgorithm;
use simgate_sdk::*;

mod map;

use map::{MAX_QUANTITY, Notice, PendingOrders};

/// The OAuth client the operator configures under `[plugins.airalo.oauth.partner]`.
const OAUTH_CLIENT: &str = "partner";
/// The secret that keys Airalo's webhook signatures (the OAuth client secret).
const CLIENT_SECRET: &str = "AIRALO_CLIENT_SECRET";
/// Where the API lives unless the operator says otherwise.
const DEFAULT_BASE: &str = "https://partners-api.airalo.com";
/// The `state` key of the async requests placed ([`PendingOrders`]).
const PENDING: &str = "pending-orders";
/// Countries per page of the package listing.
const PAGE_SIZE: &str = "100";
/// Pages read at most: a listing longer than this is a bug on one side or the other.
const MAX_PAGES: u64 = 50;
/// The length of an HMAC-SHA512.
const SIGNATURE_BYTES: usize = 64;

struct Airalo;

/// `base_url` + `path`.
fn url(path: &str) -> String {
    let base = config::get("base_url").unwrap_or_else(|| DEFAULT_BASE.to_string());
    format!("{}{path}", base.trim_end_matches('/'))
}

/// One API call with the partner token: the JSON answer, or the error the host acts on.
/// A 401 means the token was refused (expired or revoked early): the host is told to drop
/// it, and the call ends `unavailable`, so the host retries with a fresh one.
fn api(request: Request) -> Result<Value, SupplierError> {
    let response = request
        .header(
            "authorization",
            format!("Bearer {}", secrets::oauth_ref(OAUTH_CLIENT)),
        )
        .header("accept", "application/json")
        .send()?;
    if response.status == 401 {
        if let Err(e) = secrets::invalidate_token(OAUTH_CLIENT) {
            log::warn(&format!("the refused token could not be dropped: {e:?}"));
        }
        return Err(SupplierError::Unavailable(
            "Airalo refused the access token (HTTP 401); the next call fetches a new one".into(),
        ));
    }
    if let Some(refusal) = map::refusal(response.status, &response.body) {
        return Err(refusal);
    }
    Ok(response.error_for_supplier()?.json()?)
}

/// Refuse a webhook that is not signed by Airalo: `airalo-signature` must be the hex
/// HMAC-SHA512 of the exact body under the client secret (checked by the host).
fn verify(req: &Inbound) -> Result<(), SupplierError> {
    let signature = req
        .header("airalo-signature")
        .ok_or_else(|| SupplierError::InvalidRequest("unsigned: no airalo-signature".into()))?;
    let signature = map::hex_decode(signature.trim())
        .filter(|s| s.len() == SIGNATURE_BYTES)
        .ok_or_else(|| {
            SupplierError::InvalidRequest("airalo-signature is not a hex HMAC-SHA512".into())
        })?;
    match secrets::verify_hmac(CLIENT_SECRET, HmacAlgorithm::Sha512, &req.body, &signature) {
        Ok(true) => Ok(()),
        Ok(false) => Err(SupplierError::Rejected(
            "airalo-signature does not match the body".into(),
        )),
        // A configuration problem, not the sender's: not accepted, so Airalo retries.
        Err(e) => Err(SupplierError::Unavailable(format!(
            "webhooks cannot be verified ({e:?}): grant {CLIENT_SECRET}"
        ))),
    }
}

/// The async requests placed so far (none when `state` lost them: a restart).
fn pending_orders() -> PendingOrders {
    state::get_json(PENDING).unwrap_or_default()
}

/// The events of a low-data notice: the threshold, with the bytes used read from the
/// sim's usage (the notice carries none, and the host derives the plan's size from both).
fn low_data(iccid: &str, percent: u8) -> Result<Vec<SupplierEvent>, SupplierError> {
    match Airalo::usage(iccid.to_string()) {
        Ok(usage) => Ok(vec![SupplierEvent::UsageThreshold(UsageThreshold {
            iccid: iccid.to_string(),
            used_bytes: usage.used_bytes,
            percent,
        })]),
        // Not accepted: Airalo delivers it again later.
        Err(e @ (SupplierError::Unavailable(_) | SupplierError::RateLimited(_))) => Err(e),
        Err(e) => {
            log::warn(&format!("low-data notice ignored, usage unreadable: {e:?}"));
            Ok(Vec::new())
        }
    }
}

impl Plugin for Airalo {
    fn describe() -> Info {
        Info {
            id: "airalo".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            supplier: "Airalo".into(),
            features: vec![
                Feature::AsyncProvisioning,
                Feature::Usage,
                Feature::Webhooks,
            ],
        }
    }
}

impl Catalog for Airalo {
    fn list_products() -> Result<Vec<Product>, SupplierError> {
        let mut products = Vec::new();
        for page in 1..=MAX_PAGES {
            let answer = api(Request::get(url("/v2/packages"))
                .query(&[("limit", PAGE_SIZE), ("page", &page.to_string())]))?;
            products.extend(map::products_of(&answer["data"]));
            if page >= map::last_page(&answer) {
                break;
            }
        }
        Ok(products)
    }
}

impl Provisioning for Airalo {
    /// An async order whose `description` is the gateway's order reference, so Airalo's
    /// webhook names the order; the request id is the supplier reference.
    fn provision(req: ProvisionRequest) -> Result<ProvisionOutcome, SupplierError> {
        if !(1..=MAX_QUANTITY).contains(&req.quantity) {
            return Err(SupplierError::InvalidRequest(format!(
                "Airalo sells 1 to {MAX_QUANTITY} eSIMs per order, not {}",
                req.quantity
            )));
        }
        let mut pending = pending_orders();
        // A retry of an order already placed (Airalo has no idempotency key).
        if let Some(request_id) = pending.request_of(&req.order_ref) {
            return Ok(ProvisionOutcome::Pending(request_id.to_string()));
        }
        let answer = api(Request::post(url("/v2/orders-async")).json(&json!({
            "quantity": req.quantity,
            "package_id": req.sku,
            "type": "sim",
            "description": req.order_ref,
        })))?;
        let request_id = answer["data"]["request_id"]
            .as_str()
            .filter(|r| !r.is_empty())
            .ok_or_else(|| SupplierError::Unavailable("async order without request_id".into()))?;
        pending.remember(&req.order_ref, request_id);
        if let Err(e) = state::set_json(PENDING, &pending) {
            log::warn(&format!("async request not remembered: {e:?}"));
        }
        Ok(ProvisionOutcome::Pending(request_id.to_string()))
    }

    /// Airalo cannot be asked about an async request: its webhook finishes the order.
    fn poll(req: PollRequest) -> Result<ProvisionOutcome, SupplierError> {
        Ok(ProvisionOutcome::Pending(req.supplier_ref))
    }

    fn usage(iccid: String) -> Result<Usage, SupplierError> {
        if iccid.is_empty() || !iccid.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(SupplierError::InvalidRequest("not an ICCID".into()));
        }
        let answer = api(Request::get(url(&format!("/v2/sims/{iccid}/usage"))))?;
        Ok(map::usage_of(&answer["data"]))
    }
}

impl Ekyc for Airalo {}

impl Webhooks for Airalo {
    fn parse(req: Inbound) -> Result<Webhook, SupplierError> {
        verify(&req)?;
        match map::notice_of(&req.body)? {
            Notice::OrderResult {
                request_id,
                order_ref,
                result,
            } => {
                let order_ref =
                    order_ref.or_else(|| pending_orders().order_of(&request_id).map(Into::into));
                let events = match (order_ref, result) {
                    (Some(order_ref), Ok(esims)) => {
                        vec![SupplierEvent::OrderDelivered(OrderDelivered {
                            order_ref,
                            esims,
                        })]
                    }
                    (Some(order_ref), Err(reason)) => {
                        vec![SupplierEvent::OrderFailed(OrderFailed {
                            order_ref,
                            reason,
                        })]
                    }
                    (None, _) => {
                        log::warn("async order result for an order this gateway did not place");
                        Vec::new()
                    }
                };
                Ok(Webhook {
                    event_id: Some(request_id),
                    events,
                })
            }
            Notice::LowData {
                iccid,
                percent,
                event_id,
            } => Ok(Webhook {
                event_id: Some(event_id),
                events: match percent {
                    Some(percent) => low_data(&iccid, percent)?,
                    // Days left: nothing the contract has an event for.
                    None => Vec::new(),
                },
            }),
            Notice::Other => Ok(Webhook {
                event_id: None,
                events: Vec::new(),
            }),
        }
    }
}

simgate_sdk::export!(Airalo);

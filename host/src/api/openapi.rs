//! `/openapi.json`, built from the route table ([`super::routes::ROUTES`]) so every route
//! is in it, with the schemas of the bodies the handlers read and write.

use std::sync::OnceLock;

use serde_json::{Value, json};

use super::routes::{Access, ROUTES};

/// The OpenAPI 3.1 document (built once).
pub fn document() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(build)
}

fn build() -> Value {
    let mut paths = serde_json::Map::new();
    for r in ROUTES {
        let mut params: Vec<Value> = r
            .path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        params.extend(r.query.iter().map(|(name, description)| {
            let schema = match *name {
                "limit" => json!({"type": "integer", "minimum": 1, "maximum": 100}),
                _ => json!({"type": "string"}),
            };
            json!({"name": name, "in": "query", "required": false, "description": description, "schema": schema})
        }));
        if r.idempotent {
            params.push(json!({
                "name": "Idempotency-Key", "in": "header", "required": true,
                "description": "Unique per intended operation. The same key and request (by meaning: JSON keys may come in any order) replays the result; a different request is 422; while the first request runs, 409.",
                "schema": {"type": "string", "minLength": 1, "maxLength": 255}
            }));
        }
        let (status, schema) = r.response;
        let content = match schema {
            "QrImage" => json!({
                "image/png": {"schema": {"type": "string", "format": "binary"}},
                "image/svg+xml": {"schema": {"type": "string"}}}),
            "MetricsText" => json!({"text/plain": {"schema": {"type": "string"}}}),
            _ => {
                json!({"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}})
            }
        };
        let mut headers = json!({"x-request-id": {"description": "this request's id, also in the log", "schema": {"type": "string"}}});
        if r.idempotent {
            headers["idempotent-replayed"] = json!({"description": "present (true) when this answer replays an earlier request with the same Idempotency-Key", "schema": {"type": "string", "enum": ["true"]}});
        }
        let mut responses = json!({
            status.to_string(): {"description": "success", "headers": headers, "content": content},
        });
        for (code, why) in error_statuses(r) {
            responses[code.to_string()] = json!({
                "description": why,
                "headers": {
                    "x-request-id": {"schema": {"type": "string"}},
                    "Retry-After": {"description": "seconds to wait (429, 503, 409 in progress)", "schema": {"type": "integer"}}},
                "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
            });
        }
        let operation_id = format!(
            "{}_{}",
            r.method.as_str().to_lowercase(),
            r.path
                .trim_start_matches('/')
                .replace(['{', '}', '.'], "")
                .replace(['/', '-'], "_")
        );
        let mut op = json!({
            "operationId": operation_id,
            "summary": r.summary,
            "parameters": params,
            "responses": responses,
        });
        if let Some(req) = r.request {
            op["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{req}")}}}});
        }
        if r.access != Access::Public {
            op["security"] = json!([{"bearer": []}]);
        }
        if r.access == Access::Admin {
            op["tags"] = json!(["admin"]);
        }
        paths
            .entry(r.path.to_string())
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .expect("path item is an object")
            .insert(r.method.as_str().to_lowercase(), op);
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "simgate", "version": env!("CARGO_PKG_VERSION"),
                 "description": "eSIM supplier gateway API. Money is in minor units with an ISO 4217 currency. Errors are RFC 9457 problem details with a stable `code`."},
        "paths": paths,
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}, "schemas": schemas()}
    })
}

/// The problems a route may answer, by status: what every route can meet, plus what its
/// key, body and idempotency bring.
fn error_statuses(r: &super::routes::Route) -> Vec<(u16, &'static str)> {
    let mut out = vec![
        (404, "no such resource, or not the caller's"),
        (405, "method not allowed (with an Allow header)"),
        (503, "storage or supplier unavailable"),
    ];
    if r.access != Access::Public {
        out.push((401, "missing, unknown or revoked API key"));
        out.push((429, "over the key's rate limit"));
    }
    if r.request.is_some() || r.idempotent {
        out.extend([
            (400, "malformed JSON or query, or a missing Idempotency-Key"),
            (408, "the body did not arrive in time"),
            (413, "body too large"),
            (415, "not application/json"),
            (
                422,
                "a field is invalid, or the Idempotency-Key was used for another request",
            ),
        ]);
    }
    if r.idempotent {
        out.push((409, "the first request with this Idempotency-Key is still running, or the record's state does not allow it"));
        out.push((402, "the prepaid balance cannot cover the price"));
    }
    if !r.query.is_empty() {
        out.push((400, "invalid query parameter"));
    }
    out.sort();
    out.dedup_by_key(|(code, _)| *code);
    out
}

/// An object with exactly these properties: a field the server sends that the document
/// does not name fails the black-box suite's check of every response against it.
fn object(props: Value, required: &[&str]) -> Value {
    json!({"type": "object", "properties": props, "required": required, "additionalProperties": false})
}

fn list_of(item: &str) -> Value {
    object(
        json!({"data": {"type": "array", "items": {"$ref": format!("#/components/schemas/{item}")}}, "has_more": {"type": "boolean"}}),
        &["data"],
    )
}

fn schemas() -> Value {
    let mut all = api_schemas();
    let map = all.as_object_mut().expect("schemas are an object");
    if let Value::Object(plugins) = plugin_schemas() {
        map.extend(plugins);
    }
    all
}

/// The schemas of the admin plugin status.
fn plugin_schemas() -> Value {
    let s = |t: &str| json!({"type": t});
    let opt = |t: &str| json!({"type": [t, "null"]});
    json!({
        "PluginList": list_of("Plugin"),
        "Plugin": object(json!({"id": s("string"), "state": {"enum": ["serving", "failed_reload", "failed"]},
            "version": opt("string"), "sha256": opt("string"),
            "generation": opt("integer"), "loaded_at": opt("integer"), "load_ms": opt("integer"),
            "capabilities": {"oneOf": [{"type": "null"}, {"$ref": "#/components/schemas/PluginCapabilities"}]},
            "last_error": opt("string"), "last_error_at": opt("integer"),
            "reloads": {"$ref": "#/components/schemas/ReloadCounts"},
            "stats": {"oneOf": [{"type": "null"}, {"$ref": "#/components/schemas/PluginStats"}]}}), &["id", "state"]),
        "PluginCapabilities": plugin_capabilities(),
        "PluginStats": plugin_stats(),
        "ReloadCounts": object(json!({"ok": s("integer"), "failed": s("integer")}), &["ok", "failed"]),
    })
}

/// The schemas of the reseller and admin API bodies.
fn api_schemas() -> Value {
    let money = json!({"type": "object", "properties": {"minor": {"type": "integer"}, "currency": {"type": "string"}}, "required": ["minor", "currency"]});
    let s = |t: &str| json!({"type": t});
    let opt = |t: &str| json!({"type": [t, "null"]});
    json!({
        "Problem": object(json!({"type": s("string"), "title": s("string"), "status": s("integer"), "code": s("string"),
            "detail": s("string"), "pointer": s("string"), "request_id": s("string"), "retry_after": s("integer")}), &["type", "title", "status", "code", "detail", "request_id"]),
        "Health": object(json!({"status": {"enum": ["ok", "ready"]}, "plugins_serving": s("integer")}), &["status"]),
        "OpenApi": s("object"),
        "Money": money,
        "Product": object(json!({"id": s("string"), "title": s("string"), "countries": {"type": "array", "items": s("string")},
            "region": opt("string"), "data_bytes": opt("integer"), "unlimited": s("boolean"), "validity_days": s("integer"),
            "price": {"$ref": "#/components/schemas/Money"}, "needs_kyc": s("boolean"), "top_up_able": s("boolean")}), &["id", "price"]),
        "ProductList": list_of("Product"),
        "NewOrder": object(json!({"product_id": s("string"), "quantity": {"type": "integer", "minimum": 1, "maximum": 100},
            "subject_ref": {"type": "string", "maxLength": 128, "description": "opaque reference to your end user; never personal data; never sent to suppliers"},
            "metadata": {"type": "object", "description": "yours; never sent to suppliers"}}), &["product_id"]),
        "NewTopUp": object(json!({"product_id": s("string")}), &["product_id"]),
        "Esim": object(json!({"iccid": s("string"), "order_id": s("string"), "activation_code": s("string"), "smdp_address": s("string"),
            "matching_id": s("string"), "confirmation_code_required": s("boolean"), "apple_install_link": s("string"),
            "profile_state": {"enum": ["released", "downloaded", "installed", "enabled", "disabled", "deleted", "error"]},
            "plan_state": {"enum": ["allocating", "ready", "active", "depleted", "expired", "expired_unused"]},
            "supplier_status": s("string")}), &["iccid", "activation_code"]),
        "Order": object(json!({"id": s("string"), "product_id": s("string"), "quantity": s("integer"),
            "status": {"enum": ["accepted", "awaiting_kyc", "submitted", "fulfilled", "failed", "cancelled"]},
            "unit_price": {"$ref": "#/components/schemas/Money"}, "total": {"$ref": "#/components/schemas/Money"},
            "kind": object(json!({"type": {"enum": ["esim", "top_up"]}, "iccid": s("string")}), &["type"]),
            "subject_ref": opt("string"), "metadata": {"type": ["object", "null"]}, "failure": opt("object"),
            "esims": {"type": "array", "items": {"$ref": "#/components/schemas/Esim"}},
            "created_at_ms": s("integer"), "updated_at_ms": s("integer")}), &["id", "status"]),
        "OrderList": list_of("Order"),
        "QrImage": {"type": "string", "format": "binary"},
        "MetricsText": {"type": "string", "description": "Prometheus text exposition format 0.0.4"},
        "Usage": object(json!({"iccid": s("string"), "used_bytes": s("integer"), "total_bytes": opt("integer"),
            "profile_state": s("string"), "plan_state": s("string"), "supplier_status": s("string"),
            "expires_at_ms": opt("integer"), "observed_at_ms": s("integer")}), &["iccid", "observed_at_ms"]),
        "Balance": object(json!({"currency": s("string"), "available": s("integer"), "held": s("integer")}), &["currency", "available", "held"]),
        "BalanceList": list_of("Balance"),
        "Transaction": object(json!({"id": s("string"), "type": {"enum": ["credit", "hold", "capture", "release", "refund"]},
            "amount": s("integer"), "currency": s("string"), "order_id": opt("string"), "note": opt("string"), "created_at_ms": s("integer")}), &["id", "type", "amount"]),
        "TransactionList": list_of("Transaction"),
        "NewKey": object(json!({"key": s("string"), "id": s("string"), "role": s("string"), "mode": s("string"),
            "reseller_id": opt("string"), "note": s("string")}), &["key", "id"]),
        "Key": object(json!({"id": s("string"), "role": s("string"), "expires_at_ms": opt("integer")}), &["id"]),
        "NewKeyRequest": object(json!({"role": {"enum": ["reseller", "reseller_readonly"]}, "mode": {"enum": ["live", "test"]}}), &[]),
        "Reseller": object(json!({"id": s("string"), "name": s("string"), "markup_bps": s("integer"), "created_at_ms": s("integer")}), &["id", "name"]),
        "ResellerList": list_of("Reseller"),
        "NewReseller": object(json!({"name": s("string"), "markup_bps": {"type": "integer", "minimum": 0}}), &["name"]),
        "NewCredit": object(json!({"amount": {"type": "integer", "minimum": 1}, "currency": s("string"), "note": s("string")}), &["amount"]),
    })
}

/// What a plugin is effectively granted.
fn plugin_capabilities() -> Value {
    let strings = json!({"type": "array", "items": {"type": "string"}});
    object(
        json!({
            "outbound": strings, "secrets": strings,
            "secret_hosts": {"type": "object", "additionalProperties": strings},
            "config": {"type": "object", "additionalProperties": {"type": "string"}},
            "allow_private_addresses": {"type": "boolean"}, "denied": strings}),
        &[
            "outbound",
            "secrets",
            "config",
            "allow_private_addresses",
            "denied",
        ],
    )
}

/// A plugin's call counters (aggregate numbers only).
fn plugin_stats() -> Value {
    let int = json!({"type": "integer"});
    object(
        json!({
            "calls": int, "in_flight": int,
            "faults": {"type": "array", "items": {"type": "array", "prefixItems": [{"type": "string"}, int]}},
            "latency_buckets": {"type": "array", "items": int},
            "latency_sum_seconds": {"type": "number"},
            "reloads": {"$ref": "#/components/schemas/ReloadCounts"}}),
        &["calls", "in_flight", "faults"],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_documented_and_every_reference_resolves() {
        let doc = document();
        for r in ROUTES {
            assert!(
                doc["paths"][r.path][r.method.as_str().to_lowercase()].is_object(),
                "{} {}",
                r.method,
                r.path
            );
        }
        let text = doc.to_string();
        for part in text.split("#/components/schemas/").skip(1) {
            let name = part.split('"').next().unwrap();
            assert!(
                doc["components"]["schemas"][name].is_object(),
                "missing schema {name}"
            );
        }
    }
}

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
            json!({"name": name, "in": "query", "required": false, "description": description, "schema": {"type": "string"}})
        }));
        if r.idempotent {
            params.push(json!({
                "name": "Idempotency-Key", "in": "header", "required": true,
                "description": "Unique per intended operation. Same key and body replays the result; a different body is 422; while the first request runs, 409.",
                "schema": {"type": "string", "maxLength": 255}
            }));
        }
        let (status, schema) = r.response;
        let content_type = if schema == "QrImage" {
            "image/png"
        } else {
            "application/json"
        };
        let mut op = json!({
            "summary": r.summary,
            "parameters": params,
            "responses": {
                status.to_string(): {"description": "success", "content": {content_type: {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}},
                "default": {"description": "an error", "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}
            }
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

fn object(props: Value, required: &[&str]) -> Value {
    json!({"type": "object", "properties": props, "required": required})
}

fn list_of(item: &str) -> Value {
    object(
        json!({"data": {"type": "array", "items": {"$ref": format!("#/components/schemas/{item}")}}, "has_more": {"type": "boolean"}}),
        &["data"],
    )
}

fn schemas() -> Value {
    let money = json!({"type": "object", "properties": {"minor": {"type": "integer"}, "currency": {"type": "string"}}, "required": ["minor", "currency"]});
    let s = |t: &str| json!({"type": t});
    let opt = |t: &str| json!({"type": [t, "null"]});
    json!({
        "Problem": object(json!({"type": s("string"), "title": s("string"), "status": s("integer"), "code": s("string"),
            "detail": s("string"), "pointer": s("string"), "request_id": s("string"), "retry_after": s("integer")}), &["type", "title", "status", "code", "detail", "request_id"]),
        "Health": object(json!({"status": s("string")}), &["status"]),
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
        "NewKey": object(json!({"key": s("string"), "id": s("string"), "role": s("string"), "mode": s("string")}), &["key", "id"]),
        "Key": object(json!({"id": s("string"), "role": s("string"), "expires_at_ms": opt("integer")}), &["id"]),
        "NewKeyRequest": object(json!({"role": {"enum": ["reseller", "reseller_readonly"]}, "mode": {"enum": ["live", "test"]}}), &[]),
        "Reseller": object(json!({"id": s("string"), "name": s("string"), "markup_bps": s("integer"), "created_at_ms": s("integer")}), &["id", "name"]),
        "ResellerList": list_of("Reseller"),
        "NewReseller": object(json!({"name": s("string"), "markup_bps": {"type": "integer", "minimum": 0}}), &["name"]),
        "NewCredit": object(json!({"amount": {"type": "integer", "minimum": 1}, "currency": s("string"), "note": s("string")}), &["amount"]),
        "PluginList": list_of("Plugin"),
        "Plugin": object(json!({"id": s("string"), "state": s("string"), "version": opt("string"), "sha256": opt("string"),
            "generation": opt("integer"), "last_error": opt("string")}), &["id", "state"]),
    })
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

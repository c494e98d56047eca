//! `/openapi.json`, built from the route table ([`super::routes::ROUTES`]) so every route
//! is in it, with the schemas of the bodies the handlers read and write derived from their
//! Rust types (`schemars`), so the document cannot drift from what is sent.

use std::sync::OnceLock;

use schemars::generate::SchemaSettings;
use schemars::transform::RecursiveTransform;
use schemars::{Schema, SchemaGenerator};
use serde_json::{Value, json};

use crate::domain::catalog::Product;
use crate::domain::ekyc::EkycSessionView;
use crate::domain::use_cases::consents::{ConsentView, SubjectConsents};
use crate::domain::use_cases::esims::{EsimView, UsageView};
use crate::domain::use_cases::orders::OrderView;
use crate::domain::use_cases::subjects::{SubjectAction, SubjectExport};
use crate::plugins::PluginStatus;

use super::audit::AuditEntryView;
use super::ekyc::CreateSession;
use super::inbound::InboundAck;
use super::problem::ProblemBody;
use super::routes::{
    Access, CreateBalanceAlert, CreateCredit, CreateKey, CreateOrder, CreateReseller, CreateTopUp,
    ROUTES,
};
use super::subjects::{CreateConsent, Rectify};
use super::views::{
    All, BackupView, BalanceAlertView, BalanceView, EventView, Health, KeyView, NewKeyView,
    NodeView, Page, Ready, RequestView, ResellerView, TransactionView,
};
use super::webhooks::{
    AttemptView, ChangeEndpoint, CreateEndpoint, EndpointView, EndpointWithSecret, RedeliveryView,
};

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
            json!({"name": name, "in": "query", "required": false, "description": description, "schema": query_schema(name)})
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
            "NoContent" => Value::Null,
            _ => {
                json!({"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}})
            }
        };
        let mut headers = json!({"x-request-id": {"description": "this request's id, also in the log", "schema": {"type": "string"}}});
        if r.idempotent {
            headers["idempotent-replayed"] = json!({"description": "present (true) when this answer replays an earlier request with the same Idempotency-Key", "schema": {"type": "string", "enum": ["true"]}});
        }
        let mut success = json!({"description": "success", "headers": headers});
        if !content.is_null() {
            success["content"] = content;
        }
        let mut responses = json!({ status.to_string(): success });
        if let Some(also) = r.also {
            responses[also.to_string()] = responses[status.to_string()].clone();
        }
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

/// What the handlers accept for a query parameter, by name (a name means one thing on
/// every route that takes it); anything else is answered 400 `invalid_query`.
fn query_schema(name: &str) -> Value {
    match name {
        "limit" => json!({"type": "integer", "minimum": 1, "maximum": 100}),
        "country" => json!({"type": "string", "pattern": "^[A-Za-z]{2}$"}),
        "region" => json!({"type": "string", "minLength": 1, "maxLength": 64}),
        "format" => json!({"type": "string", "enum": ["png", "svg"]}),
        "since_ms" | "until_ms" => json!({"type": "integer", "minimum": 0}),
        // Named enums and ids, as the bodies that carry them describe them.
        "status" => json!({"$ref": "#/components/schemas/OrderStatus"}),
        "type" => json!({"$ref": "#/components/schemas/EventType"}),
        "action" => json!({"$ref": "#/components/schemas/AuditAction"}),
        "reseller" => json!({"$ref": "#/components/schemas/ResellerId"}),
        _ => json!({"type": "string"}),
    }
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
    if r.access == Access::Key {
        out.push((
            403,
            "the key's role may not do this: a read-only key changing something, or an admin key (which has no reseller) on a reseller's records",
        ));
    }
    if r.access != Access::Public && r.method != http::Method::GET {
        out.push((
            409,
            "the record's state does not allow it: e.g. an order already installed, a restricted subject, an account with open orders, out of stock",
        ));
    }
    if r.path.contains("{subject_ref}") {
        out.push((
            422,
            "the subject_ref in the path is not 1 to 128 printable characters",
        ));
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

/// The components: the schema of every body, derived from the type the handlers write
/// (described as serialised: a field that is always sent is required) or read (described as
/// deserialised: a field with a default may be left out).
fn schemas() -> serde_json::Map<String, Value> {
    let mut sent = generator(SchemaSettings::draft2020_12().for_serialize());
    // The JSON bodies the route table names, and every error's.
    for add in [
        SchemaGenerator::subschema_for::<ProblemBody>,
        SchemaGenerator::subschema_for::<Health>,
        SchemaGenerator::subschema_for::<Ready>,
        SchemaGenerator::subschema_for::<Page<Product>>,
        SchemaGenerator::subschema_for::<Page<OrderView>>,
        SchemaGenerator::subschema_for::<OrderView>,
        SchemaGenerator::subschema_for::<EsimView>,
        SchemaGenerator::subschema_for::<UsageView>,
        SchemaGenerator::subschema_for::<All<BalanceView>>,
        SchemaGenerator::subschema_for::<BalanceView>,
        SchemaGenerator::subschema_for::<Page<TransactionView>>,
        SchemaGenerator::subschema_for::<Page<RequestView>>,
        SchemaGenerator::subschema_for::<Page<EventView>>,
        SchemaGenerator::subschema_for::<All<EndpointView>>,
        SchemaGenerator::subschema_for::<EndpointView>,
        SchemaGenerator::subschema_for::<EndpointWithSecret>,
        SchemaGenerator::subschema_for::<AttemptView>,
        SchemaGenerator::subschema_for::<Page<AttemptView>>,
        SchemaGenerator::subschema_for::<RedeliveryView>,
        SchemaGenerator::subschema_for::<BalanceAlertView>,
        SchemaGenerator::subschema_for::<NewKeyView>,
        SchemaGenerator::subschema_for::<KeyView>,
        SchemaGenerator::subschema_for::<BackupView>,
        SchemaGenerator::subschema_for::<All<PluginStatus>>,
        SchemaGenerator::subschema_for::<All<NodeView>>,
        SchemaGenerator::subschema_for::<All<ResellerView>>,
        SchemaGenerator::subschema_for::<ResellerView>,
        SchemaGenerator::subschema_for::<EkycSessionView>,
        SchemaGenerator::subschema_for::<InboundAck>,
        SchemaGenerator::subschema_for::<ConsentView>,
        SchemaGenerator::subschema_for::<SubjectConsents>,
        SchemaGenerator::subschema_for::<SubjectExport>,
        SchemaGenerator::subschema_for::<SubjectAction>,
        SchemaGenerator::subschema_for::<Page<AuditEntryView>>,
    ] {
        add(&mut sent);
    }
    let mut read = generator(SchemaSettings::draft2020_12().for_deserialize());
    for add in [
        SchemaGenerator::subschema_for::<CreateOrder>,
        SchemaGenerator::subschema_for::<CreateTopUp>,
        SchemaGenerator::subschema_for::<CreateReseller>,
        SchemaGenerator::subschema_for::<CreateKey>,
        SchemaGenerator::subschema_for::<CreateCredit>,
        SchemaGenerator::subschema_for::<CreateEndpoint>,
        SchemaGenerator::subschema_for::<ChangeEndpoint>,
        SchemaGenerator::subschema_for::<CreateBalanceAlert>,
        SchemaGenerator::subschema_for::<CreateSession>,
        SchemaGenerator::subschema_for::<CreateConsent>,
        SchemaGenerator::subschema_for::<Rectify>,
    ] {
        add(&mut read);
    }
    let mut all = sent.take_definitions(true);
    for (name, schema) in read.take_definitions(true) {
        if let Some(sent) = all.get(&name) {
            // A type both read and sent (an enum such as `Role`) must read as it is sent.
            assert_eq!(sent, &schema, "{name} is read otherwise than it is sent");
        }
        all.insert(name, schema);
    }
    // Bodies that are no serialised Rust type: this document, images and metrics text.
    all.extend([
        ("OpenApi".to_string(), json!({"type": "object"})),
        (
            "QrImage".to_string(),
            json!({"type": "string", "format": "binary"}),
        ),
        (
            "MetricsText".to_string(),
            json!({"type": "string", "description": "Prometheus text exposition format 0.0.4"}),
        ),
    ]);
    all
}

/// A generator that files named schemas under `#/components/schemas` and closes every object
/// with named properties: a field the server sends that its type's schema does not name
/// fails the black-box suite's check of every response against this document.
fn generator(settings: SchemaSettings) -> SchemaGenerator {
    settings
        .with(|s| s.definitions_path = "/components/schemas".into())
        .with_transform(RecursiveTransform(close_object as fn(&mut Schema)))
        .into_generator()
}

fn close_object(schema: &mut Schema) {
    if schema.get("properties").is_some() && schema.get("additionalProperties").is_none() {
        schema.insert("additionalProperties".into(), false.into());
    }
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

    #[test]
    fn every_body_the_route_table_names_has_a_schema() {
        let schemas = &document()["components"]["schemas"];
        for r in ROUTES {
            // `NoContent` (a 204) names the absence of a body.
            let response = Some(r.response.1).filter(|n| *n != "NoContent");
            for name in r.request.into_iter().chain(response) {
                assert!(
                    schemas[name].is_object(),
                    "{} {} names {name}, which has no schema",
                    r.method,
                    r.path
                );
            }
        }
    }

    #[test]
    fn every_object_with_named_properties_is_closed() {
        fn walk(schema: &Value, at: &str) {
            match schema {
                Value::Object(map) => {
                    if map.contains_key("properties") {
                        let closed = map.get("additionalProperties") == Some(&Value::Bool(false));
                        assert!(closed, "{at} is open");
                    }
                    for (key, sub) in map {
                        walk(sub, &format!("{at}/{key}"));
                    }
                }
                Value::Array(items) => {
                    for (i, sub) in items.iter().enumerate() {
                        walk(sub, &format!("{at}/{i}"));
                    }
                }
                _ => {}
            }
        }
        walk(&document()["components"]["schemas"], "#/components/schemas");
    }
}

//! The consent ledger and the data-subject rights over HTTP (`/v1/consents`,
//! `/v1/subjects/{subject_ref}/...`): parse, call the use case, answer with a view. The
//! `subject_ref` comes percent-encoded in the path; it is never logged (the request log
//! keeps route templates only, and the audit log names a subject by a prefix of its keyed
//! lookup).

use bytes::Bytes;
use http::StatusCode;
use schemars::JsonSchema;
use serde::Deserialize;

use crate::domain::audit::{AddressPrefix, AuditAction};
use crate::domain::consent::{CollectionMethod, ConsentAction};
use crate::domain::gateway::Principal;
use crate::domain::use_cases::consents::NewConsent;
use crate::domain::use_cases::subjects::Rectification;

use super::problem::Problem;
use super::routes::{enum_name, json, json_body, path_segment};
use super::{AppState, Response, audit};

/// `POST /v1/consents` body.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "NewConsent")]
pub(super) struct CreateConsent {
    /// Your opaque reference for the end user (not personal data), as on their orders.
    subject_ref: String,
    /// What the consent is for, e.g. `ekyc` or `marketing` (a-z, 0-9, `_`, `-`).
    purpose: String,
    /// `granted` or `withdrawn`.
    action: ConsentAction,
    /// The version of the notice the end user saw.
    notice_version: String,
    /// SHA-256 of that notice, 64 lower-case hex digits.
    notice_hash: String,
    /// Where the notice is published.
    #[serde(default)]
    policy_url: Option<String>,
    /// How it was collected.
    collection_method: CollectionMethod,
    /// The notice's language (BCP 47, e.g. `en`).
    #[serde(default)]
    language: Option<String>,
    /// The jurisdiction it was collected under (e.g. `EU`).
    #[serde(default)]
    jurisdiction: Option<String>,
    /// When the end user gave or withdrew it, ms since the epoch; now when left out.
    #[serde(default)]
    collected_at_ms: Option<u64>,
}

/// `POST /v1/subjects/{subject_ref}/rectify` body: what replaces what on every record of
/// the subject.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "SubjectRectification")]
pub(super) struct Rectify {
    /// A new reference for the subject: its records move to it.
    #[serde(default)]
    subject_ref: Option<String>,
    /// New metadata for every order of the subject; `null` clears it.
    #[serde(default, deserialize_with = "present")]
    #[schemars(with = "Option<serde_json::Map<String, serde_json::Value>>")]
    metadata: Option<Option<serde_json::Map<String, serde_json::Value>>>,
}

/// A field that is present (`Some`), even as `null` (`Some(None)`).
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

pub(super) async fn record_consent(
    state: &AppState,
    who: &Principal,
    req: http::Request<Bytes>,
    at: &AddressPrefix,
) -> Result<Response, Problem> {
    let (_, _, body): (_, _, CreateConsent) = json_body(req)?;
    let new = NewConsent {
        subject_ref: body.subject_ref,
        purpose: body.purpose,
        action: body.action,
        notice_version: body.notice_version,
        notice_hash: body.notice_hash,
        policy_url: body.policy_url,
        collection_method: body.collection_method,
        language: body.language,
        jurisdiction: body.jurisdiction,
        collected_at_ms: body.collected_at_ms,
    };
    let view = state.gateway.record_consent(who, new).await?;
    // The purpose and the action are the reseller's labels, not the subject's data; the
    // subject is not named at all.
    let recorded = audit::by(who, AuditAction::ConsentRecorded, at)
        .target(view.id)
        .details(format!("{} {}", view.purpose, enum_name(&view.action)));
    audit::record_then_flush(state, recorded).await;
    Ok(json(StatusCode::CREATED, &view))
}

pub(super) async fn subject_consents(
    state: &AppState,
    who: &Principal,
    subject_ref: &str,
) -> Result<Response, Problem> {
    let subject_ref = path_segment(subject_ref);
    Ok(json(
        StatusCode::OK,
        &state.gateway.subject_consents(who, &subject_ref).await?,
    ))
}

pub(super) async fn export(
    state: &AppState,
    who: &Principal,
    subject_ref: &str,
    at: &AddressPrefix,
) -> Result<Response, Problem> {
    let subject_ref = path_segment(subject_ref);
    let export = state.gateway.export_subject(who, &subject_ref).await?;
    let exported = audit::by(who, AuditAction::SubjectExported, at);
    let exported = state.gateway.about_subject(who, &subject_ref, exported);
    audit::record_then_flush(state, exported).await;
    Ok(json(StatusCode::OK, &export))
}

pub(super) async fn rectify(
    state: &AppState,
    who: &Principal,
    req: http::Request<Bytes>,
    subject_ref: &str,
    at: &AddressPrefix,
) -> Result<Response, Problem> {
    let (_, _, body): (_, _, Rectify) = json_body(req)?;
    let change = Rectification {
        subject_ref: body.subject_ref,
        metadata: body.metadata.map(|m| m.map(serde_json::Value::Object)),
    };
    // Which fields changed, never their values.
    let fields: Vec<&str> = [
        change.subject_ref.as_ref().map(|_| "subject_ref"),
        change.metadata.as_ref().map(|_| "metadata"),
    ]
    .into_iter()
    .flatten()
    .collect();
    let subject_ref = path_segment(subject_ref);
    let done = state
        .gateway
        .rectify_subject(who, &subject_ref, change)
        .await?;
    let rectified = audit::by(who, AuditAction::SubjectRectified, at)
        .details(format!("replaced: {}", fields.join(", ")));
    let rectified = state.gateway.about_subject(who, &subject_ref, rectified);
    audit::record_then_flush(state, rectified).await;
    Ok(json(StatusCode::OK, &done))
}

/// `erase`, `restrict`, `unrestrict` or `object`: no body.
pub(super) async fn act(
    state: &AppState,
    who: &Principal,
    subject_ref: &str,
    action: &str,
    at: &AddressPrefix,
) -> Result<Response, Problem> {
    let subject_ref = path_segment(subject_ref);
    let g = &state.gateway;
    let (done, recorded) = match action {
        "erase" => (
            g.erase_subject(who, &subject_ref).await?,
            AuditAction::SubjectErased,
        ),
        "restrict" => (
            g.restrict_subject(who, &subject_ref, true).await?,
            AuditAction::SubjectRestricted,
        ),
        "unrestrict" => (
            g.restrict_subject(who, &subject_ref, false).await?,
            AuditAction::SubjectUnrestricted,
        ),
        _ => (
            g.object_subject(who, &subject_ref).await?,
            AuditAction::SubjectObjected,
        ),
    };
    let entry = g.about_subject(who, &subject_ref, audit::by(who, recorded, at));
    audit::record_then_flush(state, entry).await;
    Ok(json(StatusCode::OK, &done))
}

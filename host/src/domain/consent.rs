//! The consent ledger: per subject and purpose, every grant and withdrawal a reseller
//! collected, append-only (a withdrawal is a new event; nothing is overwritten), with the
//! notice the subject saw (version and hash), how and when it was collected, and which
//! key recorded it (P12). The subject is named by its keyed lookup; the `subject_ref`
//! itself is kept only sealed under the subject's data key, so erasing the subject makes
//! its consent history unreadable too.
//!
//! Processing that needs consent asks [`ConsentState::granted`]: an eKYC session for a
//! subject without `ekyc` consent is refused.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::ids::{ConsentId, KeyId, ResellerId};
use super::personal::{SubjectLookup, b64};

/// What a consent event does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConsentAction {
    /// The subject agreed to the purpose.
    Granted,
    /// The subject took it back.
    Withdrawn,
}

/// How the consent was collected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CollectionMethod {
    /// A form on a web page.
    WebForm,
    /// A screen in a mobile app.
    InApp,
    /// A signed paper form.
    Paper,
    /// Said to a person (recorded by them).
    Verbal,
    /// A reply by e-mail.
    Email,
    /// Another system, through an API.
    Api,
}

impl CollectionMethod {
    /// Kantara's wording.
    fn receipt_name(self) -> &'static str {
        match self {
            CollectionMethod::WebForm => "web form",
            CollectionMethod::InApp => "in-app",
            CollectionMethod::Paper => "paper form",
            CollectionMethod::Verbal => "verbal",
            CollectionMethod::Email => "e-mail",
            CollectionMethod::Api => "API",
        }
    }
}

/// One event of the ledger, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentEvent {
    /// Id; events sort by it in the order they were recorded.
    pub id: ConsentId,
    /// The reseller that collected it.
    pub reseller: ResellerId,
    /// The subject, by its keyed lookup.
    pub subject: SubjectLookup,
    /// The purpose, e.g. `ekyc`, `marketing`.
    pub purpose: String,
    /// Granted or withdrawn.
    pub action: ConsentAction,
    /// The version of the notice the subject saw.
    pub notice_version: String,
    /// SHA-256 of that notice, hex.
    pub notice_hash: String,
    /// Where the notice (privacy policy) is published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_url: Option<String>,
    /// How it was collected.
    pub collection_method: CollectionMethod,
    /// Language of the notice (BCP 47), if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    /// Jurisdiction the consent was collected under (e.g. `EU`), if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jurisdiction: Option<String>,
    /// When the subject gave or withdrew it, ms since the epoch.
    pub collected_at_ms: u64,
    /// When the gateway recorded it.
    pub recorded_at_ms: u64,
    /// The API key that recorded it.
    pub recorded_by: KeyId,
    /// The `subject_ref`, sealed under the subject's data key, bound to the event id.
    #[serde(with = "b64")]
    pub sealed_subject_ref: Vec<u8>,
}

/// Most events one subject's history may hold; more are refused.
pub const MAX_HISTORY: usize = 1000;
/// Longest purpose name.
pub const MAX_PURPOSE: usize = 40;
/// Longest notice version, language or jurisdiction.
pub const MAX_LABEL: usize = 64;

/// Check a purpose name: 1 to [`MAX_PURPOSE`] of `a-z 0-9 _ -`, starting with a letter.
pub fn valid_purpose(purpose: &str) -> Result<(), String> {
    let ok = !purpose.is_empty()
        && purpose.len() <= MAX_PURPOSE
        && purpose.starts_with(|c: char| c.is_ascii_lowercase())
        && purpose
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "must be 1 to {MAX_PURPOSE} characters of a-z, 0-9, _ and -, starting with a letter"
        ))
    }
}

/// Check a notice hash: 64 lower-case hex digits (SHA-256).
pub fn valid_notice_hash(hash: &str) -> Result<(), String> {
    if hash.len() == 64 && hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(())
    } else {
        Err("must be the SHA-256 of the notice: 64 lower-case hex digits".into())
    }
}

/// Check a short label (notice version, language, jurisdiction).
pub fn valid_label(label: &str) -> Result<(), String> {
    if !label.is_empty() && label.len() <= MAX_LABEL && !label.chars().any(char::is_control) {
        Ok(())
    } else {
        Err(format!("must be 1 to {MAX_LABEL} printable characters"))
    }
}

/// Where a subject stands on one purpose: the last event recorded for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct PurposeState {
    /// The purpose.
    pub purpose: String,
    /// Granted or withdrawn, by the last event.
    pub state: ConsentAction,
    /// When that event was collected.
    pub since_ms: u64,
    /// The notice version it was collected under.
    pub notice_version: String,
    /// The event.
    pub consent_id: ConsentId,
}

/// The current state of every purpose a subject's history names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsentState(BTreeMap<String, PurposeState>);

impl ConsentState {
    /// Fold a history (oldest first): the last event of each purpose wins.
    pub fn of(history: &[ConsentEvent]) -> ConsentState {
        let mut state = BTreeMap::new();
        for event in history {
            state.insert(
                event.purpose.clone(),
                PurposeState {
                    purpose: event.purpose.clone(),
                    state: event.action,
                    since_ms: event.collected_at_ms,
                    notice_version: event.notice_version.clone(),
                    consent_id: event.id,
                },
            );
        }
        ConsentState(state)
    }

    /// Whether `purpose` is granted now.
    pub fn granted(&self, purpose: &str) -> bool {
        self.0
            .get(purpose)
            .is_some_and(|p| p.state == ConsentAction::Granted)
    }

    /// Every purpose's state, by purpose name.
    pub fn purposes(&self) -> impl Iterator<Item = &PurposeState> {
        self.0.values()
    }
}

/// A consent receipt in the fields of the Kantara Initiative Consent Receipt
/// Specification v1.1: what a subject agreed to, with whom, under which notice. Built
/// from the ledger on request; it lists the purposes granted now.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConsentReceipt {
    /// Specification version: `KI-CR-v1.1.0`.
    pub version: String,
    /// Jurisdiction of the latest grant, if one was given.
    pub jurisdiction: String,
    /// When the latest grant was collected, seconds since the epoch.
    pub consent_timestamp: u64,
    /// How the latest grant was collected.
    pub collection_method: String,
    /// Unique per receipt content: `cr_` and the latest event's id.
    #[serde(rename = "consentReceiptID")]
    pub consent_receipt_id: String,
    /// Language of the latest grant's notice.
    pub language: String,
    /// The subject, as the reseller names it.
    pub pii_principal_id: String,
    /// Who decides on the processing: the reseller.
    pub pii_controllers: Vec<ReceiptController>,
    /// The latest grant's notice URL.
    pub policy_url: String,
    /// What the consent covers.
    pub services: Vec<ReceiptService>,
    /// Whether sensitive personal information is involved (identity documents, for eKYC:
    /// processed by the verification provider, never by the gateway).
    pub sensitive: bool,
    /// Categories of sensitive information.
    pub spi_cat: Vec<String>,
}

/// A controller in a receipt.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReceiptController {
    /// The controller's name.
    pub pii_controller: String,
    /// Whether it acts on behalf of another controller.
    pub on_behalf: bool,
    /// Its account id at this gateway.
    pub contact: String,
}

/// A service in a receipt.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReceiptService {
    /// The service's name.
    pub service: String,
    /// Its purposes the subject agreed to.
    pub purposes: Vec<ReceiptPurpose>,
}

/// A purpose in a receipt.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReceiptPurpose {
    /// The purpose name.
    pub purpose: String,
    /// Its category.
    pub purpose_category: Vec<String>,
    /// `EXPLICIT`: recorded from an affirmative act.
    pub consent_type: String,
    /// Categories of personal information it concerns.
    pub pii_category: Vec<String>,
    /// Whether it is the primary purpose of the service.
    pub primary_purpose: bool,
    /// When it ends.
    pub termination: String,
    /// Whether data goes to a third party for it.
    pub third_party_disclosure: bool,
    /// The notice version it was granted under.
    pub notice_version: String,
    /// The event that granted it.
    pub consent_id: ConsentId,
}

/// What the gateway knows of a purpose, for a receipt.
fn describe(purpose: &str) -> (&'static str, &'static [&'static str], bool) {
    match purpose {
        "ekyc" => (
            "Identity verification",
            &["identity documents (processed by the verification provider)"],
            true,
        ),
        "marketing" => ("Marketing", &["contact details"], false),
        "analytics" => ("Analytics", &["usage data"], false),
        _ => ("Other", &["as described in the notice"], false),
    }
}

/// The receipt of a subject's `history` (oldest first) with `controller`, for
/// `subject_ref`; `None` when nothing is granted now.
pub fn receipt(
    history: &[ConsentEvent],
    subject_ref: &str,
    controller: ReceiptController,
) -> Option<ConsentReceipt> {
    let state = ConsentState::of(history);
    let granted: Vec<&PurposeState> = state
        .purposes()
        .filter(|p| p.state == ConsentAction::Granted)
        .collect();
    let latest = history
        .iter()
        .filter(|e| granted.iter().any(|g| g.consent_id == e.id))
        .max_by_key(|e| e.id)?;
    let purposes: Vec<ReceiptPurpose> = granted
        .iter()
        .map(|g| {
            let (category, pii, third_party) = describe(&g.purpose);
            ReceiptPurpose {
                purpose: g.purpose.clone(),
                purpose_category: vec![category.into()],
                consent_type: "EXPLICIT".into(),
                pii_category: pii.iter().map(|s| s.to_string()).collect(),
                primary_purpose: false,
                termination: "until withdrawn".into(),
                third_party_disclosure: third_party,
                notice_version: g.notice_version.clone(),
                consent_id: g.consent_id,
            }
        })
        .collect();
    let sensitive = granted.iter().any(|g| g.purpose == "ekyc");
    Some(ConsentReceipt {
        version: "KI-CR-v1.1.0".into(),
        jurisdiction: latest.jurisdiction.clone().unwrap_or_default(),
        consent_timestamp: latest.collected_at_ms / 1000,
        collection_method: latest.collection_method.receipt_name().into(),
        consent_receipt_id: format!("cr_{}", latest.id.0.to_string().to_lowercase()),
        language: latest.language.clone().unwrap_or_default(),
        pii_principal_id: subject_ref.into(),
        pii_controllers: vec![controller],
        policy_url: latest.policy_url.clone().unwrap_or_default(),
        services: vec![ReceiptService {
            service: "eSIM".into(),
            purposes,
        }],
        sensitive,
        spi_cat: if sensitive {
            vec!["identity documents".into()]
        } else {
            Vec::new()
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(purpose: &str, action: ConsentAction, at: u64) -> ConsentEvent {
        ConsentEvent {
            id: ConsentId::new(),
            reseller: ResellerId::new(),
            subject: SubjectLookup([7; 32]),
            purpose: purpose.into(),
            action,
            notice_version: format!("v{at}"),
            notice_hash: "ab".repeat(32),
            policy_url: Some("https://reseller.example/privacy".into()),
            collection_method: CollectionMethod::WebForm,
            language: Some("en".into()),
            jurisdiction: Some("EU".into()),
            collected_at_ms: at,
            recorded_at_ms: at,
            recorded_by: KeyId::new(),
            sealed_subject_ref: vec![1, 2, 3],
        }
    }

    fn controller() -> ReceiptController {
        ReceiptController {
            pii_controller: "Reseller".into(),
            on_behalf: false,
            contact: "rsl_x".into(),
        }
    }

    #[test]
    fn the_last_event_of_a_purpose_decides_and_purposes_stay_apart() {
        let history = vec![
            event("ekyc", ConsentAction::Granted, 1_000),
            event("marketing", ConsentAction::Granted, 2_000),
            event("ekyc", ConsentAction::Withdrawn, 3_000),
        ];
        let state = ConsentState::of(&history);
        assert!(!state.granted("ekyc"));
        assert!(state.granted("marketing"));
        assert!(!state.granted("analytics"));
        let regranted = [
            history.clone(),
            vec![event("ekyc", ConsentAction::Granted, 4_000)],
        ]
        .concat();
        assert!(ConsentState::of(&regranted).granted("ekyc"));
    }

    #[test]
    fn a_receipt_lists_what_is_granted_now_in_kantara_fields() {
        let history = vec![
            event("ekyc", ConsentAction::Granted, 1_000),
            event("marketing", ConsentAction::Granted, 2_000),
            event("marketing", ConsentAction::Withdrawn, 3_000),
        ];
        let receipt = receipt(&history, "user-1", controller()).unwrap();
        let json = serde_json::to_value(&receipt).unwrap();
        for field in [
            "version",
            "jurisdiction",
            "consentTimestamp",
            "collectionMethod",
            "consentReceiptID",
            "language",
            "piiPrincipalId",
            "piiControllers",
            "policyUrl",
            "services",
            "sensitive",
            "spiCat",
        ] {
            assert!(json.get(field).is_some(), "{field} missing from {json}");
        }
        assert_eq!(json["piiPrincipalId"], "user-1");
        assert_eq!(json["consentTimestamp"], 1);
        let purposes = &json["services"][0]["purposes"];
        assert_eq!(purposes.as_array().unwrap().len(), 1, "{purposes}");
        assert_eq!(purposes[0]["purpose"], "ekyc");
        assert_eq!(json["sensitive"], true);
        let all_withdrawn = [
            history,
            vec![event("ekyc", ConsentAction::Withdrawn, 5_000)],
        ]
        .concat();
        assert!(super::receipt(&all_withdrawn, "user-1", controller()).is_none());
    }

    #[test]
    fn purposes_and_notice_hashes_are_checked() {
        assert!(valid_purpose("ekyc").is_ok());
        assert!(valid_purpose("marketing_email-2").is_ok());
        for bad in ["", "Ekyc", "1x", "a b", &"a".repeat(MAX_PURPOSE + 1)] {
            assert!(valid_purpose(bad).is_err(), "{bad}");
        }
        assert!(valid_notice_hash(&"0f".repeat(32)).is_ok());
        assert!(valid_notice_hash(&"0F".repeat(32)).is_err());
        assert!(valid_notice_hash("abc").is_err());
    }
}

//! eKYC by redirect and the consent ledger, through the real gateway, the real sandbox
//! plugin and a verification-provider simulator on a loopback port (modelled on a hosted
//! identity-verification flow: create a session, redirect the end user, receive a decision
//! callback signed with HMAC-SHA256 over the raw body).
//!
//! P2: the gateway never collects identity data: the provider's callback carries a name,
//! a date of birth and a document number (a canary), and none of it reaches the data
//! directory or the log. P12: consent is recorded append-only, withdrawable, and checked
//! before an eKYC session opens.

use std::time::{Duration, Instant};

use simgate_test_support::{
    Decision, Gateway, GatewayBuilder, KycProvider, Resp, Value, json, stored_under, unique_key,
};

const BIN: &str = env!("CARGO_BIN_EXE_simgate");
const PROVIDER_KEY: &str = "prov-api-key-7c1e";
const PROVIDER_SECRET: &str = "prov-callback-secret-93ab";
/// The sandbox product that needs eKYC.
const KYC_PRODUCT: &str = "sandbox:SBX-CN-3GB-15D";

struct Setup {
    gw: Gateway,
    provider: KycProvider,
    key: String,
}

/// A gateway whose sandbox runs eKYC at the simulator; sessions last `session_secs`.
fn setup(session_secs: u64) -> Setup {
    setup_with(session_secs, "")
}

/// [`setup`] with a gateway config file.
fn setup_with(session_secs: u64, config: &str) -> Setup {
    let provider = KycProvider::start(PROVIDER_KEY, PROVIDER_SECRET);
    let grants = format!(
        r#"
[plugins.sandbox]
outbound = ["http://127.0.0.1:*"]
allow_private_addresses = true
secrets = ["KYC_PROVIDER_API_KEY", "KYC_PROVIDER_SECRET"]
secret_hosts = {{ KYC_PROVIDER_API_KEY = ["http://127.0.0.1:*"] }}
config = {{ kyc_provider_url = "{}", kyc_session_seconds = "{session_secs}" }}
"#,
        provider.base()
    );
    let gw = GatewayBuilder::new(BIN)
        .grants(&grants)
        .secrets(&format!(
            "[sandbox]\nKYC_PROVIDER_API_KEY = \"{PROVIDER_KEY}\"\nKYC_PROVIDER_SECRET = \"{PROVIDER_SECRET}\"\n"
        ))
        .capture_log()
        .config(config)
        .start();
    provider.set_callback_url(&format!("{}/v1/inbound/sandbox/ekyc", gw.base));
    let (_, key) = gw.new_reseller(0, Some(100_000));
    Setup { gw, provider, key }
}

impl Setup {
    fn consent(&self, subject: &str, purpose: &str, action: &str) -> Resp {
        self.gw.call(
            "POST",
            "/v1/consents",
            Some(&self.key),
            Some(&json!({
                "subject_ref": subject,
                "purpose": purpose,
                "action": action,
                "notice_version": "2026-03",
                "notice_hash": "5e".repeat(32),
                "policy_url": "https://reseller.example/privacy",
                "collection_method": "web_form",
                "language": "en",
                "jurisdiction": "EU",
            })),
        )
    }

    /// An order for the product that needs eKYC: accepted, its price held, waiting.
    fn kyc_order(&self, subject: &str) -> Value {
        let r = self.gw.post_idem_as(
            &self.key,
            "/v1/orders",
            &json!({"product_id": KYC_PRODUCT, "subject_ref": subject}),
            &unique_key(),
        );
        assert_eq!(r.status, 201, "{:?}", r.json);
        assert_eq!(r.json["status"], "awaiting_kyc", "{:?}", r.json);
        r.json
    }

    fn open_session(&self, order_id: &str) -> Resp {
        self.gw.call(
            "POST",
            "/v1/ekyc/sessions",
            Some(&self.key),
            Some(&json!({"order_id": order_id, "return_url": "https://reseller.example/kyc-done"})),
        )
    }

    /// The provider's id of the gateway's session `session_id`.
    fn provider_session(&self, session_id: &str) -> String {
        self.provider
            .sessions()
            .into_iter()
            .find(|s| s.vendor_data == session_id)
            .unwrap_or_else(|| panic!("the provider has no session for {session_id}"))
            .id
    }

    fn order(&self, id: &str) -> Value {
        let r = self
            .gw
            .call("GET", &format!("/v1/orders/{id}"), Some(&self.key), None);
        assert_eq!(r.status, 200, "{:?}", r.json);
        r.json
    }

    /// Order `id` once it is final (fulfilment runs as a job after a decision).
    fn settled(&self, id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let order = self.order(id);
            if ["fulfilled", "failed", "cancelled"].contains(&order["status"].as_str().unwrap()) {
                return order;
            }
            assert!(Instant::now() < deadline, "order stuck: {order:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn p2_ekyc_happens_at_the_provider_and_the_gateway_keeps_only_ids_status_and_times() {
    let s = setup(3600);
    let canary = format!("IDENTITY-CANARY-{}", unique_key());
    assert_eq!(s.consent("traveller-1", "ekyc", "granted").status, 201);
    let order = s.kyc_order("traveller-1");
    let order_id = order["id"].as_str().unwrap();
    let price = order["total"]["minor"].as_i64().unwrap();
    assert_eq!(s.gw.balance_of(&s.key), (100_000 - price, price), "held");

    let session = s.open_session(order_id);
    assert_eq!(session.status, 201, "{:?}", session.json);
    let session_id = session.json["id"].as_str().unwrap().to_string();
    assert_eq!(session.json["status"], "pending");
    assert_eq!(session.json["order_id"], order_id);
    let redirect = session.json["redirect_url"].as_str().unwrap();
    assert!(
        redirect.starts_with(&s.provider.base()),
        "the end user goes to the provider: {redirect}"
    );
    // Asking again answers the same session; the provider was asked once.
    let again = s.open_session(order_id);
    assert_eq!(again.status, 200, "{:?}", again.json);
    assert_eq!(again.json["id"], session_id.as_str());
    assert_eq!(s.provider.sessions().len(), 1);
    // The provider got the way back and the session's id, and the key the host filled in.
    let sent = s
        .provider
        .sessions()
        .into_iter()
        .find(|p| p.vendor_data == session_id)
        .unwrap();
    assert_eq!(sent.header("x-auth-client"), PROVIDER_KEY);
    assert_eq!(
        sent.json(),
        json!({"verification": {"callback": "https://reseller.example/kyc-done", "vendorData": session_id}})
    );
    assert!(!String::from_utf8_lossy(&sent.body).contains("traveller-1"));

    // The provider decides; its callback carries identity data the gateway must drop.
    let provider_id = s.provider_session(&session_id);
    assert_eq!(
        s.provider.decide(&provider_id, Decision::Approved, &canary),
        200
    );
    let done = s.settled(order_id);
    assert_eq!(done["status"], "fulfilled", "{done:?}");
    assert_eq!(done["ekyc"]["status"], "approved");
    assert!(
        done["ekyc"]["redirect_url"].is_null(),
        "dropped once decided"
    );
    assert_eq!(s.gw.balance_of(&s.key), (100_000 - price, 0), "captured");
    let read = s.gw.call(
        "GET",
        &format!("/v1/ekyc/sessions/{session_id}"),
        Some(&s.key),
        None,
    );
    assert_eq!(read.status, 200);
    let mut fields: Vec<&str> = read
        .json
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    fields.sort();
    assert_eq!(
        fields,
        [
            "created_at_ms",
            "expires_at_ms",
            "id",
            "order_id",
            "redirect_url",
            "status",
            "updated_at_ms"
        ]
    );
    // Resellers hear of it as an event too.
    let events = s.gw.call(
        "GET",
        "/v1/events?type=ekyc_session.status_changed",
        Some(&s.key),
        None,
    );
    assert_eq!(
        events.json["data"][0]["data"]["status"], "approved",
        "{:?}",
        events.json
    );

    let log = s.gw.log();
    assert!(!log.contains(&canary), "the canary reached the log");
    let (status, dir) = s.gw.terminate();
    assert!(status.success());
    let files = stored_under(dir.path());
    for (path, bytes) in &files {
        assert!(
            !bytes.windows(canary.len()).any(|w| w == canary.as_bytes()),
            "the provider's identity data reached {}",
            path.display()
        );
    }
}

#[test]
fn a_rejected_or_expired_verification_fails_the_order_and_releases_its_hold() {
    let s = setup(3600);
    assert_eq!(s.consent("traveller-2", "ekyc", "granted").status, 201);
    for (decision, code) in [
        (Decision::Declined, "ekyc_rejected"),
        (Decision::Expired, "ekyc_rejected"),
    ] {
        let order = s.kyc_order("traveller-2");
        let id = order["id"].as_str().unwrap();
        let session = s.open_session(id);
        assert_eq!(session.status, 201, "{:?}", session.json);
        let provider_id = s.provider_session(session.json["id"].as_str().unwrap());
        assert_eq!(s.provider.decide(&provider_id, decision, "x"), 200);
        let failed = s.settled(id);
        assert_eq!(failed["status"], "failed");
        assert_eq!(failed["failure"]["code"], code, "{failed:?}");
        assert_eq!(failed["ekyc"]["status"], "rejected");
        assert_eq!(s.gw.balance_of(&s.key), (100_000, 0), "released");
        // A decision after the fact changes nothing.
        assert_eq!(
            s.provider.decide(&provider_id, Decision::Approved, "x"),
            200
        );
        assert_eq!(s.order(id)["status"], "failed");
    }
}

#[test]
fn a_session_not_decided_in_time_expires_and_releases_the_hold() {
    let s = setup(1);
    assert_eq!(s.consent("traveller-3", "ekyc", "granted").status, 201);
    let order = s.kyc_order("traveller-3");
    let id = order["id"].as_str().unwrap();
    let session = s.open_session(id);
    assert_eq!(session.status, 201, "{:?}", session.json);
    let failed = s.settled(id);
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["failure"]["code"], "ekyc_expired");
    assert_eq!(failed["ekyc"]["status"], "expired");
    assert_eq!(s.gw.balance_of(&s.key), (100_000, 0));
}

#[test]
fn a_callback_with_a_bad_signature_or_none_changes_nothing() {
    let s = setup(3600);
    assert_eq!(s.consent("traveller-4", "ekyc", "granted").status, 201);
    let order = s.kyc_order("traveller-4");
    let id = order["id"].as_str().unwrap();
    let session = s.open_session(id);
    let session_id = session.json["id"].as_str().unwrap();
    let provider_id = s.provider_session(session_id);
    let held = s.gw.balance_of(&s.key);

    assert_eq!(
        s.provider
            .decide_with_bad_signature(&provider_id, Decision::Approved, "x"),
        400
    );
    let body = s
        .provider
        .decision_body(&provider_id, Decision::Approved, "x");
    assert_eq!(s.provider.post_callback(&body, None), 400, "unsigned");
    // A forged sandbox-format callback without a signature is refused in provider mode.
    let forged = json!({"session_ref": session_id, "status": "approved"}).to_string();
    let r = s.gw.raw(
        "POST",
        "/v1/inbound/sandbox/ekyc",
        None,
        &[],
        Some(forged.into_bytes()),
        Some("application/json"),
    );
    assert_eq!(r.status, 400, "{:?}", r.json);
    assert_eq!(r.json["code"], "inbound_rejected");
    // An oversized body is refused before the plugin sees it.
    let big = vec![b'x'; 70 * 1024];
    let r = s.gw.raw(
        "POST",
        "/v1/inbound/sandbox/ekyc",
        None,
        &[],
        Some(big),
        None,
    );
    assert_eq!(r.status, 413, "{:?}", r.json);
    // An unknown plugin is not found.
    let r = s.gw.raw(
        "POST",
        "/v1/inbound/nope/ekyc",
        None,
        &[],
        Some(b"{}".to_vec()),
        None,
    );
    assert_eq!(r.status, 404);

    let after = s.order(id);
    assert_eq!(after["status"], "awaiting_kyc", "{after:?}");
    assert_eq!(after["ekyc"]["status"], "pending");
    assert_eq!(s.gw.balance_of(&s.key), held);
    // The genuine decision still works.
    assert_eq!(
        s.provider.decide(&provider_id, Decision::Approved, "x"),
        200
    );
    assert_eq!(s.settled(id)["status"], "fulfilled");
}

#[test]
fn p12_consent_is_recorded_append_only_withdrawable_and_checked_before_ekyc() {
    let s = setup(3600);
    // No consent yet: the session is refused and nothing reaches the provider.
    let order = s.kyc_order("traveller-5");
    let id = order["id"].as_str().unwrap();
    let refused = s.open_session(id);
    assert_eq!(refused.status, 409, "{:?}", refused.json);
    assert_eq!(refused.json["code"], "consent_required");
    assert!(s.provider.sessions().is_empty());

    let granted = s.consent("traveller-5", "ekyc", "granted");
    assert_eq!(granted.status, 201, "{:?}", granted.json);
    assert_eq!(s.consent("traveller-5", "marketing", "granted").status, 201);
    assert_eq!(
        s.consent("traveller-5", "marketing", "withdrawn").status,
        201
    );
    let consents = s.gw.call(
        "GET",
        "/v1/subjects/traveller-5/consents",
        Some(&s.key),
        None,
    );
    assert_eq!(consents.status, 200, "{:?}", consents.json);
    let history: Vec<(String, String)> = consents.json["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["purpose"].as_str().unwrap().into(),
                e["action"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        history,
        [
            ("ekyc".to_string(), "granted".to_string()),
            ("marketing".into(), "granted".into()),
            ("marketing".into(), "withdrawn".into()),
        ],
        "append-only, oldest first"
    );
    let state = |purpose: &str| {
        consents.json["purposes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["purpose"] == purpose)
            .map(|p| p["state"].as_str().unwrap().to_string())
    };
    assert_eq!(state("ekyc").as_deref(), Some("granted"));
    assert_eq!(state("marketing").as_deref(), Some("withdrawn"));
    let first = &consents.json["history"][0];
    assert_eq!(first["notice_version"], "2026-03");
    assert_eq!(first["notice_hash"], "5e".repeat(32));
    assert_eq!(first["collection_method"], "web_form");
    assert!(first["recorded_by"].as_str().unwrap().starts_with("key_"));
    // The receipt, in the Kantara consent receipt's fields, lists what is granted now.
    let receipt = &consents.json["receipt"];
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
        assert!(
            !receipt[field].is_null(),
            "receipt lacks {field}: {receipt:?}"
        );
    }
    assert_eq!(receipt["piiPrincipalId"], "traveller-5");
    let purposes: Vec<&str> = receipt["services"][0]["purposes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["purpose"].as_str().unwrap())
        .collect();
    assert_eq!(purposes, ["ekyc"]);

    // With consent the session opens; after withdrawal a new one is refused again.
    assert_eq!(s.open_session(id).status, 201);
    assert_eq!(s.consent("traveller-5", "ekyc", "withdrawn").status, 201);
    let second = s.kyc_order("traveller-5");
    let refused = s.open_session(second["id"].as_str().unwrap());
    assert_eq!(
        refused.json["code"], "consent_required",
        "{:?}",
        refused.json
    );
    let after = s.gw.call(
        "GET",
        "/v1/subjects/traveller-5/consents",
        Some(&s.key),
        None,
    );
    assert_eq!(
        after.json["history"].as_array().unwrap().len(),
        4,
        "nothing overwritten"
    );
    assert!(after.json["receipt"].is_null(), "nothing granted now");

    // Bad input is the client's mistake.
    for (body, field) in [
        (
            json!({"subject_ref": "t", "purpose": "Bad Purpose", "action": "granted", "notice_version": "1", "notice_hash": "5e".repeat(32), "collection_method": "web_form"}),
            "/purpose",
        ),
        (
            json!({"subject_ref": "t", "purpose": "ekyc", "action": "granted", "notice_version": "1", "notice_hash": "nope", "collection_method": "web_form"}),
            "/notice_hash",
        ),
        (
            json!({"subject_ref": "", "purpose": "ekyc", "action": "granted", "notice_version": "1", "notice_hash": "5e".repeat(32), "collection_method": "web_form"}),
            "/subject_ref",
        ),
    ] {
        let r = s.gw.call("POST", "/v1/consents", Some(&s.key), Some(&body));
        assert_eq!(r.status, 422, "{:?}", r.json);
        assert_eq!(r.json["pointer"], field, "{:?}", r.json);
    }
    let r = s.gw.call(
        "POST",
        "/v1/consents",
        Some(&s.key),
        Some(&json!({"subject_ref": "t", "purpose": "ekyc", "action": "maybe", "notice_version": "1", "notice_hash": "5e".repeat(32), "collection_method": "web_form"})),
    );
    assert_eq!(r.status, 400, "{:?}", r.json);
    assert_eq!(r.json["pointer"], "/action", "{:?}", r.json);
}

#[test]
fn resellers_never_see_each_others_sessions_or_subjects() {
    let s = setup(3600);
    assert_eq!(s.consent("shared-name", "ekyc", "granted").status, 201);
    let order = s.kyc_order("shared-name");
    let id = order["id"].as_str().unwrap();
    let session = s.open_session(id);
    let session_id = session.json["id"].as_str().unwrap();
    let (_, other) = s.gw.new_reseller(0, Some(100_000));
    let peek = s.gw.call(
        "GET",
        &format!("/v1/ekyc/sessions/{session_id}"),
        Some(&other),
        None,
    );
    assert_eq!(peek.status, 404);
    let take = s.gw.call(
        "POST",
        "/v1/ekyc/sessions",
        Some(&other),
        Some(&json!({"order_id": id, "return_url": "https://evil.example/"})),
    );
    assert_eq!(take.status, 404, "{:?}", take.json);
    // The other reseller's subject of the same name is another person, with no consent.
    let theirs = s.gw.call(
        "GET",
        "/v1/subjects/shared-name/consents",
        Some(&other),
        None,
    );
    assert_eq!(theirs.status, 200);
    assert!(theirs.json["history"].as_array().unwrap().is_empty());
    let their_order = s.gw.post_idem_as(
        &other,
        "/v1/orders",
        &json!({"product_id": KYC_PRODUCT, "subject_ref": "shared-name"}),
        &unique_key(),
    );
    let refused = s.gw.call(
        "POST",
        "/v1/ekyc/sessions",
        Some(&other),
        Some(&json!({"order_id": their_order.json["id"], "return_url": "https://b.example/"})),
    );
    assert_eq!(
        refused.json["code"], "consent_required",
        "{:?}",
        refused.json
    );
}

#[test]
fn a_flood_of_callbacks_is_rate_limited_per_plugin_and_orders_keep_flowing() {
    let s = setup_with(
        3600,
        "[http]\ninbound_rate_per_second = 0.1\ninbound_rate_burst = 3.0\n",
    );
    let forged = |n: usize| {
        s.gw.raw(
            "POST",
            "/v1/inbound/sandbox/ekyc",
            None,
            &[("x-hmac-signature", "00")],
            Some(format!("{{\"n\": {n}}}").into_bytes()),
            Some("application/json"),
        )
    };
    let statuses: Vec<u16> = (0..5).map(|n| forged(n).status).collect();
    assert_eq!(
        &statuses[..3],
        [400, 400, 400],
        "the burst reaches the plugin"
    );
    let limited = forged(5);
    assert_eq!(limited.status, 429, "{:?}", limited.json);
    assert!(limited.header("retry-after").is_some());
    // Reseller traffic is not held up by it.
    let order = s.gw.post_idem_as(
        &s.key,
        "/v1/orders",
        &json!({"product_id": "sandbox:SBX-US-5GB-30D"}),
        &unique_key(),
    );
    assert_eq!(order.json["status"], "fulfilled", "{:?}", order.json);
}

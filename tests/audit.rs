//! P7 (security logs readable by authorised administrators only) and P13 (security
//! activity logs: sign-ins, checkout and payment events, IP addresses), over HTTP against
//! the real binary: failed sign-ins, keys, credits, orders and plugin loads land in a
//! hash-chained audit log with addresses cut to their network; only admin keys can read
//! it; and `simgate audit verify` names the first entry edited, inserted or deleted in
//! the database behind the gateway's back.

use std::path::Path;
use std::process::Command;

use simgate::domain::audit::{Actor, AuditAction, AuditEntry, GENESIS, NewAuditEntry, PluginId};
use simgate_test_support::{
    Gateway, GatewayBuilder, KycProvider, Value, json, on_postgres, unique_key,
};

fn gateway() -> Gateway {
    GatewayBuilder::new(env!("CARGO_BIN_EXE_simgate")).start()
}

/// A gateway whose sandbox runs eKYC at a provider simulator (as `tests/ekyc.rs` sets it
/// up), and the simulator.
fn gateway_with_ekyc() -> (Gateway, KycProvider) {
    let (api_key, secret) = ("prov-api-key-audit", "prov-callback-secret-audit");
    let provider = KycProvider::start(api_key, secret);
    let grants = format!(
        r#"
[plugins.sandbox]
outbound = ["http://127.0.0.1:*"]
allow_private_addresses = true
secrets = ["KYC_PROVIDER_API_KEY", "KYC_PROVIDER_SECRET"]
secret_hosts = {{ KYC_PROVIDER_API_KEY = ["http://127.0.0.1:*"] }}
config = {{ kyc_provider_url = "{}", kyc_session_seconds = "600" }}
"#,
        provider.base()
    );
    let gw = GatewayBuilder::new(env!("CARGO_BIN_EXE_simgate"))
        .grants(&grants)
        .secrets(&format!(
            "[sandbox]\nKYC_PROVIDER_API_KEY = \"{api_key}\"\nKYC_PROVIDER_SECRET = \"{secret}\"\n"
        ))
        .start();
    provider.set_callback_url(&format!("{}/v1/inbound/sandbox/ekyc", gw.base));
    (gw, provider)
}

/// The audit log as the admin reads it (`query` without the `?`), oldest first.
fn audit_log(gw: &Gateway, query: &str) -> Vec<Value> {
    let r = gw.call(
        "GET",
        &format!("/v1/admin/audit?limit=100&{query}"),
        Some(&gw.admin_key),
        None,
    );
    assert_eq!(r.status, 200, "{:?}", r.json);
    assert_eq!(r.json["has_more"], false);
    let mut entries = r.json["data"].as_array().unwrap().clone();
    entries.reverse();
    entries
}

fn order(gw: &Gateway, key: &str, body: &Value) -> String {
    let r = gw.post_idem_as(key, "/v1/orders", body, &unique_key());
    assert_eq!(r.status, 201, "{:?}", r.json);
    r.json["id"].as_str().unwrap().to_string()
}

fn of_action<'a>(entries: &'a [Value], action: &str) -> Vec<&'a Value> {
    entries.iter().filter(|e| e["action"] == action).collect()
}

/// An entry as the API shows it, back in the stored shape (to recompute its hash).
fn stored(view: &Value) -> AuditEntry {
    let mut v = view.clone();
    let fields = v.as_object_mut().unwrap();
    let reseller = fields.remove("reseller_id").unwrap();
    fields.insert("reseller".into(), reseller);
    fields.retain(|_, value| !value.is_null());
    serde_json::from_value(v).unwrap()
}

#[test]
fn p7_the_audit_log_is_for_admins_only() {
    let gw = gateway();
    let (reseller, key) = gw.new_reseller(0, Some(10_000));
    let readonly = gw.call(
        "POST",
        &format!("/v1/admin/resellers/{reseller}/keys"),
        Some(&gw.admin_key),
        Some(&json!({"role": "reseller_readonly", "mode": "test"})),
    );
    assert_eq!(readonly.status, 201, "{:?}", readonly.json);
    let readonly = readonly.json["key"].as_str().unwrap().to_string();
    for (who, reseller_key) in [
        ("a reseller key", key.as_str()),
        ("a read-only key", readonly.as_str()),
        ("the demo key", gw.demo_key.as_str()),
    ] {
        for path in [
            "/v1/admin/audit",
            &format!("/v1/admin/audit?reseller={reseller}"),
        ] {
            let r = gw.call("GET", path, Some(reseller_key), None);
            assert_eq!(r.status, 404, "{who}: {:?}", r.json);
            assert_eq!(r.json["code"], "not_found", "{who}");
        }
    }
    let anonymous = gw.call("GET", "/v1/admin/audit", None, None);
    assert_eq!(anonymous.status, 401);
    // The admin sees the reseller's creation, among others.
    let entries = audit_log(&gw, "");
    assert!(
        of_action(&entries, "reseller.created")
            .iter()
            .any(|e| e["reseller_id"] == reseller.as_str()),
        "{entries:?}"
    );
}

#[test]
fn p13_security_events_are_recorded_hash_chained_with_truncated_addresses() {
    let (gw, _provider) = gateway_with_ekyc();
    // A failed sign-in, then five more from the same network within the minute.
    for _ in 0..6 {
        let denied = gw.call(
            "GET",
            "/v1/orders",
            Some("sgk_test_notarealkey000000000000000000"),
            None,
        );
        assert_eq!(denied.status, 401);
    }
    let (reseller, key) = gw.new_reseller(0, Some(100_000));
    let subject = format!("SUBJECT-{}", unique_key());
    let ordered = order(
        &gw,
        &key,
        &json!({"product_id": "sandbox:SBX-GB-1GB-7D", "subject_ref": subject, "metadata": {"booking": subject}}),
    );
    let cancel = gw.raw(
        "POST",
        &format!("/v1/orders/{ordered}/cancel"),
        Some(&key),
        &[("idempotency-key", &unique_key())],
        None,
        None,
    );
    assert_eq!(cancel.status, 200, "{:?}", cancel.json);
    // A consent, then the eKYC session it allows.
    let consent = gw.call(
        "POST",
        "/v1/consents",
        Some(&key),
        Some(&json!({
            "subject_ref": subject, "purpose": "ekyc", "action": "granted",
            "notice_version": "2026-03", "notice_hash": "5e".repeat(32),
            "collection_method": "web_form",
        })),
    );
    assert_eq!(consent.status, 201, "{:?}", consent.json);
    let kyc_order = order(
        &gw,
        &key,
        &json!({"product_id": "sandbox:SBX-CN-3GB-15D", "subject_ref": subject}),
    );
    let session = gw.call(
        "POST",
        "/v1/ekyc/sessions",
        Some(&key),
        Some(&json!({"order_id": kyc_order, "return_url": "https://reseller.example/done"})),
    );
    assert_eq!(session.status, 201, "{:?}", session.json);
    // The subject's rights, each exercised once.
    let subject_calls = [
        ("GET", "export", None),
        (
            "POST",
            "rectify",
            Some(json!({"metadata": {"tier": "silver"}})),
        ),
        ("POST", "restrict", None),
        ("POST", "unrestrict", None),
        ("POST", "object", None),
        ("POST", "erase", None),
    ];
    for (method, action, body) in &subject_calls {
        let r = gw.call(
            method,
            &format!("/v1/subjects/{subject}/{action}"),
            Some(&key),
            body.as_ref(),
        );
        assert_eq!(r.status, 200, "{action}: {:?}", r.json);
    }
    // The key is rotated, and its successor revoked.
    let rotated = gw.call("POST", "/v1/keys/rotate", Some(&key), None);
    assert_eq!(rotated.status, 201, "{:?}", rotated.json);
    let successor = rotated.json["id"].as_str().unwrap().to_string();
    let revoked = gw.call(
        "POST",
        &format!("/v1/admin/keys/{successor}/revoke"),
        Some(&gw.admin_key),
        None,
    );
    assert_eq!(revoked.status, 200, "{:?}", revoked.json);
    // An account with no open orders is closed.
    let (other, _) = gw.new_reseller(0, None);
    let closed = gw.call(
        "POST",
        &format!("/v1/admin/resellers/{other}/close"),
        Some(&gw.admin_key),
        None,
    );
    assert_eq!(closed.status, 200, "{:?}", closed.json);

    let entries = audit_log(&gw, "");
    let failed = of_action(&entries, "auth.failed");
    assert_eq!(
        failed.len(),
        1,
        "one entry a minute per network: {failed:?}"
    );
    assert_eq!(failed[0]["actor"], "anonymous");
    assert_eq!(failed[0]["address"], "127.0.0.0/24");

    let created = of_action(&entries, "key.created");
    let created = created
        .iter()
        .find(|e| e["reseller_id"] == reseller.as_str())
        .expect("the reseller's key was created");
    assert!(created["target"].as_str().unwrap().starts_with("key_"));
    assert_eq!(created["details"], "role reseller, mode test");
    assert!(created["actor"].as_str().unwrap().starts_with("key_"));

    let credit = of_action(&entries, "credit.posted");
    assert_eq!(credit.len(), 1, "{credit:?}");
    assert_eq!(credit[0]["reseller_id"], reseller.as_str());
    assert_eq!(credit[0]["details"], "100000 USD");

    let reseller_key = created["target"].as_str().unwrap();
    let accepted = of_action(&entries, "order.accepted");
    assert_eq!(accepted.len(), 2, "{accepted:?}");
    for (action, target, details) in [
        ("order.accepted", ordered.as_str(), Value::Null),
        ("order.cancelled", ordered.as_str(), json!("refunded")),
        ("order.accepted", kyc_order.as_str(), Value::Null),
        (
            "consent.recorded",
            consent.json["id"].as_str().unwrap(),
            json!("ekyc granted"),
        ),
        (
            "ekyc.session_opened",
            session.json["id"].as_str().unwrap(),
            json!(format!("for order {kyc_order}")),
        ),
        (
            "key.rotated",
            successor.as_str(),
            json!(format!("replaces {reseller_key}")),
        ),
    ] {
        let found = of_action(&entries, action);
        let found = found
            .iter()
            .find(|e| e["target"] == target)
            .unwrap_or_else(|| panic!("no {action} of {target}: {found:?}"));
        assert_eq!(found["reseller_id"], reseller.as_str(), "{action}");
        assert_eq!(found["actor"], reseller_key, "{action}: by the key");
        assert_eq!(found["details"], details, "{action}");
        assert_eq!(found["address"], "127.0.0.0/24", "{action}");
    }
    // Subjects are named by a prefix of their keyed lookup, one per subject, never by
    // their ref.
    let mut subject_targets: Vec<&str> = Vec::new();
    for (action, details) in [
        ("subject.exported", Value::Null),
        ("subject.rectified", json!("replaced: metadata")),
        ("subject.restricted", Value::Null),
        ("subject.unrestricted", Value::Null),
        ("subject.objected", Value::Null),
        ("subject.erased", Value::Null),
    ] {
        let found = of_action(&entries, action);
        assert_eq!(found.len(), 1, "{action}: {found:?}");
        let target = found[0]["target"].as_str().unwrap();
        let prefix = target.strip_prefix("subject:").unwrap();
        assert!(prefix.len() == 16 && prefix.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(found[0]["actor"], reseller_key, "{action}");
        assert_eq!(found[0]["reseller_id"], reseller.as_str(), "{action}");
        assert_eq!(found[0]["details"], details, "{action}");
        subject_targets.push(target);
    }
    subject_targets.dedup();
    assert_eq!(subject_targets.len(), 1, "one subject: {subject_targets:?}");
    let closed = of_action(&entries, "reseller.closed");
    assert_eq!(closed.len(), 1, "{closed:?}");
    assert_eq!(closed[0]["target"], other.as_str());
    assert_eq!(closed[0]["reseller_id"], other.as_str());
    let revoked = of_action(&entries, "key.revoked");
    assert_eq!(revoked.len(), 1, "{revoked:?}");
    assert_eq!(revoked[0]["target"], successor.as_str());
    assert_eq!(revoked[0]["reseller_id"], reseller.as_str());
    assert!(revoked[0]["actor"].as_str().unwrap().starts_with("key_"));
    // The reseller key's first use from this network.
    assert!(
        of_action(&entries, "key.new_address")
            .iter()
            .any(|e| e["actor"] == created["target"])
    );
    let loaded = of_action(&entries, "plugin.loaded");
    assert_eq!(loaded[0]["actor"], "system");
    assert_eq!(loaded[0]["target"], "sandbox");

    // Every address is a network, never a host.
    for e in &entries {
        if let Some(address) = e["address"].as_str() {
            assert!(address.ends_with(".0/24"), "{e}");
        }
    }
    // Nothing personal: the order's subject ref and metadata are nowhere in the log.
    let raw = gw.call(
        "GET",
        "/v1/admin/audit?limit=100",
        Some(&gw.admin_key),
        None,
    );
    assert!(!String::from_utf8_lossy(&raw.bytes).contains(&subject));

    // One chain: gap-free numbers from 1, each entry linked to the one before, and each
    // hash the SHA-256 of the entry.
    assert_eq!(entries[0]["seq"], 1);
    assert_eq!(entries[0]["prev_hash"], GENESIS);
    for pair in entries.windows(2) {
        assert_eq!(pair[1]["seq"], pair[0]["seq"].as_u64().unwrap() + 1);
        assert_eq!(pair[1]["prev_hash"], pair[0]["hash"]);
    }
    for e in &entries {
        let stored = stored(e);
        assert_eq!(stored.computed_hash(), stored.hash, "{e}");
    }

    // Filters and cursor pages.
    let orders = audit_log(&gw, "action=order.accepted");
    assert_eq!(orders.len(), 2);
    assert!(orders.iter().all(|e| e["action"] == "order.accepted"));
    let of_reseller = audit_log(&gw, &format!("reseller={reseller}"));
    assert!(
        of_reseller
            .iter()
            .all(|e| e["reseller_id"] == reseller.as_str())
    );
    assert!(of_reseller.len() >= 5, "{of_reseller:?}");
    let newest = entries.last().unwrap()["seq"].as_u64().unwrap();
    let page = gw.call(
        "GET",
        &format!("/v1/admin/audit?limit=2&starting_after={newest}"),
        Some(&gw.admin_key),
        None,
    );
    assert_eq!(page.status, 200);
    let seqs: Vec<u64> = page.json["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [newest - 1, newest - 2]);
    assert_eq!(page.json["has_more"], true);
    let since = entries.last().unwrap()["at_ms"].as_u64().unwrap() + 1;
    assert!(audit_log(&gw, &format!("since_ms={since}")).is_empty());
    for bad in [
        "action=order.teleported",
        "reseller=nobody",
        "since_ms=soon",
    ] {
        let r = gw.call(
            "GET",
            &format!("/v1/admin/audit?{bad}"),
            Some(&gw.admin_key),
            None,
        );
        assert_eq!(r.status, 400, "{bad}: {:?}", r.json);
    }
}

/// Run `simgate audit verify` on `data_dir`: exit code and stdout.
fn verify(data_dir: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_simgate"))
        .args(["audit", "verify", "--data-dir"])
        .arg(data_dir)
        .env("SIMGATE_LOG", "warn")
        .output()
        .expect("running simgate audit verify");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), format!("{stdout}{stderr}"))
}

/// A copy of what `audit verify` reads: the database and the key files.
fn copy_of(data_dir: &Path) -> tempfile::TempDir {
    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy_dir(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), target).unwrap();
            }
        }
    }
    let copy = tempfile::tempdir().unwrap();
    copy_dir(&data_dir.join("db"), &copy.path().join("db"));
    for key in ["pepper.key", "master.key", "audit.key"] {
        std::fs::copy(data_dir.join(key), copy.path().join(key)).unwrap();
    }
    copy
}

/// Change the audit tree of the database in `data_dir` directly, as someone with write
/// access to the disk could.
fn tamper(data_dir: &Path, f: impl FnOnce(&sled::Tree)) {
    let db = sled::open(data_dir.join("db")).unwrap();
    let tree = db.open_tree("audit").unwrap();
    f(&tree);
    db.flush().unwrap();
}

fn entry(tree: &sled::Tree, seq: u64) -> AuditEntry {
    serde_json::from_slice(&tree.get(seq.to_be_bytes()).unwrap().unwrap()).unwrap()
}

#[test]
fn audit_verify_names_the_first_edited_inserted_or_deleted_entry() {
    if on_postgres("audit_verify_names_the_first_edited_inserted_or_deleted_entry") {
        return;
    }
    let gw = gateway();
    let (_, key) = gw.new_reseller(0, Some(100_000));
    order(&gw, &key, &json!({"product_id": "sandbox:SBX-US-5GB-30D"}));
    gw.new_reseller(0, Some(5_000));
    let count = audit_log(&gw, "").len();
    assert!(count >= 8, "{count} entries");
    // While the gateway runs, its database is locked: verify says so.
    let (code, out) = verify(gw.data_dir.path());
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("the gateway must be stopped"), "{out}");
    let (status, data) = gw.terminate();
    assert!(status.success());
    let (code, out) = verify(data.path());
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.trim(), format!("ok: {count} entries from seq 1"));

    // Edited: entry 3 now says something else.
    let edited = copy_of(data.path());
    tamper(edited.path(), |tree| {
        let mut e = entry(tree, 3);
        e.details = Some("nothing to see".into());
        tree.insert(3u64.to_be_bytes(), serde_json::to_vec(&e).unwrap())
            .unwrap();
    });
    let (code, out) = verify(edited.path());
    assert_eq!(code, 1, "{out}");
    assert!(out.starts_with("audit log broken at seq 3: "), "{out}");
    assert!(out.contains("edited"), "{out}");

    // Inserted: a forged entry 5, correctly chained onto entry 4, stored between entries
    // 4 and 5.
    let inserted = copy_of(data.path());
    tamper(inserted.path(), |tree| {
        let fourth = entry(tree, 4);
        let forged = AuditEntry::chain(
            5,
            fourth.at_ms,
            NewAuditEntry::new(Actor::System, AuditAction::PluginRemoved)
                .target(PluginId("sandbox")),
            fourth.hash.clone(),
        );
        let key = [&4u64.to_be_bytes()[..], &[0]].concat();
        tree.insert(key, serde_json::to_vec(&forged).unwrap())
            .unwrap();
    });
    let (code, out) = verify(inserted.path());
    assert_eq!(code, 1, "{out}");
    assert!(out.starts_with("audit log broken at seq 5: "), "{out}");
    assert!(out.contains("inserted"), "{out}");

    // Deleted: entry 4 is gone.
    let deleted = copy_of(data.path());
    tamper(deleted.path(), |tree| {
        tree.remove(4u64.to_be_bytes()).unwrap().unwrap();
    });
    let (code, out) = verify(deleted.path());
    assert_eq!(code, 1, "{out}");
    assert!(out.starts_with("audit log broken at seq 4: "), "{out}");
    assert!(out.contains("deleted"), "{out}");

    // The untouched original still verifies (verify itself changed nothing).
    let (code, out) = verify(data.path());
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.trim(), format!("ok: {count} entries from seq 1"));
}

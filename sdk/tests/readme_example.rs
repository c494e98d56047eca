//! The example plugin in `sdk/README.md` is real: its `Cargo.toml`, `plugin.toml` and
//! `src/lib.rs` are taken from the README as written, built with `Harness::build_crate`, and
//! run through the same checks as the README's own example test.

use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use serde_json::json;
use simgate_sdk::harness::{Harness, Loaded, ProvisionOutcome, RecordingEgress, SupplierError};

/// The README's code block that follows the marker `<!-- file: NAME -->`.
fn readme_file(readme: &str, name: &str) -> String {
    let marker = format!("<!-- file: {name} -->");
    let after = &readme[readme
        .find(&marker)
        .unwrap_or_else(|| panic!("no {marker}"))..];
    let body = &after[after.find("```").expect("a code block")..];
    let body = &body[body.find('\n').unwrap() + 1..];
    body[..body.find("\n```").expect("a closed code block") + 1].to_string()
}

/// The example crate, written out of the README into the test's scratch folder (kept
/// between runs, so that only the first build is cold).
static EXAMPLE: LazyLock<(PathBuf, PathBuf)> = LazyLock::new(|| {
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(sdk.join("README.md")).unwrap();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("readme-example");
    std::fs::create_dir_all(dir.join("src")).unwrap();

    let cargo_toml = readme_file(&readme, "Cargo.toml");
    let mut cargo_toml = cargo_toml.replace("../simgate/sdk", sdk.to_str().unwrap());
    // The dev-dependencies serve the README's own test, which is not built here; leaving
    // them out lets the example resolve entirely from the plugins' lock file, offline.
    let dev = cargo_toml.find("[dev-dependencies]").unwrap();
    let next = dev + cargo_toml[dev..].find("\n\n").unwrap();
    cargo_toml.replace_range(dev..next, "");
    // Its own workspace: the scratch folder lies inside this repository's.
    cargo_toml.push_str("\n[workspace]\n");
    write_if_changed(&dir.join("Cargo.toml"), &cargo_toml);
    write_if_changed(
        &dir.join("plugin.toml"),
        &readme_file(&readme, "plugin.toml"),
    );
    write_if_changed(&dir.join("src/lib.rs"), &readme_file(&readme, "src/lib.rs"));
    if !dir.join("Cargo.lock").exists() {
        let lock = sdk.join("../plugins/Cargo.lock");
        std::fs::copy(lock, dir.join("Cargo.lock")).unwrap();
    }

    let wasm = Harness::build_crate(&dir).expect("the README's plugin builds");
    (dir, wasm)
});

/// Rewriting an unchanged file would make cargo rebuild the example every run.
fn write_if_changed(path: &Path, text: &str) {
    if std::fs::read_to_string(path).ok().as_deref() != Some(text) {
        std::fs::write(path, text).unwrap();
    }
}

const ORDERS: &str = "https://api.acme-esim.example/v1/orders";

fn acme(egress: &RecordingEgress) -> Loaded {
    let (dir, wasm) = &*EXAMPLE;
    Harness::new(dir.join("plugin.toml"), wasm)
        .grant_all_requested()
        .secret("API_TOKEN", "test-token")
        .egress(egress.clone())
        .load()
        .expect("the README's plugin loads")
}

#[test]
fn the_readme_plugin_delivers_with_the_token_the_host_fills_in() {
    let esim =
        json!({"iccid": "8944000000000000003", "smdp": "smdp.acme.example", "matching_id": "K7Q2"});
    let egress =
        RecordingEgress::new().respond_json("POST", ORDERS, 201, &json!({"esims": [esim]}));

    let outcome = acme(&egress).provision("ord_1", "ACME-JP-5GB", 1).unwrap();

    let ProvisionOutcome::Delivered(esims) = outcome else {
        panic!("expected a delivery, got {outcome:?}")
    };
    assert_eq!(esims[0].iccid, "8944000000000000003");
    let sent = &egress.requests()[0];
    assert_eq!(sent.header("authorization"), Some("Bearer test-token"));
    assert_eq!(sent.header("idempotency-key"), Some("ord_1"));
    let body: serde_json::Value = serde_json::from_slice(&sent.body).unwrap();
    assert_eq!(body, json!({"plan": "ACME-JP-5GB", "quantity": 1}));
}

#[test]
fn the_readme_plugin_reports_a_sold_out_plan_as_out_of_stock() {
    let egress = RecordingEgress::new().respond("POST", ORDERS, 409, "sold out");
    let result = acme(&egress).provision("ord_2", "ACME-JP-5GB", 1);
    assert_eq!(result, Err(SupplierError::OutOfStock));
}

#[test]
fn the_readme_plugin_lists_the_suppliers_plans() {
    let plans = json!([{"code": "ACME-JP-5GB", "name": "Japan 5 GB", "country": "JP",
                        "gigabytes": 5, "days": 30, "price_cents": 1100}]);
    let egress = RecordingEgress::new().respond_json(
        "GET",
        "https://api.acme-esim.example/v1/plans",
        200,
        &plans,
    );
    let products = acme(&egress).list_products().unwrap();
    assert_eq!(products.len(), 1);
    assert_eq!(products[0].sku, "ACME-JP-5GB");
    assert_eq!(products[0].wholesale.minor, 1100);
}

#[test]
fn the_readme_test_uses_the_harness_as_this_test_does() {
    // The README's test cannot be compiled here (it belongs to the example crate), so check
    // that it still makes the calls this file proves work.
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let test = readme_file(&readme, "tests/acme.rs");
    for call in [
        "Harness::build_crate(env!(\"CARGO_MANIFEST_DIR\"))",
        ".grant_all_requested()",
        ".secret(\"API_TOKEN\", \"test-token\")",
        ".egress(egress.clone())",
        "RecordingEgress::new().respond_json(\"POST\", ORDERS, 201, &json!({\"esims\": [esim]}))",
        "RecordingEgress::new().respond(\"POST\", ORDERS, 409, \"sold out\")",
        "assert_eq!(sent.header(\"authorization\"), Some(\"Bearer test-token\"));",
    ] {
        assert!(
            test.contains(call),
            "the README's test no longer contains {call}"
        );
    }
}

//! The store conformance suite on PostgreSQL, and what two nodes sharing one database
//! must see of each other. They need a database: `SIMGATE_TEST_PG_URL` names it
//! (`tests/pg/cluster.sh target/pg` makes a throwaway one and prints its URL). Each test
//! works in a schema of its own, dropped afterwards, so tests run in parallel on one
//! database. Without the variable, each such test says it was skipped and passes.

use std::collections::HashSet;
use std::sync::Arc;

use super::*;
use crate::domain::audit::{Actor, AuditAction};
use crate::domain::jobs::JobKind;
use crate::domain::ledger::EntryKind;
use crate::store::conformance::{Backend, credit, esim, order_for, reseller};

/// Where the test database is named.
const URL_VAR: &str = "SIMGATE_TEST_PG_URL";

/// A schema of its own in the test database. Opening it again is a restart on the same
/// data; every store opened on it is another node.
struct Fresh {
    url: String,
    schema: String,
}

impl Fresh {
    fn options(&self) -> PgOptions {
        PgOptions {
            max_connections: 4,
            schema: Some(self.schema.clone()),
            ..Default::default()
        }
    }

    /// A node on this schema (it connects and migrates on its first call).
    fn node(&self) -> PgStore {
        PgStore::lazy(&self.tagged_url(), self.options()).expect("the test URL is valid")
    }

    /// The URL with the schema's name as the connections' application name, so that the
    /// clean-up can find them.
    fn tagged_url(&self) -> String {
        let (url, schema) = (&self.url, &self.schema);
        if !url.contains("://") {
            format!("{url} application_name={schema}")
        } else if url.contains('?') {
            format!("{url}&application_name={schema}")
        } else {
            format!("{url}?application_name={schema}")
        }
    }
}

impl Backend for Fresh {
    fn open(&self) -> Arc<dyn Store> {
        Arc::new(self.node())
    }
}

impl Drop for Fresh {
    fn drop(&mut self) {
        // Drop cannot await: the schema goes on a thread with a runtime of its own. The
        // test's runtime is blocked meanwhile, so its connections cannot send a rollback
        // they still owe (a test that stopped halfway): they are ended first, or their
        // locks would keep the schema forever.
        let (url, schema) = (self.url.clone(), self.schema.clone());
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async {
                let (client, connection) = tokio_postgres::connect(&url, NoTls)
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::spawn(connection);
                client
                    .execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                         WHERE application_name = $1 AND pid <> pg_backend_pid()",
                        &[&schema],
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                client
                    .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                    .await
                    .map_err(|e| e.to_string())
            })
        })
        .join();
        if let Ok(Err(e)) = dropped {
            eprintln!("could not drop test schema {}: {e}", self.schema);
        }
    }
}

/// A fresh schema in the test database, or `None` (saying so) when none is named.
fn fresh() -> Option<Fresh> {
    let Ok(url) = std::env::var(URL_VAR) else {
        eprintln!(
            "skipped: set {URL_VAR} to run the PostgreSQL store's tests \
             (tests/pg/cluster.sh target/pg prints one)"
        );
        return None;
    };
    Some(Fresh {
        url,
        schema: format!("test_{}", Ulid::new().to_string().to_lowercase()),
    })
}

// Every conformance check, each on a schema of its own. Without a database the backend
// expression returns from the test at once: the test is skipped.
crate::store_conformance!(match fresh() {
    Some(backend) => backend,
    None => return,
});

/// The commit that fulfils `order` with one eSIM `iccid`.
fn fulfilment(order: &Order, iccid: &str) -> Commit {
    let mut settled = order.clone();
    settled.transition(OrderStatus::Submitted, 11).unwrap();
    settled.transition(OrderStatus::Fulfilled, 12).unwrap();
    settled.iccids = vec![iccid.into()];
    Commit::settle(settled, EntryKind::Capture, vec![esim(order, iccid)]).unwrap()
}

#[tokio::test]
async fn two_nodes_on_one_database_see_each_others_writes() {
    let Some(db) = fresh() else { return };
    let (a, b) = (db.node(), db.node());
    let r = reseller();
    a.put_reseller(&r).await.unwrap();
    assert_eq!(b.reseller(r.id).await.unwrap(), Some(r.clone()));
    credit(&a, r.id, 1_000).await;
    let order = order_for(r.id, 300, 1);
    b.commit(&Commit::accept(order.clone()).unwrap())
        .await
        .unwrap()
        .unwrap();
    let expected = Balance {
        available: 700,
        held: 300,
    };
    assert_eq!(a.balance(r.id, "USD").await.unwrap(), expected);
    assert_eq!(b.balance(r.id, "USD").await.unwrap(), expected);
    assert_eq!(
        a.open_orders()
            .await
            .unwrap()
            .iter()
            .map(|o| o.id)
            .collect::<Vec<_>>(),
        [order.id]
    );
    a.commit(&fulfilment(&order, "8999000000000000094"))
        .await
        .unwrap()
        .unwrap();
    let (read, esims) = b.order_and_esims(order.id).await.unwrap().unwrap();
    assert_eq!(
        (read.status, esims.len()),
        (OrderStatus::Fulfilled, 1),
        "the other node reads the settlement"
    );
    assert_eq!(b.outbox(10).await.unwrap().len(), 1, "its event waits");
    b.dispatched(&b.outbox(10).await.unwrap()).await.unwrap();
    assert!(a.outbox(10).await.unwrap().is_empty(), "taken out for both");
    let entry = a
        .append_audit(
            5,
            NewAuditEntry::new(Actor::System, AuditAction::KeyCreated),
        )
        .await
        .unwrap();
    let next = b
        .append_audit(
            5,
            NewAuditEntry::new(Actor::System, AuditAction::KeyRevoked),
        )
        .await
        .unwrap();
    assert_eq!(
        (next.seq, next.prev_hash.as_str()),
        (entry.seq + 1, entry.hash.as_str()),
        "one chain across nodes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_is_claimed_by_one_node_only() {
    let Some(db) = fresh() else { return };
    let (a, b) = (Arc::new(db.node()), Arc::new(db.node()));
    let ids: HashSet<String> = (0..60).map(|i| format!("job/{i:02}")).collect();
    for id in &ids {
        a.put_job(&Job::new(
            id.clone(),
            crate::domain::jobs::JobKind::RefreshCatalogs,
            1_000,
        ))
        .await
        .unwrap();
    }
    // Both nodes claim small batches at once until nothing is left.
    let worker = |node: Arc<PgStore>| {
        tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let claimed = node.claim_jobs("run-1", 1_000, 60_000, 4).await.unwrap();
                if claimed.is_empty() {
                    return mine;
                }
                mine.extend(claimed.into_iter().map(|j| j.id));
            }
        })
    };
    let (from_a, from_b) = (worker(a.clone()), worker(b.clone()));
    let (from_a, from_b) = (from_a.await.unwrap(), from_b.await.unwrap());
    let mut all: Vec<String> = from_a.iter().chain(&from_b).cloned().collect();
    all.sort();
    let mut expected: Vec<String> = ids.into_iter().collect();
    expected.sort();
    assert_eq!(all, expected, "every job claimed, none twice");
    assert!(
        b.claim_jobs("run-1", 30_000, 60_000, 100)
            .await
            .unwrap()
            .is_empty(),
        "leased by the claim"
    );
    assert_eq!(
        a.claim_jobs("run-1", 61_000, 1_000, 100)
            .await
            .unwrap()
            .len(),
        60,
        "claimable again once the lease ran out"
    );
}

/// A node record alive until `alive_until_ms` for run `run`.
fn node_record(id: &str, run: &str, alive_until_ms: u64) -> NodeRecord {
    NodeRecord {
        id: id.into(),
        run: run.into(),
        address: "127.0.0.1:0".into(),
        version: "0".into(),
        started_ms: 0,
        heartbeat_ms: 0,
        alive_until_ms,
        stopped: false,
        plugins: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_whose_node_is_gone_is_taken_up_before_its_lease_ends() {
    let Some(db) = fresh() else { return };
    let (a, b) = (db.node(), db.node());
    a.put_node(&node_record("node_a", "run-a", 5_000))
        .await
        .unwrap();
    b.put_node(&node_record("node_b", "run-b", 5_000))
        .await
        .unwrap();
    for id in ["j1", "j2"] {
        a.put_job(&Job::new(id, JobKind::RefreshCatalogs, 1_000))
            .await
            .unwrap();
    }
    // Node a claims both for ten minutes.
    assert_eq!(
        a.claim_jobs("run-a", 1_000, 600_000, 10)
            .await
            .unwrap()
            .len(),
        2
    );
    assert!(
        b.claim_jobs("run-b", 2_000, 600_000, 10)
            .await
            .unwrap()
            .is_empty(),
        "a's run is alive: its jobs stay with it"
    );
    // Node a goes silent: at 5 s it has missed its beats.
    let taken = b.claim_jobs("run-b", 5_000, 600_000, 10).await.unwrap();
    assert_eq!(taken.len(), 2, "taken up long before the lease ends");
    assert!(taken.iter().all(|j| j.owner.as_deref() == Some("run-b")));
    // Node a restarts as a new run: b's run is alive, so the jobs stay with b.
    a.put_node(&node_record("node_a", "run-a2", 900_000))
        .await
        .unwrap();
    b.put_node(&node_record("node_b", "run-b", 900_000))
        .await
        .unwrap();
    assert!(
        a.claim_jobs("run-a2", 6_000, 600_000, 10)
            .await
            .unwrap()
            .is_empty()
    );
    // b stops cleanly (its record says so): a takes them at once.
    b.put_node(&NodeRecord {
        stopped: true,
        ..node_record("node_b", "run-b", 900_000)
    })
    .await
    .unwrap();
    assert_eq!(
        a.claim_jobs("run-a2", 7_000, 600_000, 10)
            .await
            .unwrap()
            .len(),
        2
    );
    // A job of a run no node record names (a record forgotten) is claimable too.
    a.put_job(&Job::new("j3", JobKind::RefreshCatalogs, 1_000).leased("run-x", 600_000))
        .await
        .unwrap();
    let orphan = b.claim_jobs("run-b", 8_000, 600_000, 10).await.unwrap();
    assert_eq!(
        orphan.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(),
        ["j3"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_orders_lock_is_held_across_nodes_and_freed_when_dropped_even_half_taken() {
    let Some(db) = fresh() else { return };
    let (a, b) = (Arc::new(db.node()), Arc::new(db.node()));
    let id = OrderId::new();
    let held = a.lock_order(id).await.unwrap().expect("shared stores lock");
    // b waits while a holds it.
    let waiting = {
        let b = b.clone();
        tokio::spawn(async move { b.lock_order(id).await.unwrap() })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "b waits for a's lock");
    // Another order is not held up.
    let other = b.lock_order(OrderId::new()).await.unwrap();
    drop(other);
    drop(held);
    let from_b = tokio::time::timeout(std::time::Duration::from_secs(10), waiting)
        .await
        .expect("b gets the lock once a lets go")
        .unwrap();
    // A taking dropped while it waits leaves nothing held behind it.
    let cancelled = {
        let a = a.clone();
        tokio::spawn(async move { a.lock_order(id).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    cancelled.abort();
    let _ = cancelled.await;
    drop(from_b);
    let again = tokio::time::timeout(std::time::Duration::from_secs(10), a.lock_order(id))
        .await
        .expect("nothing kept the lock after the abandoned taking")
        .unwrap();
    drop(again);
    let by_b = tokio::time::timeout(std::time::Duration::from_secs(10), b.lock_order(id))
        .await
        .expect("free again after the last holder let go")
        .unwrap();
    drop(by_b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idempotency_key_claimed_from_two_nodes_at_once_goes_to_one() {
    let Some(db) = fresh() else { return };
    let (a, b) = (Arc::new(db.node()), Arc::new(db.node()));
    let r = ResellerId::new();
    for i in 0..30 {
        let key = |order| IdemKey {
            reseller: r,
            key: format!("race-{i}"),
            order,
        };
        let (ka, kb) = (key(OrderId::new()), key(OrderId::new()));
        let (na, nb) = (a.clone(), b.clone());
        let first = tokio::spawn(async move { na.claim_idempotency(&ka, &[1; 32], 5).await });
        let second = tokio::spawn(async move { nb.claim_idempotency(&kb, &[1; 32], 5).await });
        let mut claims = [
            first.await.unwrap().unwrap(),
            second.await.unwrap().unwrap(),
        ];
        claims.sort_by_key(|c| *c != Claim::New);
        assert_eq!(claims, [Claim::New, Claim::InProgress], "key race-{i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_racing_for_the_last_money_or_one_iccid_never_overdraw_or_share() {
    let Some(db) = fresh() else { return };
    let nodes = [Arc::new(db.node()), Arc::new(db.node())];
    let r = ResellerId::new();
    credit(&*nodes[0], r, 100).await;
    // Ten holds of 30 at once against 100: three fit.
    let holds: Vec<_> = (0..10)
        .map(|i| {
            let node = nodes[i % 2].clone();
            let commit = Commit::accept(order_for(r, 30, 1)).unwrap();
            tokio::spawn(async move { node.commit(&commit).await.unwrap() })
        })
        .collect();
    let mut accepted = 0;
    for hold in holds {
        match hold.await.unwrap() {
            Ok(_) => accepted += 1,
            Err(Rejected::Refused(_)) => {}
            Err(other) => panic!("{other}"),
        }
    }
    assert_eq!(accepted, 3);
    assert_eq!(
        nodes[1].balance(r, "USD").await.unwrap(),
        Balance {
            available: 10,
            held: 90
        }
    );

    // Two orders settle with one ICCID at once, on two nodes: one gets it.
    let rich = ResellerId::new();
    credit(&*nodes[0], rich, 1_000).await;
    for round in 0..10 {
        let iccid = format!("89990000000000{round:05}");
        let orders = [order_for(rich, 10, 1), order_for(rich, 10, 1)];
        for o in &orders {
            nodes[0]
                .commit(&Commit::accept(o.clone()).unwrap())
                .await
                .unwrap()
                .unwrap();
        }
        let racers: Vec<_> = orders
            .iter()
            .zip(&nodes)
            .map(|(order, node)| {
                let (node, commit) = (node.clone(), fulfilment(order, &iccid));
                tokio::spawn(async move { node.commit(&commit).await.unwrap() })
            })
            .collect();
        let mut won = Vec::new();
        for (racer, order) in racers.into_iter().zip(&orders) {
            match racer.await.unwrap() {
                Ok(_) => won.push(order.id),
                Err(Rejected::IccidTaken(taken)) => assert_eq!(taken.iccid, iccid),
                Err(other) => panic!("{other}"),
            }
        }
        assert_eq!(won.len(), 1, "round {round}");
        let owner = nodes[1].esim(&iccid).await.unwrap().unwrap().order;
        assert_eq!(owner, won[0]);
    }
}

#[tokio::test]
async fn a_database_with_a_newer_schema_is_refused() {
    let Some(db) = fresh() else { return };
    let store = PgStore::open(&db.tagged_url(), db.options()).await.unwrap();
    let c = store.client().await.unwrap();
    execute(
        &c,
        "INSERT INTO schema_migrations (version, name) VALUES (9999, 'from the future')",
        &[],
    )
    .await
    .unwrap();
    drop(c);
    store.close().await.unwrap();
    let refused = PgStore::open(&db.tagged_url(), db.options())
        .await
        .err()
        .unwrap();
    assert!(
        refused.to_string().contains("newer than this build"),
        "{refused}"
    );
    // A lazy store says so on its first call.
    let lazy = db.node();
    assert!(lazy.reseller(ResellerId::new()).await.is_err());
}

#[tokio::test]
async fn opening_again_applies_nothing_twice() {
    let Some(db) = fresh() else { return };
    for _ in 0..2 {
        let store = PgStore::open(&db.tagged_url(), db.options()).await.unwrap();
        let c = store.client().await.unwrap();
        let versions = query(&c, "SELECT version FROM schema_migrations", &[])
            .await
            .unwrap();
        assert_eq!(versions.len(), migrate::MIGRATIONS.len());
    }
}

#[tokio::test]
async fn text_with_nul_characters_reads_back_exactly() {
    // A hostile supplier or client may send U+0000; PostgreSQL's text and jsonb refuse
    // it, so records are kept as json.
    let Some(db) = fresh() else { return };
    let store = db.node();
    let r = ResellerId::new();
    let mut entry = LedgerEntry::new(r, EntryKind::Credit, 5, "USD", None, 1);
    entry.note = Some("ref\u{0}ERENCE".into());
    store
        .commit(&Commit::credit(entry.clone()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(store.ledger_entry(r, entry.id).await.unwrap(), Some(entry));
    let order = order_for(r, 5, 1);
    store
        .commit(&Commit::accept(order.clone()).unwrap())
        .await
        .unwrap()
        .unwrap();
    let mut settle = fulfilment(&order, "8999000000000000102");
    let (_, settled, mut esims) = settle.clone().into_parts();
    esims[0].raw_status = "\u{0}ACTIVE".into();
    settle = Commit::settle(settled.unwrap(), EntryKind::Capture, esims.clone()).unwrap();
    store.commit(&settle).await.unwrap().unwrap();
    assert_eq!(
        store.esim("8999000000000000102").await.unwrap(),
        Some(esims[0].clone())
    );
}

#[test]
fn a_url_naming_another_host_is_refused_without_tls() {
    let open = |url: &str| PgStore::lazy(url, PgOptions::default()).map(|_| ());
    for remote in [
        "postgresql://simgate@db.example.com/simgate",
        "host=10.0.0.5 user=simgate dbname=simgate",
        "postgresql://simgate@localhost/simgate?hostaddr=192.0.2.1",
        "postgresql://simgate@db.example.com/simgate?sslmode=prefer",
        "postgresql://simgate@db.example.com/simgate?sslmode=disable",
    ] {
        let err = open(remote).unwrap_err().to_string();
        assert!(err.contains("sslmode=require"), "{remote}: {err}");
    }
    for over_tls in [
        "postgresql://simgate@db.example.com/simgate?sslmode=require",
        "host=10.0.0.5 user=simgate dbname=simgate sslmode=require",
    ] {
        open(over_tls).unwrap_or_else(|e| panic!("{over_tls}: {e}"));
    }
    let missing = PgOptions {
        ca_file: Some("/nonexistent/ca.pem".into()),
        ..PgOptions::default()
    };
    let err = PgStore::lazy(
        "postgresql://db.example.com/simgate?sslmode=require",
        missing,
    )
    .map(|_| ())
    .unwrap_err();
    assert!(err.to_string().contains("ca_file"), "{err}");
    for local in [
        "postgresql://simgate@localhost:5432/simgate",
        "postgresql://simgate@127.0.0.1/simgate",
        "postgresql://simgate@[::1]/simgate",
        "postgresql://simgate@/simgate?host=/run/postgresql",
    ] {
        open(local).unwrap_or_else(|e| panic!("{local}: {e}"));
    }
}

#[test]
fn schema_names_are_plain_lowercase_words() {
    for good in ["simgate", "node_2", "_x"] {
        assert!(valid_schema(good.into()).is_ok(), "{good}");
    }
    for bad in [
        "",
        "Simgate",
        "a-b",
        "a;drop",
        "pg_catalog",
        &"x".repeat(64),
    ] {
        assert!(valid_schema(bad.into()).is_err(), "{bad}");
    }
}

/// The TLS listener `tests/pg/cluster.sh` runs beside the test cluster's socket, and the
/// CA that signed its certificate; `None` (saying so) without one.
fn tls_listener() -> Option<(String, std::path::PathBuf)> {
    let url = std::env::var(URL_VAR).ok()?;
    let socket = url.split("host=").nth(1)?.split('&').next()?;
    let dir = std::path::Path::new(socket).parent()?;
    match std::fs::read_to_string(dir.join("tls.url")) {
        Ok(tls_url) => Some((tls_url.trim().to_string(), dir.join("tls/ca.crt"))),
        Err(_) => {
            eprintln!("skipped: the test cluster has no TLS listener (tls.url)");
            None
        }
    }
}

#[tokio::test]
async fn a_database_over_tls_is_reached_only_with_a_certificate_its_ca_signed() {
    let Some(db) = fresh() else { return };
    let Some((tls_url, ca)) = tls_listener() else {
        return;
    };
    let options = |ca_file: Option<std::path::PathBuf>| PgOptions {
        max_connections: 2,
        schema: Some(db.schema.clone()),
        ca_file,
        connect_timeout: std::time::Duration::from_secs(5),
        ..Default::default()
    };
    // Trusting the cluster's CA: the store works, and its connection is encrypted.
    for url in [tls_url.clone(), tls_url.replace("127.0.0.1", "localhost")] {
        let store = PgStore::open(&url, options(Some(ca.clone())))
            .await
            .unwrap();
        assert!(store.nodes().await.unwrap().is_empty());
        let c = store.client().await.unwrap();
        let encrypted: bool = c
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert!(encrypted, "{url}: the connection is not encrypted");
    }
    // Without it (Mozilla's roots), the server's certificate is refused.
    let refused = PgStore::open(&tls_url, options(None)).await.map(|_| ());
    let err = refused.unwrap_err().to_string();
    assert!(
        err.to_lowercase().contains("certificate") || err.contains("issuer"),
        "{err}"
    );
}

#[tokio::test]
async fn a_commit_does_not_wait_for_the_disk_and_durable_flushes_every_commit_before_it() {
    let Some(db) = fresh() else { return };
    let store = db.node();
    store.put_meta("probe", b"1").await.unwrap();
    let c = store.client().await.unwrap();
    let lsn = |sql: &'static str| {
        let c = &c;
        async move {
            let row = c.query_one(sql, &[]).await.unwrap();
            row.get::<_, String>(0)
        }
    };
    // Where the WAL ends after the commit, as a number PostgreSQL compares.
    let written = lsn("SELECT pg_current_wal_insert_lsn()::text").await;
    store.durable().await.unwrap();
    let flushed: bool = c
        .query_one(
            "SELECT pg_current_wal_flush_lsn() >= $1::text::pg_lsn",
            &[&written],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        flushed,
        "durable() returned before the WAL up to {written} was on disk"
    );
    let setting: String = c
        .query_one("SHOW synchronous_commit", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        setting, "off",
        "commits hold their row locks only until they are written"
    );
}

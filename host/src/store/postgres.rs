//! PostgreSQL implementation of [`Store`]: the database is the truth, so several gateway
//! nodes can share one.
//!
//! Tables are created by the versioned migrations in `host/migrations/` (see `migrate`),
//! applied when the store opens, in one transaction, and recorded in `schema_migrations`;
//! a database whose schema is newer than this build is refused. Each table keeps its
//! records whole as JSON (type `json`: read back exactly as written, unlike `jsonb`, which
//! also refuses the escaped NUL a hostile plugin may send) beside real columns for what is
//! looked up, sorted or constrained (ids as their 16 ULID bytes, which sort by time;
//! times in ms; money in minor units). `0001_init.sql` describes each table.
//!
//! What the other stores do under a process-wide lock, this one does with the database's
//! own tools, so it holds across nodes:
//!
//! - [`Store::commit`] is one transaction (`money`): it locks the eSIMs it names and the
//!   balance row of its entry (`SELECT ... FOR UPDATE`), refuses what the balance cannot
//!   cover with the same checked arithmetic as the other stores (`Balance::apply`), and
//!   writes the entry, the balance, the order, the eSIMs, the endpoints and the events
//!   with their outbox rows. Constraints hold the ledger invariant on their own as well:
//!   no negative balance or amount, one hold, one capture-or-release and one refund per
//!   order, entries never updated, an ICCID never moved to another order.
//! - Idempotency claims (`idempotency`) insert the claim with `ON CONFLICT DO NOTHING`
//!   and judge an existing one under its row lock, with `idempotency::judge`.
//! - Jobs are claimed with `FOR UPDATE SKIP LOCKED` and leased (`jobs`).
//! - Audit appends lock the one row of `audit_head`, so numbers have no gaps and every
//!   entry links to the one before (`audit`).
//!
//! Every write is committed (visible to every node) before its method returns, as the
//! sled store's are, and made durable by [`Store::durable`], which the use cases call
//! before they answer: writes commit with `synchronous_commit = off`, so a commit lets
//! go of its row locks (a reseller's balance row, above all) without waiting for its
//! WAL to reach the disk, and `durable` commits a transaction of its own with
//! `synchronous_commit = on`, whose flush covers every commit before it (the WAL is one
//! sequence). Concurrent callers of `durable` share one flush, as the sled store's
//! group commit does; a crash of the server loses at most what no `durable` covered
//! yet, and the database stays consistent. Backups are PostgreSQL's own affair
//! (`pg_dump`, base backups): [`Store::backup_to`] keeps the trait's `None`.
//!
//! A database on another host is reached over TLS only (`sslmode=require`; the server's
//! certificate and name are always verified, see `tls`); a unix socket or the loopback
//! interface may go without.

mod audit;
mod idempotency;
mod jobs;
mod migrate;
mod money;
mod retention;
#[cfg(test)]
mod tests;
mod tls;

use std::collections::HashMap;
use std::time::Duration;

use deadpool_postgres::{
    GenericClient, Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_postgres::config::Host;
use tokio_postgres::types::{Json, ToSql};
use tokio_postgres::{NoTls, Row};
use ulid::Ulid;

use crate::domain::accounts::{ApiKey, KeyHash, Reseller};
use crate::domain::audit::{AuditCheckpoint, AuditEntry, AuditFilter, NewAuditEntry};
use crate::domain::catalog::CachedCatalog;
use crate::domain::consent::ConsentEvent;
use crate::domain::events::{Event, EventType};
use crate::domain::idempotency::{Claim, IdemKey, IdemState};
use crate::domain::ids::{AttemptId, EndpointId, EventId, KeyId, OrderId, ResellerId};
use crate::domain::jobs::Job;
use crate::domain::ledger::{Balance, LedgerEntry};
use crate::domain::nodes::NodeRecord;
use crate::domain::orders::{EsimRecord, Order, OrderStatus};
use crate::domain::personal::{Restriction, SubjectLookup};
use crate::domain::request_log::RequestRecord;
use crate::domain::store::{Commit, HeldLock, Page, Rejected, Store, StoreError, StoreResult};
use crate::domain::webhooks::{Attempt, Endpoint};

/// Tries of a commit that lost a deadlock to another one (the database picks a victim
/// when two commits lock the same eSIMs or balances in another order; trying again wins).
const COMMIT_TRIES: usize = 3;

/// How to reach the database beyond its URL.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// Connections opened at most (`[store] pool_size`; its default's reason is there).
    pub max_connections: usize,
    /// How long connecting may take before the call fails (503) instead of hanging.
    pub connect_timeout: Duration,
    /// How long a call waits for a free connection when all are busy.
    pub pool_wait: Duration,
    /// Connections kept apart for order locks (`[store] lock_pool_size`): each holds one
    /// order's lock while a change to it runs, supplier call included.
    pub lock_connections: usize,
    /// CA certificates (PEM) that sign the database server's certificate, for a URL with
    /// `sslmode=require` (`[store] ca_file`); without, Mozilla's roots.
    pub ca_file: Option<std::path::PathBuf>,
    /// The schema the tables live in (created if missing), when not the user's default:
    /// lowercase letters, digits and `_`, at most 63 characters. Several gateways (or
    /// test runs) can then share a database.
    pub schema: Option<String>,
}

impl Default for PgOptions {
    /// The defaults of `[store]` (`crate::config::StoreTuning`), where each is explained.
    fn default() -> Self {
        crate::config::StoreTuning::default().pg_options()
    }
}

/// The PostgreSQL-backed store: one node's connections to the database. Every node (and
/// every `PgStore` in one process) sees what the others committed.
pub struct PgStore {
    /// The node's connections.
    pool: Pool,
    /// Connections that hold order locks (`Store::lock_order`), apart from `pool`: a lock
    /// held across a supplier call never takes a connection the store's calls need.
    locks: Pool,
    /// The schema named in [`PgOptions::schema`], validated.
    schema: Option<String>,
    /// Set once the schema is migrated and checked (by `open`, or by the first call).
    ready: tokio::sync::OnceCell<()>,
}

impl PgStore {
    /// Connect to the database at `url` (a `postgresql://` URL or `key=value` pairs), bring
    /// its schema up to date and check it; fails if the database cannot be reached, or
    /// holds a newer schema than this build knows.
    pub async fn open(url: &str, options: PgOptions) -> StoreResult<PgStore> {
        let store = PgStore::lazy(url, options)?;
        store.ensure_ready().await?;
        Ok(store)
    }

    /// The store for `url` without connecting yet: the first call connects and migrates
    /// (for callers that cannot wait here). Fails only on a bad URL or options.
    pub fn lazy(url: &str, options: PgOptions) -> StoreResult<PgStore> {
        let schema = options.schema.map(valid_schema).transpose()?;
        let (config, tls) = connection_config(
            url,
            schema.as_deref(),
            options.connect_timeout,
            options.ca_file.as_deref(),
        )?;
        let pool = |config: tokio_postgres::Config, size: usize| {
            let recycling = ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            };
            let manager = match &tls {
                Some(tls) => Manager::from_config(config, tls.clone(), recycling),
                None => Manager::from_config(config, NoTls, recycling),
            };
            Pool::builder(manager)
                .max_size(size.max(1))
                .runtime(Runtime::Tokio1)
                .create_timeout(Some(options.connect_timeout))
                .wait_timeout(Some(options.pool_wait))
                .build()
                .map_err(|e| StoreError::Backend(format!("cannot build the connection pool: {e}")))
        };
        Ok(PgStore {
            locks: pool(config.clone(), options.lock_connections)?,
            pool: pool(config, options.max_connections)?,
            schema,
            ready: tokio::sync::OnceCell::new(),
        })
    }

    /// Migrate and check the schema, once (a failure, such as a database still starting,
    /// is tried again by the next call).
    async fn ensure_ready(&self) -> Faulty<()> {
        self.ready
            .get_or_try_init(|| async {
                let mut client = self.pool.get().await?;
                migrate::run(&mut client, self.schema.as_deref()).await
            })
            .await?;
        Ok(())
    }

    /// A connection, once the schema is ready.
    async fn client(&self) -> Faulty<Object> {
        self.ensure_ready().await?;
        Ok(self.pool.get().await?)
    }
}

/// The advisory lock of order `id`: in its own class (the two-number keys, apart from the
/// one-number key migrations take), keyed by 32 random bits of the id. Two orders that
/// share a key only wait for each other; nothing holds two order locks at once.
fn order_lock_key(id: OrderId) -> (i32, i32) {
    const ORDERS: i32 = 0x6f72_6472; // "ordr"
    let bytes = id.0.to_bytes();
    let key = i32::from_be_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]);
    (ORDERS, key)
}

/// An order's advisory lock, on a connection of the lock pool; dropping it unlocks.
struct OrderLock(Option<Object>);

impl OrderLock {
    fn connection(&self) -> &Object {
        self.0.as_ref().expect("held until dropped")
    }
}

impl Drop for OrderLock {
    fn drop(&mut self) {
        let Some(connection) = self.0.take() else {
            return;
        };
        // `unlock_all`: also what a taking cancelled half-way went on to take, since it
        // runs after that on the same connection.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if connection
                        .batch_execute("SELECT pg_advisory_unlock_all()")
                        .await
                        .is_err()
                    {
                        // It may still hold the lock: closing it is what frees it.
                        drop(Object::take(connection));
                    }
                });
            }
            Err(_) => drop(Object::take(connection)),
        }
    }
}

/// `url` as a connection configuration with the session settings the store relies on,
/// and the TLS it needs: a URL with `sslmode=require` is reached over TLS, verifying the
/// server's certificate and name (against `ca_file`'s CAs, or Mozilla's roots); one
/// naming another host without it is refused (no plain text, and no silent downgrade,
/// leaves the machine). A unix socket or the loopback interface may go without.
fn connection_config(
    url: &str,
    schema: Option<&str>,
    connect_timeout: Duration,
    ca_file: Option<&std::path::Path>,
) -> StoreResult<(tokio_postgres::Config, Option<tls::Tls>)> {
    let mut config: tokio_postgres::Config = url
        .parse()
        .map_err(|e| StoreError::Backend(format!("the PostgreSQL URL is not valid: {e}")))?;
    let remote = config.get_hosts().iter().any(|host| match host {
        Host::Tcp(name) => !is_loopback(name),
        #[cfg(unix)]
        Host::Unix(_) => false,
    }) || config.get_hostaddrs().iter().any(|a| !a.is_loopback());
    let tls_required = config.get_ssl_mode() == tokio_postgres::config::SslMode::Require;
    if remote && !tls_required {
        return Err(StoreError::Backend(
            "the URL names another host: a database off this machine is reached over TLS \
             only; add sslmode=require to the URL (the server's certificate and name are \
             always verified; [store] ca_file names a private CA)"
                .into(),
        ));
    }
    let tls = if tls_required {
        Some(tls::Tls::new(ca_file)?)
    } else {
        None
    };
    // Commits do not wait for the disk (`durable` does, for all at once), whatever the
    // server's default; and the tables are found in the store's schema.
    let mut options = config.get_options().unwrap_or_default().to_string();
    options.push_str(" -c synchronous_commit=off");
    if let Some(schema) = schema {
        options.push_str(&format!(" -c search_path={schema}"));
    }
    config.options(options.trim());
    if config.get_application_name().is_none() {
        config.application_name("simgate");
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(connect_timeout);
    }
    Ok((config, tls))
}

/// Whether a TCP host name stays on this machine.
fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|a| a.is_loopback())
}

/// `name` if it is a schema name that needs no quoting anywhere (it goes into
/// `search_path` and DDL as it is).
fn valid_schema(name: String) -> StoreResult<String> {
    let ok = (1..=63).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !name.starts_with("pg_");
    if ok {
        Ok(name)
    } else {
        Err(StoreError::Backend(format!(
            "schema {name:?} is not a plain lowercase name (a-z, 0-9, _; at most 63; not pg_...)"
        )))
    }
}

/// A failure on the way to the database, kept whole until it leaves the store: a commit
/// that lost a deadlock is tried again; anything else becomes a [`StoreError`].
#[derive(Debug)]
enum Fault {
    /// The database or the connection failed.
    Db(tokio_postgres::Error),
    /// No connection could be had.
    Pool(PoolError),
    /// Anything else (a record that does not decode, a rule a caller broke).
    Store(StoreError),
}

/// Result inside the store.
type Faulty<T> = Result<T, Fault>;

impl Fault {
    /// Whether the transaction lost to another one and can simply run again.
    fn lost_a_race(&self) -> bool {
        use tokio_postgres::error::SqlState;
        matches!(self, Fault::Db(e) if matches!(
            e.code(),
            Some(&SqlState::T_R_DEADLOCK_DETECTED) | Some(&SqlState::T_R_SERIALIZATION_FAILURE)
        ))
    }
}

impl From<tokio_postgres::Error> for Fault {
    fn from(e: tokio_postgres::Error) -> Fault {
        Fault::Db(e)
    }
}

impl From<PoolError> for Fault {
    fn from(e: PoolError) -> Fault {
        Fault::Pool(e)
    }
}

impl From<StoreError> for Fault {
    fn from(e: StoreError) -> Fault {
        Fault::Store(e)
    }
}

impl From<Fault> for StoreError {
    fn from(fault: Fault) -> StoreError {
        match fault {
            // The error's own text names only its kind; the server's message (or the TLS
            // handshake's reason) is among its sources.
            Fault::Db(e) => StoreError::Backend(format!("PostgreSQL: {}", with_sources(&e))),
            Fault::Pool(PoolError::Closed) => StoreError::Backend("the store is closed".into()),
            Fault::Pool(e) => {
                StoreError::Backend(format!("PostgreSQL connection: {}", with_sources(&e)))
            }
            Fault::Store(e) => e,
        }
    }
}

/// `e` and every error under it that adds something, as one line.
fn with_sources(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(source) = next {
        let said = source.to_string();
        if !text.ends_with(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        next = source.source();
    }
    text
}

/// Parameters of a statement.
type Params<'a> = [&'a (dyn ToSql + Sync)];

/// The rows `sql` returns (prepared once per connection).
async fn query<C: GenericClient>(c: &C, sql: &str, params: &Params<'_>) -> Faulty<Vec<Row>> {
    let statement = c.prepare_cached(sql).await?;
    Ok(c.query(&statement, params).await?)
}

/// The row `sql` returns, if any.
async fn query_opt<C: GenericClient>(c: &C, sql: &str, params: &Params<'_>) -> Faulty<Option<Row>> {
    let statement = c.prepare_cached(sql).await?;
    Ok(c.query_opt(&statement, params).await?)
}

/// The JSON record (column `record`) of the row `sql` returns, if any.
async fn record_opt<C: GenericClient, T: DeserializeOwned>(
    c: &C,
    sql: &str,
    params: &Params<'_>,
) -> Faulty<Option<T>> {
    query_opt(c, sql, params)
        .await?
        .map(|row| record(&row, "record"))
        .transpose()
}

/// Run `sql`; returns how many rows it changed.
async fn execute<C: GenericClient>(c: &C, sql: &str, params: &Params<'_>) -> Faulty<u64> {
    let statement = c.prepare_cached(sql).await?;
    Ok(c.execute(&statement, params).await?)
}

/// Column `column` of `row`, a JSON record.
fn record<T: DeserializeOwned>(row: &Row, column: &str) -> Faulty<T> {
    row.try_get::<_, Json<T>>(column)
        .map(|Json(value)| value)
        .map_err(|e| StoreError::Decode(format!("column {column}: {e}")).into())
}

/// Column 0 of each row, a JSON record.
fn records<T: DeserializeOwned>(rows: &[Row]) -> Faulty<Vec<T>> {
    rows.iter().map(|row| record(row, "record")).collect()
}

/// Column `column` of `row`, a plain value.
fn column<'a, T: tokio_postgres::types::FromSql<'a>>(row: &'a Row, column: &str) -> Faulty<T> {
    row.try_get(column)
        .map_err(|e| StoreError::Decode(format!("column {column}: {e}")).into())
}

/// A 16-byte id column as a ULID.
fn ulid_column(row: &Row, name: &str) -> Faulty<Ulid> {
    let bytes: &[u8] = column(row, name)?;
    let bytes: [u8; 16] = bytes
        .try_into()
        .map_err(|_| StoreError::Decode(format!("column {name} is not a 16-byte id")))?;
    Ok(Ulid::from_bytes(bytes))
}

/// A time or count for a `bigint` column. Values past `i64::MAX` (no real time) are
/// stored as `i64::MAX`, which keeps every comparison with a real time right; the exact
/// value stays in the record.
fn big(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A row count for `LIMIT`.
fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// `LIMIT` for a page of `n`: one more, to tell whether older items follow.
fn page_limit(n: usize) -> i64 {
    limit(n.saturating_add(1))
}

/// The first `n` of `items` and whether more were read.
fn page<T>(mut items: Vec<T>, n: usize) -> Page<T> {
    let has_more = items.len() > n;
    items.truncate(n);
    Page { items, has_more }
}

/// The upper bound of a newest-first page: ids below `before`, or every id.
fn before_bound(before: Option<Ulid>) -> [u8; 16] {
    before.map_or([0xff; 16], |id| id.to_bytes())
}

/// The wire name of a unit enum (an order status, an entry kind) for a text column.
fn wire_name<T: Serialize>(value: &T) -> Faulty<String> {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => Ok(name),
        _ => Err(StoreError::Decode("a status without a wire name".into()).into()),
    }
}

/// An order as a row of `orders`.
async fn put_order<C: GenericClient>(c: &C, order: &Order) -> Faulty<()> {
    let status = wire_name(&order.status)?;
    execute(
        c,
        "INSERT INTO orders (id, reseller, status, updated_at_ms, record)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (id) DO UPDATE SET reseller = excluded.reseller,
             status = excluded.status, updated_at_ms = excluded.updated_at_ms,
             record = excluded.record",
        &[
            &&order.id.to_bytes()[..],
            &&order.reseller.to_bytes()[..],
            &status,
            &big(order.updated_at_ms),
            &Json(order),
        ],
    )
    .await?;
    Ok(())
}

/// The stored eSIMs of `orders`' ICCIDs, by ICCID.
async fn esims_of<C: GenericClient>(
    c: &C,
    orders: &[Order],
) -> Faulty<HashMap<String, EsimRecord>> {
    let iccids: Vec<&str> = orders
        .iter()
        .flat_map(|o| o.iccids.iter().map(String::as_str))
        .collect();
    if iccids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = query(
        c,
        "SELECT iccid, record FROM esims WHERE iccid = ANY($1)",
        &[&iccids],
    )
    .await?;
    rows.iter()
        .map(|row| Ok((column(row, "iccid")?, record(row, "record")?)))
        .collect()
}

/// `orders`, each with the stored eSIMs of its ICCIDs in the order's order.
async fn with_esims<C: GenericClient>(
    c: &C,
    orders: Vec<Order>,
) -> Faulty<Vec<(Order, Vec<EsimRecord>)>> {
    let esims = esims_of(c, &orders).await?;
    Ok(orders
        .into_iter()
        .map(|order| {
            let mine = order
                .iccids
                .iter()
                .filter_map(|iccid| esims.get(iccid).cloned())
                .collect();
            (order, mine)
        })
        .collect())
}

#[async_trait::async_trait]
impl Store for PgStore {
    async fn reseller(&self, id: ResellerId) -> StoreResult<Option<Reseller>> {
        let c = self.client().await?;
        Ok(record_opt(
            &c,
            "SELECT record FROM resellers WHERE id = $1",
            &[&&id.to_bytes()[..]],
        )
        .await?)
    }

    async fn resellers(&self) -> StoreResult<Vec<Reseller>> {
        let c = self.client().await?;
        let rows = query(&c, "SELECT record FROM resellers ORDER BY id", &[]).await?;
        Ok(records(&rows)?)
    }

    async fn put_reseller(&self, reseller: &Reseller) -> StoreResult<()> {
        let c = self.client().await?;
        execute(
            &c,
            "INSERT INTO resellers (id, record) VALUES ($1, $2)
             ON CONFLICT (id) DO UPDATE SET record = excluded.record",
            &[&&reseller.id.to_bytes()[..], &Json(reseller)],
        )
        .await?;
        Ok(())
    }

    async fn api_key(&self, hash: &KeyHash) -> StoreResult<Option<ApiKey>> {
        let c = self.client().await?;
        Ok(record_opt(
            &c,
            "SELECT record FROM api_keys WHERE hash = $1",
            &[&&hash.0[..]],
        )
        .await?)
    }

    async fn api_key_by_id(&self, id: KeyId) -> StoreResult<Option<ApiKey>> {
        let c = self.client().await?;
        Ok(record_opt(
            &c,
            "SELECT k.record FROM api_key_ids i JOIN api_keys k ON k.hash = i.hash
             WHERE i.id = $1",
            &[&&id.to_bytes()[..]],
        )
        .await?)
    }

    async fn put_api_key(&self, key: &ApiKey) -> StoreResult<()> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(Fault::from)?;
        let reseller = key.reseller.map(|r| r.to_bytes().to_vec());
        execute(
            &tx,
            "INSERT INTO api_keys (hash, reseller, record) VALUES ($1, $2, $3)
             ON CONFLICT (hash) DO UPDATE SET reseller = excluded.reseller,
                 record = excluded.record",
            &[&&key.hash.0[..], &reseller, &Json(key)],
        )
        .await?;
        execute(
            &tx,
            "INSERT INTO api_key_ids (id, hash) VALUES ($1, $2)
             ON CONFLICT (id) DO UPDATE SET hash = excluded.hash",
            &[&&key.id.to_bytes()[..], &&key.hash.0[..]],
        )
        .await?;
        tx.commit().await.map_err(Fault::from)?;
        Ok(())
    }

    async fn order(&self, id: OrderId) -> StoreResult<Option<Order>> {
        let c = self.client().await?;
        Ok(record_opt(
            &c,
            "SELECT record FROM orders WHERE id = $1",
            &[&&id.to_bytes()[..]],
        )
        .await?)
    }

    async fn order_and_esims(&self, id: OrderId) -> StoreResult<Option<(Order, Vec<EsimRecord>)>> {
        // One round trip (every read of an order, `GET /v1/orders/{id}` above all): the
        // order on each row, beside one of the eSIMs it owns.
        let c = self.client().await?;
        let rows = query(
            &c,
            "SELECT o.record, e.iccid, e.record AS esim FROM orders o
             LEFT JOIN esims e ON e.order_id = o.id WHERE o.id = $1",
            &[&&id.to_bytes()[..]],
        )
        .await?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let order: Order = record(first, "record")?;
        let mut owned: HashMap<String, EsimRecord> = HashMap::new();
        for row in &rows {
            let iccid: Option<String> = row.try_get("iccid").map_err(Fault::from)?;
            if let Some(iccid) = iccid {
                owned.insert(iccid, record(row, "esim")?);
            }
        }
        // In the order's own order of ICCIDs, as `with_esims` gives them.
        let mine = order
            .iccids
            .iter()
            .filter_map(|iccid| owned.remove(iccid))
            .collect();
        Ok(Some((order, mine)))
    }

    async fn orders_page(
        &self,
        reseller: ResellerId,
        before: Option<OrderId>,
        status: Option<OrderStatus>,
        limit: usize,
    ) -> StoreResult<Page<(Order, Vec<EsimRecord>)>> {
        let c = self.client().await?;
        let status = status.as_ref().map(wire_name).transpose()?;
        let rows = query(
            &c,
            "SELECT record FROM orders
             WHERE reseller = $1 AND id < $2 AND ($3::text IS NULL OR status = $3)
             ORDER BY id DESC LIMIT $4",
            &[
                &&reseller.to_bytes()[..],
                &&before_bound(before.map(|b| b.0))[..],
                &status,
                &page_limit(limit),
            ],
        )
        .await?;
        let orders = page(records(&rows)?, limit);
        Ok(Page {
            items: with_esims(&c, orders.items).await?,
            has_more: orders.has_more,
        })
    }

    async fn open_orders(&self) -> StoreResult<Vec<Order>> {
        // Open: not final, and its hold is neither captured nor released (as the books
        // of the other stores count it).
        let c = self.client().await?;
        let rows = query(
            &c,
            "SELECT o.record FROM orders o
             WHERE o.status NOT IN ('fulfilled', 'failed', 'cancelled')
               AND EXISTS (SELECT 1 FROM ledger h WHERE h.order_id = o.id AND h.kind = 'hold')
               AND NOT EXISTS (SELECT 1 FROM ledger s
                               WHERE s.order_id = o.id AND s.kind IN ('capture', 'release'))
             ORDER BY o.id",
            &[],
        )
        .await?;
        Ok(records(&rows)?)
    }

    async fn put_order(&self, order: &Order) -> StoreResult<()> {
        let c = self.client().await?;
        Ok(put_order(&c, order).await?)
    }

    async fn commit(&self, commit: &Commit) -> StoreResult<Result<Option<Balance>, Rejected>> {
        let mut tries = 0;
        loop {
            tries += 1;
            let mut c = self.client().await?;
            match money::commit(&mut c, commit).await {
                Err(fault) if fault.lost_a_race() && tries < COMMIT_TRIES => continue,
                done => return Ok(done?),
            }
        }
    }

    async fn events_page(
        &self,
        reseller: ResellerId,
        before: Option<EventId>,
        kind: Option<EventType>,
        limit: usize,
    ) -> StoreResult<Page<Event>> {
        let c = self.client().await?;
        let rows = query(
            &c,
            "SELECT record FROM events
             WHERE reseller = $1 AND id < $2 AND ($3::text IS NULL OR kind = $3)
             ORDER BY id DESC LIMIT $4",
            &[
                &&reseller.to_bytes()[..],
                &&before_bound(before.map(|b| b.0))[..],
                &kind.map(EventType::name),
                &page_limit(limit),
            ],
        )
        .await?;
        Ok(page(records(&rows)?, limit))
    }

    async fn event(&self, reseller: ResellerId, id: EventId) -> StoreResult<Option<Event>> {
        let c = self.client().await?;
        Ok(record_opt(
            &c,
            "SELECT record FROM events WHERE reseller = $1 AND id = $2",
            &[&&reseller.to_bytes()[..], &&id.to_bytes()[..]],
        )
        .await?)
    }

    async fn outbox(&self, n: usize) -> StoreResult<Vec<Event>> {
        let c = self.client().await?;
        let rows = query(
            &c,
            "SELECT e.record FROM outbox o
             JOIN events e ON e.reseller = o.reseller AND e.id = o.event_id
             ORDER BY o.event_id LIMIT $1",
            &[&limit(n)],
        )
        .await?;
        Ok(records(&rows)?)
    }

    async fn dispatched(&self, events: &[Event]) -> StoreResult<()> {
        let c = self.client().await?;
        let ids: Vec<Vec<u8>> = events.iter().map(|e| e.id.to_bytes().to_vec()).collect();
        execute(&c, "DELETE FROM outbox WHERE event_id = ANY($1)", &[&ids]).await?;
        Ok(())
    }

    async fn put_endpoint(&self, endpoint: &Endpoint) -> StoreResult<()> {
        let c = self.client().await?;
        Ok(money::put_endpoint(&c, endpoint).await?)
    }

    async fn endpoint(
        &self,
        reseller: ResellerId,
        id: EndpointId,
    ) -> StoreResult<Option<Endpoint>> {
        let c = self.client().await?;
        Ok(record_opt(
            &c,
            "SELECT record FROM webhook_endpoints WHERE reseller = $1 AND id = $2",
            &[&&reseller.to_bytes()[..], &&id.to_bytes()[..]],
        )
        .await?)
    }

    async fn endpoints(&self, reseller: ResellerId) -> StoreResult<Vec<Endpoint>> {
        let c = self.client().await?;
        let rows = query(
            &c,
            "SELECT record FROM webhook_endpoints WHERE reseller = $1 ORDER BY id",
            &[&&reseller.to_bytes()[..]],
        )
        .await?;
        Ok(records(&rows)?)
    }

    async fn delete_endpoint(&self, reseller: ResellerId, id: EndpointId) -> StoreResult<bool> {
        let c = self.client().await?;
        let deleted = execute(
            &c,
            "DELETE FROM webhook_endpoints WHERE reseller = $1 AND id = $2",
            &[&&reseller.to_bytes()[..], &&id.to_bytes()[..]],
        )
        .await?;
        Ok(deleted > 0)
    }

    async fn put_attempt(&self, attempt: &Attempt) -> StoreResult<()> {
        let c = self.client().await?;
        execute(
            &c,
            "INSERT INTO webhook_attempts (endpoint, id, reseller, at_ms, record)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (endpoint, id) DO UPDATE SET reseller = excluded.reseller,
                 at_ms = excluded.at_ms, record = excluded.record",
            &[
                &&attempt.endpoint.to_bytes()[..],
                &&attempt.id.to_bytes()[..],
                &&attempt.reseller.to_bytes()[..],
                &big(attempt.at_ms),
                &Json(attempt),
            ],
        )
        .await?;
        Ok(())
    }

    async fn expire_attempts(&self, cutoff_ms: u64, n: usize) -> StoreResult<usize> {
        let c = self.client().await?;
        Ok(retention::expire_attempts(&c, cutoff_ms, n).await?)
    }

    async fn attempts_page(
        &self,
        reseller: ResellerId,
        endpoint: EndpointId,
        before: Option<AttemptId>,
        limit: usize,
    ) -> StoreResult<Page<Attempt>> {
        let c = self.client().await?;
        let rows = query(
            &c,
            "SELECT record FROM webhook_attempts
             WHERE endpoint = $1 AND id < $2 AND reseller = $3
             ORDER BY id DESC LIMIT $4",
            &[
                &&endpoint.to_bytes()[..],
                &&before_bound(before.map(|b| b.0))[..],
                &&reseller.to_bytes()[..],
                &page_limit(limit),
            ],
        )
        .await?;
        Ok(page(records(&rows)?, limit))
    }

    async fn balance(&self, reseller: ResellerId, currency: &str) -> StoreResult<Balance> {
        let c = self.client().await?;
        let row = query_opt(
            &c,
            "SELECT available, held FROM balances WHERE reseller = $1 AND currency = $2",
            &[&&reseller.to_bytes()[..], &currency],
        )
        .await?;
        Ok(row
            .map(|r| money::balance_of(&r))
            .transpose()?
            .unwrap_or_default())
    }

    async fn balances(&self, reseller: ResellerId) -> StoreResult<Vec<(String, Balance)>> {
        let c = self.client().await?;
        let rows = query(
            &c,
            "SELECT currency, available, held FROM balances WHERE reseller = $1
             ORDER BY currency",
            &[&&reseller.to_bytes()[..]],
        )
        .await?;
        Ok(rows
            .iter()
            .map(|r| Ok((column(r, "currency")?, money::balance_of(r)?)))
            .collect::<Faulty<_>>()?)
    }

    async fn ledger_entry(
        &self,
        reseller: ResellerId,
        id: Ulid,
    ) -> StoreResult<Option<LedgerEntry>> {
        let c = self.client().await?;
        Ok(record_opt(
            &c,
            "SELECT record FROM ledger WHERE reseller = $1 AND id = $2",
            &[&&reseller.to_bytes()[..], &&id.to_bytes()[..]],
        )
        .await?)
    }

    async fn ledger_page(
        &self,
        reseller: ResellerId,
        before: Option<Ulid>,
        limit: usize,
    ) -> StoreResult<Page<LedgerEntry>> {
        let c = self.client().await?;
        let rows = query(
            &c,
            "SELECT record FROM ledger WHERE reseller = $1 AND id < $2
             ORDER BY id DESC LIMIT $3",
            &[
                &&reseller.to_bytes()[..],
                &&before_bound(before)[..],
                &page_limit(limit),
            ],
        )
        .await?;
        Ok(page(records(&rows)?, limit))
    }

    async fn esim(&self, iccid: &str) -> StoreResult<Option<EsimRecord>> {
        let c = self.client().await?;
        Ok(record_opt(&c, "SELECT record FROM esims WHERE iccid = $1", &[&iccid]).await?)
    }

    async fn claim_idempotency(
        &self,
        key: &IdemKey,
        fingerprint: &[u8; 32],
        now_ms: u64,
    ) -> StoreResult<Claim> {
        let mut c = self.client().await?;
        Ok(idempotency::claim(&mut c, key, fingerprint, now_ms).await?)
    }

    async fn finish_idempotency(&self, key: &IdemKey, state: &IdemState) -> StoreResult<()> {
        let mut c = self.client().await?;
        Ok(idempotency::finish(&mut c, key, state).await?)
    }

    async fn release_idempotency(&self, key: &IdemKey) -> StoreResult<()> {
        let c = self.client().await?;
        execute(
            &c,
            "DELETE FROM idempotency WHERE key = $1",
            &[&key.storage_key()],
        )
        .await?;
        Ok(())
    }

    async fn expire_idempotency(&self, cutoff_ms: u64) -> StoreResult<usize> {
        let c = self.client().await?;
        Ok(idempotency::expire(&c, cutoff_ms).await?)
    }

    async fn subject_key(&self, lookup: &SubjectLookup) -> StoreResult<Option<Vec<u8>>> {
        let c = self.client().await?;
        let row = query_opt(
            &c,
            "SELECT wrapped FROM subject_keys WHERE lookup = $1",
            &[&&lookup.0[..]],
        )
        .await?;
        Ok(row.map(|r| column(&r, "wrapped")).transpose()?)
    }

    async fn create_subject_key(
        &self,
        lookup: &SubjectLookup,
        wrapped: &[u8],
    ) -> StoreResult<Vec<u8>> {
        let c = self.client().await?;
        // The first key inserted stays; a second creator reads it. The loop covers a key
        // destroyed between the two statements.
        loop {
            let inserted = execute(
                &c,
                "INSERT INTO subject_keys (lookup, wrapped) VALUES ($1, $2)
                 ON CONFLICT (lookup) DO NOTHING",
                &[&&lookup.0[..], &wrapped],
            )
            .await?;
            if inserted == 1 {
                return Ok(wrapped.to_vec());
            }
            let kept = query_opt(
                &c,
                "SELECT wrapped FROM subject_keys WHERE lookup = $1",
                &[&&lookup.0[..]],
            )
            .await?;
            if let Some(row) = kept {
                return Ok(column(&row, "wrapped")?);
            }
        }
    }

    async fn index_subject_order(
        &self,
        reseller: ResellerId,
        subject: &SubjectLookup,
        order: OrderId,
    ) -> StoreResult<()> {
        let c = self.client().await?;
        execute(
            &c,
            "INSERT INTO subject_orders (reseller, subject, order_id) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
            &[
                &&reseller.to_bytes()[..],
                &&subject.0[..],
                &&order.to_bytes()[..],
            ],
        )
        .await?;
        Ok(())
    }

    async fn subject_orders(
        &self,
        reseller: ResellerId,
        subject: &SubjectLookup,
        n: usize,
    ) -> StoreResult<Vec<OrderId>> {
        let c = self.client().await?;
        let rows = query(
            &c,
            "SELECT order_id FROM subject_orders WHERE reseller = $1 AND subject = $2
             ORDER BY order_id LIMIT $3",
            &[&&reseller.to_bytes()[..], &&subject.0[..], &limit(n)],
        )
        .await?;
        Ok(rows
            .iter()
            .map(|r| ulid_column(r, "order_id").map(OrderId))
            .collect::<Faulty<_>>()?)
    }

    async fn destroy_subject_key(&self, lookup: &SubjectLookup) -> StoreResult<bool> {
        let c = self.client().await?;
        let deleted = execute(
            &c,
            "DELETE FROM subject_keys WHERE lookup = $1",
            &[&&lookup.0[..]],
        )
        .await?;
        Ok(deleted > 0)
    }

    async fn restriction(
        &self,
        reseller: ResellerId,
        subject: &SubjectLookup,
    ) -> StoreResult<Option<Restriction>> {
        let c = self.client().await?;
        Ok(record_opt(
            &c,
            "SELECT record FROM restrictions WHERE reseller = $1 AND subject = $2",
            &[&&reseller.to_bytes()[..], &&subject.0[..]],
        )
        .await?)
    }

    async fn set_restriction(
        &self,
        reseller: ResellerId,
        subject: &SubjectLookup,
        restriction: Option<&Restriction>,
    ) -> StoreResult<()> {
        let c = self.client().await?;
        let (reseller, subject) = (&reseller.to_bytes()[..], &subject.0[..]);
        match restriction {
            Some(r) => {
                execute(
                    &c,
                    "INSERT INTO restrictions (reseller, subject, record) VALUES ($1, $2, $3)
                     ON CONFLICT (reseller, subject) DO UPDATE SET record = excluded.record",
                    &[&reseller, &subject, &Json(r)],
                )
                .await?
            }
            None => {
                execute(
                    &c,
                    "DELETE FROM restrictions WHERE reseller = $1 AND subject = $2",
                    &[&reseller, &subject],
                )
                .await?
            }
        };
        Ok(())
    }

    async fn purge_transactions(&self, cutoff_ms: u64, n: usize) -> StoreResult<usize> {
        let mut c = self.client().await?;
        Ok(retention::purge_transactions(&mut c, cutoff_ms, n).await?)
    }

    async fn forget_account(&self, reseller: ResellerId, n: usize) -> StoreResult<usize> {
        let mut c = self.client().await?;
        Ok(retention::forget_account(&mut c, reseller, n).await?)
    }

    async fn append_requests(&self, records: &[RequestRecord]) -> StoreResult<()> {
        if records.is_empty() {
            return Ok(());
        }
        let c = self.client().await?;
        // One statement per batch (every API request is logged: a round trip each would
        // cost more than many requests themselves).
        let ids: Vec<Vec<u8>> = records.iter().map(|r| r.id.to_bytes().to_vec()).collect();
        let bodies: Vec<Json<&RequestRecord>> = records.iter().map(Json).collect();
        execute(
            &c,
            "INSERT INTO requests (id, record) SELECT * FROM unnest($1::bytea[], $2::json[])
             ON CONFLICT (id) DO UPDATE SET record = excluded.record",
            &[&ids, &bodies],
        )
        .await?;
        Ok(())
    }

    async fn requests_page(
        &self,
        before: Option<Ulid>,
        limit: usize,
    ) -> StoreResult<Page<RequestRecord>> {
        let c = self.client().await?;
        let rows = query(
            &c,
            "SELECT record FROM requests WHERE id < $1 ORDER BY id DESC LIMIT $2",
            &[&&before_bound(before)[..], &page_limit(limit)],
        )
        .await?;
        Ok(page(records(&rows)?, limit))
    }

    async fn expire_requests(&self, cutoff_ms: u64, n: usize) -> StoreResult<usize> {
        let c = self.client().await?;
        Ok(retention::expire_requests(&c, cutoff_ms, n).await?)
    }

    async fn put_consent(&self, event: &ConsentEvent) -> StoreResult<()> {
        let c = self.client().await?;
        execute(
            &c,
            "INSERT INTO consents (reseller, subject, id, record) VALUES ($1, $2, $3, $4)
             ON CONFLICT (reseller, subject, id) DO UPDATE SET record = excluded.record",
            &[
                &&event.reseller.to_bytes()[..],
                &&event.subject.0[..],
                &&event.id.to_bytes()[..],
                &Json(event),
            ],
        )
        .await?;
        Ok(())
    }

    async fn consents(
        &self,
        reseller: ResellerId,
        subject: &SubjectLookup,
        n: usize,
    ) -> StoreResult<Vec<ConsentEvent>> {
        let c = self.client().await?;
        let rows = query(
            &c,
            "SELECT record FROM consents WHERE reseller = $1 AND subject = $2
             ORDER BY id LIMIT $3",
            &[&&reseller.to_bytes()[..], &&subject.0[..], &limit(n)],
        )
        .await?;
        Ok(records(&rows)?)
    }

    async fn put_job(&self, job: &Job) -> StoreResult<()> {
        let c = self.client().await?;
        Ok(jobs::put(&c, job).await?)
    }

    async fn add_job(&self, job: &Job) -> StoreResult<bool> {
        let c = self.client().await?;
        Ok(jobs::add(&c, job).await?)
    }

    async fn hasten_job(&self, job: &Job) -> StoreResult<()> {
        let mut c = self.client().await?;
        Ok(jobs::hasten(&mut c, job).await?)
    }

    async fn job(&self, id: &str) -> StoreResult<Option<Job>> {
        let c = self.client().await?;
        Ok(record_opt(&c, "SELECT record FROM jobs WHERE id = $1", &[&id]).await?)
    }

    async fn jobs_with_prefix(&self, prefix: &str) -> StoreResult<Vec<Job>> {
        let c = self.client().await?;
        let rows = query(
            &c,
            "SELECT record FROM jobs WHERE starts_with(id, $1) ORDER BY id",
            &[&prefix],
        )
        .await?;
        Ok(records(&rows)?)
    }

    async fn claim_jobs(
        &self,
        run: &str,
        now_ms: u64,
        lease_ms: u64,
        n: usize,
    ) -> StoreResult<Vec<Job>> {
        let mut c = self.client().await?;
        Ok(jobs::claim(&mut c, run, now_ms, lease_ms, n).await?)
    }

    async fn put_node(&self, node: &NodeRecord) -> StoreResult<()> {
        let c = self.client().await?;
        Ok(jobs::put_node(&c, node).await?)
    }

    async fn nodes(&self) -> StoreResult<Vec<NodeRecord>> {
        let c = self.client().await?;
        Ok(jobs::nodes(&c).await?)
    }

    async fn delete_node(&self, id: &str) -> StoreResult<bool> {
        let c = self.client().await?;
        Ok(execute(&c, "DELETE FROM nodes WHERE id = $1", &[&id]).await? == 1)
    }

    async fn lock_order(&self, id: OrderId) -> StoreResult<Option<HeldLock>> {
        self.ensure_ready().await?;
        let lock = OrderLock(Some(self.locks.get().await.map_err(Fault::from)?));
        let (class, key) = order_lock_key(id);
        // Waits while another node (or task) holds it. Dropped half-way, `lock` still
        // frees whatever the call went on to take.
        lock.connection()
            .execute("SELECT pg_advisory_lock($1, $2)", &[&class, &key])
            .await
            .map_err(Fault::from)?;
        Ok(Some(Box::new(lock)))
    }

    async fn finish_job(&self, id: &str) -> StoreResult<()> {
        let c = self.client().await?;
        execute(&c, "DELETE FROM jobs WHERE id = $1", &[&id]).await?;
        Ok(())
    }

    async fn catalog(&self, plugin: &str) -> StoreResult<Option<CachedCatalog>> {
        let c = self.client().await?;
        Ok(record_opt(
            &c,
            "SELECT record FROM catalogs WHERE plugin = $1",
            &[&plugin],
        )
        .await?)
    }

    async fn put_catalog(&self, catalog: &CachedCatalog) -> StoreResult<()> {
        let c = self.client().await?;
        execute(
            &c,
            "INSERT INTO catalogs (plugin, record) VALUES ($1, $2)
             ON CONFLICT (plugin) DO UPDATE SET record = excluded.record",
            &[&catalog.plugin, &Json(catalog)],
        )
        .await?;
        Ok(())
    }

    async fn meta(&self, key: &str) -> StoreResult<Option<Vec<u8>>> {
        let c = self.client().await?;
        let row = query_opt(&c, "SELECT value FROM meta WHERE key = $1", &[&key]).await?;
        Ok(row.map(|r| column(&r, "value")).transpose()?)
    }

    async fn first_meta(&self, key: &str, value: &[u8]) -> StoreResult<Vec<u8>> {
        let c = self.client().await?;
        // The insert waits for a racing one to commit, then does nothing; the read sees
        // whichever went first.
        execute(
            &c,
            "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
            &[&key, &value],
        )
        .await?;
        let row = query_opt(&c, "SELECT value FROM meta WHERE key = $1", &[&key]).await?;
        Ok(row
            .map(|r| column(&r, "value"))
            .transpose()?
            .unwrap_or_default())
    }

    async fn put_meta(&self, key: &str, value: &[u8]) -> StoreResult<()> {
        let c = self.client().await?;
        execute(
            &c,
            "INSERT INTO meta (key, value) VALUES ($1, $2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            &[&key, &value],
        )
        .await?;
        Ok(())
    }

    async fn durable(&self) -> StoreResult<()> {
        // A synchronous commit of a transaction that wrote something flushes the WAL up
        // to its commit record: every commit made before this call is on disk once it
        // returns. Each connection writes its own row (`flush_marks`), so callers never
        // queue on a lock, and concurrent flushes are one write (PostgreSQL's own group
        // commit).
        let c = self.client().await?;
        execute(
            &c,
            "WITH mark AS (SELECT set_config('synchronous_commit', 'on', true))
             INSERT INTO flush_marks (pid, n) SELECT pg_backend_pid(), 1 FROM mark
             ON CONFLICT (pid) DO UPDATE SET n = flush_marks.n + 1",
            &[],
        )
        .await?;
        Ok(())
    }

    async fn close(&self) -> StoreResult<()> {
        // Nothing is buffered: closing the pool ends the connections, and later calls fail.
        self.pool.close();
        Ok(())
    }

    async fn append_audit(&self, at_ms: u64, entry: NewAuditEntry) -> StoreResult<AuditEntry> {
        let mut c = self.client().await?;
        Ok(audit::append(&mut c, at_ms, entry).await?)
    }

    async fn audit_page(
        &self,
        filter: &AuditFilter,
        before: Option<u64>,
        limit: usize,
    ) -> StoreResult<Page<AuditEntry>> {
        let c = self.client().await?;
        Ok(audit::page(&c, filter, before, limit).await?)
    }

    async fn audit_entries(&self, from: u64, n: usize) -> StoreResult<Vec<AuditEntry>> {
        let c = self.client().await?;
        let rows = query(
            &c,
            "SELECT record FROM audit_log WHERE seq >= $1 ORDER BY seq LIMIT $2",
            &[&big(from), &limit(n)],
        )
        .await?;
        Ok(records(&rows)?)
    }

    async fn audit_checkpoint(&self) -> StoreResult<Option<AuditCheckpoint>> {
        let c = self.client().await?;
        Ok(audit::checkpoint(&c).await?)
    }

    async fn purge_audit(&self, checkpoint: &AuditCheckpoint) -> StoreResult<usize> {
        let mut c = self.client().await?;
        Ok(audit::purge(&mut c, checkpoint).await?)
    }
}

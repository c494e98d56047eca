//! What the API sends that the domain has no view of its own for: one type per response
//! body, mapped from domain values, so a storage record (`Reseller`, `LedgerEntry`,
//! `ApiKey`) is never serialised to a client as it is stored. `/openapi.json` derives its
//! schemas from these types and from the domain's own views (`OrderView`, `EsimView`,
//! `UsageView`, `Product`), so the document cannot drift from what is sent.

use schemars::JsonSchema;
use serde::Serialize;

use crate::domain::accounts::{ApiKey, KeyMode, Reseller, Role};
use crate::domain::clock::rfc3339;
use crate::domain::events::{Event, EventData, EventType};
use crate::domain::ids::{EventId, KeyId, OrderId, ResellerId};
use crate::domain::ledger::{Balance, EntryKind, LedgerEntry};
use crate::domain::nodes::NodeRecord;

/// `GET /healthz`: the process answers.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: Live,
}

/// The one answer of a live process.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[schemars(inline)]
pub enum Live {
    /// It answers.
    Ok,
}

/// `GET /readyz`: the store answers and plugins are loaded.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Ready {
    /// Always `ready`.
    pub status: Readiness,
    /// Plugins with a serving version.
    pub plugins_serving: usize,
}

/// The one answer of a ready process.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[schemars(inline)]
pub enum Readiness {
    /// It can take requests.
    Ready,
}

/// One page of a list.
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(rename = "{T}List")]
pub struct Page<T> {
    /// The items.
    pub data: Vec<T>,
    /// Whether more follow: ask for them with `starting_after` set to the last id here.
    pub has_more: bool,
}

/// A list answered whole.
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(rename = "{T}List")]
pub struct All<T> {
    /// The items.
    pub data: Vec<T>,
}

/// A prepaid balance in one currency.
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(rename = "Balance")]
pub struct BalanceView {
    /// ISO 4217 currency.
    pub currency: String,
    /// Spendable now, in minor units.
    pub available: i64,
    /// Reserved by orders still running, in minor units.
    pub held: i64,
}

impl BalanceView {
    /// The balance `balance` in `currency`.
    pub fn new(currency: &str, balance: Balance) -> BalanceView {
        BalanceView {
            currency: currency.to_string(),
            available: balance.available,
            held: balance.held,
        }
    }
}

/// A `balance.low` threshold.
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(rename = "BalanceAlert")]
pub struct BalanceAlertView {
    /// ISO 4217 currency.
    pub currency: String,
    /// An order's hold that takes the available balance below this (minor units) raises
    /// `balance.low`.
    pub below_minor: i64,
}

/// A ledger entry as its reseller sees it.
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(rename = "Transaction")]
pub struct TransactionView {
    /// Entry id, a lowercase ULID (sorts by time).
    pub id: String,
    /// What it did to the balance.
    #[serde(rename = "type")]
    pub kind: EntryKind,
    /// Amount in minor units, always positive.
    pub amount: i64,
    /// ISO 4217 currency.
    pub currency: String,
    /// The order it belongs to (all but credits).
    pub order_id: Option<OrderId>,
    /// The operator's reference, on credits.
    pub note: Option<String>,
    /// When, ms since the epoch.
    pub created_at_ms: u64,
}

impl From<LedgerEntry> for TransactionView {
    fn from(e: LedgerEntry) -> TransactionView {
        TransactionView {
            id: e.id.to_string().to_lowercase(),
            kind: e.kind,
            amount: e.amount,
            currency: e.currency,
            order_id: e.order,
            note: e.note,
            created_at_ms: e.created_at_ms,
        }
    }
}

/// Something that happened to the reseller's records. A webhook delivery's body is this
/// without `id`, which travels as its `webhook-id` header.
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(rename = "Event")]
pub struct EventView {
    /// Stable id: every delivery of this event carries it.
    pub id: EventId,
    /// What happened, e.g. `order.fulfilled`.
    #[serde(rename = "type")]
    pub kind: EventType,
    /// When, RFC 3339 in UTC.
    pub timestamp: String,
    /// About what: ids and states only; read the record itself for more.
    pub data: EventData,
}

impl From<Event> for EventView {
    fn from(e: Event) -> EventView {
        EventView {
            id: e.id,
            kind: e.kind,
            timestamp: crate::domain::clock::rfc3339(e.created_at_ms),
            data: e.data,
        }
    }
}

/// A new API key, the one time its secret is shown.
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(rename = "NewKey")]
pub struct NewKeyView {
    /// The key itself: send it as `Authorization: Bearer <key>`.
    pub key: String,
    /// Its public id.
    pub id: KeyId,
    /// What it may do.
    pub role: Role,
    /// Live or test.
    pub mode: KeyMode,
    /// Its reseller; `null` for admin keys.
    pub reseller_id: Option<ResellerId>,
    /// A reminder that the key is not shown again.
    pub note: &'static str,
}

impl NewKeyView {
    /// The view of `record`, whose secret is `key`.
    pub fn new(key: String, record: &ApiKey) -> NewKeyView {
        NewKeyView {
            key,
            id: record.id,
            role: record.role,
            mode: record.mode,
            reseller_id: record.reseller,
            note: "shown once: store it now",
        }
    }
}

/// An API key without its secret.
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(rename = "Key")]
pub struct KeyView {
    /// Its public id.
    pub id: KeyId,
    /// What it may do.
    pub role: Role,
    /// When it stops working, ms since the epoch; `null` while it has no end.
    pub expires_at_ms: Option<u64>,
}

impl From<ApiKey> for KeyView {
    fn from(k: ApiKey) -> KeyView {
        KeyView {
            id: k.id,
            role: k.role,
            expires_at_ms: k.expires_at_ms,
        }
    }
}

/// A reseller account.
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(rename = "Reseller")]
pub struct ResellerView {
    /// Id.
    pub id: ResellerId,
    /// Display name.
    pub name: String,
    /// Markup over wholesale in basis points (1500 = 15%).
    pub markup_bps: u32,
    /// Creation time, ms since the epoch.
    pub created_at_ms: u64,
    /// When the account was closed, if it was.
    pub closed_at_ms: Option<u64>,
}

impl From<Reseller> for ResellerView {
    fn from(r: Reseller) -> ResellerView {
        ResellerView {
            id: r.id,
            name: r.name,
            markup_bps: r.markup_bps,
            created_at_ms: r.created_at_ms,
            closed_at_ms: r.closed_at_ms,
        }
    }
}

/// One record of the API request log.
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(rename = "RequestLogEntry")]
pub struct RequestView {
    /// Id, a lowercase ULID (sorts by time).
    pub id: String,
    /// When it was answered, ms since the epoch.
    pub at_ms: u64,
    /// Method.
    pub method: String,
    /// Route template (`other` for no route).
    pub route: String,
    /// Status answered.
    pub status: u16,
    /// The API key that authenticated, if one did.
    pub key_id: Option<crate::domain::ids::KeyId>,
    /// The client's network (/24 or /48).
    pub client: String,
    /// Time to answer, µs.
    pub latency_us: u64,
}

impl From<crate::domain::request_log::RequestRecord> for RequestView {
    fn from(r: crate::domain::request_log::RequestRecord) -> RequestView {
        RequestView {
            id: r.id.to_string().to_lowercase(),
            at_ms: r.id.timestamp_ms(),
            method: r.method,
            route: r.route,
            status: r.status,
            key_id: r.key,
            client: r.client,
            latency_us: r.micros,
        }
    }
}

/// A gateway node sharing this store, as its last heartbeat described it.
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(rename = "Node")]
pub struct NodeView {
    /// The node (kept in its data directory across restarts).
    pub id: String,
    /// The address it listens on.
    pub address: String,
    /// The simgate version it runs.
    pub version: String,
    /// `alive` (beating), `stopped` (shut down cleanly) or `gone` (silent for four
    /// heartbeats: killed, or cut off from the store; its jobs are taken up by others).
    pub status: &'static str,
    /// Whether this is the node that answered.
    pub this_node: bool,
    /// When its current run started (RFC 3339).
    pub started_at: String,
    /// Its last heartbeat (RFC 3339).
    pub last_seen_at: String,
    /// The plugins it loaded: what each node serves may differ while a new package is
    /// being rolled out, as each node watches its own plugins folder.
    pub plugins: Vec<NodePluginView>,
}

/// One plugin as one node serves it.
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(rename = "NodePlugin")]
pub struct NodePluginView {
    /// Plugin id.
    pub id: String,
    /// `serving`, `failed_reload` (its latest package failed; an older one serves) or
    /// `failed`.
    pub state: String,
    /// The version it serves, if any.
    pub version: Option<String>,
    /// The package's SHA-256, if serving.
    pub sha256: Option<String>,
}

impl NodeView {
    /// `node` as seen at `now_ms` by node `this`.
    pub fn of(node: NodeRecord, this: &str, now_ms: u64) -> NodeView {
        NodeView {
            status: if node.stopped {
                "stopped"
            } else if node.alive(now_ms) {
                "alive"
            } else {
                "gone"
            },
            this_node: node.id == this,
            started_at: rfc3339(node.started_ms),
            last_seen_at: rfc3339(node.heartbeat_ms),
            plugins: node
                .plugins
                .into_iter()
                .map(|p| NodePluginView {
                    id: p.id,
                    state: p.state,
                    version: p.version,
                    sha256: p.sha256,
                })
                .collect(),
            id: node.id,
            address: node.address,
            version: node.version,
        }
    }
}

/// A database copy written by `POST /v1/admin/backups`.
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(rename = "Backup")]
pub struct BackupView {
    /// Where it was written, on the gateway's host (under `DATA_DIR/backups`). The key
    /// files are not in it: `simgate backup` collects them beside it.
    pub file: String,
    /// Its size.
    pub bytes: u64,
    /// SHA-256 of the file, hex.
    pub sha256: String,
    /// Trees copied.
    pub trees: usize,
    /// Records copied.
    pub entries: u64,
}

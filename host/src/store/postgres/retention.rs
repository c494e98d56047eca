//! Deleting what is past its retention, and closed accounts, a bounded batch at a time
//! (each batch one transaction, so a crash leaves whole batches done or not done).
//! Orders are stored in full, not behind ledger commit records, so nothing has to be
//! written out before a ledger entry goes.

use deadpool_postgres::{GenericClient, Object};
use ulid::Ulid;

use super::{Faulty, big, execute, limit, query, records};
use crate::domain::ids::ResellerId;
use crate::domain::orders::Order;

/// Forget up to `n` webhook attempts made before `cutoff_ms`, oldest first.
pub(super) async fn expire_attempts<C: GenericClient>(
    c: &C,
    cutoff_ms: u64,
    n: usize,
) -> Faulty<usize> {
    let deleted = execute(
        c,
        "DELETE FROM webhook_attempts WHERE (endpoint, id) IN (
             SELECT endpoint, id FROM webhook_attempts WHERE at_ms < $1
             ORDER BY at_ms, endpoint, id LIMIT $2)",
        &[&big(cutoff_ms), &limit(n)],
    )
    .await?;
    Ok(deleted as usize)
}

/// Forget up to `n` API request records made before `cutoff_ms`, oldest first.
pub(super) async fn expire_requests<C: GenericClient>(
    c: &C,
    cutoff_ms: u64,
    n: usize,
) -> Faulty<usize> {
    let cutoff = Ulid::from_parts(cutoff_ms, 0).to_bytes();
    let deleted = execute(
        c,
        "DELETE FROM requests WHERE id IN (
             SELECT id FROM requests WHERE id < $1 ORDER BY id LIMIT $2)",
        &[&&cutoff[..], &limit(n)],
    )
    .await?;
    Ok(deleted as usize)
}

/// Delete up to `n` final orders whose last change came before `cutoff_ms`, with their
/// eSIMs and their subject index entries; the ledger keeps its entries. Returns how many
/// orders went (fewer than `n`: none more is due).
pub(super) async fn purge_transactions(
    client: &mut Object,
    cutoff_ms: u64,
    n: usize,
) -> Faulty<usize> {
    let tx = client.transaction().await?;
    // Rows another node is purging are skipped, not waited for.
    let rows = query(
        &tx,
        "DELETE FROM orders WHERE id IN (
             SELECT id FROM orders
             WHERE status IN ('fulfilled', 'failed', 'cancelled') AND updated_at_ms < $1
             ORDER BY updated_at_ms, id LIMIT $2 FOR UPDATE SKIP LOCKED)
         RETURNING record",
        &[&big(cutoff_ms), &limit(n)],
    )
    .await?;
    let orders: Vec<Order> = records(&rows)?;
    let (mut iccids, mut owners) = (Vec::new(), Vec::new());
    let (mut resellers, mut subjects, mut subject_orders) = (Vec::new(), Vec::new(), Vec::new());
    for order in &orders {
        for iccid in &order.iccids {
            iccids.push(iccid.as_str());
            owners.push(order.id.to_bytes().to_vec());
        }
        if let Some(subject) = order.personal.as_ref().and_then(|p| p.subject) {
            resellers.push(order.reseller.to_bytes().to_vec());
            subjects.push(subject.0.to_vec());
            subject_orders.push(order.id.to_bytes().to_vec());
        }
    }
    // An eSIM goes with the order that owns it (another order's ICCID stays).
    execute(
        &tx,
        "DELETE FROM esims e USING unnest($1::text[], $2::bytea[]) AS gone (iccid, order_id)
         WHERE e.iccid = gone.iccid AND e.order_id = gone.order_id",
        &[&iccids, &owners],
    )
    .await?;
    execute(
        &tx,
        "DELETE FROM subject_orders s
         USING unnest($1::bytea[], $2::bytea[], $3::bytea[]) AS gone (reseller, subject, order_id)
         WHERE s.reseller = gone.reseller AND s.subject = gone.subject
           AND s.order_id = gone.order_id",
        &[&resellers, &subjects, &subject_orders],
    )
    .await?;
    tx.commit().await?;
    Ok(orders.len())
}

/// What a closed account's deletion removes, in this order, each by the column that
/// names the account: its keys first (nothing can act for it while the rest goes), the
/// ledger newest first (what a crash leaves is a prefix that still adds up), the account
/// last. Key ids go with their keys and outbox rows with their events (cascades). Orders
/// and eSIMs stay: they are transaction records with a retention period of their own.
const ACCOUNT_RECORDS: &[(&str, &str, &str)] = &[
    ("api_keys", "reseller", ""),
    ("webhook_attempts", "reseller", ""),
    ("webhook_endpoints", "reseller", ""),
    ("consents", "reseller", ""),
    ("restrictions", "reseller", ""),
    ("subject_orders", "reseller", ""),
    ("idempotency", "reseller", ""),
    ("events", "reseller", ""),
    ("ledger", "reseller", "ORDER BY id DESC"),
    ("balances", "reseller", ""),
    ("resellers", "id", ""),
];

/// Delete up to `n` records of closed account `reseller`; returns how many (fewer than
/// `n`: the account is gone).
pub(super) async fn forget_account(
    client: &mut Object,
    reseller: ResellerId,
    n: usize,
) -> Faulty<usize> {
    let id = reseller.to_bytes();
    let tx = client.transaction().await?;
    let mut left = n;
    for (table, by, order) in ACCOUNT_RECORDS {
        if left == 0 {
            break;
        }
        // Table and column names are the constants above, never input.
        let sql = format!(
            "DELETE FROM {table} WHERE ctid = ANY(ARRAY(
                 SELECT ctid FROM {table} WHERE {by} = $1 {order} LIMIT $2))"
        );
        let deleted = execute(&tx, &sql, &[&&id[..], &limit(left)]).await?;
        left = left.saturating_sub(deleted as usize);
    }
    tx.commit().await?;
    Ok(n - left)
}

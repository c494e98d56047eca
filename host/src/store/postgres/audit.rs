//! The audit log as one hash chain across nodes: an append locks the one row of
//! `audit_head`, reads the entry before (or the purge checkpoint), and inserts the next,
//! all in one transaction. Appends from every node so take turns: numbers have no gaps,
//! each entry links to the one before, and a crash leaves a prefix of the chain.

use deadpool_postgres::{GenericClient, Object};
use tokio_postgres::types::Json;

use super::{Faulty, big, execute, page_limit, query, query_opt, record, records};
use crate::domain::audit::{AuditCheckpoint, AuditEntry, AuditFilter, GENESIS, NewAuditEntry};
use crate::domain::store::Page;

/// Take the chain's lock for the rest of the transaction.
async fn lock_head<C: GenericClient>(c: &C) -> Faulty<()> {
    query(c, "SELECT 1 FROM audit_head FOR UPDATE", &[]).await?;
    Ok(())
}

/// Append `entry` at `at_ms` (or the previous entry's time, if later).
pub(super) async fn append(
    client: &mut Object,
    at_ms: u64,
    entry: NewAuditEntry,
) -> Faulty<AuditEntry> {
    let tx = client.transaction().await?;
    lock_head(&tx).await?;
    let last = query_opt(
        &tx,
        "SELECT record FROM audit_log ORDER BY seq DESC LIMIT 1",
        &[],
    )
    .await?;
    let (seq, prev_hash, at_ms) = match last {
        Some(row) => {
            let last: AuditEntry = record(&row, "record")?;
            (last.seq + 1, last.hash, at_ms.max(last.at_ms))
        }
        // Purged to nothing: numbering goes on from the checkpoint.
        None => match checkpoint(&tx).await? {
            Some(c) => (c.first_seq, c.prev_hash, at_ms),
            None => (1, GENESIS.to_string(), at_ms),
        },
    };
    let entry = AuditEntry::chain(seq, at_ms, entry, prev_hash);
    execute(
        &tx,
        "INSERT INTO audit_log (seq, at_ms, action, reseller, record) VALUES ($1, $2, $3, $4, $5)",
        &[
            &big(entry.seq),
            &big(entry.at_ms),
            &entry.action.name(),
            &entry.reseller.map(|r| r.to_bytes().to_vec()),
            &Json(&entry),
        ],
    )
    .await?;
    tx.commit().await?;
    Ok(entry)
}

/// Entries matching `filter`, newest first, numbered below `before`.
pub(super) async fn page<C: GenericClient>(
    c: &C,
    filter: &AuditFilter,
    before: Option<u64>,
    limit: usize,
) -> Faulty<Page<AuditEntry>> {
    // Times never go back along the log, so `since` may cut the walk short in the other
    // stores; here it is one more condition.
    let rows = query(
        c,
        "SELECT record FROM audit_log
         WHERE seq < $1 AND ($2::text IS NULL OR action = $2)
           AND ($3::bytea IS NULL OR reseller = $3) AND at_ms >= $4 AND at_ms <= $5
         ORDER BY seq DESC LIMIT $6",
        &[
            &big(before.unwrap_or(u64::MAX)),
            &filter.action.map(|a| a.name()),
            &filter.reseller.map(|r| r.to_bytes().to_vec()),
            &big(filter.since_ms.unwrap_or(0)),
            &big(filter.until_ms.unwrap_or(u64::MAX)),
            &page_limit(limit),
        ],
    )
    .await?;
    Ok(super::page(records(&rows)?, limit))
}

/// The checkpoint the last purge left.
pub(super) async fn checkpoint<C: GenericClient>(c: &C) -> Faulty<Option<AuditCheckpoint>> {
    let row = query_opt(c, "SELECT record FROM audit_checkpoint", &[]).await?;
    row.map(|r| record(&r, "record")).transpose()
}

/// Keep `checkpoint` and delete every entry numbered below its `first_seq`, in one
/// transaction under the chain's lock (no append runs in between); returns how many.
pub(super) async fn purge(client: &mut Object, checkpoint: &AuditCheckpoint) -> Faulty<usize> {
    let tx = client.transaction().await?;
    lock_head(&tx).await?;
    execute(
        &tx,
        "INSERT INTO audit_checkpoint (only_row, record) VALUES (true, $1)
         ON CONFLICT (only_row) DO UPDATE SET record = excluded.record",
        &[&Json(checkpoint)],
    )
    .await?;
    let purged = execute(
        &tx,
        "DELETE FROM audit_log WHERE seq < $1",
        &[&big(checkpoint.first_seq)],
    )
    .await?;
    tx.commit().await?;
    Ok(purged as usize)
}

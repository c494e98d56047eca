//! Idempotency claims that hold across nodes: a new key is taken with one insert (of two
//! requests racing for it, the database lets exactly one in); an existing one is judged
//! under its row lock with `idempotency::judge`, the rule every store follows.

use deadpool_postgres::{GenericClient, Object};
use tokio_postgres::types::Json;

use super::{Faulty, big, column, execute, query_opt, record};
use crate::domain::accounts::KeyMode;
use crate::domain::idempotency::{self, Claim, IdemKey, IdemRecord, IdemState};
use crate::domain::ids::{OrderId, ResellerId};

/// Claim `key` for a request with `fingerprint` at `now_ms` (see `Store::claim_idempotency`).
pub(super) async fn claim(
    client: &mut Object,
    key: &IdemKey,
    fingerprint: &[u8; 32],
    now_ms: u64,
) -> Faulty<Claim> {
    let k = key.storage_key();
    let claim = IdemRecord::claim(key, fingerprint, now_ms);
    let accounts = accounts_of(key.reseller);
    let tx = client.transaction().await?;
    let judged = loop {
        // Most keys are new: try to take the key outright before reading anything.
        let inserted = execute(
            &tx,
            "INSERT INTO idempotency (key, reseller, accounts, finished, order_id,
                                      created_at_ms, record)
             VALUES ($1, $2, $3, false, $4, $5, $6)
             ON CONFLICT (key) DO NOTHING",
            &[
                &k,
                &&key.reseller.to_bytes()[..],
                &accounts,
                &&key.order.to_bytes()[..],
                &big(now_ms),
                &Json(&claim),
            ],
        )
        .await?;
        if inserted == 1 {
            break Claim::New;
        }
        let Some(row) = query_opt(
            &tx,
            "SELECT record FROM idempotency WHERE key = $1 FOR UPDATE",
            &[&k],
        )
        .await?
        else {
            // Released between the two statements: try to take it again.
            continue;
        };
        let mut existing: IdemRecord = record(&row, "record")?;
        if let IdemState::InProgress {
            order: Some(order), ..
        } = existing.state
            && created(&tx, key.reseller, order).await?
        {
            // The first request created its order (or posted its credit): that is the
            // answer now.
            existing.state = IdemState::Order { order };
        }
        let judged = idempotency::judge(Some(&existing), fingerprint, now_ms);
        if judged == Claim::New {
            // Taken over (the first request died): the key is this request's now.
            write(&tx, &k, &claim).await?;
        }
        break judged;
    };
    tx.commit().await?;
    Ok(judged)
}

/// The ids of `reseller`'s live and test accounts, whose ledgers may hold what its
/// request created.
fn accounts_of(reseller: ResellerId) -> Vec<Vec<u8>> {
    [KeyMode::Live, KeyMode::Test]
        .iter()
        .map(|m| m.account(reseller).to_bytes().to_vec())
        .collect()
}

/// Whether what an idempotent request of `reseller` creates under `id` exists: an order,
/// or a ledger entry of that id in either of its accounts (an admin's credit under the
/// reseller's key may go to its test account).
async fn created<C: GenericClient>(c: &C, reseller: ResellerId, id: OrderId) -> Faulty<bool> {
    let row = query_opt(
        c,
        "SELECT EXISTS (SELECT 1 FROM orders WHERE id = $1)
             OR EXISTS (SELECT 1 FROM ledger WHERE reseller = ANY($2) AND id = $1) AS created",
        &[&&id.to_bytes()[..], &accounts_of(reseller)],
    )
    .await?;
    Ok(row.map(|r| column(&r, "created")).transpose()? == Some(true))
}

/// Replace the stored record of key `k`.
async fn write<C: GenericClient>(c: &C, k: &[u8], rec: &IdemRecord) -> Faulty<()> {
    let (finished, order) = match &rec.state {
        IdemState::InProgress { order, .. } => (false, *order),
        IdemState::Order { order } => (true, Some(*order)),
    };
    execute(
        c,
        "UPDATE idempotency SET finished = $2, order_id = $3, created_at_ms = $4, record = $5
         WHERE key = $1",
        &[
            &k,
            &finished,
            &order.map(|o| o.to_bytes().to_vec()),
            &big(rec.created_at_ms),
            &Json(rec),
        ],
    )
    .await?;
    Ok(())
}

/// Record how the request that claimed `key` ended (a key no longer stored stays gone).
pub(super) async fn finish(client: &mut Object, key: &IdemKey, state: &IdemState) -> Faulty<()> {
    let k = key.storage_key();
    let tx = client.transaction().await?;
    let row = query_opt(
        &tx,
        "SELECT record FROM idempotency WHERE key = $1 FOR UPDATE",
        &[&k],
    )
    .await?;
    if let Some(row) = row {
        let mut rec: IdemRecord = record(&row, "record")?;
        rec.state = state.clone();
        write(&tx, &k, &rec).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Forget records first used before `cutoff_ms` that are finished, or whose creation
/// exists; returns how many.
pub(super) async fn expire<C: GenericClient>(c: &C, cutoff_ms: u64) -> Faulty<usize> {
    let deleted = execute(
        c,
        "DELETE FROM idempotency i
         WHERE i.created_at_ms < $1
           AND (i.finished
                OR (i.order_id IS NOT NULL
                    AND (EXISTS (SELECT 1 FROM orders o WHERE o.id = i.order_id)
                         OR EXISTS (SELECT 1 FROM ledger l
                                    WHERE l.reseller = ANY(i.accounts) AND l.id = i.order_id))))",
        &[&big(cutoff_ms)],
    )
    .await?;
    Ok(deleted as usize)
}

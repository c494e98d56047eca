//! [`Store::commit`](crate::domain::store::Store::commit) as one transaction: the records
//! that change together (a ledger entry and its balance, the order, its eSIMs, endpoints,
//! events and their outbox rows) are written all or nothing.
//!
//! Locks are taken in one order, so two commits wait for each other instead of
//! deadlocking (a deadlock the database still detects is tried again by the caller):
//! first the eSIMs the commit names, by ICCID, then the order, then the balance row of
//! its entry. The balance row is what every commit of one reseller waits for, so it is
//! locked last and held for as few round trips as can be: what does not depend on the
//! balance is written before, and what does (the balance, the entry, the events with
//! their outbox rows) is sent at once, pipelined on the connection, before the commit. A
//! refused commit (an ICCID another order owns, a balance that cannot cover its entry)
//! rolls back: nothing is written.

use std::collections::HashMap;

use std::future::Future;
use std::pin::Pin;

use deadpool_postgres::{GenericClient, Object, Transaction};
use tokio_postgres::Row;
use tokio_postgres::types::{Json, ToSql};

use super::{Faulty, column, execute, put_order, query, query_opt, ulid_column, wire_name};
use crate::domain::events::Event;
use crate::domain::ids::OrderId;
use crate::domain::ledger::{Balance, LedgerEntry, Refused};
use crate::domain::orders::EsimRecord;
use crate::domain::store::{Commit, IccidTaken, Rejected, StoreError};
use crate::domain::webhooks::Endpoint;

/// A balance from a row with `available` and `held`.
pub(super) fn balance_of(row: &Row) -> Faulty<Balance> {
    Ok(Balance {
        available: column(row, "available")?,
        held: column(row, "held")?,
    })
}

/// Apply `commit` in one transaction on `client`; see the module doc.
pub(super) async fn commit(
    client: &mut Object,
    commit: &Commit,
) -> Faulty<Result<Option<Balance>, Rejected>> {
    let tx = client.transaction().await?;
    match apply(&tx, commit).await {
        Ok(Ok(balance)) => {
            tx.commit().await?;
            Ok(Ok(balance))
        }
        refused_or_failed => {
            // A rollback that fails too leaves the first failure the one worth telling;
            // the connection is then dropped by the pool.
            let _ = tx.rollback().await;
            refused_or_failed
        }
    }
}

async fn apply(tx: &Transaction<'_>, commit: &Commit) -> Faulty<Result<Option<Balance>, Rejected>> {
    let stored = match claim_iccids(tx, commit).await? {
        Ok(stored) => stored,
        Err(taken) => return Ok(Err(taken.into())),
    };
    // What does not depend on the balance, before its row is locked.
    if let Some(order) = commit.order() {
        put_order(tx, order).await?;
    }
    for esim in stored {
        execute(
            tx,
            "UPDATE esims SET record = $2 WHERE iccid = $1",
            &[&esim.iccid, &Json(esim)],
        )
        .await?;
    }
    for endpoint in commit.endpoints() {
        put_endpoint(tx, endpoint).await?;
    }
    let (posted, events) = match commit.entry() {
        Some(entry) => match lock_balance(tx, entry).await? {
            Ok((before, after)) => (Some((entry, after)), commit.events_posted(before, after)),
            Err(refused) => return Ok(Err(refused.into())),
        },
        None => (None, commit.events().to_vec()),
    };
    write_posted(tx, posted, &events).await?;
    Ok(Ok(posted.map(|(_, after)| after)))
}

/// Write, in one round trip (the statements pipelined), the balance after `posted`'s
/// entry, the entry itself, and `events` with their outbox rows.
async fn write_posted(
    tx: &Transaction<'_>,
    posted: Option<(&LedgerEntry, Balance)>,
    events: &[Event],
) -> Faulty<()> {
    type Param<'p> = &'p (dyn ToSql + Sync);
    let entry_values = match posted {
        Some((entry, after)) => Some((
            entry.reseller.to_bytes().to_vec(),
            entry.id.to_bytes().to_vec(),
            wire_name(&entry.kind)?,
            entry.order.map(|o| o.to_bytes().to_vec()),
            Json(entry),
            after,
            entry,
        )),
        None => None,
    };
    let event_values: Vec<_> = events
        .iter()
        .map(|e| {
            let (reseller, id) = (e.reseller.to_bytes().to_vec(), e.id.to_bytes().to_vec());
            (reseller, id, e.kind.name(), Json(e))
        })
        .collect();
    let entry_params =
        entry_values
            .as_ref()
            .map(|(reseller, id, kind, order, record, after, entry)| {
                (
                    [
                        reseller as Param,
                        &entry.currency,
                        &after.available,
                        &after.held,
                    ],
                    [
                        reseller as Param,
                        id,
                        kind,
                        &entry.amount,
                        &entry.currency,
                        order,
                        record,
                    ],
                )
            });
    let event_params: Vec<([Param; 4], [Param; 2])> = event_values
        .iter()
        .map(|(reseller, id, kind, record)| {
            (
                [reseller as Param, id, kind, record],
                [reseller as Param, id],
            )
        })
        .collect();
    let mut writes: Vec<Pin<Box<dyn Future<Output = Faulty<u64>> + Send + '_>>> = Vec::new();
    if let Some((balance, ledger)) = &entry_params {
        writes.push(Box::pin(execute(
            tx,
            "UPDATE balances SET available = $3, held = $4 WHERE reseller = $1 AND currency = $2",
            balance,
        )));
        writes.push(Box::pin(execute(
            tx,
            "INSERT INTO ledger (reseller, id, kind, amount, currency, order_id, record)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            ledger,
        )));
    }
    for (event, outbox) in &event_params {
        writes.push(Box::pin(execute(
            tx,
            "INSERT INTO events (reseller, id, kind, record) VALUES ($1, $2, $3, $4)
             ON CONFLICT (reseller, id) DO UPDATE SET kind = excluded.kind,
                 record = excluded.record",
            event,
        )));
        writes.push(Box::pin(execute(
            tx,
            "INSERT INTO outbox (event_id, reseller) VALUES ($2, $1)
             ON CONFLICT (event_id) DO NOTHING",
            outbox,
        )));
    }
    futures_util::future::try_join_all(writes).await?;
    Ok(())
}

/// Claim the ICCIDs of `commit`'s eSIMs for its order, locking each eSIM row: a new
/// ICCID is inserted with its record (of two commits racing for it, the second waits for
/// the first and then finds it owned); one already stored must be the order's own.
/// Returns the eSIMs already stored, to update once the commit is known to go through.
async fn claim_iccids<'c>(
    tx: &Transaction<'_>,
    commit: &'c Commit,
) -> Faulty<Result<Vec<&'c EsimRecord>, IccidTaken>> {
    let esims = commit.esims();
    if esims.is_empty() {
        return Ok(Ok(Vec::new()));
    }
    let mut iccids: Vec<&str> = esims.iter().map(|e| e.iccid.as_str()).collect();
    iccids.sort_unstable();
    iccids.dedup();
    let rows = query(
        tx,
        "SELECT iccid, order_id FROM esims WHERE iccid = ANY($1) ORDER BY iccid FOR UPDATE",
        &[&iccids],
    )
    .await?;
    let owners: HashMap<String, OrderId> = rows
        .iter()
        .map(|r| Ok((column(r, "iccid")?, OrderId(ulid_column(r, "order_id")?))))
        .collect::<Faulty<_>>()?;
    let mut stored = Vec::new();
    let mut new = Vec::new();
    for esim in esims {
        match owners.get(&esim.iccid) {
            Some(&owner) => match taken(commit, esim, owner) {
                Some(taken) => return Ok(Err(taken)),
                None => stored.push(esim),
            },
            // A change delivers nothing: its eSIMs must exist.
            None if commit.entry().is_none() => {
                return Err(StoreError::Backend(format!(
                    "a change may only update an eSIM already delivered; {} is not",
                    esim.iccid
                ))
                .into());
            }
            None => new.push(esim),
        }
    }
    new.sort_by(|a, b| a.iccid.cmp(&b.iccid));
    for esim in new {
        let inserted = execute(
            tx,
            "INSERT INTO esims (iccid, order_id, record) VALUES ($1, $2, $3)
             ON CONFLICT (iccid) DO NOTHING",
            &[&esim.iccid, &&esim.order.to_bytes()[..], &Json(esim)],
        )
        .await?;
        if inserted == 1 {
            continue;
        }
        // Claimed since the look above (by a commit that has now committed), or named
        // twice in this one: its owner decides.
        let row = query_opt(
            tx,
            "SELECT order_id FROM esims WHERE iccid = $1 FOR UPDATE",
            &[&esim.iccid],
        )
        .await?
        .ok_or_else(|| StoreError::Backend(format!("eSIM {} vanished", esim.iccid)))?;
        let owner = OrderId(ulid_column(&row, "order_id")?);
        match taken(commit, esim, owner) {
            Some(taken) => return Ok(Err(taken)),
            None => stored.push(esim),
        }
    }
    Ok(Ok(stored))
}

/// Whether `esim`, whose ICCID `owner` holds, is another order's: the commit's order (or,
/// in a change without one, the eSIM's own) and the eSIM must both name the owner.
fn taken(commit: &Commit, esim: &EsimRecord, owner: OrderId) -> Option<IccidTaken> {
    let claimant = commit.order().map_or(esim.order, |o| o.id);
    (owner != claimant || owner != esim.order).then(|| IccidTaken {
        iccid: esim.iccid.clone(),
        owner,
    })
}

/// Lock `entry`'s balance row (creating it at zero) and apply the entry to it with the
/// ledger's checked arithmetic. Returns the balance before and after (for
/// [`write_posted`] to write), or why the entry cannot apply (the caller rolls back).
async fn lock_balance(
    tx: &Transaction<'_>,
    entry: &LedgerEntry,
) -> Faulty<Result<(Balance, Balance), Refused>> {
    let reseller = &entry.reseller.to_bytes()[..];
    let before = loop {
        let row = query_opt(
            tx,
            "SELECT available, held FROM balances
             WHERE reseller = $1 AND currency = $2 FOR UPDATE",
            &[&reseller, &entry.currency],
        )
        .await?;
        if let Some(row) = row {
            break balance_of(&row)?;
        }
        // A first entry in this currency: the row starts at zero (a rollback takes it
        // back); of two first entries at once, the second waits for the first's row.
        execute(
            tx,
            "INSERT INTO balances (reseller, currency, available, held) VALUES ($1, $2, 0, 0)
             ON CONFLICT (reseller, currency) DO NOTHING",
            &[&reseller, &entry.currency],
        )
        .await?;
    };
    let after = match before.apply(entry.kind, entry.amount) {
        Ok(after) => after,
        Err(refused) => return Ok(Err(refused)),
    };
    if after.available < 0 || after.held < 0 {
        // A capture or release without the hold it settles: the books cannot go below
        // zero (the table's constraints would refuse it too).
        return Ok(Err(Refused::OutOfRange));
    }
    Ok(Ok((before, after)))
}

/// Insert or replace a webhook endpoint.
pub(super) async fn put_endpoint<C: GenericClient>(c: &C, endpoint: &Endpoint) -> Faulty<()> {
    execute(
        c,
        "INSERT INTO webhook_endpoints (reseller, id, record) VALUES ($1, $2, $3)
         ON CONFLICT (reseller, id) DO UPDATE SET record = excluded.record",
        &[
            &&endpoint.reseller.to_bytes()[..],
            &&endpoint.id.to_bytes()[..],
            &Json(endpoint),
        ],
    )
    .await?;
    Ok(())
}

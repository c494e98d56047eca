//! Durable jobs across nodes: a worker claims the jobs that are due with
//! `SELECT ... FOR UPDATE SKIP LOCKED` and leases them in the same transaction, so of two
//! workers claiming at once each job goes to one (the other skips the locked rows and
//! takes the next), and a leased job is not claimable until its lease runs out.

use deadpool_postgres::{GenericClient, Object};
use tokio_postgres::types::Json;

use super::{Faulty, big, execute, limit, query, query_opt, record, records};
use crate::domain::jobs::Job;
use crate::domain::nodes::NodeRecord;

/// Add or replace `job`.
pub(super) async fn put<C: GenericClient>(c: &C, job: &Job) -> Faulty<()> {
    execute(
        c,
        "INSERT INTO jobs (id, due_ms, lease_until_ms, dead, record, owner)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (id) DO UPDATE SET due_ms = excluded.due_ms,
             lease_until_ms = excluded.lease_until_ms, dead = excluded.dead,
             record = excluded.record, owner = excluded.owner",
        &[
            &job.id,
            &big(job.due_ms),
            &big(job.lease_until_ms),
            &job.dead,
            &Json(job),
            &job.owner,
        ],
    )
    .await?;
    Ok(())
}

/// Add `job` unless one with its id exists; returns whether it was added.
pub(super) async fn add<C: GenericClient>(c: &C, job: &Job) -> Faulty<bool> {
    let added = execute(
        c,
        "INSERT INTO jobs (id, due_ms, lease_until_ms, dead, record, owner)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (id) DO NOTHING",
        &[
            &job.id,
            &big(job.due_ms),
            &big(job.lease_until_ms),
            &job.dead,
            &Json(job),
            &job.owner,
        ],
    )
    .await?;
    Ok(added == 1)
}

/// Add `job`, or bring the stored job of its id forward to `job.due_ms` if it is due
/// later and not leased then (a leased job is left to its worker).
pub(super) async fn hasten(client: &mut Object, job: &Job) -> Faulty<()> {
    let tx = client.transaction().await?;
    loop {
        let row = query_opt(
            &tx,
            "SELECT record FROM jobs WHERE id = $1 FOR UPDATE",
            &[&job.id],
        )
        .await?;
        let Some(row) = row else {
            if add(&tx, job).await? {
                break;
            }
            // Added by someone else meanwhile: judge theirs.
            continue;
        };
        let mut stored: Job = record(&row, "record")?;
        if stored.due_ms > job.due_ms && stored.lease_until_ms <= job.due_ms {
            stored.due_ms = job.due_ms;
            put(&tx, &stored).await?;
        }
        break;
    }
    tx.commit().await?;
    Ok(())
}

/// Claim up to `n` jobs claimable at `now_ms`, soonest due first, leasing each to `run`
/// until `now_ms + lease_ms`. A job leased by another run that has no live node record is
/// claimable: its node was killed or restarted.
pub(super) async fn claim(
    client: &mut Object,
    run: &str,
    now_ms: u64,
    lease_ms: u64,
    n: usize,
) -> Faulty<Vec<Job>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let tx = client.transaction().await?;
    let rows = query(
        &tx,
        "SELECT j.record, j.owner IS NOT NULL AND j.owner <> $3 AND NOT EXISTS (
                 SELECT 1 FROM nodes n WHERE n.run = j.owner AND n.alive_until_ms > $1
             ) AS orphaned
         FROM jobs j
         WHERE NOT j.dead AND j.due_ms <= $1
           AND (j.lease_until_ms <= $1
                OR j.owner IS NOT NULL AND j.owner <> $3 AND NOT EXISTS (
                    SELECT 1 FROM nodes n WHERE n.run = j.owner AND n.alive_until_ms > $1))
         ORDER BY j.due_ms, j.id LIMIT $2
         FOR UPDATE OF j SKIP LOCKED",
        &[&big(now_ms), &limit(n), &run],
    )
    .await?;
    let lease_until = now_ms.saturating_add(lease_ms);
    let mut claimed = Vec::with_capacity(rows.len());
    for row in &rows {
        let job: Job = record(row, "record")?;
        let orphaned: bool = row.try_get("orphaned")?;
        // The columns hold times past `i64::MAX` as `i64::MAX`: the record decides.
        if job.claimable(now_ms, |_| !orphaned) {
            claimed.push(job.leased(run, lease_until));
        }
    }
    if !claimed.is_empty() {
        let ids: Vec<&str> = claimed.iter().map(|j| j.id.as_str()).collect();
        let bodies: Vec<Json<&Job>> = claimed.iter().map(Json).collect();
        execute(
            &tx,
            "UPDATE jobs SET lease_until_ms = $2, owner = $4, record = leased.record
             FROM unnest($1::text[], $3::json[]) AS leased (id, record)
             WHERE jobs.id = leased.id",
            &[&ids, &big(lease_until), &bodies, &run],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(claimed)
}

/// Keep `node`'s record, replacing the one of its id.
pub(super) async fn put_node<C: GenericClient>(c: &C, node: &NodeRecord) -> Faulty<()> {
    execute(
        c,
        "INSERT INTO nodes (id, run, alive_until_ms, record) VALUES ($1, $2, $3, $4)
         ON CONFLICT (id) DO UPDATE SET run = excluded.run,
             alive_until_ms = excluded.alive_until_ms, record = excluded.record",
        &[
            &node.id,
            &node.run,
            // A stopped node is alive for nobody.
            &big(if node.stopped { 0 } else { node.alive_until_ms }),
            &Json(node),
        ],
    )
    .await?;
    Ok(())
}

/// Every node's record, by id.
pub(super) async fn nodes<C: GenericClient>(c: &C) -> Faulty<Vec<NodeRecord>> {
    let rows = query(c, "SELECT record FROM nodes ORDER BY id", &[]).await?;
    records(&rows)
}

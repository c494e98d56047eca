//! Durable jobs across nodes: a worker claims the jobs that are due with
//! `SELECT ... FOR UPDATE SKIP LOCKED` and leases them in the same transaction, so of two
//! workers claiming at once each job goes to one (the other skips the locked rows and
//! takes the next), and a leased job is not claimable until its lease runs out.

use deadpool_postgres::{GenericClient, Object};
use tokio_postgres::types::Json;

use super::{Faulty, big, execute, limit, query, query_opt, record, records};
use crate::domain::jobs::Job;

/// Add or replace `job`.
pub(super) async fn put<C: GenericClient>(c: &C, job: &Job) -> Faulty<()> {
    execute(
        c,
        "INSERT INTO jobs (id, due_ms, lease_until_ms, dead, record) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (id) DO UPDATE SET due_ms = excluded.due_ms,
             lease_until_ms = excluded.lease_until_ms, dead = excluded.dead,
             record = excluded.record",
        &[
            &job.id,
            &big(job.due_ms),
            &big(job.lease_until_ms),
            &job.dead,
            &Json(job),
        ],
    )
    .await?;
    Ok(())
}

/// Add `job` unless one with its id exists; returns whether it was added.
pub(super) async fn add<C: GenericClient>(c: &C, job: &Job) -> Faulty<bool> {
    let added = execute(
        c,
        "INSERT INTO jobs (id, due_ms, lease_until_ms, dead, record) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (id) DO NOTHING",
        &[
            &job.id,
            &big(job.due_ms),
            &big(job.lease_until_ms),
            &job.dead,
            &Json(job),
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

/// Claim up to `n` jobs claimable at `now_ms`, soonest due first, leasing each until
/// `now_ms + lease_ms`.
pub(super) async fn claim(
    client: &mut Object,
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
        "SELECT record FROM jobs
         WHERE NOT dead AND due_ms <= $1 AND lease_until_ms <= $1
         ORDER BY due_ms, id LIMIT $2
         FOR UPDATE SKIP LOCKED",
        &[&big(now_ms), &limit(n)],
    )
    .await?;
    let lease_until = now_ms.saturating_add(lease_ms);
    let claimed: Vec<Job> = records::<Job>(&rows)?
        .into_iter()
        // The columns hold times past `i64::MAX` as `i64::MAX`: the record decides.
        .filter(|job| job.claimable(now_ms))
        .map(|job| Job {
            lease_until_ms: lease_until,
            ..job
        })
        .collect();
    if !claimed.is_empty() {
        let ids: Vec<&str> = claimed.iter().map(|j| j.id.as_str()).collect();
        let bodies: Vec<Json<&Job>> = claimed.iter().map(Json).collect();
        execute(
            &tx,
            "UPDATE jobs SET lease_until_ms = $2, record = leased.record
             FROM unnest($1::text[], $3::json[]) AS leased (id, record)
             WHERE jobs.id = leased.id",
            &[&ids, &big(lease_until), &bodies],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(claimed)
}

//! The schema's versions: each one SQL file in `host/migrations/`, applied in order when a
//! store opens, all in one transaction with its record in `schema_migrations`. Nodes that
//! open at once take turns (an advisory lock), so each migration runs once. A database
//! whose schema is newer than this build is refused: this build would not know what the
//! newer one keeps where.

use deadpool_postgres::{GenericClient, Object};

use super::Faulty;
use crate::domain::store::StoreError;

/// One version of the schema.
pub(super) struct Migration {
    /// 1, 2, 3, ...: the number in its file name.
    pub(super) version: i32,
    /// What it is known by (the rest of its file name).
    pub(super) name: &'static str,
    /// Its statements.
    pub(super) sql: &'static str,
}

/// Every migration, oldest first. Released ones never change: a change is a new file.
pub(super) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "init",
        sql: include_str!("../../../migrations/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "nodes",
        sql: include_str!("../../../migrations/0002_nodes.sql"),
    },
    Migration {
        version: 3,
        name: "flush_marks",
        sql: include_str!("../../../migrations/0003_flush_marks.sql"),
    },
];

/// The advisory lock migrations take (the bytes of "simgate"): one database-wide number,
/// so stores in different schemas of one database take turns too.
const MIGRATION_LOCK: i64 = 0x73_69_6d_67_61_74_65;

/// Create `schema` if it is named and missing, apply the migrations its tables lack, and
/// refuse a schema newer than this build.
pub(super) async fn run(client: &mut Object, schema: Option<&str>) -> Faulty<()> {
    let tx = client.transaction().await?;
    tx.batch_execute(&format!("SELECT pg_advisory_xact_lock({MIGRATION_LOCK})"))
        .await?;
    if let Some(schema) = schema {
        // A plain lowercase name (`valid_schema`), so it needs no quoting.
        tx.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
            .await?;
    }
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version integer PRIMARY KEY,
             name text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await?;
    let current: i32 = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM schema_migrations",
            &[],
        )
        .await?
        .get(0);
    let known = MIGRATIONS.last().map_or(0, |m| m.version);
    if current > known {
        tx.rollback().await?;
        return Err(StoreError::Backend(format!(
            "the database's schema is at version {current}, newer than this build knows \
             ({known}): run the simgate that wrote it, or a newer one"
        ))
        .into());
    }
    for migration in MIGRATIONS.iter().filter(|m| m.version > current) {
        tx.batch_execute(migration.sql).await?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            &[&migration.version, &migration.name],
        )
        .await?;
        tracing::info!(
            version = migration.version,
            name = migration.name,
            "applied a PostgreSQL schema migration"
        );
    }
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_from_one_without_gaps() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i32 + 1, "{}", m.name);
            assert!(!m.sql.trim().is_empty());
        }
    }
}

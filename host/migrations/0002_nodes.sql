-- Gateway nodes sharing this database, one row per node, renewed every heartbeat.
CREATE TABLE nodes (
    id text COLLATE "C" PRIMARY KEY,
    run text NOT NULL,
    alive_until_ms bigint NOT NULL,
    record json NOT NULL
);
CREATE INDEX nodes_by_run ON nodes (run);

-- The node run that leased each job: a job whose run is no longer alive is claimable
-- before its lease ends.
ALTER TABLE jobs ADD COLUMN owner text;

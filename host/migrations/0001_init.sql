-- simgate's PostgreSQL store, version 1 (see host/src/store/postgres.rs).
--
-- Each table keeps its records whole in a `record` column of type json (not jsonb: json
-- keeps the text as written, so every record reads back exactly, and it accepts the
-- escaped NUL character a hostile supplier or client may send, which jsonb refuses).
-- What is looked up, sorted, constrained or counted is a real column beside it, written
-- from the same record in the same statement. Ids are the 16 bytes of their ULID (bytea
-- compares bytewise, so ids sort by time); times are ms since the epoch (bigint); money
-- is bigint minor units.
--
-- Applied at open inside one transaction and recorded in `schema_migrations`.

CREATE TABLE resellers (
    id bytea PRIMARY KEY,
    record json NOT NULL
);

-- API keys by the keyed hash of their secret; `api_key_ids` finds one by its public id.
CREATE TABLE api_keys (
    hash bytea PRIMARY KEY,
    reseller bytea,
    record json NOT NULL
);
CREATE INDEX api_keys_by_reseller ON api_keys (reseller);
CREATE TABLE api_key_ids (
    id bytea PRIMARY KEY,
    hash bytea NOT NULL REFERENCES api_keys (hash) ON DELETE CASCADE
);
CREATE INDEX api_key_ids_by_hash ON api_key_ids (hash);

CREATE TABLE orders (
    id bytea PRIMARY KEY,
    reseller bytea NOT NULL,
    status text NOT NULL,
    updated_at_ms bigint NOT NULL,
    record json NOT NULL
);
CREATE INDEX orders_by_reseller ON orders (reseller, id);
CREATE INDEX orders_unfinished ON orders (id)
    WHERE status NOT IN ('fulfilled', 'failed', 'cancelled');
CREATE INDEX orders_finished_by_time ON orders (updated_at_ms)
    WHERE status IN ('fulfilled', 'failed', 'cancelled');

-- The ledger: append-only (an update is refused below; rows go only with their account).
-- The invariants the database can hold on its own are constraints here: amounts are never
-- negative, every entry but a credit names its order, an order is held once, settled
-- (captured or released) once and refunded once.
CREATE TABLE ledger (
    reseller bytea NOT NULL,
    id bytea NOT NULL,
    kind text NOT NULL CHECK (kind IN ('credit', 'hold', 'capture', 'release', 'refund')),
    amount bigint NOT NULL CHECK (amount >= 0),
    currency text NOT NULL,
    order_id bytea CHECK (kind = 'credit' OR order_id IS NOT NULL),
    record json NOT NULL,
    PRIMARY KEY (reseller, id)
);
CREATE UNIQUE INDEX ledger_one_hold_per_order ON ledger (order_id) WHERE kind = 'hold';
CREATE UNIQUE INDEX ledger_one_settlement_per_order ON ledger (order_id)
    WHERE kind IN ('capture', 'release');
CREATE UNIQUE INDEX ledger_one_refund_per_order ON ledger (order_id) WHERE kind = 'refund';

CREATE FUNCTION ledger_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger entries are never changed'
        USING ERRCODE = 'integrity_constraint_violation';
END
$$;
CREATE TRIGGER ledger_is_append_only BEFORE UPDATE ON ledger
    FOR EACH ROW EXECUTE FUNCTION ledger_is_append_only();

-- Balances, updated in the transaction of each entry (the row is locked first).
CREATE TABLE balances (
    reseller bytea NOT NULL,
    currency text NOT NULL,
    available bigint NOT NULL CHECK (available >= 0),
    held bigint NOT NULL CHECK (held >= 0),
    PRIMARY KEY (reseller, currency)
);

-- An ICCID belongs to the order that delivered it, for good.
CREATE TABLE esims (
    iccid text PRIMARY KEY,
    order_id bytea NOT NULL,
    record json NOT NULL
);
CREATE INDEX esims_by_order ON esims (order_id);

CREATE FUNCTION esims_keep_their_order() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.order_id <> OLD.order_id THEN
        RAISE EXCEPTION 'ICCID % belongs to another order', OLD.iccid
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER esims_keep_their_order BEFORE UPDATE OF order_id ON esims
    FOR EACH ROW EXECUTE FUNCTION esims_keep_their_order();

-- Idempotency claims by reseller id ++ SHA-256 of the client's key. `order_id` is the id
-- of what the request creates (an order, or a ledger entry in one of `accounts`: the
-- reseller's live and test accounts); once that exists, the claim is as good as finished.
CREATE TABLE idempotency (
    key bytea PRIMARY KEY,
    reseller bytea NOT NULL,
    accounts bytea[] NOT NULL,
    finished boolean NOT NULL,
    order_id bytea,
    created_at_ms bigint NOT NULL,
    record json NOT NULL
);
CREATE INDEX idempotency_by_reseller ON idempotency (reseller);
CREATE INDEX idempotency_by_age ON idempotency (created_at_ms);

CREATE TABLE subject_keys (
    lookup bytea PRIMARY KEY,
    wrapped bytea NOT NULL
);

-- A subject's orders (readers check the order: an entry may outlive it).
CREATE TABLE subject_orders (
    reseller bytea NOT NULL,
    subject bytea NOT NULL,
    order_id bytea NOT NULL,
    PRIMARY KEY (reseller, subject, order_id)
);

CREATE TABLE restrictions (
    reseller bytea NOT NULL,
    subject bytea NOT NULL,
    record json NOT NULL,
    PRIMARY KEY (reseller, subject)
);

-- The consent ledger: appended, never replaced.
CREATE TABLE consents (
    reseller bytea NOT NULL,
    subject bytea NOT NULL,
    id bytea NOT NULL,
    record json NOT NULL,
    PRIMARY KEY (reseller, subject, id)
);

-- Events told to resellers, and the outbox of those whose deliveries are not scheduled.
CREATE TABLE events (
    reseller bytea NOT NULL,
    id bytea NOT NULL,
    kind text NOT NULL,
    record json NOT NULL,
    PRIMARY KEY (reseller, id)
);
CREATE INDEX events_by_type ON events (reseller, kind, id);
CREATE TABLE outbox (
    event_id bytea PRIMARY KEY,
    reseller bytea NOT NULL,
    FOREIGN KEY (reseller, event_id) REFERENCES events (reseller, id) ON DELETE CASCADE
);

CREATE TABLE webhook_endpoints (
    reseller bytea NOT NULL,
    id bytea NOT NULL,
    record json NOT NULL,
    PRIMARY KEY (reseller, id)
);
CREATE TABLE webhook_attempts (
    endpoint bytea NOT NULL,
    id bytea NOT NULL,
    reseller bytea NOT NULL,
    at_ms bigint NOT NULL,
    record json NOT NULL,
    PRIMARY KEY (endpoint, id)
);
CREATE INDEX webhook_attempts_by_time ON webhook_attempts (at_ms, endpoint, id);
CREATE INDEX webhook_attempts_by_reseller ON webhook_attempts (reseller);

-- The API request log, one row per request (id sorts by time).
CREATE TABLE requests (
    id bytea PRIMARY KEY,
    record json NOT NULL
);

-- Durable jobs. Ids compare bytewise (C collation), as the other stores order them.
CREATE TABLE jobs (
    id text COLLATE "C" PRIMARY KEY,
    due_ms bigint NOT NULL,
    lease_until_ms bigint NOT NULL,
    dead boolean NOT NULL,
    record json NOT NULL
);
CREATE INDEX jobs_live_by_due ON jobs (due_ms, id) WHERE NOT dead;

CREATE TABLE catalogs (
    plugin text PRIMARY KEY,
    record json NOT NULL
);

CREATE TABLE meta (
    key text PRIMARY KEY,
    value bytea NOT NULL
);

-- The audit log: numbered 1, 2, 3, ... without gaps, each entry hash-linked to the one
-- before. Appends lock the one row of `audit_head` first, so the chain is one line.
CREATE TABLE audit_log (
    seq bigint PRIMARY KEY CHECK (seq > 0),
    at_ms bigint NOT NULL,
    action text NOT NULL,
    reseller bytea,
    record json NOT NULL
);
CREATE INDEX audit_log_by_reseller ON audit_log (reseller, seq);
CREATE TABLE audit_head (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row)
);
INSERT INTO audit_head DEFAULT VALUES;
-- Where the kept log starts after a purge (signed outside the database).
CREATE TABLE audit_checkpoint (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    record json NOT NULL
);

-- One row per server process, rewritten by `Store::durable`: a commit that wrote WAL, so
-- its synchronous flush covers every commit made before it (a commit that wrote nothing
-- is not flushed). One row per connection, so concurrent callers never wait on each
-- other's row; rows of ended processes are few and harmless.
CREATE TABLE flush_marks (
    pid integer PRIMARY KEY,
    n bigint NOT NULL
);

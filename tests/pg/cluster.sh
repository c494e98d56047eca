#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the PostgreSQL store's tests.
#
#   tests/pg/cluster.sh DIR        create the cluster in DIR (once), start it, print its URL
#   tests/pg/cluster.sh stop DIR   stop it (DIR can then be deleted)
#   tests/pg/cluster.sh crash DIR  stop it as a crash would (no checkpoint, WAL buffers lost)
#
# Then: SIMGATE_TEST_PG_URL="$(tests/pg/cluster.sh target/pg)" cargo test -p simgate --lib store::postgres
#
# The server listens on a unix socket in DIR (the printed URL) and, for the TLS tests, on
# a free loopback port with TLS, under a certificate for localhost / 127.0.0.1 signed by a
# CA made here (DIR/tls/ca.crt; DIR/tls.url names that listener, sslmode=require). Fsync
# and synchronous commit are on, as in production: the tests check durability, so the
# cluster must not fake it. Connections from this machine are trusted (a test cluster
# holds no secrets).
#
# PostgreSQL is installed with apt-get (Debian) if no `initdb` is found. initdb refuses to
# run as root, so as root the cluster belongs to the `postgres` system user (made by the
# package; created here if missing) and every server command runs as that user.
set -euo pipefail

die() { echo "cluster.sh: $*" >&2; exit 1; }

usage() { die "usage: $0 DIR | $0 stop DIR"; }

action=start
case "${1:-}" in
    stop) action=stop; shift ;;
    crash) action=crash; shift ;;
    start) shift ;;
    "" | -h | --help) usage ;;
esac
[ $# -eq 1 ] || usage
mkdir -p "$1"
dir="$(cd "$1" && pwd)"
data="$dir/data"
socket="$dir/socket"
tls="$dir/tls"

# The newest installed server's programs (Debian keeps them off PATH).
find_bin() {
    local found
    found="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
    if [ -n "$found" ] && [ -x "$found/initdb" ]; then
        echo "$found"
    elif command -v initdb >/dev/null 2>&1; then
        dirname "$(command -v initdb)"
    fi
}

bin="$(find_bin)"
if [ -z "$bin" ]; then
    [ "$action" = start ] || die "PostgreSQL is not installed"
    echo "cluster.sh: installing PostgreSQL with apt-get" >&2
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || die "PostgreSQL is not installed and this is not root"
        sudo="sudo"
    fi
    $sudo apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq postgresql >&2
    bin="$(find_bin)"
    [ -n "$bin" ] || die "no initdb after installing postgresql"
fi

# Run a server program as the cluster's owner.
if [ "$(id -u)" -eq 0 ]; then
    owner=postgres
    if ! id -u "$owner" >/dev/null 2>&1; then
        useradd --system --home-dir /var/lib/postgresql --shell /bin/sh "$owner"
    fi
    as_owner() { runuser -u "$owner" -- "$@"; }
else
    owner="$(id -un)"
    as_owner() { "$@"; }
fi

if [ "$action" = stop ] || [ "$action" = crash ]; then
    mode=fast
    [ "$action" = crash ] && mode=immediate
    if [ -f "$data/postmaster.pid" ]; then
        as_owner "$bin/pg_ctl" -D "$data" -m "$mode" -w stop >&2
    fi
    exit 0
fi

if [ ! -f "$data/PG_VERSION" ]; then
    mkdir -p "$data" "$socket"
    chown "$owner" "$dir" "$data" "$socket"
    chmod 700 "$data"
    as_owner test -w "$data" || die "$owner cannot write $data (is every folder above it searchable?)"
    as_owner "$bin/initdb" -D "$data" -U simgate --auth=trust --encoding=UTF8 --no-locale >&2
fi

if [ ! -f "$tls/server.key" ]; then
    # A CA, and the server's certificate signed by it (a self-signed leaf is not a CA).
    mkdir -p "$tls"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
        -subj "/CN=simgate test CA" -keyout "$tls/ca.key" -out "$tls/ca.crt" 2>/dev/null
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -subj "/CN=localhost" -keyout "$tls/server.key" -out "$tls/server.csr" 2>/dev/null
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' >"$tls/ext"
    openssl x509 -req -in "$tls/server.csr" -CA "$tls/ca.crt" -CAkey "$tls/ca.key" \
        -CAcreateserial -days 3650 -extfile "$tls/ext" -out "$tls/server.crt" 2>/dev/null
    chown "$owner" "$tls" "$tls/server.key" "$tls/server.crt"
    chmod 600 "$tls/server.key"
fi

if ! as_owner "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
    # A free loopback port for the TLS listener (the unix socket's name carries it too),
    # kept across restarts so that the URL stays the same.
    port="${SIMGATE_TEST_PG_PORT:-$(cat "$dir/port" 2>/dev/null || python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null || echo 5432)}"
    as_owner "$bin/pg_ctl" -D "$data" -l "$dir/server.log" -w -t 60 start -o \
        "-c listen_addresses=127.0.0.1 -k $socket -p $port -c fsync=on -c synchronous_commit=on -c max_connections=200 -c ssl=on -c ssl_cert_file=$tls/server.crt -c ssl_key_file=$tls/server.key" >&2 \
        || { tail -n 20 "$dir/server.log" >&2; die "the server did not start (log: $dir/server.log)"; }
    echo "$port" >"$dir/port"
fi
port="$(cat "$dir/port" 2>/dev/null || echo 5432)"
echo "postgresql://simgate@127.0.0.1:$port/simgate?sslmode=require" >"$dir/tls.url"

psql_() { "$bin/psql" -X -q -h "$socket" -p "$port" -U simgate "$@"; }
if [ "$(psql_ -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'simgate'")" != 1 ]; then
    psql_ -d postgres -c "CREATE DATABASE simgate" >&2
fi

echo "postgresql://simgate@/simgate?host=$socket&port=$port"

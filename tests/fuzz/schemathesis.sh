#!/usr/bin/env bash
# Fuzz the running gateway from its own OpenAPI document with schemathesis: every operation
# in /openapi.json gets generated valid and invalid requests, and every answer is checked
# against the document (status codes, content types, headers, bodies), for 5xx, and for
# 405s without `Allow`. Run by `./dev test` after the cargo tests, against the binary they
# built; exits non-zero on any failure.
#
#   tests/fuzz/schemathesis.sh [path/to/simgate]      (default target/debug/simgate)
#
# It builds nothing. schemathesis (pinned in requirements.txt) is installed once into a
# virtualenv under target/venv-fuzz (target/ is $CARGO_TARGET_DIR when that is set). The gateway runs on a free loopback port with a
# throwaway data directory, and with the sandbox plugin when its component has been built
# (it is, by the test-support crate's build script), so orders reach a real plugin.
#
# Knobs (environment): SIMGATE_FUZZ_EXAMPLES (generated cases per operation, default 25),
# SIMGATE_FUZZ_SEED (reproduce a run), SIMGATE_FUZZ_SANDBOX_WASM (the sandbox component).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD

# The shared target dir, as cargo and the test-support build script place it.
target=${CARGO_TARGET_DIR:-target}
[[ $target = /* ]] || target="$root/$target"
bin=${1:-$target/debug/simgate}
[[ $bin = /* ]] || bin="$root/$bin"
if [[ ! -x $bin ]]; then
  echo "fuzz: no gateway binary at $bin; build it first (cargo build -p simgate)" >&2
  exit 2
fi
examples=${SIMGATE_FUZZ_EXAMPLES:-25}
sandbox_wasm=${SIMGATE_FUZZ_SANDBOX_WASM:-$target/wasm/wasm32-wasip2/release/sandbox.wasm}
here="$root/tests/fuzz"
venv="$target/venv-fuzz"

# --- schemathesis, installed once per requirements.txt --------------------------------
ensure_venv() {
  local stamp="$venv/requirements.installed"
  if [[ -x $venv/bin/schemathesis ]] && cmp -s "$here/requirements.txt" "$stamp"; then
    return
  fi
  echo "fuzz: installing $(cat "$here/requirements.txt") into $venv" >&2
  if ! python3 -m venv "$venv"; then
    echo "fuzz: python3 -m venv failed; on Debian or Ubuntu, apt-get install python3-venv" >&2
    exit 2
  fi
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    -r "$here/requirements.txt"
  cp "$here/requirements.txt" "$stamp"
}
ensure_venv
py="$venv/bin/python"

# --- the gateway ------------------------------------------------------------------------
work=$(mktemp -d "${TMPDIR:-/tmp}/simgate-fuzz.XXXXXX")
gateway_pid=
cleanup() {
  if [[ -n $gateway_pid ]] && kill -0 "$gateway_pid" 2>/dev/null; then
    kill "$gateway_pid" 2>/dev/null || true
    wait "$gateway_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

data="$work/data"
mkdir -p "$data/plugins"
if [[ -f $sandbox_wasm ]]; then
  "$bin" plugin pack --manifest "$root/plugins/sandbox/plugin.toml" --wasm "$sandbox_wasm" \
    --out "$data/plugins" >/dev/null
else
  echo "fuzz: no sandbox plugin at $sandbox_wasm; fuzzing with an empty catalog" >&2
fi
# Thousands of requests a minute from one key: the rate limit would answer most of them
# 429 (documented, but it would hide the routes behind it).
cat >"$work/config.toml" <<'EOF'
[http]
rate_limit_per_second = 100000.0
rate_limit_burst = 100000.0
EOF

serve_args=(serve --listen 127.0.0.1:0 --data-dir "$data" --config "$work/config.toml")
# The demo reseller is created only when asked for, by binaries that have the flag.
if "$bin" serve --help 2>/dev/null | grep -q -- '--demo\b'; then
  serve_args+=(--demo)
fi
SIMGATE_LOG=${SIMGATE_LOG:-warn} "$bin" "${serve_args[@]}" >"$work/stdout" 2>"$work/log" &
gateway_pid=$!

base=
for _ in $(seq 1200); do
  base=$(sed -n 's/^simgate listening on \(http:[^ ]*\).*/\1/p' "$work/stdout" | head -n1)
  [[ -n $base ]] && break
  if ! kill -0 "$gateway_pid" 2>/dev/null; then break; fi
  sleep 0.1
done
if [[ -z $base ]]; then
  echo "fuzz: the gateway did not start; its log:" >&2
  tail -n 50 "$work/log" >&2
  exit 1
fi

# Keys, calls and seed data: tests/fuzz/gateway.py. Keys are read from the startup output
# (printed there, or written to a file whose path is printed), and never echoed.
gateway() { "$py" "$here/gateway.py" "$@"; }
call() { gateway call "$base" "$@"; }

wait_ready() {
  for _ in $(seq 600); do
    if call GET /readyz "" 2>/dev/null; then return; fi
    sleep 0.1
  done
  echo "fuzz: /readyz did not answer 200 within 60 s" >&2
  exit 1
}
wait_ready

admin_key=$(gateway key "$work/stdout" admin)
reseller_key=$(gateway key "$work/stdout" demo)
if [[ -z $admin_key ]]; then
  echo "fuzz: found no admin key in the gateway's startup output" >&2
  exit 1
fi
if [[ -z $reseller_key ]]; then
  # No demo reseller: make one as an operator would, with a test key (the sandbox serves
  # test mode) and credit on its test balance (`mode` is refused by gateways older than
  # test balances, whose one balance every key spends).
  reseller=$(SIMGATE_FUZZ_KEY=$admin_key call POST /v1/admin/resellers id '{"name":"Fuzz Ltd"}')
  reseller_key=$(SIMGATE_FUZZ_KEY=$admin_key call POST "/v1/admin/resellers/$reseller/keys" key '{"mode":"test"}')
  SIMGATE_FUZZ_KEY=$admin_key call POST "/v1/admin/resellers/$reseller/credits" "" \
    '{"amount":100000000,"currency":"USD","mode":"test"}' >/dev/null 2>&1 ||
    SIMGATE_FUZZ_KEY=$admin_key call POST "/v1/admin/resellers/$reseller/credits" "" \
      '{"amount":100000000,"currency":"USD"}' >/dev/null
fi

# A read-only key (of a reseller of its own): every write must be refused as documented.
readonly_reseller=$(SIMGATE_FUZZ_KEY=$admin_key call POST /v1/admin/resellers id '{"name":"Fuzz Readonly Ltd"}')
readonly_key=$(SIMGATE_FUZZ_KEY=$admin_key call POST "/v1/admin/resellers/$readonly_reseller/keys" key \
  '{"role":"reseller_readonly","mode":"test"}')

# The run's schemathesis settings: the checked-in ones, where failures found are kept (and
# tried first next time), and real resources for requests to name (gateway.py seed).
config="$work/schemathesis.toml"
cp "$here/schemathesis.toml" "$config"
printf '\n[cache]\ndirectory = "%s"\n' "$target/schemathesis-cache" >>"$config"
SIMGATE_FUZZ_KEY=$reseller_key gateway seed "$base" >>"$config"

# --- the runs ---------------------------------------------------------------------------
checks=not_a_server_error,response_schema_conformance,status_code_conformance
checks+=,content_type_conformance,response_headers_conformance
checks+=,unsupported_method,allow_header_conformance

# `run_as NAME KEY FILTER...`: one schemathesis run with KEY as the bearer token.
status=0
run_as() {
  local who=$1 key=$2
  shift 2
  echo "fuzz: $who routes, $examples examples per operation" >&2
  SIMGATE_FUZZ_KEY=$key "$venv/bin/schemathesis" --config-file "$config" \
    run "$base/openapi.json" \
    --checks "$checks" \
    --max-examples "$examples" \
    --workers 1 \
    --request-timeout 20 \
    --no-color \
    ${SIMGATE_FUZZ_SEED:+--seed "$SIMGATE_FUZZ_SEED"} \
    "$@" || status=1
}
run_as reseller "$reseller_key" --exclude-tag admin
run_as read-only "$readonly_key" --exclude-tag admin
# The admin key on every route: its own, and the resellers' (which it may not use).
run_as admin "$admin_key"

if ! kill -0 "$gateway_pid" 2>/dev/null; then
  echo "fuzz: the gateway died during the run; its log:" >&2
  tail -n 50 "$work/log" >&2
  exit 1
fi
if [[ $status -ne 0 ]]; then
  echo "fuzz: failures above; the gateway's log follows" >&2
  grep -E ' (ERROR|WARN) ' "$work/log" | tail -n 30 >&2 || true
fi
exit "$status"

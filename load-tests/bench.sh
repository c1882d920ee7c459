#!/usr/bin/env bash
# Benchmark gitgate (pack cache on and off) against nginx + fcgiwrap + git http-backend.
#
#   load-tests/bench.sh                 # full run: ~70 MiB corpus, 32 clients, 3 repetitions,
#                                       # report in load-tests/RESULTS.md
#   load-tests/bench.sh --smoke         # tiny corpus, 4 clients, 1 repetition (CI)
#   load-tests/bench.sh --repo /srv/git/big.git --clients 16
#
# Builds release binaries, installs nginx, fcgiwrap, curl and openssl (for the TLS hit
# comparison) and PostgreSQL's server (for the fleet scenario's throwaway store) from
# Debian if they are missing, then runs `gitgate-load bench` with the arguments given.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v nginx >/dev/null || missing+=(nginx)
command -v fcgiwrap >/dev/null || [ -x /usr/sbin/fcgiwrap ] || missing+=(fcgiwrap)
command -v curl >/dev/null || missing+=(curl)
command -v openssl >/dev/null || missing+=(openssl)
if ! [ -x /usr/local/bin/initdb ] && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
   && [ -z "${GITGATE_PG_BIN:-}" ]; then
  missing+=(postgresql)
fi
if [ "${#missing[@]}" -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
export PATH="$PATH:/usr/sbin"

# Two invocations: the load driver's test-only features must not reach the binaries
# it measures.
cargo build --release -p gitgate -p gitgate-storage-node
cargo build --release -p gitgate-load
args=("$@")
if [[ " ${args[*]-} " != *" --smoke "* && " ${args[*]-} " != *" --results "* ]]; then
  args+=(--results load-tests/RESULTS.md)
fi
release="${CARGO_TARGET_DIR:-target}/release"
exec "$release/gitgate-load" bench --gitgate "$release/gitgate" "${args[@]}"

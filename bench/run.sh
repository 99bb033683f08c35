#!/usr/bin/env bash
# Benchmarks (./build.sh bench [MESSAGES]). Results under bench/results/.
# build.sh has installed the gateway's own Debian packages and the venv; this adds what only
# the benchmark needs: the peer stack c (amavisd-new + SpamAssassin) and py-spy.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MAILWARDEN_VENV:-$ROOT/.venv}"
cd "$ROOT"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# Stack c. The packages start nothing here (no systemd; the harness starts amavisd itself).
# spamassassin's postinst compiles its rules with sa-compile: about a minute, once.
PEER_PACKAGES=(amavisd-new spamassassin)
missing=()
for p in "${PEER_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "==> installing the peer stacks' packages: ${missing[*]}" >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi
if [ ! -x "$VENV/bin/py-spy" ]; then
    "$VENV/bin/pip" install -q -e "${ROOT}[test,bench]"
fi

start=$SECONDS
"$VENV/bin/python" -m bench.mailflow "${1:-300}"
echo "==> mail flow benchmark took $((SECONDS - start)) s" >&2
start=$SECONDS
"$VENV/bin/python" -m bench.profile "${1:-300}" flamegraph
echo "==> agent profile took $((SECONDS - start)) s" >&2
start=$SECONDS
"$VENV/bin/python" -m bench.controlplane "${MAILWARDEN_BENCH_ROWS:-1000000}"
echo "==> control-plane benchmark took $((SECONDS - start)) s" >&2

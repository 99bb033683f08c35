#!/usr/bin/env bash
# Benchmarks (./build.sh bench). Results under bench/results/.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MAILWARDEN_VENV:-$ROOT/.venv}"
cd "$ROOT"
start=$SECONDS
"$VENV/bin/python" -m bench.mailflow "${1:-200}"
echo "==> mail flow benchmark took $((SECONDS - start)) s" >&2

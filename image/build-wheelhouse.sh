#!/usr/bin/env bash
# Build the wheelhouses the image (and roles/ on a plain host) install from, for Debian 13's
# CPython 3.13 on amd64:
#   <dir>/agent/    the mailwarden wheel (pip wheel --no-deps of this tree), its dependencies as
#                   requirements/agent.lock pins them (hash-checked), and requirements.lock: each
#                   wheel there with its own hash, what roles/agent installs with --require-hashes
#   <dir>/ansible/  ansible-core and its dependencies (build-only: runs the roles in the chroot)
# Pure-Python packages published only as sdists (dkimpy, pyspf...) are built into py3 wheels on
# this host, so the image needs no compiler. The result is cached under
# $MAILWARDEN_CACHE/wheelhouse/<hash of pyproject.toml, the lock and agent/>, reused when unchanged.
#
# Usage: image/build-wheelhouse.sh        prints the wheelhouse directory on stdout
set -euo pipefail

# shellcheck source=image/lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

ANSIBLE_CORE_PIN="${MAILWARDEN_ANSIBLE_CORE:-ansible-core==2.19.4}"
TARGET_PY=(--python-version 3.13 --implementation cp --abi cp313
           --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64
           --platform manylinux1_x86_64 --only-binary=:all:)

venv="$MW_CACHE/dib-venv"
[ -x "$venv/bin/pip" ] || mw_die "no build venv at $venv (image/build-image.sh creates it)"
export PIP_CACHE_DIR="$MW_CACHE/pip"
export PIP_DISABLE_PIP_VERSION_CHECK=1

key="$( { cat "$MW_ROOT/pyproject.toml" "$MW_ROOT/README.md" "$MW_ROOT/requirements/agent.lock" \
              "$MW_ROOT/image/lib/wheelhouse.py"
          printf '%s\n' "$ANSIBLE_CORE_PIN"
          (cd "$MW_ROOT" && find agent -type f ! -path '*/__pycache__/*' ! -path '*.egg-info/*' \
              -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
        } | sha256sum | cut -c1-16)"
dest="$MW_CACHE/wheelhouse/$key"
# Keep the three newest wheelhouses (each agent change makes one).
prune() {
    find "$MW_CACHE/wheelhouse" -mindepth 2 -maxdepth 2 -name .complete -printf '%T@ %h\n' \
        | sort -rn | tail -n +4 | cut -d' ' -f2- | while read -r old; do rm -rf "$old"; done
}

if [ -f "$dest/.complete" ]; then
    touch "$dest/.complete"
    prune
    printf '%s\n' "$dest"
    exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/src" "$work/host/agent" "$work/host/ansible" "$work/pure" "$work/agent" "$work/ansible"

# The agent's dependencies: the lock, every file checked against its hashes. The lock resolves
# the same on this host's Python and on the image's 3.13 (docs/development.md).
lock="$MW_ROOT/requirements/agent.lock"
printf '%s\n' "$ANSIBLE_CORE_PIN" > "$work/ansible-reqs.txt"

# Build the agent's wheel from a copy, so that nothing is written into the working tree.
cp -a "$MW_ROOT/pyproject.toml" "$MW_ROOT/README.md" "$work/src/"
(cd "$MW_ROOT" && tar --exclude='__pycache__' --exclude='*.egg-info' -cf - agent) | tar -C "$work/src" -xf -
mw_log "building the mailwarden wheel"
"$venv/bin/pip" wheel -qq --no-deps -w "$work/agent" "$work/src" >&2
# The development harness (devtools/, mailwarden-dev) must never reach the appliance: it runs
# private daemons as root and trusts a test name server.
"$venv/bin/python" - "$work"/agent/mailwarden-*.whl <<'PY' || mw_die "the mailwarden wheel contains the development harness"
import sys, zipfile
harness = [n for n in zipfile.ZipFile(sys.argv[1]).namelist()
           if n.startswith(("mailwarden_dev/", "mailwarden/sandbox/"))]
for name in harness:
    print(f"harness module in {sys.argv[1]}: {name}", file=sys.stderr)
sys.exit(1 if harness else 0)
PY

# Pass 1: resolve on this host; keep only the pure-Python wheels (some exist only as sdists).
# The agent's sdists are checked against the lock before they are built; their build
# requirements (setuptools) are not, which pip does not offer.
mw_log "building pure-Python wheels for sdist-only dependencies"
"$venv/bin/pip" wheel -qq --use-pep517 --require-hashes --no-deps -w "$work/host/agent" \
    -r "$lock" >&2
"$venv/bin/pip" wheel -qq --use-pep517 -w "$work/host/ansible" -r "$work/ansible-reqs.txt" >&2
find "$work/host/ansible" -name '*-none-any.whl' -exec cp {} "$work/pure/" \;
# The agent's wheels built here (not on PyPI, so not in the lock) go straight into the
# wheelhouse; the rest of the lock is downloaded for the target.
"$venv/bin/python" "$MW_ROOT/image/lib/wheelhouse.py" split "$lock" "$work/host/agent" \
    "$work/agent-download.lock" "$work/agent"

# Pass 2: CPython 3.13 binary wheels, each checked against the lock's hashes (--no-deps: the
# lock already names every dependency).
mw_log "downloading the CPython 3.13 wheels"
"$venv/bin/pip" download -qq "${TARGET_PY[@]}" --require-hashes --no-deps -d "$work/agent" \
    -r "$work/agent-download.lock" >&2
"$venv/bin/pip" download -qq "${TARGET_PY[@]}" --find-links "$work/pure" -d "$work/ansible" \
    -r "$work/ansible-reqs.txt" >&2
"$venv/bin/python" "$MW_ROOT/image/lib/wheelhouse.py" manifest "$work/agent"

mkdir -p "$MW_CACHE/wheelhouse"
rm -rf "$dest"
mkdir -p "$dest"
cp -a "$work/agent" "$work/ansible" "$dest/"
touch "$dest/.complete"
prune
printf '%s\n' "$dest"

#!/usr/bin/env bash
# Mailwarden's one entry point. See README.md and docs/development.md.
#   ./build.sh            build the appliance image (until the image exists: same as dev)
#   ./build.sh build      build the appliance image under out/
#   ./build.sh test [--all-firmware] [--lynis] [TIER...]  install what the tests need and run
#                         the tiers (lint unit integration browser e2e; none: all of them, in
#                         that order); --all-firmware: the e2e tier installs from the ISO under
#                         SeaBIOS, OVMF and OVMF with Secure Boot, not Secure Boot alone, and
#                         boots the disk image under SeaBIOS and OVMF as well; --lynis: the
#                         gateway is also audited by Lynis (its report of an image is reused)
#   ./build.sh dev [--state FILE]   run the whole gateway on this machine (private daemons)
#   ./build.sh run        boot the built image in QEMU with ports forwarded
#   ./build.sh bench      run the benchmarks, results under bench/results/
#   ./build.sh lock [-P NAME[==VER]]  recompile requirements/*.lock from pyproject.toml
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${MAILWARDEN_CACHE:-/var/cache/mailwarden}"
VENV="${MAILWARDEN_VENV:-$ROOT/.venv}"
export PIP_CACHE_DIR="$CACHE/pip"

# Debian packages the integration tier and `dev` run for real (docs/field-notes.md says which
# package ships what, and why Postfix is preseeded as "No configuration").
HOST_PACKAGES=(postfix rspamd redis-server clamav-daemon clamav clamav-freshclam unbound nsd swaks
               python3-venv git chromium shellcheck)

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

install_host_packages() {
    local missing=()
    for p in "${HOST_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing Debian packages: ${missing[*]}"
    # Without this preseed the postfix package asks questions and writes /etc/postfix/main.cf.
    echo "postfix postfix/main_mailer_type select No configuration" | as_root debconf-set-selections
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
}

ensure_venv() {
    mkdir -p "$CACHE/pip"
    if [ ! -x "$VENV/bin/python" ]; then
        log "creating virtualenv $VENV"
        python3 -m venv "$VENV"
    fi
    # Reinstall only when the lock (or the project's own metadata: entry points) changed.
    local stamp="$VENV/.mailwarden-deps" want
    want="$(cat "$ROOT/requirements/dev.lock" "$ROOT/pyproject.toml" "$ROOT/devtools/pyproject.toml" \
            | sha256sum | cut -d' ' -f1)"
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        log "installing the locked dependencies and the agent into $VENV"
        # Every file pip installs must match a hash in the lock, pip itself included.
        "$VENV/bin/pip" install -q --require-hashes -r "$ROOT/requirements/dev.lock"
        "$VENV/bin/pip" install -q --no-deps -e "$ROOT"
        # The development harness (tests, benchmarks, `dev`): never in the image.
        "$VENV/bin/pip" install -q --no-deps -e "$ROOT/devtools"
        echo "$want" > "$stamp"
    fi
}

# The locks: every dependency, direct and indirect, pinned with the hashes of all the files PyPI
# has for it (docs/development.md). Resolved against PyPI alone, whatever index or wheel
# directory this machine's pip configuration adds, so that every machine writes the same lock.
# pip-compile keeps the versions already in the lock unless pyproject.toml (or -P NAME) asks
# for another, so a new upstream release alone never changes it.
compile_locks() {  # compile_locks DIR [pip-compile options]: DIR/requirements/*.lock
    local dir="$1"; shift
    local pc=(env -u PIP_FIND_LINKS -u PIP_INDEX_URL -u PIP_EXTRA_INDEX_URL -u PIP_CONSTRAINT
              PIP_CONFIG_FILE=/dev/null "$VENV/bin/pip-compile" -q --generate-hashes
              --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links "$@")
    local err
    err="$(mktemp)"
    # setuptools prints deprecation banners while building our metadata: shown on failure only.
    if ! (cd "$dir" && "${pc[@]}" -o requirements/agent.lock pyproject.toml \
            && "${pc[@]}" --extra test -c requirements/agent.lock -o requirements/dev.lock \
                pyproject.toml) 2>"$err"; then
        cat "$err" >&2; rm -f "$err"; return 1
    fi
    rm -f "$err"
}

# Compiles the locks again in a copy of the tree and compares: pyproject.toml changed without
# ./build.sh lock shows here as a diff.
check_locks() {
    local tmp f rc=0
    tmp="$(mktemp -d)"
    cp -a "$ROOT/pyproject.toml" "$ROOT/README.md" "$ROOT/requirements" "$tmp/"
    (cd "$ROOT" && tar --exclude='__pycache__' --exclude='*.egg-info' -cf - agent) | tar -C "$tmp" -xf -
    if compile_locks "$tmp"; then
        for f in agent.lock dev.lock; do
            # The header names the Python that ran pip-compile; the resolution is the same on
            # 3.11 and 3.13 (docs/development.md), so that line is not compared.
            diff -u --label "requirements/$f" --label "requirements/$f (compiled now)" \
                <(grep -v '^# This file is autogenerated' "$ROOT/requirements/$f") \
                <(grep -v '^# This file is autogenerated' "$tmp/requirements/$f") || rc=1
        done
        [ "$rc" = 0 ] || echo "requirements/*.lock are out of date: run ./build.sh lock" >&2
    else
        rc=1
    fi
    rm -rf "$tmp"
    return "$rc"
}

timed() {
    local name="$1"; shift
    local start=$SECONDS
    "$@"
    log "$name took $((SECONDS - start)) s"
}

# The test tiers, in the order a full run takes them. Each needs the virtualenv; all but lint
# also need the Debian packages (the daemons, Chromium, the image tools).
TIERS=(lint unit integration browser e2e)

tier_lint() {
    "$VENV/bin/ruff" check "$ROOT/agent" "$ROOT/devtools" "$ROOT/tests" "$ROOT/bench" \
        "$ROOT/image/lib" "$ROOT/firstboot"
    log "the layer order (docs/architecture.md)"
    (cd "$ROOT" && PYTHONPATH="$ROOT/agent" "$VENV/bin/lint-imports" --no-cache)
    log "docs/state.md is generated from the schema and must be current"
    "$VENV/bin/mailwarden" docs state --check "$ROOT/docs/state.md"
    "$VENV/bin/python" "$ROOT/firstboot/schema.py" --check "$ROOT/firstboot/answers.schema.json"
    if command -v shellcheck >/dev/null; then
        log "shellcheck"
        local scripts=("$ROOT/build.sh" "$ROOT/.ci/run" "$ROOT"/image/*.sh "$ROOT"/image/lib/*.sh
                       "$ROOT"/bench/*.sh) f
        # Element hooks have no .sh suffix: take every file whose shebang names bash or sh, or
        # that names its shell for shellcheck (sourced scripts, such as initramfs boot scripts).
        while IFS= read -r -d '' f; do
            head -n1 "$f" | grep -Eq '^#!.*[/ ](ba)?sh( |$)|^# shellcheck shell=' && scripts+=("$f")
        done < <(find "$ROOT/image/elements" -type f -print0 | sort -z)
        shellcheck -x "${scripts[@]}"
    else
        log "shellcheck is not installed: shell scripts not checked"
    fi

    # --- types, the dependency locks, the web UI's script ---
    log "mypy (strict, agent/mailwarden)"
    (cd "$ROOT" && "$VENV/bin/mypy")
    log "requirements/*.lock must be current with pyproject.toml (pip-compile, asks PyPI)"
    check_locks
    log "eslint webui/app.js"
    lint_js
}

# One worker per core: the unit tests share nothing (each has its own temporary folders), and
# run one after another they were a tenth of a whole run on a slow machine.
tier_unit() { "$VENV/bin/pytest" -q -n "${MAILWARDEN_UNIT_WORKERS:-auto}" "$ROOT/tests/unit"; }

tier_integration() {
    log "real Postfix, Rspamd, ClamAV, Redis, Unbound, NSD"
    "$VENV/bin/pytest" -q "$ROOT/tests/integration"
}

tier_browser() {
    # Screenshots go under out/screenshots; MAILWARDEN_REFRESH_SCREENSHOTS=1 writes the ones
    # docs/screenshots keeps instead (tests/browser/conftest.py).
    log "the web UI in Debian's headless Chromium, Playwright"
    "$VENV/bin/pytest" -q "$ROOT/tests/browser"
}

tier_e2e() {
    # Builds the image (or reuses one built from the same inputs), boots it in QEMU and sends
    # mail through it; says SKIP and why when this machine cannot build or boot images.
    # Two workers: the gateway on one host core, the other boots on the other
    # (tests/e2e/conftest.py); MAILWARDEN_E2E_WORKERS=0 runs everything in one process.
    log "the image built, booted in QEMU and used as a gateway"
    "$VENV/bin/pytest" -q -rs --durations=0 -n "${MAILWARDEN_E2E_WORKERS:-2}" \
        --dist loadscope "$ROOT/tests/e2e"
}

# ESLint and its plugins, exactly as tools/eslint/package-lock.json pins them (npm ci checks
# each package's integrity hash), installed again only when that lock changes.
lint_js() {
    local dir="$ROOT/tools/eslint" stamp want
    if ! command -v npm >/dev/null; then
        log "npm is not installed: webui/app.js not checked"
        return 0
    fi
    stamp="$dir/node_modules/.mailwarden-lock"
    want="$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)"
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        (cd "$dir" && npm ci --silent --no-audit --no-fund --cache "$CACHE/npm" --prefer-offline)
        echo "$want" > "$stamp"
    fi
    (cd "$ROOT" && "$dir/node_modules/.bin/eslint" -c tools/eslint/eslint.config.mjs \
        --max-warnings 0 webui)
}

# The image build takes minutes and mostly one core (apt, chroot, squashfs): in a whole run it
# starts with the first tier, in the background, so the end-to-end tier finds the image made.
# Only when it is needed (out/ has no image of these inputs) and possible (root, loop devices;
# tests/e2e/conftest.py says SKIP otherwise). Its output goes to out/build-background.log
# (diskimage-builder's own to out/build.log, as always).
EARLY_BUILD=""
EARLY_BUILD_START=0
start_early_build() {
    local out="$ROOT/out"
    [ "$(id -u)" = 0 ] && [ -e /dev/loop-control ] && [ -x "$ROOT/image/build-image.sh" ] \
        || return 0
    if [ "$("$ROOT/image/test-image.sh" image-current)" = yes ] \
        && [ "${MAILWARDEN_E2E_REBUILD:-}" != 1 ]; then
        return 0
    fi
    mkdir -p "$out"
    log "building the image in the background (out/build-background.log) while the tiers run"
    EARLY_BUILD_START=$SECONDS
    "$ROOT/image/build-image.sh" >"$out/build-background.log" 2>&1 </dev/null &
    EARLY_BUILD=$!
    # A run stopped early does not leave it building.
    trap '[ -z "$EARLY_BUILD" ] || kill "$EARLY_BUILD" 2>/dev/null || true' EXIT
}

# In the shell that started it (a tier runs in a subshell, which cannot wait for it).
wait_early_build() {
    [ -n "$EARLY_BUILD" ] || return 0
    log "waiting for the image build started with the run"
    if wait "$EARLY_BUILD"; then
        log "the image build took $((SECONDS - EARLY_BUILD_START)) s (in the background)"
        # Built in this run: the tier must not build it a second time.
        export MAILWARDEN_E2E_REBUILD=0
    else
        # The tier builds again in the foreground, where the failure shows.
        log "the image build started with the run failed (out/build-background.log)"
    fi
    EARLY_BUILD=""
}

cmd_test() {
    local tiers=() t
    for t in "$@"; do
        case "$t" in
            --lynis) export MAILWARDEN_E2E_LYNIS=1 ;;
            --all-firmware)
                export MAILWARDEN_E2E_INSTALL_FIRMWARES=bios,uefi,secureboot
                export MAILWARDEN_E2E_FIRMWARES="${MAILWARDEN_E2E_FIRMWARES:-bios,uefi}" ;;
            *) tiers+=("$t") ;;
        esac
    done
    [ ${#tiers[@]} -gt 0 ] || tiers=("${TIERS[@]}")
    for t in "${tiers[@]}"; do
        if [[ " ${TIERS[*]} " != *" $t "* ]]; then
            echo "build.sh test: unknown tier '$t' (valid: ${TIERS[*]}; none runs them all)" >&2
            exit 2
        fi
    done
    if [ "${tiers[*]}" != lint ]; then timed "host packages" install_host_packages; fi
    timed "virtualenv" ensure_venv
    if [ "${#tiers[@]}" -gt 1 ] && [[ " ${tiers[*]} " == *" e2e "* ]]; then
        start_early_build
    fi
    # Every tier runs even after one fails, so the summary tells the whole story; the exit
    # status is the first failure's.
    local summary=() rc=0 start status
    for t in "${tiers[@]}"; do
        if [ "$t" = e2e ]; then timed "waiting for the image build" wait_early_build; fi
        log "$t tier"
        start=$SECONDS
        # Not under || : that would switch errexit off inside the tier.
        set +e
        ( set -e; "tier_$t" )
        status=$?
        set -e
        log "$t tier took $((SECONDS - start)) s"
        if [ "$status" = 0 ]; then
            summary+=("$(printf '%-12s %5d s  passed' "$t" $((SECONDS - start)))")
        else
            summary+=("$(printf '%-12s %5d s  FAILED (exit %d)' "$t" $((SECONDS - start)) "$status")")
            [ "$rc" != 0 ] || rc=$status
        fi
    done
    log "summary"
    printf '  %s\n' "${summary[@]}" >&2
    return "$rc"
}

cmd_lock() {
    ensure_venv
    log "compiling requirements/agent.lock and requirements/dev.lock from pyproject.toml"
    compile_locks "$ROOT" "$@"
}

cmd_dev() {
    install_host_packages
    ensure_venv
    exec "$VENV/bin/mailwarden-dev" "$@"
}

cmd_build() {
    if [ -x "$ROOT/image/build-image.sh" ]; then
        exec "$ROOT/image/build-image.sh" "$@"
    fi
    log "the image build is not in this tree yet (image/build-image.sh); running the gateway with ./build.sh dev"
    cmd_dev "$@"
}

cmd_run() {
    [ -x "$ROOT/image/run-image.sh" ] || { echo "build.sh run: image/run-image.sh is not in this tree yet" >&2; exit 1; }
    # The demo seed's admin password hash is made by the agent.
    ensure_venv
    MAILWARDEN_VENV="$VENV" exec "$ROOT/image/run-image.sh" "$@"
}

cmd_bench() {
    [ -x "$ROOT/bench/run.sh" ] || { echo "build.sh bench: bench/run.sh is not in this tree yet" >&2; exit 1; }
    install_host_packages
    ensure_venv
    exec "$ROOT/bench/run.sh" "$@"
}

case "${1:-}" in
    "") cmd_build ;;
    build) shift; cmd_build "$@" ;;
    test) shift; cmd_test "$@" ;;
    dev) shift; cmd_dev "$@" ;;
    run) shift; cmd_run "$@" ;;
    bench) shift; cmd_bench "$@" ;;
    lock) shift; cmd_lock "$@" ;;
    -h|--help|help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//' ;;
    *) echo "build.sh: unknown command '$1' (build | test | dev | run | bench | lock)" >&2; exit 2 ;;
esac

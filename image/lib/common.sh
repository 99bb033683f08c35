# shellcheck shell=bash
# Shared helpers for image/build-image.sh, image/run-image.sh and image/test-image.sh.
# Sourced, not executed. Callers set `set -euo pipefail` themselves.

MW_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck disable=SC2034  # used by the scripts that source this file
MW_CACHE="${MAILWARDEN_CACHE:-/var/cache/mailwarden}"
MW_OUT="${MAILWARDEN_OUT:-$MW_ROOT/out}"
MW_ARCH=amd64

mw_log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
mw_die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# The agent's version, from pyproject.toml (the one place it is written).
mw_version() {
    sed -n 's/^version *= *"\([^"]*\)".*/\1/p' "$MW_ROOT/pyproject.toml" | head -n1
}

# Run a named stage and print how long it took (seconds, wall clock).
MW_STAGE_TIMES=()
mw_stage() {
    local name="$1" start end
    shift
    mw_log "stage: $name"
    start=$(date +%s)
    "$@"
    end=$(date +%s)
    MW_STAGE_TIMES+=("$(printf '%-28s %5d s' "$name" "$((end - start))")")
    mw_log "stage: $name done in $((end - start)) s"
}

mw_stage_summary() {
    local line
    mw_log "stage timings"
    for line in "${MW_STAGE_TIMES[@]}"; do
        printf '    %s\n' "$line" >&2
    done
}

# Install Debian packages on the build host when missing.
mw_need_packages() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    mw_log "installing host packages: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
}

# The newest image under out/ for this version (qcow2 by default).
mw_image_path() {
    local ext="${1:-qcow2}"
    printf '%s/mailwarden-%s-%s.%s\n' "$MW_OUT" "$(mw_version)" "$MW_ARCH" "$ext"
}

# Whether out/ holds an image built from the current inputs (build-image.sh writes
# NAME.inputs last): the end-to-end tier and ./build.sh test then reuse it.
mw_image_current() {
    [ -e "$(mw_image_path qcow2)" ] \
        && [ "$(cat "$(mw_image_path inputs)" 2>/dev/null || true)" = "$(mw_inputs_hash)" ]
}

# --- QEMU -----------------------------------------------------------------------------------

OVMF_CODE=/usr/share/OVMF/OVMF_CODE_4M.fd
OVMF_VARS=/usr/share/OVMF/OVMF_VARS_4M.fd
OVMF_CODE_SB=/usr/share/OVMF/OVMF_CODE_4M.secboot.fd
OVMF_VARS_MS=/usr/share/OVMF/OVMF_VARS_4M.ms.fd

# Fill the array MW_QEMU_ARGS for one boot.
#   mw_qemu_args FIRMWARE ACCEL IMAGE VARS_COPY SERIAL
# FIRMWARE: bios | uefi | secureboot. ACCEL: kvm | tcg. VARS_COPY: a writable file for the
# UEFI variables (copied from the template here). SERIAL: a QEMU -serial argument.
# Ports come from MW_HOSTFWD (a -netdev user hostfwd list, may be empty).
mw_qemu_args() {
    local firmware="$1" accel="$2" image="$3" vars="$4" serial="$5"
    local machine=q35
    MW_QEMU_ARGS=(-name mailwarden -m "${MW_MEMORY:-3072}" -smp "${MW_CPUS:-2}" -nographic
                  -serial "$serial" -monitor none -no-reboot)
    case "$accel" in
        kvm) MW_QEMU_ARGS+=(-accel kvm -cpu host) ;;
        # One host thread runs every vCPU: multi-threaded TCG lets a vCPU execute a stale
        # int3 after the guest kernel finished live-patching a static key, which panics the
        # guest; the patching follows the clocksource watchdog, so a busy host made it likely
        # (tests/e2e/README.md). MW_TCG_THREAD=multi trades that for speed.
        tcg) MW_QEMU_ARGS+=(-accel "tcg,thread=${MW_TCG_THREAD:-single}" -cpu "${MW_TCG_CPU:-max}") ;;
        *) mw_die "unknown accelerator $accel" ;;
    esac
    case "$firmware" in
        bios) ;;
        uefi)
            cp "$OVMF_VARS" "$vars"
            MW_QEMU_ARGS+=(-drive "if=pflash,format=raw,unit=0,readonly=on,file=$OVMF_CODE"
                           -drive "if=pflash,format=raw,unit=1,file=$vars")
            ;;
        secureboot)
            machine="q35,smm=on"
            cp "$OVMF_VARS_MS" "$vars"
            # shellcheck disable=SC2054  # QEMU option values contain commas
            MW_QEMU_ARGS+=(-global driver=cfi.pflash01,property=secure,value=on
                           -drive "if=pflash,format=raw,unit=0,readonly=on,file=$OVMF_CODE_SB"
                           -drive "if=pflash,format=raw,unit=1,file=$vars")
            ;;
        *) mw_die "unknown firmware $firmware" ;;
    esac
    # shellcheck disable=SC2054  # QEMU option values contain commas
    MW_QEMU_ARGS+=(-machine "$machine"
                   -device virtio-scsi-pci,id=scsi0
                   -drive "if=none,id=disk0,file=$image,format=qcow2,discard=unmap"
                   -device scsi-hd,drive=disk0,bus=scsi0.0
                   -netdev "user,id=net0${MW_HOSTFWD:+,$MW_HOSTFWD}"
                   -device virtio-net-pci,netdev=net0
                   -device virtio-rng-pci)
}

# The internal mail server of a test or demo appliance: Postfix's smtp-sink on this host's
# loopback (QEMU's user network shows it to the guest as 10.0.2.2), one file per message.
#   mw_start_sink DIR PORT LOG   sets MW_SINK_PID
mw_start_sink() {
    local dir="$1" port="$2" log="$3"
    command -v smtp-sink >/dev/null || mw_need_packages postfix
    mkdir -p "$dir"
    chown postfix "$dir"
    smtp-sink -u postfix -d "$dir/%Y%m%d%H%M%S." "127.0.0.1:$port" 100 > "$log" 2>&1 &
    # shellcheck disable=SC2034  # read by the scripts that source this file
    MW_SINK_PID=$!
}

# Make a NoCloud seed volume (the form of Proxmox VE's cloud-init drive) from a folder that
# holds mailwarden.yaml (and optionally clamav/*.hdb ...): mw_seed_iso DIR ISO.
mw_seed_iso() {
    local dir="$1" iso="$2"
    [ -f "$dir/mailwarden.yaml" ] || mw_die "mw_seed_iso: no $dir/mailwarden.yaml"
    command -v xorriso >/dev/null || mw_need_packages xorriso
    # A NoCloud volume also carries these two; cloud-init is not on the appliance.
    [ -f "$dir/meta-data" ] || printf 'instance-id: mailwarden-%s\nlocal-hostname: mailwarden\n' "$(date +%s)" > "$dir/meta-data"
    [ -f "$dir/user-data" ] || printf '#cloud-config\n{}\n' > "$dir/user-data"
    xorriso -as mkisofs -quiet -V cidata -J -r -o "$iso" "$dir" 2>/dev/null
}

# QEMU arguments attaching a seed ISO as a CD on the boot's virtio-scsi bus: mw_seed_drive ISO.
mw_seed_drive() {
    # shellcheck disable=SC2034,SC2054  # read by the callers; the commas are inside QEMU option values
    MW_SEED_ARGS=(-drive "if=none,id=seed,media=cdrom,readonly=on,file=$1"
                  -device scsi-cd,drive=seed,bus=scsi0.0)
}

# Decide between KVM and TCG by booting the image's kernel, not by the presence of /dev/kvm:
# on nested paravirtual KVM (kvm-pvm) /dev/kvm opens but guest kernels die with emulation
# errors. The probe boots IMAGE under KVM (copy-on-write overlay) and looks for the kernel's
# banner on the serial console within a time limit. Prints kvm or tcg; the result is cached
# for this host boot in /run.
mw_probe_accel() {
    local image="$1" cache=/run/mailwarden-accel-probe dir log pid result=tcg
    if [ -n "${MAILWARDEN_ACCEL:-}" ]; then
        printf '%s\n' "$MAILWARDEN_ACCEL"
        return 0
    fi
    if [ -f "$cache" ]; then
        cat "$cache"
        return 0
    fi
    if [ -r /dev/kvm ] && [ -w /dev/kvm ]; then
        dir="$(mktemp -d)"
        log="$dir/serial.log"
        qemu-img create -q -f qcow2 -b "$(readlink -f "$image")" -F qcow2 "$dir/probe.qcow2"
        MW_HOSTFWD="" mw_qemu_args bios kvm "$dir/probe.qcow2" "$dir/vars.fd" "file:$log"
        qemu-system-x86_64 "${MW_QEMU_ARGS[@]}" >"$dir/qemu.log" 2>&1 &
        pid=$!
        for _ in $(seq 1 60); do
            if grep -q 'Linux version\|Run /init\|systemd\[1\]' "$log" 2>/dev/null; then
                result=kvm
                break
            fi
            kill -0 "$pid" 2>/dev/null || break
            # QEMU stays alive, paused, after a KVM emulation failure: stop at its message.
            grep -qi 'internal error\|emulation failure' "$dir/qemu.log" 2>/dev/null && break
            sleep 0.5
        done
        # A kernel that started can still die right after: give it a moment and look again.
        if [ "$result" = kvm ]; then
            sleep 3
            if ! kill -0 "$pid" 2>/dev/null || grep -qi 'internal error\|emulation failure' "$dir/qemu.log"; then
                result=tcg
            fi
        fi
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        rm -rf "$dir"
    fi
    printf '%s\n' "$result" > "$cache"
    printf '%s\n' "$result"
}

# Hash of everything that goes into the image (not the test or run scripts): a build whose
# out/NAME.inputs matches is current.
mw_inputs_hash() {
    (
        cd "$MW_ROOT" || exit 1
        find image/elements image/block-device.yaml image/build-image.sh \
            image/build-wheelhouse.sh image/lib/assemble-disk.sh image/lib/build-iso.sh roles agent pyproject.toml \
            README.md -type f ! -path '*/__pycache__/*' ! -path '*.egg-info/*' -print0 \
            | LC_ALL=C sort -z | xargs -0 sha256sum
    ) | sha256sum | cut -c1-32
}

# --- helpers for the end-to-end tier ------------------------------------------------------

# A free loopback TCP port.
mw_free_port() {
    /usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Download a Debian 13 (trixie) package without touching this host's apt sources; prints the
# path of the cached .deb. (The build host may be Debian 12; its keyring verifies trixie.)
mw_trixie_deb() {
    local pkg="$1" dir="$MW_CACHE/apt-trixie" mirror="${MAILWARDEN_MIRROR:-http://deb.debian.org/debian}"
    local opts=(-q -o "Dir::Etc::sourcelist=$dir/sources.list" -o Dir::Etc::sourceparts=-
                -o "Dir::State::Lists=$dir/lists" -o "Dir::Cache=$dir" -o Debug::NoLocking=1
                -o APT::Sandbox::User=root)
    mkdir -p "$dir/lists/partial" "$dir/debs"
    printf 'deb %s trixie main\n' "$mirror" > "$dir/sources.list"
    if ! ls "$dir/debs/${pkg}_"*.deb >/dev/null 2>&1; then
        apt-get "${opts[@]}" update >/dev/null
        (cd "$dir/debs" && apt-get "${opts[@]}" download "$pkg" >/dev/null)
    fi
    # shellcheck disable=SC2012  # .deb names have no spaces or newlines; ls sorts them
    ls -1 "$dir/debs/${pkg}_"*.deb | tail -n1
}

# Wait until an SMTP server greets on 127.0.0.1:PORT (through QEMU's port forward, which
# accepts even when nothing listens in the guest: only the 220 counts).
mw_smtp_greets() {
    local port="$1" line=""
    # shellcheck disable=SC2016  # the inner script expands its own $1, passed as an argument
    line="$(timeout 8 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1" && IFS= read -r -t 6 l <&3 && printf "%s" "$l"' _ "$port" 2>/dev/null)" || true
    [[ "$line" == 220* ]]
}

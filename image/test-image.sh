#!/usr/bin/env bash
# End-to-end tier: the built image booted in QEMU. See tests/e2e/README.md.
#
#   image/test-image.sh [--rebuild] [--firmware bios,uefi,secureboot]
#
# 1. Uses out/mailwarden-VERSION-amd64.qcow2 when out/*.inputs matches the hash of image/,
#    roles/, agent/ and pyproject.toml; otherwise builds it (image/build-image.sh).
# 2. Boots it under SeaBIOS, OVMF and OVMF with Secure Boot (Microsoft keys enrolled), each on a
#    throw-away overlay, with KVM only if a probe boot shows KVM really runs a guest, else TCG.
# 3. Reads the boot report (image/elements/mailwarden-boot-report) on the serial console and
#    checks the firmware, the services, the firewall policy, AppArmor and the absence of
#    compilers; waits for the login prompt.
# Prints the time of each step. Skips (exit 0, saying why) when this machine cannot build or
# boot images (not root, no loop device). Missing QEMU and OVMF are apt-installed.
set -euo pipefail

# shellcheck source=image/lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

BOOT_TIMEOUT="${MAILWARDEN_BOOT_TIMEOUT:-420}"
rebuild=0
firmwares=(bios uefi secureboot)
while [ $# -gt 0 ]; do
    case "$1" in
        --rebuild) rebuild=1 ;;
        --firmware) IFS=, read -r -a firmwares <<< "$2"; shift ;;
        -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) mw_die "test-image.sh: unknown argument '$1'" ;;
    esac
    shift
done

skip() { mw_log "SKIP end-to-end tier: $*"; exit 0; }
[ "$(id -u)" = 0 ] || skip "needs root (loop devices, chroot) to build and boot the image"
[ -e /dev/loop-control ] || skip "no loop devices on this machine"
losetup -f >/dev/null 2>&1 || skip "no free loop device"

results=()
failures=0
record() { results+=("$(printf '%-44s %s' "$1" "$2")"); }
check() {
    local what="$1" pattern="$2" file="$3"
    if grep -aEq -- "$pattern" "$file"; then
        record "  ok   $what" ""
    else
        record "  FAIL $what" "(no match for: $pattern)"
        failures=$((failures + 1))
    fi
}

image="$(mw_image_path qcow2)"
inputs="$(mw_image_path inputs)"
want="$(mw_inputs_hash)"
t0=$(date +%s)
if [ "$rebuild" = 1 ] || [ ! -f "$image" ] || [ "$(cat "$inputs" 2>/dev/null)" != "$want" ]; then
    mw_log "building the image (inputs changed or no image yet)"
    "$MW_ROOT/image/build-image.sh" >/dev/null
    record "build image" "$(( $(date +%s) - t0 )) s"
else
    mw_log "reusing $image (inputs unchanged)"
    record "build image (cached, inputs unchanged)" "0 s"
fi
command -v qemu-system-x86_64 >/dev/null || mw_need_packages qemu-system-x86 qemu-utils ovmf
[ -f "$image" ] || mw_die "no image at $image"

t=$(date +%s)
accel="$(mw_probe_accel "$image")"
record "accelerator probe -> $accel" "$(( $(date +%s) - t )) s"

logdir="$MW_OUT/e2e"
mkdir -p "$logdir"
work="$(mktemp -d)"
qpid=""
cleanup() {
    if [ -n "$qpid" ]; then kill "$qpid" 2>/dev/null || true; wait "$qpid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

boot() {
    local fw="$1"
    local serial="$logdir/$fw.serial.log" start now report="" login=""
    rm -f "$serial"
    qemu-img create -q -f qcow2 -b "$(readlink -f "$image")" -F qcow2 "$work/$fw.qcow2"
    MW_HOSTFWD="" mw_qemu_args "$fw" "$accel" "$work/$fw.qcow2" "$work/$fw.vars" "file:$serial"
    start=$(date +%s)
    qemu-system-x86_64 "${MW_QEMU_ARGS[@]}" > "$logdir/$fw.qemu.log" 2>&1 &
    qpid=$!
    while :; do
        now=$(( $(date +%s) - start ))
        if [ -z "$report" ] && grep -aq 'MWREPORT end' "$serial" 2>/dev/null; then report=$now; fi
        if [ -z "$login" ] && grep -aq 'login:' "$serial" 2>/dev/null; then login=$now; fi
        if [ -n "$report" ] && [ -n "$login" ]; then break; fi
        if ! kill -0 "$qpid" 2>/dev/null; then break; fi
        if [ "$now" -ge "$BOOT_TIMEOUT" ]; then break; fi
        sleep 1
    done
    kill "$qpid" 2>/dev/null || true
    wait "$qpid" 2>/dev/null || true
    qpid=""
    rm -f "$work/$fw.qcow2" "$work/$fw.vars"
    record "boot $fw ($accel): boot report" "${report:-none after ${now} s}${report:+ s}"
    record "boot $fw ($accel): login prompt" "${login:-none after ${now} s}${login:+ s}"
    if [ -z "$report" ] || [ -z "$login" ]; then
        failures=$((failures + 1))
        return 0
    fi

    case "$fw" in
        bios) check "$fw: firmware is BIOS" 'MWREPORT firmware=bios' "$serial" ;;
        uefi) check "$fw: firmware is UEFI" 'MWREPORT firmware=uefi' "$serial" ;;
        secureboot) check "$fw: UEFI with Secure Boot on" 'MWREPORT firmware=uefi secureboot=on' "$serial" ;;
    esac
    local u
    for u in postfix rspamd redis-server unbound clamav-daemon clamav-freshclam nftables chrony \
             qemu-guest-agent apparmor unattended-upgrades; do
        check "$fw: $u installed" "MWREPORT unit=$u.service LoadState=loaded" "$serial"
    done
    for u in postfix redis-server unbound nftables; do
        check "$fw: $u active" "MWREPORT unit=$u.service LoadState=loaded ActiveState=active" "$serial"
    done
    check "$fw: rspamd started" "MWREPORT unit=rspamd.service LoadState=loaded ActiveState=(active|activating)" "$serial"
    check "$fw: firewall input policy drop" 'MWREPORT nft-input-policy=drop' "$serial"
    check "$fw: AppArmor enabled" 'MWREPORT apparmor-enabled=Y' "$serial"
    check "$fw: no compilers" 'MWREPORT compilers=none' "$serial"
    check "$fw: no failed units" 'MWREPORT system=.* failed=\[\]' "$serial"
}

for fw in "${firmwares[@]}"; do
    mw_log "booting under $fw ($accel), serial log $logdir/$fw.serial.log"
    boot "$fw"
done

mw_log "end-to-end results (total $(( $(date +%s) - t0 )) s)"
printf '%s\n' "${results[@]}" >&2
if [ "$failures" -gt 0 ]; then
    mw_log "end-to-end tier: $failures failure(s); serial logs in $logdir"
    exit 1
fi
mw_log "end-to-end tier passed"

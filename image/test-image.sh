#!/usr/bin/env bash
# End-to-end tier: the built image booted in QEMU and used as a mail gateway. See
# tests/e2e/README.md.
#
#   image/test-image.sh [--rebuild] [--gateway FIRMWARE|none] [--firmware LIST] [--no-lynis]
#
# 1. Uses out/mailwarden-VERSION-amd64.qcow2 when out/*.inputs matches the hash of image/,
#    roles/, agent/ and pyproject.toml; otherwise builds it (image/build-image.sh).
# 2. KVM only if a probe boot shows KVM really runs a guest, else TCG.
# 3. Gateway boot (--gateway, default bios): a NoCloud seed ISO (label cidata) names a relay
#    domain whose internal server is an smtp-sink on this host (10.0.2.2 from the guest) and
#    carries an EICAR signature made with sigtool. Measures power-on to port 25 answering;
#    sends a clean message (must reach the sink), GTUBE and EICAR (must be quarantined, listed
#    by the API on 8006, and never reach the sink); SSH with the seed's key only; then, through
#    the QEMU guest agent: nft ruleset (default deny; 8006 and SSH only from the state's
#    management networks, then from whatever networks.management is changed to through the
#    API, after which this host's address is shut out), systemd-analyze security of the
#    agent's units, the root file system grown to the larger virtual disk, and Lynis (from this
#    host, over a read-only 9p share; not installed in the image; its report is reused while
#    the image is the same).
# 4. Boots without a seed under the other firmwares (--firmware, default uefi,secureboot): the
#    boot report (firmware, Secure Boot, services, firewall, AppArmor, no compilers, no failed
#    units) and the first-boot setup code on the console.
# A guest kernel panic (seen under TCG) stops that boot at once; it is retried once and
# reported. Prints the time of each step. Skips (exit 0, saying why) when this machine cannot
# build or boot images.
set -euo pipefail

# shellcheck source=image/lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

BOOT_TIMEOUT="${MAILWARDEN_BOOT_TIMEOUT:-420}"
SMTP_TIMEOUT="${MAILWARDEN_SMTP_TIMEOUT:-900}"
MAIL_TIMEOUT="${MAILWARDEN_MAIL_TIMEOUT:-300}"
# Lynis took 764-1743 s under TCG on the CI machines seen, and more on a busy one: no limit on
# its whole run, only on a stall (its log not growing for this long).
LYNIS_STALL="${MAILWARDEN_LYNIS_STALL:-600}"
rebuild=0
gateway=bios
firmwares=(uefi secureboot)
lynis=1
while [ $# -gt 0 ]; do
    case "$1" in
        --rebuild) rebuild=1 ;;
        --gateway) gateway="$2"; shift ;;
        --firmware) IFS=, read -r -a firmwares <<< "$2"; shift ;;
        --no-lynis) lynis=0 ;;
        -h|--help) sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
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
record() { results+=("$(printf '%-58s %s' "$1" "$2")"); }
pass() { record "  ok   $1" "${2:-}"; }
fail() { record "  FAIL $1" "${2:-}"; failures=$((failures + 1)); }
check() {
    local what="$1" pattern="$2" file="$3"
    if grep -aEq -- "$pattern" "$file"; then pass "$what"; else fail "$what" "(no match for: $pattern)"; fi
}
elapsed() { echo $(( $(date +%s) - $1 )); }

t0=$(date +%s)
image="$(mw_image_path qcow2)"
inputs="$(mw_image_path inputs)"
want="$(mw_inputs_hash)"
if [ "$rebuild" = 1 ] || [ ! -f "$image" ] || [ "$(cat "$inputs" 2>/dev/null)" != "$want" ]; then
    mw_log "building the image (inputs changed or no image yet)"
    "$MW_ROOT/image/build-image.sh" >/dev/null
    record "build image" "$(elapsed "$t0") s"
else
    mw_log "reusing $image (inputs unchanged)"
    record "build image (cached, inputs unchanged)" "0 s"
fi
[ -f "$image" ] || mw_die "no image at $image"
mw_need_packages qemu-system-x86 qemu-utils ovmf xorriso swaks
command -v smtp-sink >/dev/null || mw_need_packages postfix
command -v sigtool >/dev/null || mw_need_packages clamav

t=$(date +%s)
accel="$(mw_probe_accel "$image")"
record "accelerator probe -> $accel" "$(elapsed "$t") s"

logdir="$MW_OUT/e2e"
mkdir -p "$logdir"
work="$(mktemp -d)"
chmod 0755 "$work"
qpid=""
sinkpid=""
stop_qemu() {
    if [ -n "$qpid" ]; then kill "$qpid" 2>/dev/null || true; wait "$qpid" 2>/dev/null || true; fi
    qpid=""
}
cleanup() {
    stop_qemu
    if [ -n "$sinkpid" ]; then kill "$sinkpid" 2>/dev/null || true; wait "$sinkpid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

# Start QEMU for one boot: start_qemu NAME FIRMWARE OVERLAY_SIZE [EXTRA QEMU ARGS...].
# Sets qpid, serial, qstart.
start_qemu() {
    local name="$1" fw="$2" size="$3"
    shift 3
    serial="$logdir/$name.serial.log"
    rm -f "$serial" "$work/$name.qcow2" "$work/$name.vars"
    qemu-img create -q -f qcow2 -b "$(readlink -f "$image")" -F qcow2 "$work/$name.qcow2" ${size:+"$size"}
    mw_qemu_args "$fw" "$accel" "$work/$name.qcow2" "$work/$name.vars" "file:$serial"
    qstart=$(date +%s)
    qemu-system-x86_64 "${MW_QEMU_ARGS[@]}" "$@" > "$logdir/$name.qemu.log" 2>&1 &
    qpid=$!
}
panicked() { grep -aq 'Kernel panic' "$serial" 2>/dev/null; }

# Wait for a console line (or a panic, or QEMU's end): wait_console PATTERN TIMEOUT.
# Returns 0 when found, 2 on a kernel panic, 1 otherwise.
wait_console() {
    local pattern="$1" limit="$2"
    while :; do
        if grep -aEq -- "$pattern" "$serial" 2>/dev/null; then return 0; fi
        if panicked; then return 2; fi
        kill -0 "$qpid" 2>/dev/null || return 1
        [ "$(elapsed "$qstart")" -lt "$limit" ] || return 1
        sleep 1
    done
}

# --- boot without a seed: boot report and setup code -------------------------------------

report_checks() {
    local fw="$1" file="$2"
    case "$fw" in
        bios) check "$fw: firmware is BIOS" 'MWREPORT firmware=bios' "$file" ;;
        uefi) check "$fw: firmware is UEFI" 'MWREPORT firmware=uefi' "$file" ;;
        secureboot) check "$fw: UEFI with Secure Boot on" 'MWREPORT firmware=uefi secureboot=on' "$file" ;;
    esac
    local u
    for u in postfix rspamd redis-server unbound clamav-daemon clamav-freshclam nftables chrony \
             qemu-guest-agent apparmor unattended-upgrades; do
        check "$fw: $u installed" "MWREPORT unit=$u.service LoadState=loaded" "$file"
    done
    for u in postfix redis-server unbound nftables mailwarden-firstboot mailwarden-api; do
        check "$fw: $u active" "MWREPORT unit=$u.service LoadState=loaded ActiveState=active" "$file"
    done
    check "$fw: rspamd started" "MWREPORT unit=rspamd.service LoadState=loaded ActiveState=(active|activating)" "$file"
    check "$fw: apply helper socket listening" "MWREPORT unit=mailwarden-apply.socket LoadState=loaded ActiveState=active" "$file"
    check "$fw: firewall input policy drop" 'MWREPORT nft-input-policy=drop' "$file"
    check "$fw: AppArmor enabled" 'MWREPORT apparmor-enabled=Y' "$file"
    check "$fw: no compilers" 'MWREPORT compilers=none' "$file"
    check "$fw: no failed units" 'MWREPORT system=.* failed=\[\]' "$file"
}

boot_plain() {
    local fw="$1" attempt status
    for attempt in 1 2; do
        start_qemu "$fw" "$fw" ""
        status=0
        wait_console 'MWREPORT end' "$BOOT_TIMEOUT" || status=$?
        local report_at; report_at=$(elapsed "$qstart")
        if [ "$status" = 2 ] && [ "$attempt" = 1 ]; then
            cp "$serial" "$logdir/$fw.panic-$(date +%s).serial.log"
            record "boot $fw ($accel): guest kernel panic, retrying once" "after $report_at s"
            stop_qemu
            continue
        fi
        local login_status=0
        [ "$status" != 0 ] || wait_console 'login:' "$BOOT_TIMEOUT" || login_status=$?
        local login_at; login_at=$(elapsed "$qstart")
        stop_qemu
        if [ "$status" != 0 ] || [ "$login_status" != 0 ]; then
            fail "boot $fw ($accel)" "$( [ "$status" = 2 ] && echo 'kernel panic again' || echo "no boot report/login after $login_at s")"
            return 0
        fi
        record "boot $fw ($accel): boot report / login prompt" "$report_at s / $login_at s"
        report_checks "$fw" "$serial"
        check "$fw: fresh appliance shows a setup code" 'MWFIRSTBOOT setup-code [0-9A-Z]{4}-' "$serial"
        return 0
    done
}

# --- the gateway boot: seed, mail, API, SSH, inside views ---------------------------------

qga() { /usr/bin/python3 "$MW_ROOT/image/lib/qga.py" "$work/qga.sock" "$@"; }
e2e() { /usr/bin/python3 "$MW_ROOT/image/lib/e2e.py" "$@"; }
nftrules() { /usr/bin/python3 "$MW_ROOT/image/lib/nftrules.py" "$@"; }

# The guest's loaded ruleset, as text and as JSON: fetch_ruleset NAME.
fetch_ruleset() {
    qga exec -- /usr/sbin/nft list ruleset > "$logdir/$1.txt" 2>&1 || true
    qga exec -- /usr/sbin/nft -j list ruleset > "$logdir/$1.json" 2>&1 || true
}

# Who the loaded ruleset lets reach a TCP port: port_sources WHAT RULESET PORT NET...|any
port_sources() {
    local what="$1" ruleset="$2" port="$3" out
    shift 3
    if out="$(nftrules expect "$logdir/$ruleset.json" "$port" "$@" 2>&1)"; then
        pass "$what" "${*:-nowhere}"
    else
        fail "$what" "$out"
    fi
}

# Wait for the message of KIND to reach the sink, then record WHAT as passed or failed:
#   wait_delivered KIND RUN_ID WHAT
wait_delivered() {
    local subject start
    subject="$(e2e subject "$1" "$2")"
    start=$(date +%s)
    until e2e sink-has "$work/sink" "$subject"; do
        [ "$(elapsed "$start")" -lt "$MAIL_TIMEOUT" ] || break
        sleep 2
    done
    if e2e sink-has "$work/sink" "$subject"; then
        pass "$3" "$(elapsed "$start") s after sending"
    else
        fail "$3" "not after $MAIL_TIMEOUT s"
    fi
}

make_seed() {
    local sink_port="$1" seed="$work/seed"
    local mw="$MW_ROOT/.venv/bin/mailwarden"
    [ -x "$mw" ] || mw_die "no $mw: run ./build.sh test (or create the venv) first"
    mkdir -p "$seed/clamav"
    password="e2e-$(head -c 9 /dev/urandom | base64 | tr -d '/+=')"
    local hash; hash="$(printf '%s\n' "$password" | "$mw" user hash-password --password-stdin)"
    ssh-keygen -q -t ed25519 -N '' -C mailwarden-e2e -f "$work/id_e2e"
    cat > "$seed/mailwarden.yaml" <<YAML
# Mailwarden end-to-end test seed (image/test-image.sh)
version: 1
hostname: mx.e2e.example.org
admin: {password_hash: "$hash"}
domains:
  - {name: e2e.example.org, server: 10.0.2.2, port: $sink_port}
ssh_authorized_keys: ["$(cat "$work/id_e2e.pub")"]
YAML
    printf 'instance-id: mailwarden-e2e\nlocal-hostname: mx\n' > "$seed/meta-data"
    # EICAR's signature, made the way the integration tier makes it (no freshclam here).
    e2e eicar > "$work/eicar.com"
    (cd "$work" && sigtool --md5 eicar.com) | sed 's/:eicar\.com$/:Mailwarden-E2E-EICAR/' \
        > "$seed/clamav/e2e-eicar.hdb"
    grep -q ':68:Mailwarden-E2E-EICAR$' "$seed/clamav/e2e-eicar.hdb" || mw_die "sigtool made no EICAR signature"
    mw_seed_iso "$seed" "$work/seed.iso"
}

prepare_lynis() {
    local deb dir="$MW_CACHE/e2e/lynis"
    deb="$(mw_trixie_deb lynis)"
    if [ ! -f "$dir/.from" ] || [ "$(cat "$dir/.from")" != "$deb" ]; then
        rm -rf "$dir"
        mkdir -p "$dir"
        dpkg-deb -x "$deb" "$dir"
        # Run from its share folder: ./include, ./plugins, ./db and the default profile.
        cp "$dir/etc/lynis/default.prf" "$dir/usr/share/lynis/default.prf"
        printf '%s' "$deb" > "$dir/.from"
    fi
    # PKGS-7392 asks the Debian mirrors for pending security updates: the test guest has no
    # internet, and the question would only wait for DNS timeouts (4 minutes under TCG).
    cat > "$dir/mailwarden-e2e.prf" <<'PRF'
# Mailwarden end-to-end test (image/test-image.sh): tests that need the internet.
skip-test=PKGS-7392
PRF
    chown -R root:root "$dir"
    lynis_dir="$dir"
    # A report stays valid while the image, Lynis and its profile are the same: a run whose
    # image was not rebuilt reuses it instead of spending 15-30 minutes of TCG on it again.
    local image_sum
    image_sum="$(sha256sum "$(readlink -f "$image")" | cut -d' ' -f1)"
    lynis_key="$(printf '%s\n' "$image_sum" "$deb" "$(sha256sum < "$dir/mailwarden-e2e.prf")" \
                 | sha256sum | cut -c1-16)"
    lynis_cache="$MW_CACHE/e2e/lynis-reports/$lynis_key"
}

# Lynis in the guest, watched: it may take as long as it needs while its log grows, and is
# given up only when the log has not grown for LYNIS_STALL seconds (a hang, not a slow or busy
# machine). Sets lynis_outcome: done, stalled or failed.
run_lynis() {
    local pid size last_size=-1 last_growth status
    lynis_outcome=failed
    qga exec -- /usr/bin/mkdir -p /run/lynis-e2e >/dev/null 2>&1 || true
    qga exec -- /usr/bin/mount -t 9p -o trans=virtio,version=9p2000.L,ro lynis /run/lynis-e2e > "$logdir/lynis-mount.txt" 2>&1 || true
    pid="$(qga start -- /usr/bin/env -C /run/lynis-e2e/usr/share/lynis \
        /run/lynis-e2e/usr/sbin/lynis audit system --no-colors --quick \
        --plugindir /run/lynis-e2e/etc/lynis/plugins \
        --profile /run/lynis-e2e/mailwarden-e2e.prf 2>> "$logdir/lynis-mount.txt")" || return 0
    last_growth=$(date +%s)
    while :; do
        status=0
        qga status "$pid" > "$logdir/lynis.txt" 2>&1 || status=$?
        # 3: still running; 4: the guest agent did not answer (counts as no progress).
        case "$status" in 3|4) ;; *) lynis_outcome="done"; return 0 ;; esac
        size="$(qga exec -- /usr/bin/stat -c %s /var/log/lynis.log 2>/dev/null || echo 0)"
        if [ "$size" != "$last_size" ]; then
            last_size="$size"
            last_growth=$(date +%s)
        elif [ "$(elapsed "$last_growth")" -ge "$LYNIS_STALL" ]; then
            lynis_outcome=stalled
            return 0
        fi
        sleep 20
    done
}

gateway_boot() {
    local fw="$1" t status attempt
    local sink_port smtp_port https_port ssh_port run_id
    sink_port="$(mw_free_port)"; smtp_port="$(mw_free_port)"
    https_port="$(mw_free_port)"; ssh_port="$(mw_free_port)"
    run_id="$(date +%s)-$$"

    mw_start_sink "$work/sink" "$sink_port" "$logdir/sink.log"
    sinkpid=$MW_SINK_PID
    make_seed "$sink_port"
    [ "$lynis" = 0 ] || prepare_lynis

    export MW_HOSTFWD="hostfwd=tcp:127.0.0.1:$smtp_port-:25,hostfwd=tcp:127.0.0.1:$https_port-:8006,hostfwd=tcp:127.0.0.1:$ssh_port-:22"
    mw_seed_drive "$work/seed.iso"
    # shellcheck disable=SC2054  # the commas are inside QEMU option values, not separators
    local extra=("${MW_SEED_ARGS[@]}"
                 -chardev "socket,id=qga0,path=$work/qga.sock,server=on,wait=off"
                 -device virtio-serial -device virtserialport,chardev=qga0,name=org.qemu.guest_agent.0)
    # shellcheck disable=SC2054  # QEMU option values contain commas
    [ "$lynis" = 0 ] || extra+=(-virtfs "local,path=$lynis_dir,mount_tag=lynis,security_model=none,readonly=on")

    for attempt in 1 2; do
        # 2 GiB larger than the image: the root file system must grow into it at boot.
        start_qemu gateway "$fw" 10G "${extra[@]}"
        mw_log "gateway boot ($fw, $accel): waiting for port 25 (serial log $serial)"
        status=1
        while [ "$(elapsed "$qstart")" -lt "$SMTP_TIMEOUT" ]; do
            if panicked; then status=2; break; fi
            if ! kill -0 "$qpid" 2>/dev/null; then break; fi
            if grep -aq 'MWFIRSTBOOT seed refused' "$serial" 2>/dev/null; then break; fi
            if mw_smtp_greets "$smtp_port"; then status=0; break; fi
            sleep 2
        done
        smtp_at=$(elapsed "$qstart")
        if [ "$status" = 2 ] && [ "$attempt" = 1 ]; then
            cp "$serial" "$logdir/gateway.panic-$(date +%s).serial.log"
            record "gateway boot: guest kernel panic, retrying once" "after $smtp_at s"
            stop_qemu
            continue
        fi
        break
    done
    if [ "$status" != 0 ]; then
        grep -a 'MWFIRSTBOOT' "$serial" | sed 's/^/    /' >&2 || true
        fail "gateway ($fw, $accel): port 25 answers" "$( [ "$status" = 2 ] && echo 'kernel panic again' || echo "not after $smtp_at s")"
        stop_qemu
        return 0
    fi
    pass "gateway ($fw, $accel): power-on to port 25 answering" "$smtp_at s"
    check "gateway: seed found on the cidata volume" 'MWFIRSTBOOT seed found cidata:' "$serial"
    check "gateway: seed applied" 'MWFIRSTBOOT seed applied revision=1 hostname=mx.e2e.example.org' "$serial"
    check "gateway: EICAR signature installed from the seed" 'MWFIRSTBOOT signatures e2e-eicar.hdb' "$serial"
    local applied; applied="$(grep -aoE 'MWFIRSTBOOT seed applied .* in [0-9.]+ s' "$serial" | grep -oE '[0-9.]+ s$' || true)"
    record "  first-boot seed apply took" "${applied:-?}"

    # Ready: first boot finished (the agent's daemons start after it) and the API reports
    # every service healthy (clamd loads its signatures after the first apply).
    local url="https://127.0.0.1:$https_port" health=""
    wait_console 'MWFIRSTBOOT end' "$SMTP_TIMEOUT" || true
    t=$(date +%s)
    while [ "$(elapsed "$qstart")" -lt "$SMTP_TIMEOUT" ]; do
        if health="$(e2e services "$url" admin "$password" 2>&1)"; then break; fi
        health="${health:-no answer}"
        sleep 3
    done
    printf '%s\n' "$health" > "$logdir/services.txt"
    if e2e services "$url" admin "$password" >/dev/null 2>&1; then
        pass "gateway: power-on to every service healthy (API)" "$(elapsed "$qstart") s"
    else
        fail "gateway: every service healthy (API)" "$(grep -v 'healthy$' <<< "$health" | tr '\n' ' ')"
    fi

    # Mail: clean reaches the sink; GTUBE and EICAR are accepted, quarantined, never delivered.
    local kind out
    for kind in clean gtube eicar; do
        t=$(date +%s)
        if out="$(e2e send "$smtp_port" "$kind" "$run_id" 2>&1)"; then
            pass "mail: $kind accepted on port 25" "$(elapsed "$t") s"
        else
            fail "mail: $kind accepted on port 25" "$out"
        fi
    done
    wait_delivered clean "$run_id" "mail: clean message delivered to the sink on the host"

    local listed=""
    if e2e health "$url"; then pass "API on 8006 answers /api/health"; else fail "API on 8006 answers /api/health"; fi
    t=$(date +%s)
    while [ "$(elapsed "$t")" -lt "$MAIL_TIMEOUT" ]; do
        listed="$(e2e quarantine "$url" admin "$password" 2>&1 || true)"
        if grep -qF "spam	$(e2e subject gtube "$run_id")" <<< "$listed" && \
           grep -qF "virus	$(e2e subject eicar "$run_id")" <<< "$listed"; then
            break
        fi
        sleep 3
    done
    printf '%s\n' "$listed" > "$logdir/quarantine.txt"
    if grep -qF "spam	$(e2e subject gtube "$run_id")" <<< "$listed"; then
        pass "mail: GTUBE quarantined as spam (listed by the API)"
    else
        fail "mail: GTUBE quarantined as spam (listed by the API)" "$(head -c 300 <<< "$listed")"
    fi
    if grep -qF "virus	$(e2e subject eicar "$run_id")" <<< "$listed"; then
        pass "mail: EICAR quarantined as virus (listed by the API)"
    else
        fail "mail: EICAR quarantined as virus (listed by the API)" "$(head -c 300 <<< "$listed")"
    fi
    for kind in gtube eicar; do
        if e2e sink-has "$work/sink" "$(e2e subject "$kind" "$run_id")"; then
            fail "mail: $kind never reaches the internal server"
        else
            pass "mail: $kind never reaches the internal server"
        fi
    done

    # A change through the API, as an admin makes it: the unprivileged API asks the root apply
    # helper (socket activation, SO_PEERCRED), which renders, validates, reloads Postfix; then
    # mail for the new domain is relayed.
    t=$(date +%s)
    if out="$(e2e add-domain "$url" admin "$password" added.e2e.example.org 2>&1)"; then
        pass "API: relay domain added (revision 2, via the apply helper)" "$(elapsed "$t") s: $out"
        local added_rcpt="carol@added.e2e.example.org"
        if e2e send "$smtp_port" added "$run_id" "$added_rcpt" >/dev/null 2>&1; then
            wait_delivered added "$run_id" "mail: the added domain's mail delivered"
        else
            fail "mail: the added domain's mail accepted on port 25"
        fi
    else
        fail "API: relay domain added (via the apply helper)" "$out"
    fi

    # SSH: on because the seed gave a key; key-only.
    local ssh_opts=(-p "$ssh_port" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null
                    -o BatchMode=yes -o ConnectTimeout=30 -o LogLevel=ERROR)
    if ssh "${ssh_opts[@]}" -i "$work/id_e2e" -o IdentitiesOnly=yes root@127.0.0.1 true 2>/dev/null; then
        pass "SSH: the seed's key logs in"
    else
        fail "SSH: the seed's key logs in"
    fi
    if ssh "${ssh_opts[@]}" -o PreferredAuthentications=password -o PubkeyAuthentication=no root@127.0.0.1 true 2>/dev/null; then
        fail "SSH: passwords refused"
    else
        pass "SSH: passwords refused"
    fi

    # Inside the guest, through the guest agent.
    if ! qga wait 120; then
        fail "guest agent answers"
        stop_qemu
        return 0
    fi
    # The whole boot's journal, for reading where first-boot time went.
    qga exec -- /usr/bin/journalctl -b -o short-monotonic --no-pager > "$logdir/journal.txt" 2>&1 || true
    # Rspamd logs to its own file, not the journal.
    qga exec -- /usr/bin/tail -n 2000 /var/log/rspamd/rspamd.log > "$logdir/rspamd.log" 2>&1 || true
    # The firewall is rendered from the state. The seed names no management networks, so
    # they are the trusted ones: the internal server's address, 10.0.2.2 (this host, as QEMU's
    # user network shows it), which the first-boot setup made trusted.
    t=$(date +%s)
    fetch_ruleset nft-ruleset
    check "inside: nft input chain policy drop" 'hook input priority filter; policy drop;' "$logdir/nft-ruleset.txt"
    check "inside: nft forward chain policy drop" 'hook forward priority filter; policy drop;' "$logdir/nft-ruleset.txt"
    check "inside: nft ruleset rendered from the state" 'Managed by Mailwarden from /etc/mailwarden/state.yaml' <(qga exec -- /usr/bin/head -n 1 /etc/nftables.conf 2>&1)
    port_sources "inside: nft 25 open to everyone" nft-ruleset 25 any
    port_sources "inside: nft 8006 only from the state's management networks" nft-ruleset 8006 10.0.2.2/32
    port_sources "inside: nft SSH only from the state's management networks" nft-ruleset 22 10.0.2.2/32
    port_sources "inside: nft 26 only from the trusted networks" nft-ruleset 26 10.0.2.2/32
    # The state decides: management networks changed through the API are what the firewall
    # lets in, and this host (10.0.2.2) is then shut out of the web UI. Last use of 8006 here.
    if out="$(e2e set-management "$url" admin "$password" 192.0.2.0/24 2>&1)"; then
        pass "API: networks.management changed to 192.0.2.0/24" "$(elapsed "$t") s: $out"
        fetch_ruleset nft-ruleset-changed
        port_sources "inside: nft 8006 now only from 192.0.2.0/24" nft-ruleset-changed 8006 192.0.2.0/24
        port_sources "inside: nft SSH now only from 192.0.2.0/24" nft-ruleset-changed 22 192.0.2.0/24
        if e2e health "$url"; then
            fail "API on 8006 closed to this host (not a management network any more)"
        else
            pass "API on 8006 closed to this host (not a management network any more)"
        fi
    else
        fail "API: networks.management changed" "$out"
    fi
    record "  firewall checks took" "$(elapsed "$t") s"

    local units=(mailwarden-filter.service mailwarden-policy.service mailwarden-api.service
                 mailwarden-apply.service mailwarden-firstboot.service)
    qga exec -- /usr/bin/systemctl is-active "${units[@]:0:3}" > "$logdir/units-active.txt" 2>&1 || true
    if [ "$(grep -c '^active$' "$logdir/units-active.txt")" = 3 ]; then
        pass "inside: filter, policy and API units active"
    else
        fail "inside: filter, policy and API units active" "$(tr '\n' ' ' < "$logdir/units-active.txt")"
    fi
    : > "$logdir/systemd-analyze-security.txt"
    local u level
    for u in "${units[@]}"; do
        qga exec -- /usr/bin/systemd-analyze security --no-pager "$u" >> "$logdir/systemd-analyze-security.txt" 2>&1 || true
        level="$(grep -aoE "Overall exposure level for $u: [0-9.]+" "$logdir/systemd-analyze-security.txt" | grep -oE '[0-9.]+$' || true)"
        case "$u" in
            mailwarden-filter.service|mailwarden-policy.service|mailwarden-api.service)
                if [ -n "$level" ] && awk -v l="$level" 'BEGIN { exit !(l < 3.0) }'; then
                    pass "inside: systemd-analyze security $u < 3.0" "$level"
                else
                    fail "inside: systemd-analyze security $u < 3.0" "${level:-no figure}"
                fi ;;
            *) record "  info systemd-analyze security $u" "${level:-?} (root; not rated)" ;;
        esac
    done
    # A daemon that died and came back by Restart= leaves no failed unit, only a count: the
    # first apply's Rspamd reload did that until its worker sockets asked for a restart.
    qga exec -- /usr/bin/systemctl show -p Id -p NRestarts postfix@-.service rspamd.service \
        clamav-daemon.service redis-server.service unbound.service "${units[@]:0:3}" \
        > "$logdir/restarts.txt" 2>&1 || true
    if grep -q '^NRestarts=' "$logdir/restarts.txt" && ! grep -qE '^NRestarts=[1-9]' "$logdir/restarts.txt"; then
        pass "inside: no daemon restarted after a crash"
    else
        fail "inside: no daemon restarted after a crash" "$(paste -sd' ' "$logdir/restarts.txt")"
    fi
    qga exec -- /usr/bin/df -B1 --output=size / > "$logdir/df-root.txt" 2>&1 || true
    local size; size="$(tail -n1 "$logdir/df-root.txt" | tr -d ' ')"
    if [[ "$size" =~ ^[0-9]+$ ]] && [ "$size" -gt $((9 * 1024 * 1024 * 1024)) ]; then
        pass "inside: root file system grown to the 10 GiB disk" "$((size / 1024 / 1024)) MiB"
    else
        fail "inside: root file system grown to the 10 GiB disk" "${size:-?} bytes"
    fi
    qga exec -- /usr/bin/systemctl --failed --no-legend --plain > "$logdir/failed-units.txt" 2>&1 || true
    if [ -s "$logdir/failed-units.txt" ]; then
        fail "inside: no failed units" "$(awk '{print $1}' "$logdir/failed-units.txt" | tr '\n' ' ')"
    else
        pass "inside: no failed units"
    fi

    if [ "$lynis" = 1 ]; then
        t=$(date +%s)
        local f how
        if [ -f "$lynis_cache/lynis-report.dat" ]; then
            for f in lynis.txt lynis-report.dat lynis.log; do cp "$lynis_cache/$f" "$logdir/$f"; done
            how="report of this image reused from $lynis_cache"
        else
            run_lynis
            qga exec -- /usr/bin/cat /var/log/lynis-report.dat > "$logdir/lynis-report.dat" 2>/dev/null || true
            qga exec -- /usr/bin/cat /var/log/lynis.log > "$logdir/lynis.log" 2>/dev/null || true
            how="$lynis_outcome in $(elapsed "$t") s"
            if [ "$lynis_outcome" = "done" ] && grep -aqE '^hardening_index=[0-9]+' "$logdir/lynis-report.dat"; then
                mkdir -p "$lynis_cache"
                for f in lynis.txt lynis-report.dat lynis.log; do cp "$logdir/$f" "$lynis_cache/$f"; done
            fi
            # Where its time went, for choosing what the test profile skips.
            e2e lynis-slowest "$logdir/lynis.log" 8 > "$logdir/lynis-slowest.txt" 2>/dev/null || true
            record "  Lynis's slowest tests" "$(paste -sd' ' "$logdir/lynis-slowest.txt" | sed 's/ s /s, /g')"
        fi
        local index; index="$(grep -aoE '^hardening_index=[0-9]+' "$logdir/lynis-report.dat" | cut -d= -f2 || true)"
        if [ "${lynis_outcome:-done}" = stalled ]; then
            fail "inside: Lynis ran" "its log did not grow for $LYNIS_STALL s ($logdir/lynis.log)"
        elif [ -n "$index" ] && [ "$index" -ge 85 ]; then
            pass "inside: Lynis hardening index >= 85" "$index ($how)"
        elif [ -n "$index" ]; then
            fail "inside: Lynis hardening index >= 85" "$index ($how; $logdir/lynis-report.dat)"
        else
            fail "inside: Lynis ran" "no index ($how; $logdir/lynis.txt)"
        fi
    fi
    qga shutdown >/dev/null 2>&1 || true
    sleep 2
    stop_qemu
}

if [ "$gateway" != none ]; then
    mw_log "gateway boot under $gateway ($accel)"
    gateway_boot "$gateway"
fi
for fw in "${firmwares[@]}"; do
    [ -n "$fw" ] || continue
    mw_log "booting under $fw ($accel) without a seed, serial log $logdir/$fw.serial.log"
    MW_HOSTFWD="" boot_plain "$fw"
done

mw_log "end-to-end results ($accel, total $(elapsed "$t0") s)"
printf '%s\n' "${results[@]}" >&2
if [ "$failures" -gt 0 ]; then
    mw_log "end-to-end tier: $failures failure(s); logs in $logdir"
    exit 1
fi
mw_log "end-to-end tier passed in $(elapsed "$t0") s"

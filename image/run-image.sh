#!/usr/bin/env bash
# Boot the built Mailwarden image in QEMU with its ports forwarded to this machine's loopback.
#
#   image/run-image.sh [--uefi | --secureboot] [--persistent] [--image FILE] [--accel kvm|tcg]
#                      [--seed FILE | --fresh]
#
# SeaBIOS by default; --uefi boots OVMF, --secureboot OVMF with Microsoft's keys enrolled.
# Changes go to a throw-away overlay unless --persistent (then to the image itself).
# A demo seed (NoCloud cidata CD) sets the appliance up unattended: hostname demo.example.org,
# admin with a random password printed below, relay domain demo.example.org delivered to an
# smtp-sink this script starts on the host (10.0.2.2 from the guest), messages kept under
# out/demo-sink/. --seed FILE uses your own answer file instead (see docs/operations.md);
# --fresh attaches none, so the console shows the web wizard's setup code.
# The serial console is this terminal (Ctrl-A X quits QEMU). KVM is used only when a probe boot
# shows that it really runs a guest kernel; otherwise TCG (slow: minutes to boot).
# Ports: MAILWARDEN_SMTP_PORT (2525) -> 25, MAILWARDEN_HTTPS_PORT (8006) -> 8006,
#        MAILWARDEN_SSH_PORT (2222) -> 22.
set -euo pipefail

# shellcheck source=image/lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

firmware=bios
persistent=0
image=""
accel=""
seed_file=""
while [ $# -gt 0 ]; do
    case "$1" in
        --uefi) firmware=uefi ;;
        --secureboot) firmware=secureboot ;;
        --persistent) persistent=1 ;;
        --image) image="$2"; shift ;;
        --accel) accel="$2"; shift ;;
        --seed) seed_file="$2"; shift ;;
        --fresh) seed_file=none ;;
        -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) mw_die "run-image.sh: unknown argument '$1'" ;;
    esac
    shift
done

image="${image:-$(mw_image_path qcow2)}"
[ -f "$image" ] || mw_die "no image at $image: run ./build.sh build first"
command -v qemu-system-x86_64 >/dev/null || mw_need_packages qemu-system-x86 qemu-utils ovmf

smtp="${MAILWARDEN_SMTP_PORT:-2525}"
https="${MAILWARDEN_HTTPS_PORT:-8006}"
ssh="${MAILWARDEN_SSH_PORT:-2222}"
export MW_HOSTFWD="hostfwd=tcp:127.0.0.1:$smtp-:25,hostfwd=tcp:127.0.0.1:$https-:8006,hostfwd=tcp:127.0.0.1:$ssh-:22"

state="$(mktemp -d)"
chmod 0755 "$state"
sinkpid=""
cleanup() {
    if [ -n "$sinkpid" ]; then kill "$sinkpid" 2>/dev/null || true; fi
    rm -rf "$state"
}
trap cleanup EXIT
disk="$image"
if [ "$persistent" = 0 ]; then
    disk="$state/overlay.qcow2"
    qemu-img create -q -f qcow2 -b "$(readlink -f "$image")" -F qcow2 "$disk"
fi

# The seed: the demo's, the admin's own, or none.
seed_info="none attached (--fresh): the console shows the setup code for the web wizard"
MW_SEED_ARGS=()
if [ "$seed_file" != none ]; then
    mkdir -p "$state/seed"
    if [ -n "$seed_file" ]; then
        cp "$seed_file" "$state/seed/mailwarden.yaml"
        seed_info="$seed_file"
    else
        venv="${MAILWARDEN_VENV:-$MW_ROOT/.venv}"
        [ -x "$venv/bin/mailwarden" ] || mw_die "the demo seed needs the agent in $venv (./build.sh run creates it), or pass --seed FILE / --fresh"
        sink_port="$(mw_free_port)"
        sink_dir="$MW_OUT/demo-sink"
        mw_start_sink "$sink_dir" "$sink_port" "$state/sink.log"
        sinkpid=$MW_SINK_PID
        password="demo-$(head -c 9 /dev/urandom | base64 | tr -d '/+=')"
        hash="$(printf '%s\n' "$password" | "$venv/bin/mailwarden" user hash-password --password-stdin)"
        cat > "$state/seed/mailwarden.yaml" <<YAML
# Mailwarden demo seed (image/run-image.sh)
version: 1
hostname: demo.example.org
admin: {password_hash: "$hash"}
domains:
  - {name: demo.example.org, server: 10.0.2.2, port: $sink_port}
YAML
        seed_info="demo: admin / $password; mail for @demo.example.org lands in $sink_dir"
    fi
    mw_seed_iso "$state/seed" "$state/seed.iso"
    mw_seed_drive "$state/seed.iso"
fi

accel="${accel:-$(mw_probe_accel "$image")}"
mw_qemu_args "$firmware" "$accel" "$disk" "$state/vars.fd" mon:stdio

cat >&2 <<INFO
Mailwarden $(mw_version): $(basename "$image"), firmware $firmware, accelerator $accel
  SMTP      smtp://127.0.0.1:$smtp      (guest port 25)
  Web UI    https://127.0.0.1:$https/   (guest port 8006, self-signed certificate)
  SSH       ssh -p $ssh root@127.0.0.1  (off unless the seed gives ssh_authorized_keys)
  Seed      $seed_info
  Console   this terminal (serial ttyS0); Ctrl-A X quits QEMU
  Ready     when the console prints "MWFIRSTBOOT end" (minutes under TCG: first boot
            applies the seed and Rspamd compiles its rules)
INFO
# Not exec: the overlay, the seed and the sink are removed when QEMU exits.
qemu-system-x86_64 "${MW_QEMU_ARGS[@]}" "${MW_SEED_ARGS[@]}"

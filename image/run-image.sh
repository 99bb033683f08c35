#!/usr/bin/env bash
# Boot the built Mailwarden image in QEMU with its ports forwarded to this machine's loopback.
#
#   image/run-image.sh [--uefi | --secureboot] [--persistent] [--image FILE] [--accel kvm|tcg]
#
# SeaBIOS by default; --uefi boots OVMF, --secureboot OVMF with Microsoft's keys enrolled.
# Changes go to a throw-away overlay unless --persistent (then to the image itself).
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
while [ $# -gt 0 ]; do
    case "$1" in
        --uefi) firmware=uefi ;;
        --secureboot) firmware=secureboot ;;
        --persistent) persistent=1 ;;
        --image) image="$2"; shift ;;
        --accel) accel="$2"; shift ;;
        -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
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
trap 'rm -rf "$state"' EXIT
disk="$image"
if [ "$persistent" = 0 ]; then
    disk="$state/overlay.qcow2"
    qemu-img create -q -f qcow2 -b "$(readlink -f "$image")" -F qcow2 "$disk"
fi

accel="${accel:-$(mw_probe_accel "$image")}"
mw_qemu_args "$firmware" "$accel" "$disk" "$state/vars.fd" mon:stdio

cat >&2 <<INFO
Mailwarden $(mw_version): $(basename "$image"), firmware $firmware, accelerator $accel
  SMTP      smtp://127.0.0.1:$smtp      (guest port 25)
  Web UI    https://127.0.0.1:$https/   (guest port 8006; the agent's API once installed)
  SSH       ssh -p $ssh root@127.0.0.1  (off unless enabled in the image)
  Console   this terminal (serial ttyS0); Ctrl-A X quits QEMU
INFO
# Not exec: the overlay and the UEFI variables are removed when QEMU exits.
qemu-system-x86_64 "${MW_QEMU_ARGS[@]}"

#!/usr/bin/env bash
# shellcheck disable=SC2015  # `test && test || die`: die is exactly what should run if either fails
# Create a Mailwarden VM on a Proxmox VE host from the released qcow2.
#
#   proxmox-import.sh --vmid ID [options] mailwarden-VERSION-amd64.qcow2
#
# Run as root on the Proxmox VE node (it calls qm and pvesm). It needs nothing else from the
# repository: copy it beside the qcow2 (and SHA256SUMS, which is checked when present).
#
# The VM gets what the appliance is built and tested for: q35, OVMF with the distribution's and
# Microsoft's Secure Boot keys enrolled (efitype=4m, pre-enrolled-keys=1), the disk imported on
# virtio-scsi-single (discard, iothread), virtio networking on a bridge, the QEMU guest agent,
# the console on serial0 (`qm terminal ID`) and a cloud-init (NoCloud) drive on ide2.
#
# Options (defaults in brackets):
#   --vmid ID              the new VM's ID (required; 100 to 999999999)
#   --name NAME            VM name [mailwarden]
#   --storage STORAGE      storage for the system disk, EFI vars and cloud-init drive [local-lvm]
#   --bridge BRIDGE        bridge for net0 [vmbr0]
#   --memory MIB           memory in MiB, at least 2048 [4096]
#   --cores N              CPU cores [2]
#   --disk-size SIZE       grow the system disk to SIZE (e.g. 32G; at least the image's 8G)
#   --answers FILE         Mailwarden answer file (or #cloud-config with a mailwarden: key):
#                          stored as a snippet and given as the drive's user-data
#   --snippet-storage ID   storage with content type "snippets" for --answers [local]
#   --hostname FQDN        the guest's host name (Proxmox takes it from the VM name, so this
#                          sets --name too)
#   --ipconfig0 CONFIG     ip=dhcp, or ip=ADDRESS/PREFIX[,gw=GATEWAY]
#   --nameserver "IP ..."  DNS servers (space separated)
#   --searchdomain DOMAIN  DNS search domain
#   --sshkeys FILE         public keys, one per line (not with --answers: put them in the
#                          answers' ssh_authorized_keys; Proxmox drops its own user-data when a
#                          custom one is given)
#   --start                start the VM at the end
#   --dry-run              check everything, print the qm/pvesm commands, run none
#
# Every option is checked before the first qm or pvesm call; a bad one stops the script with
# the reason and nothing is created.
set -euo pipefail

die() { printf 'proxmox-import: error: %s\n' "$*" >&2; exit 2; }
say() { printf 'proxmox-import: %s\n' "$*" >&2; }

vmid="" name="" storage=local-lvm bridge=vmbr0 memory=4096 cores=2 disk_size=""
answers="" snippet_storage=local hostname="" ipconfig0="" nameserver="" searchdomain=""
sshkeys="" start=0 dry_run=0 image=""

need_value() { [ $# -ge 2 ] && [ -n "$2" ] && [[ "$2" != -* ]] || die "$1 needs a value"; }
while [ $# -gt 0 ]; do
    case "$1" in
        --vmid|--name|--storage|--bridge|--memory|--cores|--disk-size|--answers|\
--snippet-storage|--hostname|--ipconfig0|--nameserver|--searchdomain|--sshkeys)
            need_value "$@"
            case "$1" in
                --vmid) vmid="$2" ;; --name) name="$2" ;; --storage) storage="$2" ;;
                --bridge) bridge="$2" ;; --memory) memory="$2" ;; --cores) cores="$2" ;;
                --disk-size) disk_size="$2" ;; --answers) answers="$2" ;;
                --snippet-storage) snippet_storage="$2" ;; --hostname) hostname="$2" ;;
                --ipconfig0) ipconfig0="$2" ;; --nameserver) nameserver="$2" ;;
                --searchdomain) searchdomain="$2" ;; --sshkeys) sshkeys="$2" ;;
            esac
            shift 2 ;;
        --start) start=1; shift ;;
        --dry-run) dry_run=1; shift ;;
        -h|--help) sed -n '3,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) [ -z "$image" ] || die "one image only (got $image and $1)"; image="$1"; shift ;;
    esac
done

# --- checks: all before the first qm or pvesm call ------------------------------------------
# Value syntax as qm(1) and pvesm(1) accept it: a storage ID is pve-storage-id, a VM name and
# a host name are dns-name, net0's bridge is pve-bridge-id.
storage_re='^[a-z][a-z0-9_.-]*[a-z0-9]$'
label='[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?'
dns_re="^$label(\\.$label)*\$"
ipv4='((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])'

[ -n "$image" ] || die "no image given (the mailwarden-VERSION-amd64.qcow2 to import)"
[ -n "$vmid" ] || die "--vmid is required"
[[ "$vmid" =~ ^[1-9][0-9]{2,8}$ ]] || die "--vmid '$vmid': a number from 100 to 999999999"
[ -f "$image" ] && [ -r "$image" ] || die "$image: no such readable file"
case "$image" in *.qcow2) ;; *) die "$image: expected the .qcow2 image" ;; esac
[ "$(head -c 4 "$image" | od -An -tx1 | tr -d ' \n')" = 514649fb ] \
    || die "$image: not a qcow2 file (no QFI header)"
image="$(cd "$(dirname "$image")" && pwd)/$(basename "$image")"
[[ "$image" != *,* && "$image" != *=* ]] || die "$image: a path with ',' or '=' cannot be imported"

[[ "$storage" =~ $storage_re ]] || die "--storage '$storage' is not a storage ID"
[[ "$snippet_storage" =~ $storage_re ]] || die "--snippet-storage '$snippet_storage' is not a storage ID"
[[ "$bridge" =~ ^[-_.a-zA-Z0-9]{1,15}$ ]] || die "--bridge '$bridge' is not a bridge name"
[[ "$memory" =~ ^[0-9]+$ ]] && [ "$memory" -ge 2048 ] \
    || die "--memory '$memory': MiB, at least 2048 (ClamAV alone needs about 1.5 GB)"
[[ "$cores" =~ ^[0-9]+$ ]] && [ "$cores" -ge 1 ] && [ "$cores" -le 128 ] \
    || die "--cores '$cores': a number from 1 to 128"
if [ -n "$disk_size" ]; then
    [[ "$disk_size" =~ ^([0-9]+)([GT])$ ]] || die "--disk-size '$disk_size': a size like 32G or 1T"
    gib=${BASH_REMATCH[1]}
    [ "${BASH_REMATCH[2]}" = T ] && gib=$((gib * 1024))
    [ "$gib" -gt 8 ] || die "--disk-size '$disk_size': the image is 8G already; give more"
fi
if [ -n "$hostname" ]; then
    [[ "$hostname" =~ $dns_re ]] && [ "${#hostname}" -le 253 ] \
        || die "--hostname '$hostname' is not a host name"
    [ -z "$name" ] || [ "$name" = "$hostname" ] \
        || die "--name and --hostname differ: Proxmox gives the guest the VM name as its host name"
    name="$hostname"
fi
name="${name:-mailwarden}"
[[ "$name" =~ $dns_re ]] || die "--name '$name' is not a DNS name (letters, digits, '-', '.')"
if [ -n "$ipconfig0" ]; then
    [[ "$ipconfig0" = ip=dhcp || "$ipconfig0" =~ ^ip=$ipv4/([0-9]|[12][0-9]|3[0-2])(,gw=$ipv4)?$ ]] \
        || die "--ipconfig0 '$ipconfig0': ip=dhcp or ip=ADDRESS/PREFIX[,gw=GATEWAY] (IPv4)"
fi
if [ -n "$nameserver" ]; then
    for server in $nameserver; do
        [[ "$server" =~ ^$ipv4$ || "$server" =~ ^[0-9a-fA-F:]*:[0-9a-fA-F:.]*$ ]] \
            || die "--nameserver: '$server' is not an IP address"
    done
fi
if [ -n "$searchdomain" ]; then
    [[ "$searchdomain" =~ $dns_re ]] || die "--searchdomain '$searchdomain' is not a domain"
fi
if [ -n "$sshkeys" ]; then
    [ -z "$answers" ] || die "--sshkeys with --answers: Proxmox then writes no user-data of its own; put the keys in the answers' ssh_authorized_keys"
    [ -f "$sshkeys" ] && [ -r "$sshkeys" ] || die "--sshkeys $sshkeys: no such readable file"
    keys=0
    while IFS= read -r line || [ -n "$line" ]; do
        [[ "$line" =~ ^[[:space:]]*(#.*)?$ ]] && continue
        [[ "$line" =~ ^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\.com|sk-ecdsa-sha2-nistp256@openssh\.com)\ [A-Za-z0-9+/]+=*(\ .*)?$ ]] \
            || die "--sshkeys $sshkeys: not an OpenSSH public key line: ${line:0:40}..."
        keys=$((keys + 1))
    done < "$sshkeys"
    [ "$keys" -gt 0 ] || die "--sshkeys $sshkeys: no key in it"
fi
snippet=""
if [ -n "$answers" ]; then
    [ -f "$answers" ] && [ -r "$answers" ] || die "--answers $answers: no such readable file"
    [ "$(wc -c < "$answers")" -le 1048576 ] || die "--answers $answers: larger than 1 MiB"
    if head -n 1 "$answers" | grep -q '^#cloud-config'; then
        grep -q '^mailwarden:' "$answers" \
            || die "--answers $answers: a #cloud-config without a 'mailwarden:' section"
    else
        grep -q '^version: *1' "$answers" \
            || die "--answers $answers: not an answer file (no 'version: 1' line)"
    fi
    if grep -q '^ *password:' "$answers"; then
        die "--answers $answers: admin 'password:' in plain text; use password_hash (mailwarden user hash-password)"
    fi
    snippet="mailwarden-$vmid-user.yaml"
fi

# Verify the download before handing it to the storage.
sums="$(dirname "$image")/SHA256SUMS"
if [ -f "$sums" ]; then
    expected="$(awk -v f="$(basename "$image")" '{n=$2; sub(/^\*/, "", n)} n == f {print $1}' "$sums")"
    [ -n "$expected" ] || die "$sums has no line for $(basename "$image")"
    say "checking $(basename "$image") against SHA256SUMS"
    actual="$(sha256sum "$image" | cut -d' ' -f1)"
    [ "$actual" = "$expected" ] || die "$(basename "$image"): checksum mismatch (SHA256SUMS says $expected, the file is $actual)"
else
    say "no SHA256SUMS beside the image: checksum not verified"
fi

# --- the commands ---------------------------------------------------------------------------
run() {
    printf '+ %s\n' "$*" >&2
    [ "$dry_run" = 1 ] || "$@"
}

if [ "$dry_run" = 0 ]; then
    command -v qm >/dev/null && command -v pvesm >/dev/null \
        || die "qm and pvesm not found: run this on a Proxmox VE node"
fi
if [ -n "$snippet" ]; then
    if [ "$dry_run" = 0 ]; then
        pvesm status --content snippets | awk 'NR > 1 && $3 == "active" {print $1}' | grep -qx "$snippet_storage" \
            || die "storage '$snippet_storage' does not hold snippets (pvesm set $snippet_storage --content ...,snippets) or is not active"
        path="$(pvesm path "$snippet_storage:snippets/$snippet")"
        [ -n "$path" ] || die "pvesm path gave no path for $snippet_storage:snippets/$snippet"
        mkdir -p "$(dirname "$path")"
        # The answers hold the administrator's password hash: root only.
        install -m 0600 "$answers" "$path"
        say "answers stored as $snippet_storage:snippets/$snippet ($path)"
    else
        printf '+ pvesm status --content snippets\n+ pvesm path %s\n' \
            "$snippet_storage:snippets/$snippet" >&2
    fi
fi

run qm create "$vmid" --name "$name" --ostype l26 --machine q35 --bios ovmf \
    --efidisk0 "$storage:1,efitype=4m,pre-enrolled-keys=1" \
    --scsihw virtio-scsi-single \
    --scsi0 "$storage:0,import-from=$image,discard=on,iothread=1" \
    --ide2 "$storage:cloudinit" \
    --boot order=scsi0 \
    --cores "$cores" --memory "$memory" \
    --net0 "virtio,bridge=$bridge" \
    --agent enabled=1 \
    --serial0 socket --vga serial0

cloudinit=(--citype nocloud)
[ -z "$snippet" ] || cloudinit+=(--cicustom "user=$snippet_storage:snippets/$snippet")
[ -z "$ipconfig0" ] || cloudinit+=(--ipconfig0 "$ipconfig0")
[ -z "$nameserver" ] || cloudinit+=(--nameserver "$nameserver")
[ -z "$searchdomain" ] || cloudinit+=(--searchdomain "$searchdomain")
[ -z "$sshkeys" ] || cloudinit+=(--sshkeys "$sshkeys")
# Without any of these Proxmox still writes a drive (host name, DHCP): harmless, the
# appliance then shows its setup code on the console.
run qm set "$vmid" "${cloudinit[@]}"

[ -z "$disk_size" ] || run qm disk resize "$vmid" scsi0 "$disk_size"
[ "$start" = 0 ] || run qm start "$vmid"

say "VM $vmid ($name) created. Console: qm terminal $vmid"
[ "$start" = 1 ] || say "start it with: qm start $vmid"

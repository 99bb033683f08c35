#!/usr/bin/env bash
# Build the Mailwarden appliance disk image (Debian 13 trixie, amd64).
#
#   image/build-image.sh [--minimal]
#
# Stages: host tools -> build venv (diskimage-builder, ansible-core) -> wheelhouse (the agent
# and its pinned dependencies for CPython 3.13) -> root file system (diskimage-builder with
# image/elements, which apply roles/site.yml in the chroot) -> GPT disk (image/lib/
# assemble-disk.sh: BIOS boot + ESP with signed shim/GRUB + ext4 root) -> installer ISO (image/
# lib/build-iso.sh: the same root file system as a squashfs) -> qcow2, manifest, SHA256SUMS.
# Writes under out/:
#   mailwarden-VERSION-amd64.raw  .qcow2  .iso  .manifest  SHA256SUMS  build.log (dib)
# --minimal skips the roles (a bootable base system, for debugging the boot path).
# Downloads are cached under $MAILWARDEN_CACHE (default /var/cache/mailwarden).
set -euo pipefail

# shellcheck source=image/lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

DIB_VERSION=3.43.0
PIP_VERSION=26.3
ANSIBLE_CORE_PIN=ansible-core==2.19.14
DISK_SIZE="${MAILWARDEN_DISK_SIZE:-8G}"
HOST_TOOLS=(sudo qemu-utils qemu-system-x86 debootstrap gdisk fdisk dosfstools mtools
            grub-pc-bin grub-efi-amd64-bin ovmf squashfs-tools uuid-runtime gnupg zstd
            e2fsprogs util-linux python3-venv xorriso)

minimal=0
for arg in "$@"; do
    case "$arg" in
        --minimal) minimal=1 ;;
        -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) mw_die "build-image.sh: unknown argument '$arg'" ;;
    esac
done

[ "$(id -u)" = 0 ] || mw_die "the image build needs root (loop devices, chroot)"
command -v losetup >/dev/null || mw_die "losetup is missing"

VERSION="$(mw_version)"
[ -n "$VERSION" ] || mw_die "no version in pyproject.toml"
SOURCE_DATE_EPOCH="$(git -C "$MW_ROOT" log -1 --format=%ct 2>/dev/null || date +%s)"
COMMIT="$(git -C "$MW_ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
export SOURCE_DATE_EPOCH
NAME="mailwarden-$VERSION-$MW_ARCH"
INPUTS_HASH="$(mw_inputs_hash)"
VENV="$MW_CACHE/dib-venv"
export PIP_CACHE_DIR="$MW_CACHE/pip"
export PIP_DISABLE_PIP_VERSION_CHECK=1

stage_host_tools() {
    mw_need_packages "${HOST_TOOLS[@]}"
    # losetup must find a free device; partx must be there (util-linux).
    losetup -f >/dev/null || mw_die "no free loop device"
    command -v partx >/dev/null || mw_die "partx is missing"
}

stage_venv() {
    local want="pip==$PIP_VERSION diskimage-builder==$DIB_VERSION $ANSIBLE_CORE_PIN"
    if [ "$(cat "$VENV/.mailwarden-pins" 2>/dev/null)" != "$want" ]; then
        rm -rf "$VENV"
        /usr/bin/python3 -m venv "$VENV"
        # Debian 12's bundled pip is too old to build sdist-only packages (PEP 517) for the
        # wheelhouse: pin a current one.
        "$VENV/bin/pip" install -qq "pip==$PIP_VERSION"
        "$VENV/bin/pip" install -qq "diskimage-builder==$DIB_VERSION" "$ANSIBLE_CORE_PIN"
        printf '%s' "$want" > "$VENV/.mailwarden-pins"
    fi
}

WHEELHOUSE=""
stage_wheelhouse() {
    WHEELHOUSE="$(MAILWARDEN_ANSIBLE_CORE="$ANSIBLE_CORE_PIN" "$MW_ROOT/image/build-wheelhouse.sh")"
    mw_log "wheelhouse: $WHEELHOUSE"
}

BUILD_DIR=""
stage_rootfs() {
    local elements=(mailwarden-apt mailwarden-release mailwarden-bootloader mailwarden-network
                    mailwarden-growroot mailwarden-live
                    mailwarden-boot-report)
    [ "$minimal" = 1 ] || elements+=(mailwarden-roles)
    mkdir -p "$MW_OUT" "$MW_CACHE/dib"
    mw_log "diskimage-builder elements: ${elements[*]} (log: $MW_OUT/build.log)"
    if ! env PATH="$VENV/bin:$PATH" \
        ELEMENTS_PATH="$MW_ROOT/image/elements" \
        DIB_BLOCK_DEVICE_CONFIG="file://$MW_ROOT/image/block-device.yaml" \
        DIB_IMAGE_CACHE="$MW_CACHE/dib" \
        DIB_DEBOOTSTRAP_CACHE=1 \
        DIB_DEBIAN_USE_DEBOOTSTRAP_CACHE=1 \
        DIB_RELEASE=trixie \
        DIB_DEBIAN_SECURITY_MIRROR="${MAILWARDEN_SECURITY_MIRROR:-http://deb.debian.org/debian-security/}" \
        DIB_DISTRIBUTION_MIRROR="${MAILWARDEN_MIRROR:-http://deb.debian.org/debian}" \
        DIB_MW_VERSION="$VERSION" \
        DIB_MW_COMMIT="$COMMIT" \
        DIB_MW_ROLES_DIR="$MW_ROOT/roles" \
        DIB_MW_WHEELHOUSE="$WHEELHOUSE" \
        DIB_MW_ANSIBLE_ARGS="${MAILWARDEN_ANSIBLE_ARGS:-}" \
        disk-image-create -a amd64 -t raw --image-size 6G -o "$BUILD_DIR/rootfs" \
            "${elements[@]}" > "$MW_OUT/build.log" 2>&1; then
        tail -n 60 "$MW_OUT/build.log" >&2
        mw_die "diskimage-builder failed (full log: $MW_OUT/build.log)"
    fi
    [ -f "$BUILD_DIR/rootfs.raw" ] || mw_die "diskimage-builder wrote no rootfs.raw"
}

stage_iso() {
    "$MW_ROOT/image/lib/build-iso.sh" "$BUILD_DIR/rootfs.raw" "$BUILD_DIR/$NAME.iso" "$VERSION"
}

stage_disk() {
    "$MW_ROOT/image/lib/assemble-disk.sh" "$BUILD_DIR/rootfs.raw" "$BUILD_DIR/$NAME.raw" \
        "$DISK_SIZE" "$BUILD_DIR/$NAME.manifest"
    rm -f "$BUILD_DIR/rootfs.raw"
}

stage_qcow2() {
    qemu-img convert -c -O qcow2 -o compat=1.1 "$BUILD_DIR/$NAME.raw" "$BUILD_DIR/$NAME.qcow2"
}

stage_publish() {
    local f
    for f in raw qcow2 iso manifest; do
        mv -f "$BUILD_DIR/$NAME.$f" "$MW_OUT/$NAME.$f"
        touch -d "@$SOURCE_DATE_EPOCH" "$MW_OUT/$NAME.$f"
    done
    (cd "$MW_OUT" && sha256sum "$NAME.qcow2" "$NAME.raw" "$NAME.iso" "$NAME.manifest" > SHA256SUMS)
    # The inputs' hash (taken when the build started) lets image/test-image.sh reuse this build.
    printf '%s\n' "$INPUTS_HASH" > "$MW_OUT/$NAME.inputs"
}

main() {
    local start=$SECONDS
    mw_log "Mailwarden $VERSION ($COMMIT), SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH, cache $MW_CACHE"
    mkdir -p "$MW_CACHE" "$MW_OUT"
    BUILD_DIR="$(mktemp -d "$MW_CACHE/build.XXXXXX")"
    trap 'rm -rf "$BUILD_DIR"' EXIT
    mw_stage "host tools" stage_host_tools
    mw_stage "build venv" stage_venv
    mw_stage "wheelhouse" stage_wheelhouse
    mw_stage "root file system (dib)" stage_rootfs
    # Before the disk: it reads the root file system image, which the disk stage then removes.
    mw_stage "installer ISO (squashfs)" stage_iso
    mw_stage "GPT disk + boot loaders" stage_disk
    mw_stage "qcow2 (compressed)" stage_qcow2
    mw_stage "manifest + SHA256SUMS" stage_publish
    mw_stage_summary
    mw_log "total $((SECONDS - start)) s"
    ls -l "$MW_OUT/$NAME.qcow2" "$MW_OUT/$NAME.raw" "$MW_OUT/$NAME.iso" >&2
    du -h --apparent-size "$MW_OUT/$NAME.qcow2" >&2
    printf '%s\n' "$MW_OUT/$NAME.qcow2"
}

main

#!/usr/bin/env bash
# Assemble the bootable GPT disk from diskimage-builder's unpartitioned root file system image.
#
#   image/lib/assemble-disk.sh ROOTFS.raw DISK.raw SIZE MANIFEST
#
# Layout (sgdisk): 1 BIOS boot (1 MiB, EF02), 2 EFI system partition (200 MiB, EF00, FAT32
# label MW-ESP), 3 root (rest, 8304 "Linux x86-64 root", ext4 label mw-root).
# BIOS: grub-install --target=i386-pc on the loop device, from a chroot of the root file system.
# UEFI: Debian's signed shim + GRUB staged under EFI/BOOT (removable path) and EFI/debian, written
# with mtools because this kernel cannot mount vfat. No device-mapper or kpartx is needed: the
# partitions come from `partx -a` on the loop device. Writes the package manifest (dpkg -l and
# the agent virtualenv's pip freeze) to MANIFEST.
set -euo pipefail

rootfs="$1" disk="$2" size="$3" manifest="$4"
work="$(mktemp -d)"
loop=""
mnt="$work/mnt"
bylink=""

cleanup() {
    set +e
    if [ -n "$bylink" ]; then rm -f "$bylink"; fi
    for m in "$mnt/sys" "$mnt/proc" "$mnt/dev/pts" "$mnt/dev" "$mnt"; do
        if mountpoint -q "$m"; then umount "$m"; fi
    done
    if [ -n "$loop" ]; then
        partx -d "$loop" 2>/dev/null
        losetup -d "$loop"
    fi
    rm -rf "$work"
}
trap cleanup EXIT

rm -f "$disk"
truncate -s "$size" "$disk"
sgdisk -Z "$disk" >/dev/null 2>&1 || true
# The root partition ends on a 1 MiB boundary, leaving the last MiB (with the backup GPT)
# unused. Ending at the last usable sector gives it a size that is not a multiple of 4 KiB,
# and systemd-repart, asked to grow it, then wants a few sectors more than the disk has and
# fails the boot's repartition unit whenever the disk was not enlarged.
sectors=$(( $(stat -c %s "$disk") / 512 ))
root_end=$(( (sectors / 2048 - 1) * 2048 - 1 ))
sgdisk -o \
    -n1:1M:+1M -t1:EF02 -c1:bios-boot \
    -n2:0:+200M -t2:EF00 -c2:esp \
    -n3:0:"$root_end" -t3:8304 -c3:root \
    "$disk" >/dev/null

loop="$(losetup -f --show "$disk")"
partx -a "$loop"
for n in 2 3; do
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        [ -b "${loop}p$n" ] && break
        sleep 0.2
    done
    [ -b "${loop}p$n" ] || { echo "assemble-disk: ${loop}p$n did not appear" >&2; exit 1; }
done

# Root: copy diskimage-builder's file system block by block (keeps its label and UUID; the loop
# file is sparse, so zero blocks are skipped), then grow it to fill the partition.
dd if="$rootfs" of="${loop}p3" bs=4M conv=sparse,fsync status=none
e2fsck -fy "${loop}p3" >/dev/null || [ $? -le 1 ]
resize2fs "${loop}p3" >/dev/null 2>&1
uuid="$(blkid -s UUID -o value "${loop}p3")"

# EFI system partition (formatted on the block device; nothing mounts it).
mkfs.vfat -F 32 -n MW-ESP "${loop}p2" >/dev/null

mkdir -p "$mnt"
mount "${loop}p3" "$mnt"
mount --bind /dev "$mnt/dev"
mount --bind /dev/pts "$mnt/dev/pts"
mount -t proc proc "$mnt/proc"
mount -t sysfs sysfs "$mnt/sys"

# No udev on build machines: without this link grub-mkconfig writes root=/dev/loopNp3.
mkdir -p /dev/disk/by-uuid
bylink="/dev/disk/by-uuid/$uuid"
ln -sfn "${loop}p3" "$bylink"

chroot "$mnt" grub-install --target=i386-pc --boot-directory=/boot "$loop" 2>&1 | grep -v '^Installation finished' >&2 || true
[ -f "$mnt/boot/grub/i386-pc/core.img" ] || { echo "assemble-disk: grub-install (i386-pc) failed" >&2; exit 1; }
chroot "$mnt" update-grub >/dev/null 2>&1
grep -q "root=UUID=$uuid" "$mnt/boot/grub/grub.cfg" || { echo "assemble-disk: grub.cfg has no root=UUID=$uuid" >&2; exit 1; }

# UEFI: shim (signed by Microsoft's UEFI CA) -> Debian's signed GRUB -> /boot/grub/grub.cfg.
esp="$work/esp"
mkdir -p "$esp/EFI/BOOT" "$esp/EFI/debian"
shim="$mnt/usr/lib/shim/shimx64.efi.signed"
mm="$mnt/usr/lib/shim/mmx64.efi.signed"
grubefi="$mnt/usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed"
for f in "$shim" "$mm" "$grubefi"; do
    [ -f "$f" ] || { echo "assemble-disk: $f is missing from the image" >&2; exit 1; }
done
cat > "$work/grub-esp.cfg" <<CFG
search.fs_uuid $uuid root
set prefix=(\$root)/boot/grub
configfile \$prefix/grub.cfg
CFG
for d in BOOT debian; do
    cp "$grubefi" "$esp/EFI/$d/grubx64.efi"
    cp "$mm" "$esp/EFI/$d/mmx64.efi"
    cp "$work/grub-esp.cfg" "$esp/EFI/$d/grub.cfg"
done
cp "$shim" "$esp/EFI/BOOT/BOOTX64.EFI"
cp "$shim" "$esp/EFI/debian/shimx64.efi"
if [ -f "$mnt/usr/lib/shim/BOOTX64.CSV" ]; then
    cp "$mnt/usr/lib/shim/BOOTX64.CSV" "$esp/EFI/debian/BOOTX64.CSV"
else
    printf 'shimx64.efi,Mailwarden,,This is the boot entry for Mailwarden\n' | iconv -t UCS-2LE > "$esp/EFI/debian/BOOTX64.CSV"
fi
MTOOLS_SKIP_CHECK=1 mcopy -s -i "${loop}p2" "$esp/EFI" ::/ 2>/dev/null
MTOOLS_SKIP_CHECK=1 mdir -i "${loop}p2" ::/EFI/BOOT >/dev/null 2>&1 || { echo "assemble-disk: ESP copy failed" >&2; exit 1; }

# The package manifest of exactly what is on the disk.
{
    echo "# Mailwarden image package manifest"
    echo "# dpkg -l"
    chroot "$mnt" dpkg -l
    if [ -x "$mnt/opt/mailwarden/venv/bin/python" ]; then
        echo
        echo "# pip freeze (/opt/mailwarden/venv)"
        chroot "$mnt" /opt/mailwarden/venv/bin/python -m pip freeze --all
    fi
} > "$manifest"

sync

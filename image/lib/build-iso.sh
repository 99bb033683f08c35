#!/usr/bin/env bash
# Make the installer ISO from diskimage-builder's root file system image.
#
#   image/lib/build-iso.sh ROOTFS.raw ISO VERSION
#
# The ISO carries the disk image's own root file system as live/filesystem.squashfs, with its
# kernel and initramfs (which holds the live boot script of image/elements/mailwarden-live):
# nothing is installed twice. Boots as a CD and, written to a stick, as a disk (a hybrid
# image: GRUB's MBR code for BIOS, an EFI system partition in the MBR table for UEFI):
#   BIOS  El Torito -> GRUB (i386-pc-eltorito, made by the image's own grub-mkimage)
#   UEFI  El Torito / ESP -> Debian's shim (signed by Microsoft's UEFI CA) -> Debian's signed
#         GRUB for CDs (gcdx64), which finds the ISO by /.disk/info -> the signed kernel
# Both read boot/grub/grub.cfg: install, unattended install, install over the serial console,
# rescue shell. The volume label MWINSTALL is what the live boot script looks for.
set -euo pipefail

rootfs="$1" iso="$2" version="$3"
label=MWINSTALL
work="$(mktemp -d)"
root="$work/root"
tree="$work/iso"
loop=""

cleanup() {
    set +e
    if mountpoint -q "$root"; then umount "$root"; fi
    if [ -n "$loop" ]; then losetup -d "$loop"; fi
    rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$root" "$tree/live" "$tree/boot/grub/i386-pc" "$tree/.disk"
loop="$(losetup -f --show -r "$rootfs")"
# noload: a read-only mount that replays no journal, so the image stays as built.
mount -o ro,noload "$loop" "$root"

kernel="$(find "$root/boot" -maxdepth 1 -name 'vmlinuz-*' | sort -V | tail -n1)"
initrd="$root/boot/initrd.img-${kernel##*/vmlinuz-}"
if [ ! -f "$kernel" ] || [ ! -f "$initrd" ]; then
    echo "build-iso: no kernel and initramfs in $rootfs" >&2
    exit 1
fi
cp "$kernel" "$tree/live/vmlinuz"
cp "$initrd" "$tree/live/initrd.img"

# The same bytes as the disk image's root; zstd reads back fast under TCG and on old CPUs.
# mksquashfs takes its timestamps from SOURCE_DATE_EPOCH (exported by build-image.sh).
mksquashfs "$root" "$tree/live/filesystem.squashfs" -comp zstd -noappend -no-progress \
    -quiet >/dev/null

printf 'Mailwarden %s amd64 installer\n' "$version" > "$tree/.disk/info"

# BIOS: the image's own GRUB, so that tool, modules and boot sector are of one version.
modules=(biosdisk iso9660 part_msdos part_gpt normal configfile linux search search_label
         search_fs_file serial terminal echo test sleep)
chroot "$root" grub-mkimage -O i386-pc-eltorito -p /boot/grub "${modules[@]}" \
    > "$tree/boot/grub/bios.img"
cp "$root"/usr/lib/grub/i386-pc/*.mod "$root"/usr/lib/grub/i386-pc/*.lst "$tree/boot/grub/i386-pc/"

# UEFI: shim, MokManager and the signed GRUB for CDs in a small FAT image, which is both the
# El Torito EFI image and the stick's EFI system partition.
shim="$root/usr/lib/shim/shimx64.efi.signed"
mm="$root/usr/lib/shim/mmx64.efi.signed"
gcd="$root/usr/lib/grub/x86_64-efi-signed/gcdx64.efi.signed"
for f in "$shim" "$mm" "$gcd"; do
    [ -f "$f" ] || { echo "build-iso: $f is missing from the image" >&2; exit 1; }
done
esp="$work/esp"
mkdir -p "$esp/EFI/BOOT" "$esp/EFI/debian"
cp "$shim" "$esp/EFI/BOOT/BOOTX64.EFI"
cp "$gcd" "$esp/EFI/BOOT/grubx64.efi"
cp "$mm" "$esp/EFI/BOOT/mmx64.efi"
# Where the CD GRUB looks when its built-in search did not already find the ISO.
cat > "$esp/EFI/debian/grub.cfg" <<'CFG'
search --file --set=root /.disk/info
set prefix=($root)/boot/grub
configfile $prefix/grub.cfg
CFG
cp "$esp/EFI/debian/grub.cfg" "$esp/EFI/BOOT/grub.cfg"
efi_kib=$(( ($(du -sk "$esp" | cut -f1) + 1024) / 1024 * 1024 + 1024 ))
mkfs.vfat -C -n MWEFI "$tree/boot/grub/efi.img" "$efi_kib" >/dev/null
MTOOLS_SKIP_CHECK=1 mcopy -s -i "$tree/boot/grub/efi.img" "$esp/EFI" ::/

# The live root is not a disk to grow, and its linker cache is the build's: ldconfig.service
# (which runs because /etc looks new) would take most of a minute under TCG for nothing.
# AppArmor stays off: the live system runs the installer alone, none of the daemons the
# profiles confine, and compiling them (the cache lives on the tmpfs, so every boot) took
# 90 s of a 230 s boot under TCG.
masks="systemd.mask=systemd-repart.service systemd.mask=systemd-growfs-root.service"
masks="$masks systemd.mask=ldconfig.service apparmor=0"
live="boot=mwlive mwlive.label=$label systemd.unit=mailwarden-install.target $masks"
cat > "$tree/boot/grub/grub.cfg" <<CFG
# Mailwarden $version installer (image/lib/build-iso.sh)
set timeout=10
set default=install
if [ "\$grub_platform" = "pc" ]; then
    serial --unit=0 --speed=115200 --word=8 --parity=no --stop=1
    terminal_input console serial
    terminal_output console serial
fi

menuentry "Install Mailwarden $version" --hotkey=i --id install {
    linux /live/vmlinuz $live mailwarden.install=interactive console=ttyS0,115200n8 console=tty0 quiet
    initrd /live/initrd.img
}
menuentry "Unattended install (answer file)" --hotkey=u --id unattended {
    linux /live/vmlinuz $live mailwarden.install=unattended console=tty0 console=ttyS0,115200n8
    initrd /live/initrd.img
}
menuentry "Install over the serial console (ttyS0, 115200 baud)" --hotkey=s --id serial {
    linux /live/vmlinuz $live mailwarden.install=interactive console=tty0 console=ttyS0,115200n8 quiet
    initrd /live/initrd.img
}
menuentry "Rescue shell" --hotkey=r --id rescue {
    linux /live/vmlinuz $live mailwarden.install=shell console=ttyS0,115200n8 console=tty0
    initrd /live/initrd.img
}
CFG

rm -f "$iso"
# The layout grub-mkrescue makes: El Torito for BIOS and UEFI, GRUB's hybrid MBR for sticks,
# the EFI image also as a partition of the MBR table.
xorriso -as mkisofs -quiet -o "$iso" -V "$label" -r -J -joliet-long -iso-level 3 \
    -b boot/grub/bios.img -no-emul-boot -boot-load-size 4 -boot-info-table --grub2-boot-info \
    --grub2-mbr "$root/usr/lib/grub/i386-pc/boot_hybrid.img" \
    --efi-boot boot/grub/efi.img -efi-boot-part --efi-boot-image --protective-msdos-label \
    "$tree" 2>&1 | grep -v '^xorriso : UPDATE' >&2 || true
[ -s "$iso" ] || { echo "build-iso: xorriso wrote no $iso" >&2; exit 1; }

#!/usr/bin/env bash
# The end-to-end tier's door to the image tools. The tier itself is pytest (tests/e2e/,
# run by `./build.sh test e2e`); this script runs it when called without arguments, and hands
# the tier the helpers of image/lib/common.sh that the build and run scripts share, so that
# each of them exists once:
#
#   image/test-image.sh [PYTEST ARGS...]        pytest tests/e2e (with .venv's pytest)
#   image/test-image.sh inputs-hash             hash of the image's build inputs
#   image/test-image.sh image-path EXT          the image's path under out/ (qcow2, inputs...)
#   image/test-image.sh image-current           "yes" when out/ has an image of these inputs
#   image/test-image.sh probe-accel IMAGE       kvm or tcg (a probe boot decides)
#   image/test-image.sh qemu-args FW ACCEL IMAGE VARS SERIAL
#                                               QEMU's arguments for one boot, NUL-separated
#                                               (port forwards from MW_HOSTFWD)
#   image/test-image.sh seed-iso DIR ISO        a NoCloud (cidata) volume from DIR
#   image/test-image.sh seed-drive ISO          QEMU's arguments attaching it, NUL-separated
#   image/test-image.sh trixie-deb PACKAGE      path of a downloaded Debian 13 package
#   image/test-image.sh need-packages PKG...    apt-install what is missing on this host
set -euo pipefail

# shellcheck source=image/lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

case "${1:-}" in
    inputs-hash) mw_inputs_hash ;;
    image-path) mw_image_path "$2" ;;
    image-current) if mw_image_current; then echo yes; else echo no; fi ;;
    probe-accel) mw_probe_accel "$2" ;;
    qemu-args)
        mw_qemu_args "$2" "$3" "$4" "$5" "$6"
        printf '%s\0' "${MW_QEMU_ARGS[@]}" ;;
    seed-iso) mw_seed_iso "$2" "$3" ;;
    seed-drive)
        mw_seed_drive "$2"
        printf '%s\0' "${MW_SEED_ARGS[@]}" ;;
    trixie-deb) mw_trixie_deb "$2" ;;
    need-packages) shift; mw_need_packages "$@" ;;
    -h|--help) sed -n '2,/^[^#]/s/^# \{0,1\}//p' "$0" ;;
    *)
        venv="${MAILWARDEN_VENV:-$MW_ROOT/.venv}"
        exec "$venv/bin/pytest" --durations=0 -n "${MAILWARDEN_E2E_WORKERS:-2}" \
            --dist loadscope "$MW_ROOT/tests/e2e" "$@" ;;
esac

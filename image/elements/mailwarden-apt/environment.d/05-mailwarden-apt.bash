# Sourced by diskimage-builder before every phase (no set -x here).
export DIB_RELEASE=${DIB_RELEASE:-trixie}
export DIB_MW_MIRROR=${DIB_MW_MIRROR:-http://deb.debian.org/debian}
export DIB_MW_SECURITY_MIRROR=${DIB_MW_SECURITY_MIRROR:-http://deb.debian.org/debian-security/}
export DIB_DISTRIBUTION_MIRROR=${DIB_DISTRIBUTION_MIRROR:-$DIB_MW_MIRROR}
export DIB_DEBIAN_SECURITY_MIRROR=${DIB_DEBIAN_SECURITY_MIRROR:-$DIB_MW_SECURITY_MIRROR}
export DIB_DEBIAN_COMPONENTS=${DIB_DEBIAN_COMPONENTS:-main,contrib,non-free,non-free-firmware}
# No ifupdown stanzas for eth0/eth1: mailwarden-network configures systemd-networkd.
export DIB_APT_MINIMAL_CREATE_INTERFACES=0

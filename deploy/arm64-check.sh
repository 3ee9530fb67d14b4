#!/usr/bin/env bash
# Prove deploy/install-agent.sh on arm64 for real, on an x86-64 machine: build a Debian bookworm
# arm64 root with `debootstrap --foreign` and finish it under qemu-user-static, copy this checkout
# into it, run `install-agent.sh --prefix /opt/plexus-agent --no-systemd` there (torch from PyPI,
# as on a Raspberry Pi) and then `plexus agent run --help`; fail if any nvidia-*/cuda-* package
# landed in the venv.
#
# Needs root, the network (deb.debian.org, PyPI) and, on Debian/Ubuntu:
#     sudo apt-get update && sudo apt-get install debootstrap qemu-user-static binfmt-support
# Slow, everything arm64 runs emulated: 15 minutes on a 2-core x86-64 VM (9 to build the root,
# 5.5 for the install and the check), so not part of `make test`. The root is kept for a second
# run (only the install is repeated, 5.5 minutes); remove it with rm -rf.
#
# Usage: sudo deploy/arm64-check.sh [ROOT_DIR]     (default /var/tmp/plexus-arm64-root)
set -euo pipefail

ROOT=${1:-/var/tmp/plexus-arm64-root}
SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

say() { printf '\033[1m==>\033[0m [%4ss] %s\n' "$SECONDS" "$*"; }
die() { printf '\033[31merror:\033[0m %s\n' "$*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "needs root (debootstrap, chroot, mounts): sudo $0"
command -v debootstrap >/dev/null || die "apt-get install debootstrap qemu-user-static binfmt-support"
if [[ $(uname -m) != aarch64 ]]; then
    [[ -e /proc/sys/fs/binfmt_misc/register ]] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    [[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]] || update-binfmts --enable qemu-aarch64 2>/dev/null \
        || die "no binfmt handler for aarch64: apt-get install qemu-user-static binfmt-support"
fi

if [[ ! -x "$ROOT/usr/bin/python3" ]]; then
    say "debootstrap --foreign $SUITE arm64 into $ROOT"
    rm -rf "$ROOT"
    debootstrap --arch=arm64 --foreign --variant=minbase \
        --include=python3,python3-venv,ca-certificates "$SUITE" "$ROOT" "$MIRROR"
    # The handler is registered with the F flag on Debian; a copy covers the others.
    qemu=$(command -v qemu-aarch64-static || true)
    [[ -n "$qemu" ]] && cp "$qemu" "$ROOT/usr/bin/"
    say "second stage under qemu"
    chroot "$ROOT" /debootstrap/debootstrap --second-stage
fi

cleanup() {
    for m in dev/pts dev proc sys; do
        mountpoint -q "$ROOT/$m" && umount -l "$ROOT/$m"
    done
}
trap cleanup EXIT
mount -t proc proc "$ROOT/proc"
mount -t sysfs sys "$ROOT/sys"
mount --bind /dev "$ROOT/dev"
mount --bind /dev/pts "$ROOT/dev/pts"
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
# pip in the root trusts what this machine trusts (a network that re-signs TLS needs its CA).
cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/host-ca-certificates.crt"

say "copying the checkout (tracked and untracked, not ignored files) to $ROOT/src/plexus"
rm -rf "$ROOT/src/plexus" "$ROOT/opt/plexus-agent"
mkdir -p "$ROOT/src/plexus"
git -C "$REPO" ls-files -z --cached --others --exclude-standard \
    | (cd "$REPO" && tar --null -T - -cf - 2>/dev/null) | tar -xf - -C "$ROOT/src/plexus"
printf 'arm64-check-token\n' >"$ROOT/root/join-token"

in_root() {
    chroot "$ROOT" /usr/bin/env -i HOME=/root PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8 \
        PIP_CERT=/etc/ssl/host-ca-certificates.crt "$@"
}

say "arch in the root: $(in_root uname -m), $(in_root python3 --version)"
say "install-agent.sh --prefix /opt/plexus-agent --no-systemd"
in_root bash /src/plexus/deploy/install-agent.sh --prefix /opt/plexus-agent --no-systemd \
    --orchestrator http://192.0.2.1:8700 --join-token-file /root/join-token --name arm64-check
say "plexus agent run --help"
in_root /opt/plexus-agent/venv/bin/plexus agent run --help
packages=$(in_root /opt/plexus-agent/venv/bin/python -m pip list --format=freeze 2>/dev/null)
torch=$(grep -i '^torch==' <<<"$packages" || true)
gpu=$(grep -iE '^(nvidia-|cuda-|triton)' <<<"$packages" || true)
[[ -z "$gpu" ]] || die "GPU packages in the arm64 venv: $gpu"
in_root /opt/plexus-agent/bin/plexus-agent --check >/dev/null
say "ok: $torch and no nvidia-*/cuda-* package; venv $(du -sh "$ROOT/opt/plexus-agent/venv" | cut -f1); ${SECONDS}s in all"

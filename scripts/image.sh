#!/usr/bin/env bash
# Builds the runtime image with podman, without a registry or a compiler:
#   1. a Debian bookworm rootfs made by mmdebstrap from Debian's packages
#      (Essential only, plus ca-certificates and procps for `kill`; no apt,
#      no docs, man pages or locales), with the longbow user (10001) and
#      /data, /snapshots owned by it: target/image/rootfs-bookworm.tar,
#      kept and reused (IMAGE_ROOTFS_REBUILD=1 makes it again);
#   2. the prebuilt release binary (target/release/longbow);
#   3. podman build --isolation=chroot --pull=never of
#      deploy/image/Containerfile (FROM scratch, no RUN step), in docker
#      format so the HEALTHCHECK stays, then saved as a docker archive
#      (docker load / podman load / ctr import).
# Once the rootfs exists, the script needs no network. For the first run
# without one, point DEBIAN_MIRROR at a local mirror (file:///srv/debian) or
# a cache (apt-cacher-ng); DEBIAN_SOURCES replaces all three suites.
#
# Usage: scripts/image.sh [tag]          (default longbow:<workspace version>)
#   BINARY=path                 the server binary (default target/release/longbow; built
#                               with `cargo build --release` when missing; build it on
#                               bookworm or an older glibc)
#   DEBIAN_MIRROR=url           default http://deb.debian.org/debian
#   DEBIAN_SECURITY=url         default http://security.debian.org/debian-security
#   IMAGE_DIR=dir               staging and outputs (default target/image)
# Needs root (or mmdebstrap's unshare mode), mmdebstrap and podman
# (apt-get install mmdebstrap podman). Not part of the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
TAG=${1:-longbow:$VERSION}
BINARY=${BINARY:-target/release/longbow}
DIR=${IMAGE_DIR:-$PWD/target/image}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY=${DEBIAN_SECURITY:-http://security.debian.org/debian-security}
SOURCES=${DEBIAN_SOURCES:-"deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb $SECURITY bookworm-security main"}
ROOTFS=$DIR/rootfs-bookworm.tar
for tool in mmdebstrap podman; do
    command -v "$tool" >/dev/null || { echo "$tool missing: apt-get install -y mmdebstrap podman" >&2; exit 1; }
done
mkdir -p "$DIR"
# Timestamps in the rootfs and the labels: the commit's, so rebuilds agree.
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
export SOURCE_DATE_EPOCH
REVISION=$(git rev-parse HEAD 2>/dev/null || echo unknown)
CREATED=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)
step() { printf '%-28s %4ss  %s\n' "$1" "$2" "$3"; }

t0=$(date +%s)
if [ ! -s "$ROOTFS" ] || [ "${IMAGE_ROOTFS_REBUILD:-0}" = 1 ]; then
    # merged-usr: the /usr symlinks made directly and the usr-is-merged stub
    # installed, or apt pulls in usrmerge and with it perl (40 MiB).
    # /etc/passwd and /etc/group by hand: the Essential set has no useradd.
    mmdebstrap --quiet --variant=essential --include=ca-certificates,procps --format=tar \
        --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
        --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/info/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --customize-hook='echo "longbow:x:10001:" >> "$1/etc/group"' \
        --customize-hook='echo "longbow:x:10001:10001:longbow:/nonexistent:/usr/sbin/nologin" >> "$1/etc/passwd"' \
        --customize-hook='mkdir -p "$1/data" "$1/snapshots" && chown 10001:10001 "$1/data" "$1/snapshots"' \
        --customize-hook='rm -rf "$1"/var/log/* "$1"/var/cache/debconf/*-old "$1"/var/lib/dpkg/*-old' \
        bookworm "$ROOTFS.partial" - <<<"$SOURCES" >"$DIR/mmdebstrap.log" 2>&1 ||
        { tail -20 "$DIR/mmdebstrap.log" >&2; echo "mmdebstrap failed: $DIR/mmdebstrap.log" >&2; exit 1; }
    mv "$ROOTFS.partial" "$ROOTFS"
    step "rootfs (mmdebstrap)" $(( $(date +%s) - t0 )) "$(du -h "$ROOTFS" | cut -f1) $ROOTFS"
else
    step "rootfs (kept)" 0 "$(du -h "$ROOTFS" | cut -f1) $ROOTFS"
fi

t1=$(date +%s)
if [ ! -x "$BINARY" ]; then
    cargo build --release --locked -p longbow-server --bin longbow
fi
ctx=$DIR/context
rm -rf "$ctx" && mkdir -p "$ctx"
# Hard links where the filesystem allows: the rootfs is tens of MiB.
ln "$ROOTFS" "$ctx/rootfs.tar" 2>/dev/null || cp "$ROOTFS" "$ctx/rootfs.tar"
cp "$BINARY" "$ctx/longbow"
cp deploy/image/Containerfile deploy/image/healthcheck.sh "$ctx/"
podman build --quiet --isolation=chroot --pull=never --format docker \
    --build-arg VERSION="$VERSION" --build-arg REVISION="$REVISION" --build-arg CREATED="$CREATED" \
    --timestamp "$SOURCE_DATE_EPOCH" -t "$TAG" -f "$ctx/Containerfile" "$ctx" >/dev/null
step "podman build" $(( $(date +%s) - t1 )) "$TAG, binary $(du -h "$BINARY" | cut -f1)"

t2=$(date +%s)
archive=$DIR/${TAG//[:\/]/_}.tar
rm -f "$archive"
podman save --quiet --format docker-archive -o "$archive" "$TAG"
step "podman save" $(( $(date +%s) - t2 )) "$(du -h "$archive" | cut -f1) $archive"
podman image inspect --format 'image {{.Id}}: {{.Size}} bytes, user {{.Config.User}}, healthcheck {{.Config.Healthcheck.Test}}' "$TAG" 2>/dev/null ||
    podman image inspect --format 'image {{.Id}}: {{.Size}} bytes, user {{.User}}' "$TAG"
rm -rf "$ctx"

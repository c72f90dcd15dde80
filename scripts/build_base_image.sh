#!/usr/bin/env bash
# Build the local base image retrain/base:bookworm (a Debian bookworm minbase rootfs made with
# debootstrap and imported), for machines where no registry is reachable and FROM cannot pull.
#
#   DOCKER_HOST=unix://… scripts/build_base_image.sh [--force] [IMAGE]
#
# IMAGE defaults to retrain/base:bookworm. Skipped when the image already exists (unless --force).
# DEBIAN_MIRROR (default http://deb.debian.org/debian) is the mirror debootstrap and the image's apt
# use. Needs root (debootstrap) and installs debootstrap with apt when missing. ~40 s, ~200 MB.
set -euo pipefail

FORCE=0
if [[ ${1:-} == --force ]]; then FORCE=1; shift; fi
IMAGE=${1:-retrain/base:bookworm}
SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DOCKER_CLI=${DOCKER_CLI:-docker}

die() { echo "build_base_image.sh: $*" >&2; exit 1; }
note() { echo "build_base_image.sh: $*" >&2; }

"$DOCKER_CLI" version --format '{{.Server.Version}}' >/dev/null 2>&1 \
  || die "no Docker engine answers at ${DOCKER_HOST:-the default socket} (start one: scripts/dockerd.sh start DIR)"

exists() { [[ $FORCE == 0 ]] && "$DOCKER_CLI" image inspect "$IMAGE" >/dev/null 2>&1; }
if exists; then
  note "$IMAGE already exists (cached); --force rebuilds it"
  exit 0
fi
# One build at a time on this machine (the trainer and the compose image builds may start together):
# a second caller waits, then finds the image the first one made.
exec 9>"${TMPDIR:-/tmp}/retrain-build-base-image.lock"
flock 9
if exists; then
  note "$IMAGE was built meanwhile by another caller"
  exit 0
fi

[[ $(id -u) -eq 0 ]] || die "debootstrap needs root"
if ! command -v debootstrap >/dev/null 2>&1; then
  note "installing debootstrap"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends debootstrap >/dev/null 2>&1 \
    || { apt-get update >/dev/null && apt-get install -y --no-install-recommends debootstrap >/dev/null; } \
    || die "could not install debootstrap with apt-get"
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/retrain-base.XXXXXX")
cleanup() {
  # debootstrap may leave proc/sys mounted inside the rootfs if it was interrupted.
  for m in proc sys dev/pts dev; do umount -l "$TMP/rootfs/$m" 2>/dev/null || true; done
  rm -rf --one-file-system "$TMP"
}
trap cleanup EXIT

start=$(date +%s)
note "debootstrap --variant=minbase $SUITE from $MIRROR"
if ! debootstrap --variant=minbase "$SUITE" "$TMP/rootfs" "$MIRROR" >"$TMP/debootstrap.log" 2>&1; then
  tail -n 20 "$TMP/debootstrap.log" >&2
  die "debootstrap failed"
fi

R=$TMP/rootfs
# apt sources for the image (updates and security included); no host files baked in.
cat >"$R/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb ${MIRROR%/debian}/debian-security $SUITE-security main
EOF
rm -rf "$R"/var/cache/apt/archives/*.deb "$R"/var/lib/apt/lists/* "$R"/var/log/* "$R"/tmp/*
rm -f "$R/etc/resolv.conf" "$R/etc/hostname"
: >"$R/etc/hostname"
# Smaller images: no docs, man pages or locales from later apt installs (what the official images do).
cat >"$R/etc/dpkg/dpkg.cfg.d/01-retrain-nodoc" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
EOF
printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' >"$R/etc/apt/apt.conf.d/01-retrain-norecommends"

tar --numeric-owner -C "$R" -c . | "$DOCKER_CLI" import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["/bin/bash"]' \
  --change "LABEL org.opencontainers.image.description=\"Debian $SUITE minbase (debootstrap, local import)\"" \
  - "$IMAGE" >/dev/null
note "built $IMAGE in $(( $(date +%s) - start )) s, $("$DOCKER_CLI" image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}')"

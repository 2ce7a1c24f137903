#!/bin/bash
# Make the Dockerfile's base image locally from Debian packages, for machines that reach a Debian
# mirror but no container registry (CI here). The result carries the same tag as the Dockerfile's
# `FROM` (debian:bookworm-slim), with python3, python3-venv, git, openssh-client and
# ca-certificates already installed, so the Dockerfile's apt step is skipped.
# Usage: build-base-image.sh [TAG]   (env MIRROR overrides the mirror from apt's sources)
set -euo pipefail
TAG=${1:-debian:bookworm-slim}
DOCKER=${DOCKER:-docker}
PACKAGES=python3,python3-venv,git,openssh-client,ca-certificates
KEY=$(echo "$PACKAGES bookworm v1" | sha256sum | cut -c1-16)
if [ "$($DOCKER image inspect -f '{{ index .Config.Labels "dev.fraisier.base" }}' "$TAG" 2>/dev/null)" = "$KEY" ]; then
  echo "build-base-image: $TAG is up to date ($KEY)"; exit 0
fi
MIRROR=${MIRROR:-$(awk '/^URIs:/{print $2; exit} /^deb /{print $2; exit}' \
  /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null | grep -v security | head -1)}
[ -n "$MIRROR" ] || { echo "build-base-image: no Debian mirror in apt sources; set MIRROR" >&2; exit 1; }
R=$(mktemp -d); trap 'rm -rf "$R"' EXIT
mmdebstrap --variant=apt --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr --include="$PACKAGES" \
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-exclude=/usr/share/doc/*' bookworm "$R/rootfs" "$MIRROR" >"$R/log" 2>&1 \
  || { tail -20 "$R/log" >&2; exit 1; }
rm -rf "$R"/rootfs/var/cache/apt/archives/*.deb "$R"/rootfs/var/lib/apt/lists/*
tar -C "$R/rootfs" --numeric-owner -c . | $DOCKER import \
  -c 'CMD ["bash"]' -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  -c "LABEL dev.fraisier.base=$KEY" - "$TAG" >/dev/null
echo "build-base-image: built $TAG ($KEY)"

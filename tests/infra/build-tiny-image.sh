#!/bin/bash
# Build a tiny local image from Debian's busybox-static (no registry: `docker pull` cannot work here).
# Usage: build-tiny-image.sh IMAGE[:TAG] [ROOTFS_DIR]
# Contents: /bin/busybox with every applet linked (sh, httpd, wget, sleep, ...), /www/index.html and
# /www/health ("ok") so `busybox httpd -h /www` answers a health check out of the box.
# Run it with compose `init: true`: busybox as PID 1 ignores SIGTERM.
set -euo pipefail
IMAGE=${1:?usage: build-tiny-image.sh IMAGE [ROOTFS_DIR]}
R=${2:-$(mktemp -d)}
DOCKER=${DOCKER:-/usr/bin/docker}
BUSYBOX=/bin/busybox
# ldd exits 1 on a static binary, so read its words rather than its exit code.
case "$(ldd "$BUSYBOX" 2>&1 || true)" in
  *"not a dynamic executable"*) ;;
  *) echo "build-tiny-image: need a static $BUSYBOX (apt-get install busybox-static)" >&2; exit 1 ;;
esac
rm -rf "$R"; mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,etc,tmp,www,root,proc,sys,dev,var/run}
chmod 1777 "$R/tmp"
cp "$BUSYBOX" "$R/bin/busybox"
for applet in $("$BUSYBOX" --list); do
  [ "$applet" = busybox ] || ln -sf busybox "$R/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$R/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$R/etc/group"
echo '<h1>fraisier tiny</h1>' >"$R/www/index.html"
echo ok >"$R/www/health"
tar -C "$R" --numeric-owner --owner=0 --group=0 -c . \
  | "$DOCKER" import -c 'CMD ["/bin/sh"]' -c 'ENV PATH=/bin' -c 'WORKDIR /' - "$IMAGE" >/dev/null
rm -rf "$R"
echo "build-tiny-image: built $IMAGE"

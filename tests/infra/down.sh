#!/bin/bash
# Stop what tests/infra/up.sh started: the test hosts, and dockerd only if up.sh started it.
# Images and keys stay cached (a later up.sh is quick). --purge also removes the work dir, and the
# images when no other work dir's hosts remain.
set -euo pipefail
W=${FRAISIER_TESTINFRA:-/var/tmp/fraisier-testinfra}
DOCKER=/usr/bin/docker
PURGE=0; [ "${1:-}" = --purge ] && PURGE=1

rm -f "$W/env.json"   # first: tests must skip, not hit half-removed hosts
if $DOCKER info >/dev/null 2>&1; then
  ids=$($DOCKER ps -aq --filter "label=fraisier.testinfra=$W")   # only this work dir's hosts
  # shellcheck disable=SC2086
  [ -z "$ids" ] || $DOCKER rm -f $ids >/dev/null
  echo "down.sh: removed $(echo "$ids" | grep -c . || true) test host(s)"
  # Images are shared by every work dir on this machine: remove them only when no test host of
  # any work dir is left, and never with -f (an image in use stays).
  if [ "$PURGE" = 1 ] && [ -z "$($DOCKER ps -aq --filter label=fraisier.testinfra)" ]; then
    $DOCKER image rm fraisier-testhost:1 fraisier-testhost:base fraisier-tiny:1 >/dev/null 2>&1 || true
  fi
fi
if [ -f "$W/dockerd.pid" ]; then
  pid=$(cat "$W/dockerd.pid")
  # Only the dockerd we started (the pid may have been reused by something else since).
  if [ "$(cat "/proc/$pid/comm" 2>/dev/null || true)" = dockerd ]; then
    kill "$pid"
    for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    echo "down.sh: stopped dockerd (pid $pid)"
  fi
  rm -f "$W/dockerd.pid"
fi
if [ "$PURGE" = 1 ]; then rm -rf "$W"; echo "down.sh: purged $W"; fi

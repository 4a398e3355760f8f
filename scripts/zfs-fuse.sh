#!/usr/bin/env bash
# Userspace ZFS for the storage tests and benches: `up` makes sure one
# zfs-fuse daemon answers, `down` stops the one started by `up`.
# A daemon that died leaves its socket, its pidfile (zfs-fuse refuses to
# start over it) and its FUSE mounts ("Transport endpoint is not
# connected") behind; `up` clears all three before starting a new one.
set -euo pipefail
PIDFILE=/run/zfs-fuse.pid
SOCKET=/var/run/zfs/zfs_socket

answers() { zpool list >/dev/null 2>&1; }

stale_mounts() {
  # deepest first, so parents unmount cleanly
  awk '$3 == "fuse.zfs" { print $2 }' /proc/self/mounts | sort -r
}

case "${1:-}" in
  up)
    answers && exit 0
    if [ -f "$PIDFILE" ] && kill "$(cat "$PIDFILE")" 2>/dev/null; then sleep 0.5; fi
    for m in $(stale_mounts); do umount -l "$m" 2>/dev/null || true; done
    rm -f "$SOCKET" "$PIDFILE"
    zfs-fuse --no-kstat-mount --pidfile "$PIDFILE"
    for _ in $(seq 100); do answers && exit 0; sleep 0.1; done
    echo "zfs-fuse started but does not answer after 10 s" >&2
    exit 1
    ;;
  down)
    [ -f "$PIDFILE" ] || exit 0
    pid=$(cat "$PIDFILE")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    for m in $(stale_mounts); do umount -l "$m" 2>/dev/null || true; done
    rm -f "$SOCKET" "$PIDFILE"
    ;;
  *)
    echo "usage: $0 up|down" >&2
    exit 2
    ;;
esac

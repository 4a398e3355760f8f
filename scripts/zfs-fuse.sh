#!/usr/bin/env bash
# Userspace ZFS for the storage tests and benches: `up` makes sure one
# zfs-fuse daemon answers, `down` stops the one started by `up`.
# A daemon that died leaves its socket, its pidfile (zfs-fuse refuses to
# start over it) and its FUSE mounts ("Transport endpoint is not
# connected") behind; `up` clears all three before starting a new one.
set -euo pipefail
PIDFILE=/run/zfs-fuse.pid
SOCKET=/var/run/zfs/zfs_socket
# Every restart is logged here with its reason, so a test that saw the
# daemon vanish can say whether `up` restarted it (tests/common/mod.rs).
RESTARTS=/var/tmp/deorchtest-zfs-fuse-restarts.log

alive() {
  [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null
}

# Whether the daemon answers, every check bounded: a wedged zfs-fuse can
# answer `zpool list` while a dataset's FUSE mount (and every `zfs` command
# that touches it) hangs for good; seen after a `zfs` command was SIGKILLed
# mid-mount, and on CI once it failed every later zfs test on a 120 s
# timeout. SIGKILL ends a process waiting on a FUSE request.
# answers [SECONDS]: each check bounded by SECONDS (10 by default).
answers() {
  local t="${1:-10}"
  timeout -s KILL "$t" zpool list >/dev/null 2>&1 || return 1
  timeout -s KILL "$((2 * t))" zfs list -H -o name >/dev/null 2>&1 || return 1
  local m
  for m in $(awk '$3 == "fuse.zfs" { print $2 }' /proc/self/mounts); do
    if ! timeout -s KILL "$t" stat -f "$m" >/dev/null 2>&1 \
      || ! timeout -s KILL "$t" ls -a "$m" >/dev/null 2>&1; then
      echo "zfs-fuse: $m does not answer" >&2
      return 1
    fi
  done
}

stale_mounts() {
  # deepest first, so parents unmount cleanly
  awk '$3 == "fuse.zfs" { print $2 }' /proc/self/mounts | sort -r
}

# stop_daemon PID: SIGTERM, 5 s, then SIGKILL (a hung zfs-fuse ignores
# SIGTERM and would keep its socket and mounts).
stop_daemon() {
  kill "$1" 2>/dev/null || return 0
  for _ in $(seq 50); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
  echo "zfs-fuse $1 ignores SIGTERM: SIGKILL" >&2
  kill -9 "$1" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
}

case "${1:-}" in
  up)
    answers && exit 0
    # A live daemon on a loaded machine (two libvirtds and TCG guests on
    # two cores) can take more than 10 s to answer; restarting it then
    # fails every test that uses it at that moment (CI, stop 33). Only a
    # daemon that stays silent for minutes is wedged.
    if alive; then
      for t in 30 60; do
        sleep 1
        answers "$t" && exit 0
      done
    fi
    why="no daemon"
    if [ -f "$PIDFILE" ]; then
      if alive; then why="pid $(cat "$PIDFILE") does not answer within 60 s"
      else why="pid $(cat "$PIDFILE") has exited"; fi
      echo "zfs-fuse: $why: restarting it" >&2
    fi
    echo "$(date -u +%FT%TZ) $why: restarted by pid $PPID" >> "$RESTARTS"
    # A hung daemon (it happens to zfs-fuse) ignores SIGTERM: escalate.
    if [ -f "$PIDFILE" ]; then stop_daemon "$(cat "$PIDFILE")"; fi
    for m in $(stale_mounts); do umount -l "$m" 2>/dev/null || true; done
    rm -f "$SOCKET" "$PIDFILE"
    # Its exit status is not the daemon's health: whether it answers is.
    zfs-fuse --no-kstat-mount --pidfile "$PIDFILE" || true
    for _ in $(seq 100); do
      if answers; then
        # A restarted daemon imports the pools but mounts nothing.
        zfs mount -a 2>/dev/null || true
        exit 0
      fi
      sleep 0.1
    done
    echo "zfs-fuse started but does not answer after 10 s" >&2
    exit 1
    ;;
  down)
    [ -f "$PIDFILE" ] || exit 0
    stop_daemon "$(cat "$PIDFILE")"
    for m in $(stale_mounts); do umount -l "$m" 2>/dev/null || true; done
    rm -f "$SOCKET" "$PIDFILE"
    ;;
  *)
    echo "usage: $0 up|down" >&2
    exit 2
    ;;
esac

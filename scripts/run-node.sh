#!/usr/bin/env bash
# Run one deorch node with embedded defaults on manifests/: installs what is
# missing (QEMU from bookworm-backports, busybox for the guest), builds
# deorch and the tiny guest (/var/lib/deorch/guest), then runs the node in
# the foreground with the QEMU driver. It boots the `tiny` VM declared in
# manifests/ and prints the guest's ready line from its serial console.
# Ctrl-C stops the node; the VM keeps running (a restarted node re-adopts it).
# State lives in ./.deorch/ unless DEORCH_STATE_DIR is set.
#
# Usage: scripts/run-node.sh [--until-ready] [node run flags...]
# --until-ready (for checks, e.g. scripts/fresh-check.sh): once the guest
# is up, stop the node and the VM and exit 0; exit 1 if the node exits or
# the guest is not up within READY_TIMEOUT seconds (default 180).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

until_ready=""
args=()
for a in "$@"; do
  case "$a" in
    --until-ready) until_ready=1 ;;
    *) args+=("$a") ;;
  esac
done

need_rust
need_qemu
apt_install busybox-static cpio util-linux
say "building the tiny guest into /var/lib/deorch/guest"
as_root guest/build.sh /var/lib/deorch/guest
say "building deorch"
cargo build --release --locked --quiet
bin="$CARGO_TARGET_DIR/release/deorch"
state="${DEORCH_STATE_DIR:-$PWD/.deorch/state}"
socket="${DEORCH_SOCKET:-$PWD/.deorch/deorch.sock}"
serial="$state/vms/default/tiny/serial.log"
say "node starting: manifests/ -> $state (socket $socket)"
"$bin" node run --hypervisor qemu --manifests manifests --state-dir "$state" --socket "$socket" "${args[@]}" &
node=$!
trap 'kill $node 2>/dev/null; wait $node' INT TERM

# Up means: this boot's serial log holds the guest's ready line and is still
# growing (the guest prints a counter every 100 ms after it). A log left by
# an earlier boot of a VM that is gone holds the line too, but stays still
# (or is rotated away to serial.log.1 when the VM boots again: same file,
# same inode, is required).
guest_up() {
  grep -qs DEORCH-GUEST-READY "$serial" || return 1
  local before after
  before=$(stat -c %i:%s "$serial" 2>/dev/null) || return 1
  sleep 1
  after=$(stat -c %i:%s "$serial" 2>/dev/null) || return 1
  [ "${after%%:*}" = "${before%%:*}" ] && [ "${after#*:}" -gt "${before#*:}" ]
}

deadline=$((SECONDS + ${READY_TIMEOUT:-180}))
up=""
while [ $SECONDS -lt $deadline ]; do
  if guest_up; then
    up=1
    say "VM tiny is up: $(grep -m1 'deorch-guest: lease' "$serial" || echo 'no DHCP lease line')"
    console=$("$bin" get vm tiny -o json --socket "$socket" 2>/dev/null |
      grep -Eo '"(host|vncPort|websocketPort|url)": ?"?[^,"}]*' | tr -d '"' | tr '\n' ' ' || true)
    say "console: ${console:-not reported yet (deorch describe vm tiny)} (locked: $bin console tiny --socket $socket prints a one-time password)"
    say "serial console log: $serial"
    say "try: $bin get --socket $socket    or    $bin describe vm tiny --socket $socket"
    break
  fi
  kill -0 $node 2>/dev/null || break
  sleep 0.2
done

if [ -z "$up" ] && [ -z "$until_ready" ] && kill -0 $node 2>/dev/null; then
  say "VM tiny not up after ${READY_TIMEOUT:-180} s; the node keeps trying (serial log: $serial)"
fi
if [ -n "$until_ready" ]; then
  # The VM outlives the node by design: stop it too, by its pidfile.
  kill $node 2>/dev/null || true
  wait $node 2>/dev/null || true
  vm_pid=$(cat "$state/vms/default/tiny/qemu.pid" 2>/dev/null || true)
  if [ -n "$vm_pid" ] && kill "$vm_pid" 2>/dev/null; then
    for _ in $(seq 50); do kill -0 "$vm_pid" 2>/dev/null || break; sleep 0.1; done
  fi
  if [ -z "$up" ]; then
    say "VM tiny did not come up (node exited, or ${READY_TIMEOUT:-180} s passed)"
    echo "--- serial log ($serial), last lines:" >&2
    tail -n 20 "$serial" >&2 2>/dev/null || echo "(none)" >&2
    exit 1
  fi
  say "--until-ready: the guest was up; node and VM stopped"
  exit 0
fi
wait $node

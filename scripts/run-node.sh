#!/usr/bin/env bash
# Run one deorch node with embedded defaults on manifests/: installs what is
# missing (QEMU from bookworm-backports, busybox for the guest), builds
# deorch and the tiny guest (/var/lib/deorch/guest), then runs the node in
# the foreground with the QEMU driver. It boots the `tiny` VM declared in
# manifests/ and prints the guest's ready line from its serial console.
# Ctrl-C stops the node; the VM keeps running (a restarted node re-adopts it).
# State lives in ./.deorch/ unless DEORCH_STATE_DIR is set.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

need_rust
need_qemu
apt_install busybox-static cpio
say "building the tiny guest into /var/lib/deorch/guest"
as_root guest/build.sh /var/lib/deorch/guest
say "building deorch"
cargo build --release --locked --quiet
bin="$CARGO_TARGET_DIR/release/deorch"
state="${DEORCH_STATE_DIR:-$PWD/.deorch/state}"
socket="${DEORCH_SOCKET:-$PWD/.deorch/deorch.sock}"
serial="$state/vms/default/tiny/serial.log"
say "node starting: manifests/ -> $state (socket $socket)"
"$bin" node run --hypervisor qemu --manifests manifests --state-dir "$state" --socket "$socket" "$@" &
node=$!
trap 'kill $node 2>/dev/null; wait $node' INT TERM
for _ in $(seq 1 600); do
  if grep -qs DEORCH-GUEST-READY "$serial"; then
    say "VM tiny is up: $(grep -m1 'deorch-guest: lease' "$serial" || echo 'no DHCP lease line')"
    console=$("$bin" get vm tiny -o json --socket "$socket" 2>/dev/null |
      grep -Eo '"(host|vncPort|websocketPort|url)": ?"?[^,"}]*' | tr -d '"' | tr '\n' ' ' || true)
    say "console: ${console:-not reported yet (deorch describe vm tiny)}"
    say "serial console log: $serial"
    say "try: $bin get --socket $socket    or    $bin describe vm tiny --socket $socket"
    break
  fi
  kill -0 $node 2>/dev/null || break
  sleep 0.2
done
wait $node

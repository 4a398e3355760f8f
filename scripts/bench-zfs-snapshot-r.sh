#!/usr/bin/env bash
# What one `zfs snapshot` costs against `zfs snapshot -r` of a parent with
# 1, 2 and 3 children, in turn, while a writer rewrites one dataset
# (16 MiB + fsync in a loop): docs/PERFORMANCE.md, "Replicas on zfs".
# Usage: scripts/bench-zfs-snapshot-r.sh [PARENT_DATASET] [ROUNDS]
# (default deorchtest/zr, 15); PARENT_DATASET is made and destroyed.
set -euo pipefail
P="${1:-deorchtest/zr}"
N="${2:-15}"
STOP="$(mktemp -u)"
for g in "g1/a" "g2/a" "g2/b" "g3/a" "g3/b" "g3/c"; do zfs create -p "$P/$g"; done
W="$(zfs get -H -o value mountpoint "$P/g2/a")/w"
(while [ ! -e "$STOP" ]; do dd if=/dev/urandom of="$W" bs=1M count=16 conv=fsync status=none; done) &
WRITER=$!
cleanup() {
  touch "$STOP"; wait "$WRITER" 2>/dev/null || true; rm -f "$STOP"
  for _ in 1 2 3 4 5; do zfs destroy -r "$P" 2>/dev/null && break; zfs umount -a 2>/dev/null || true; sleep 2; done
  zfs mount -a 2>/dev/null || true
}
trap cleanup EXIT
sleep 2
ms() { local s; s=$(date +%s%N); zfs snapshot "$@"; echo $((($(date +%s%N) - s) / 1000000)); }
declare -a one r1 r2 r3
for i in $(seq 1 "$N"); do
  one+=("$(ms "$P/g2/a@s$i")"); r1+=("$(ms -r "$P/g1@r$i")")
  r2+=("$(ms -r "$P/g2@r$i")"); r3+=("$(ms -r "$P/g3@r$i")")
done
p50() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "p50 over $N rounds, ms: one dataset $(p50 "${one[@]}"); -r of a parent with 1 child $(p50 "${r1[@]}"), 2 children $(p50 "${r2[@]}"), 3 children $(p50 "${r3[@]}")"

#!/usr/bin/env bash
# What broken input costs a running node (docs/PERFORMANCE.md, "Bad input"):
# RSS after 8 versions of a file with 80,000 errors, and the peak RSS
# while a 1 GB file sits in the manifest directory. Usage:
#   scripts/bench-bad-input.sh [path/to/deorch]
set -euo pipefail
B=${1:-${CARGO_TARGET_DIR:-$HOME/.cache/deorch/target}/release/deorch}
d=$(mktemp -d)
trap 'kill $P 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$d"' EXIT
mkdir -p "$d/m"
"$B" --log warn node run --name bench --hypervisor fake --storage fake \
  --state-dir "$d/s" --manifests "$d/m" --socket "$d/s.sock" --settle 1s >"$d/node.log" 2>&1 &
P=$!
for _ in $(seq 100); do [ -S "$d/s.sock" ] && break; sleep 0.1; done
sleep 1
rss() { awk '/VmRSS/ {print $2}' /proc/$P/status; }
hwm() { awk '/VmHWM/ {print $2}' /proc/$P/status; }
echo "node RSS at start: $(rss) KiB"
for v in $(seq 0 7); do
  python3 - "$d/m/broken.yaml" "$v" <<'PY'
import sys
path, v = sys.argv[1], sys.argv[2]
with open(path, "w") as f:
    for i in range(20000):
        f.write(f"---\napiVersion: deorch.dev/v1alpha1\nkind: VirtualMachine\nmetadata:\n  name: Bad_{v}_{i}\nspec:\n  cpu: 0\n  memory: 0\n  bogus{v}: 1\n")
PY
  n=$((v + 1))
  for _ in $(seq 600); do [ "$(grep -c 'manifest rejected' "$d/node.log")" -ge "$n" ] && break; sleep 0.1; done
  sleep 1
  echo "after version $n of a file with 80,000 errors: RSS $(rss) KiB"
done
rm -f "$d/m/broken.yaml"
sleep 2
before=$(rss); h0=$(hwm)
truncate -s 1G "$d/m/huge.yaml"
for _ in $(seq 100); do grep -q "larger than" "$d/node.log" && break; sleep 0.1; done
sleep 1
echo "1 GB file dropped: refused=$(grep -c 'larger than' "$d/node.log"), RSS $before -> $(rss) KiB, peak (VmHWM) $h0 -> $(hwm) KiB"

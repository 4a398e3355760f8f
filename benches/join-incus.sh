#!/usr/bin/env bash
# Peer figure for docs/PERFORMANCE.md "Joining (deorch node join)": how long
# Incus takes from the owner's approval to a new cluster member ONLINE and an
# instance placed on it running there, measured the way tests/node_join.rs
# measures deorch.
#
# The path a real Incus user takes: member 1 is a one-member cluster
# (bootstrapped with `incus admin init --preseed`); the new machine runs
# incusd, not yet initialised. The approval is `incus cluster add m2` on
# member 1, which prints a join token; the clock starts when it returns.
# Then, on the new machine, `incus admin init --preseed` with
#   cluster: {enabled: true, server_name: m2, server_address: 10.195.0.2:8443,
#             cluster_token: TOKEN}
# and the script times (from the approval):
#   join   `incus admin init --preseed` returned on m2
#   online m2 is ONLINE in member 1's member list (/1.0/cluster/members/m2)
#   run    `incus launch IMAGE c --target m2` (issued on member 1 once m2 is
#          ONLINE) returned and the instance is RUNNING with location m2
#
# Each incusd runs in its own network namespace with its own INCUS_DIR, the
# two namespaces joined by a veth pair (10.195.0.1/24 and 10.195.0.2/24).
# The instance is a container: Incus's VM driver is not operational on a
# host without /dev/vhost-vsock (the incus-agent channel; incusd logs
# "Instance type not operational ... vhost_vsock kernel module not loaded"),
# and no images can be downloaded, so the image is built here from
# busybox-static: a rootfs whose /sbin/init sleeps. It is imported on member
# 1 before the approval; member 2 fetches it from member 1 when the
# instance is created there (as it would in a real cluster).
#
# Usage (root): benches/join-incus.sh [RUNS]   (default 1 run)
# Env: WAIT (bound in seconds on every wait, 120), KEEP=1 keeps the
#      daemons' directories and logs under /tmp/join-incus.*.
# Needs: incus (bookworm-backports), busybox-static, iproute2.
set -euo pipefail

RUNS=${1:-1}
INCUSD=/usr/libexec/incus/incusd
NS1=joinincus1
NS2=joinincus2
A1=10.195.0.1
A2=10.195.0.2
WAIT=${WAIT:-120} # seconds, bound on every wait

[ "$(id -u)" = 0 ] || { echo "join-incus.sh: run as root" >&2; exit 1; }
for t in ip incus busybox tar; do
  command -v "$t" >/dev/null || PATH="$PATH:/usr/sbin:/sbin"
  command -v "$t" >/dev/null || { echo "missing $t (apt: iproute2 incus busybox-static tar)" >&2; exit 1; }
done
[ -x "$INCUSD" ] || { echo "missing $INCUSD (apt-get install -t bookworm-backports incus)" >&2; exit 1; }
for ns in "$NS1" "$NS2"; do
  if ip netns list | grep -qw "$ns"; then
    echo "network namespace $ns exists already (another run?); delete it first" >&2
    exit 1
  fi
done

W=$(mktemp -d /tmp/join-incus.XXXXXX)
chmod 0755 "$W" # the container's unprivileged root walks through it
R="$W/run" # the current run's daemons (INCUS_DIRs and logs)
PIDS=()

# teardown: delete the instances, stop both daemons, delete the namespaces.
teardown() {
  set +e
  local d p c
  for d in m2 m1; do
    [ -S "$R/$d/unix.socket" ] || continue
    for c in $(INCUS_DIR=$R/$d timeout 20 incus list -c n -f csv 2>/dev/null); do
      INCUS_DIR=$R/$d timeout 30 incus delete -f "$c" >/dev/null 2>&1
    done
  done
  for d in m2 m1; do
    [ -S "$R/$d/unix.socket" ] && INCUS_DIR=$R/$d timeout 30 incus admin shutdown >/dev/null 2>&1
  done
  for p in "${PIDS[@]}"; do
    kill -0 "$p" 2>/dev/null && kill "$p" 2>/dev/null
  done
  sleep 1
  for p in "${PIDS[@]}"; do
    kill -0 "$p" 2>/dev/null && kill -9 "$p" 2>/dev/null
  done
  PIDS=()
  # Anything incusd mounted under its directories (none seen with the dir
  # driver, but never leave a mount behind the rm).
  grep -o " $W[^ ]*" /proc/mounts | sort -r | while read -r m; do umount -l "$m"; done
  ip netns del "$NS1" 2>/dev/null
  ip netns del "$NS2" 2>/dev/null
  [ -n "${KEEP:-}" ] || rm -rf "$R"
  set -e
}
cleanup() {
  teardown
  set +e
  if [ -n "${KEEP:-}" ]; then echo "kept $W" >&2; else rm -rf "$W"; fi
}
trap cleanup EXIT INT TERM

now() { echo "$EPOCHREALTIME"; }
since() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

# wait_for SECONDS COMMAND...: run COMMAND every 0.05 s until it succeeds.
wait_for() {
  local bound=$1
  shift
  local end=$((SECONDS + bound))
  until "$@"; do
    if [ "$SECONDS" -ge "$end" ]; then
      echo "timed out after ${bound}s waiting for: $*" >&2
      return 1
    fi
    sleep 0.05
  done
}

# The client runs in its member's namespace too: `incus admin init` on the
# joiner fetches the cluster certificate itself, and from the root namespace
# 10.195.0.1 would go out by the default route.
m1() { INCUS_DIR=$R/m1 timeout "$WAIT" ip netns exec "$NS1" incus "$@"; }
m2() { INCUS_DIR=$R/m2 timeout "$WAIT" ip netns exec "$NS2" incus "$@"; }
online() { m1 query /1.0/cluster/members/m2 2>/dev/null | grep -q '"status": "Online"'; }
running() { [ "$(m1 list c1 -c sL -f csv 2>/dev/null)" = "RUNNING,m2" ]; }

start_daemon() { # start_daemon NAME NAMESPACE
  mkdir -p "$R/$1"
  INCUS_DIR=$R/$1 ip netns exec "$2" "$INCUSD" --group root --logfile="$R/$1.log" \
    >"$R/$1.out" 2>&1 </dev/null &
  PIDS+=($!)
  INCUS_DIR=$R/$1 timeout "$WAIT" incus admin waitready --timeout="$WAIT"
}

# The image: busybox-static as /bin, /sbin/init sleeps.
mkdir -p "$W/img/rootfs/"{bin,sbin,proc,sys,dev,tmp,etc,run}
cp "$(command -v busybox)" "$W/img/rootfs/bin/busybox"
ln -s busybox "$W/img/rootfs/bin/sh"
ln -s busybox "$W/img/rootfs/bin/sleep"
printf '#!/bin/sh\nexec /bin/sleep 2147483647\n' >"$W/img/rootfs/sbin/init"
chmod +x "$W/img/rootfs/sbin/init"
printf 'architecture: x86_64\ncreation_date: %s\nproperties:\n  description: busybox sleep\n  os: busybox\n' \
  "$(date +%s)" >"$W/img/metadata.yaml"
tar -C "$W/img" -czf "$W/busybox.tar.gz" metadata.yaml rootfs

echo "incus $(incus --version), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "seconds after the approval (\`incus cluster add m2\` returned; 'token' is that command's own time):"
printf '%-4s %8s %8s %8s %8s\n' run token join online running

for run in $(seq 1 "$RUNS"); do
  mkdir -p "$R"
  ip netns add "$NS1"
  ip netns add "$NS2"
  ip link add ji-a type veth peer name ji-b
  ip link set ji-a netns "$NS1"
  ip link set ji-b netns "$NS2"
  ip -n "$NS1" addr add "$A1/24" dev ji-a
  ip -n "$NS2" addr add "$A2/24" dev ji-b
  for ns in "$NS1" "$NS2"; do ip -n "$ns" link set lo up; done
  ip -n "$NS1" link set ji-a up
  ip -n "$NS2" link set ji-b up

  # Member 1: a one-member cluster with a dir pool and the image.
  start_daemon m1 "$NS1"
  m1 admin init --preseed <<EOF
config:
  core.https_address: $A1:8443
storage_pools:
- name: default
  driver: dir
profiles:
- name: default
  devices:
    root: {path: /, pool: default, type: disk}
cluster:
  server_name: m1
  enabled: true
EOF
  m1 image import "$W/busybox.tar.gz" --alias busybox >/dev/null
  # The new machine: incusd installed and running, not initialised.
  start_daemon m2 "$NS2"

  # The approval.
  t_add=$(now)
  token=$(m1 cluster add m2 --quiet)
  t0=$(now)
  [ -n "$token" ] || { echo "incus cluster add printed no token" >&2; exit 1; }

  # The new machine joins with the token.
  m2 admin init --preseed <<EOF
cluster:
  enabled: true
  server_name: m2
  server_address: $A2:8443
  cluster_token: $token
EOF
  t_join=$(now)

  wait_for "$WAIT" online
  t_online=$(now)

  # (stderr kept aside: launch warns that the instance has no network)
  m1 launch busybox c1 --target m2 </dev/null >/dev/null 2>"$W/launch.err" ||
    { cat "$W/launch.err" >&2; exit 1; }
  wait_for "$WAIT" running
  t_run=$(now)

  printf '%-4s %8s %8s %8s %8s\n' "$run" "$(since "$t_add" "$t0")" "$(since "$t0" "$t_join")" \
    "$(since "$t0" "$t_online")" "$(since "$t0" "$t_run")"
  # The container really runs on m2: its init is a process there.
  [ "$(m2 query /1.0/instances/c1/state | grep -o '"pid": [0-9]*' | grep -o '[0-9]*$')" -gt 0 ] ||
    { echo "c1 has no init process on m2" >&2; exit 1; }
  teardown
done

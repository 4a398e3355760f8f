#!/usr/bin/env bash
# DHCP exchanges per second: deorch, dnsmasq and Kea in the same run, each
# driven by perfdhcp acting as a relay agent (giaddr = its address), in two
# network namespaces joined by a veth pair (see the dhcp-bench recipe).
# Server pinned to core 0, perfdhcp to core 1. For each server a few
# offered rates are tried; the figure is the best rate of completed
# exchanges (ACKs received / seconds) among runs with < 2.5 % of the
# exchanges unanswered. All three get the same list of client MACs.
#
# Usage (root): benches/dhcp.sh [SECONDS_PER_RUN]
# Env: DEORCH_BIN (default: cargo build --release), CLIENTS (10000),
#      RATES_DEORCH, RATES_KEA, RATES_DNSMASQ (space-separated offered rates),
#      DOC (docs/PERFORMANCE.md; its DHCP block is rewritten; DOC= to skip).
set -euo pipefail
cd "$(dirname "$0")/.."
PERIOD=${1:-10}
CLIENTS=${CLIENTS:-10000}
RATES_DEORCH=${RATES_DEORCH:-"3000 5000 7000 9000"}
RATES_KEA=${RATES_KEA:-"3000 4000 5000 6000"}
RATES_DNSMASQ=${RATES_DNSMASQ:-"100 150 200"}
DOC=${DOC-docs/PERFORMANCE.md}

for t in ip perfdhcp dnsmasq kea-dhcp4 taskset; do
  command -v "$t" >/dev/null || PATH="$PATH:/usr/sbin:/sbin"
  command -v "$t" >/dev/null || { echo "missing $t (apt: iproute2 kea-admin dnsmasq-base kea-dhcp4-server)" >&2; exit 1; }
done
if [ -z "${DEORCH_BIN:-}" ]; then
  cargo build --release --bin deorch >&2
  DEORCH_BIN="${CARGO_TARGET_DIR:-target}/release/deorch"
fi

W=$(mktemp -d /tmp/deorch-bench-dhcp.XXXXXX)
S=dbs$$; C=dbc$$
cleanup() {
  [ -n "${SRV_PID:-}" ] && kill "$SRV_PID" 2>/dev/null && wait "$SRV_PID" 2>/dev/null || true
  ip netns del "$S" 2>/dev/null || true
  ip netns del "$C" 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT
ip netns add "$S"; ip netns add "$C"
ip link add vsrv$$ type veth peer name vcli$$
ip link set vsrv$$ netns "$S" name vsrv; ip link set vcli$$ netns "$C" name vcli
ip -n "$S" addr add 10.99.0.1/16 dev vsrv; ip -n "$C" addr add 10.99.0.2/16 dev vcli
for n in "$S" "$C"; do ip -n "$n" link set lo up; done
ip -n "$S" link set vsrv up; ip -n "$C" link set vcli up

# The clients: one VM per MAC for deorch, the same MACs for perfdhcp.
{
  printf 'apiVersion: deorch.dev/v1alpha1\nkind: Network\nmetadata:\n  name: bench\nspec:\n'
  printf '  ipv4:\n    subnet: 10.99.0.0/16\n    gateway: 10.99.0.1\n'
  printf '    range: {start: 10.99.1.0, end: 10.99.254.254}\n  dhcp:\n    leaseTime: 12h\n'
  printf '    dnsServers: [10.99.0.1]\n    domainName: bench.example.org\n'
  for i in $(seq 0 $((CLIENTS - 1))); do
    printf -- '---\napiVersion: deorch.dev/v1alpha1\nkind: VirtualMachine\nmetadata:\n  name: vm%d\nspec:\n  nics:\n    - name: eth0\n      network: bench\n      mac: "02:be:00:%02x:%02x:%02x"\n' \
      "$i" $((i >> 16 & 255)) $((i >> 8 & 255)) $((i & 255))
  done
} > "$W/bench.yaml"
for i in $(seq 0 $((CLIENTS - 1))); do
  printf '02:be:00:%02x:%02x:%02x\n' $((i >> 16 & 255)) $((i >> 8 & 255)) $((i & 255))
done > "$W/macs"

wait_port() { # the server's UDP 67 is bound
  for _ in $(seq 100); do
    ip netns exec "$S" ss -uln 2>/dev/null | grep -q ':67 ' && return 0
    sleep 0.1
  done
  echo "server did not bind port 67" >&2; return 1
}

# run_perf RATE -> "acks_per_s drop_pct"
run_perf() {
  local out
  out=$(ip netns exec "$C" taskset -c 1 perfdhcp -4 -r "$1" -p "$PERIOD" -W 1000000 \
        -M "$W/macs" -l vcli 10.99.0.1 2>&1 || true)
  echo "$out" > "$W/perf.$1.log"
  echo "$out" | awk -v period="$PERIOD" '
    /Statistics for: DISCOVER-OFFER/ { s = "do" }
    /Statistics for: REQUEST-ACK/ { s = "ra" }
    /^sent packets:/ { if (s == "do") disc = $3 }
    /^received packets:/ { if (s == "ra") acks = $3 }
    END { if (disc == 0) { print "0 100"; exit }
          printf "%.0f %.2f\n", acks / period, 100 * (1 - acks / disc) }'
}

# measure NAME RATES...: best ACKs/s with < 2.5 % unanswered
measure() {
  local name=$1 best=0 best_rate=0; shift
  for r in "$@"; do
    read -r acks drop < <(run_perf "$r")
    echo "  $name offered $r/s: $acks ACKs/s, $drop % unanswered" >&2
    if awk -v d="$drop" 'BEGIN { exit !(d < 2.5) }' && [ "$acks" -gt "$best" ]; then
      best=$acks; best_rate=$r
    fi
  done
  echo "$best $best_rate"
}

stop_server() { kill "$SRV_PID" 2>/dev/null || true; wait "$SRV_PID" 2>/dev/null || true; SRV_PID=; }

echo "deorch ($DEORCH_BIN)" >&2
ip netns exec "$S" taskset -c 0 "$DEORCH_BIN" --log warn dhcp serve --interface vsrv \
  --server-id 10.99.0.1 --trust-relay 10.99.0.2 -f "$W/bench.yaml" > "$W/deorch.counters" 2> "$W/deorch.log" &
SRV_PID=$!
wait_port
read -r D_ACKS D_RATE < <(measure deorch $RATES_DEORCH)
stop_server

echo "Kea ($(kea-dhcp4 -v))" >&2
cat > "$W/kea.json" <<JSON
{ "Dhcp4": {
    "interfaces-config": { "interfaces": [ "vsrv" ] },
    "lease-database": { "type": "memfile", "persist": true, "name": "$W/kea.leases", "lfc-interval": 0 },
    "valid-lifetime": 43200,
    "subnet4": [ { "id": 1, "subnet": "10.99.0.0/16",
                   "pools": [ { "pool": "10.99.1.0 - 10.99.254.254" } ],
                   "option-data": [ { "name": "routers", "data": "10.99.0.1" },
                                    { "name": "domain-name-servers", "data": "10.99.0.1" },
                                    { "name": "domain-name", "data": "bench.example.org" } ] } ],
    "loggers": [ { "name": "kea-dhcp4", "severity": "WARN", "output_options": [ { "output": "$W/kea.log" } ] } ]
} }
JSON
export KEA_LOCKFILE_DIR=$W KEA_PIDFILE_DIR=$W
ip netns exec "$S" taskset -c 0 kea-dhcp4 -c "$W/kea.json" > "$W/kea.out" 2>&1 &
SRV_PID=$!
wait_port
read -r K_ACKS K_RATE < <(measure kea $RATES_KEA)
stop_server

echo "dnsmasq ($(dnsmasq --version | awk 'NR == 1'))" >&2
ip netns exec "$S" taskset -c 0 dnsmasq --no-daemon --conf-file=/dev/null --port=0 --user=root \
  --bind-interfaces --interface=vsrv --except-interface=lo \
  --dhcp-range=10.99.1.0,10.99.254.254,255.255.0.0,12h --dhcp-lease-max=100000 \
  --dhcp-leasefile="$W/dnsmasq.leases" --dhcp-authoritative --quiet-dhcp --no-ping \
  --pid-file="$W/dnsmasq.pid" > "$W/dnsmasq.log" 2>&1 &
SRV_PID=$!
wait_port
read -r M_ACKS M_RATE < <(measure dnsmasq $RATES_DNSMASQ)
stop_server

TABLE=$(cat <<MD
| server | completed DORA exchanges/s (< 2.5 % unanswered) | at offered rate |
|---|---|---|
X (stateless, no lease file) | **$D_ACKS** | $D_RATE |
| Kea $(kea-dhcp4 -v) (memfile, persist) | $K_ACKS | $K_RATE |
| dnsmasq $(dnsmasq --version | awk 'NR == 1 { print $3 }') (lease file) | $M_ACKS | $M_RATE |
MD
)
echo "$TABLE"
if [ -n "$DOC" ] && grep -q '<!-- dhcp-bench:start -->' "$DOC"; then
  {
    awk '/<!-- dhcp-bench:start -->/ { print; exit } { print }' "$DOC"
    echo "$TABLE"
    echo
    echo "Run $(date -u +%Y-%m-%d), $CLIENTS clients, ${PERIOD} s per offered rate."
    awk 'p { print } /<!-- dhcp-bench:end -->/ { p = 1; print }' "$DOC"
  } > "$W/doc.md"
  cp "$W/doc.md" "$DOC"
  echo "updated $DOC" >&2
fi

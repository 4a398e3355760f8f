#!/usr/bin/env bash
# DHCP exchanges per second at each server's ceiling: deorch, Kea and
# dnsmasq in the same run, on the relay path (two clients) and the direct
# path VMs take, with the same client MACs. Beside each figure: the
# server's CPU time per exchange and the client's CPU use (a client at
# 100 % is the limit, not the server).
#
# Topology (see the dhcp-bench recipe): a server namespace with a bridge
# br0 (10.99.0.1/16) and one port, a veth whose peer is in the client
# namespace (10.99.0.2/16). Every server binds br0, as the node's server
# binds a Network's bridge. Server pinned to core 0, client to core 1.
# deorch keeps its leases in a file as the node does (--leases), Kea in its
# memfile (persist), dnsmasq in its lease file.
#
#  relay  perfdhcp (Kea's) acting as a relay agent: giaddr 10.99.0.2, the
#         server answers by UDP to 10.99.0.2:67 (deorch is told to trust
#         that relay). perfdhcp always sets giaddr in DHCPv4, so it cannot
#         drive the other path.
#  lean   the same relay path with `deorch dhcp perf --relay 10.99.0.2`
#         as the relay agent: perfdhcp needs a whole core near 15,000/s, so
#         on the perfdhcp path it, not the server, sets the ceiling.
#  direct `deorch dhcp perf`: clients attached to the bridge as VMs are,
#         no giaddr, DISCOVER/REQUEST broadcast in frames from the client's
#         MAC, broadcast flag clear; the server answers the MAC it has never
#         seen an address for (unicast frame to the chaddr), the path a VM's
#         first lease takes. The report counts how replies came (unicast to
#         the chaddr or broadcast).
#
# A run offers RATE DISCOVERs/s for SECONDS, then waits 1 s for replies;
# its figure is ACKs received / SECONDS, and it passes when fewer than
# 2.5 % of the exchanges begun got no ACK. The ceiling search: start at
# START/s; double while runs pass (halve while they fail), then bisect
# between the last passing and the first failing rate BISECT times. The
# ceiling is the best figure of a passing run. Each server starts afresh
# (empty lease file) for each path.
#
# Usage (root): benches/dhcp.sh [SECONDS_PER_RUN]
# Env: DEORCH_BIN (default: cargo build --release), CLIENTS (10000),
#      START (1000), BISECT (3), MAX_RATE (256000), SERVERS ("deorch kea dnsmasq"),
#      PATHS ("relay lean direct"),
#      DOC (docs/PERFORMANCE.md; its DHCP block is rewritten; DOC= to skip).
set -euo pipefail
cd "$(dirname "$0")/.."
PERIOD=${1:-5}
CLIENTS=${CLIENTS:-10000}
START=${START:-1000}
BISECT=${BISECT:-3}
MAX_RATE=${MAX_RATE:-256000}
SERVERS=${SERVERS:-"deorch kea dnsmasq"}
PATHS=${PATHS:-"relay lean direct"}
DOC=${DOC-docs/PERFORMANCE.md}

for t in ip perfdhcp dnsmasq kea-dhcp4 taskset; do
  command -v "$t" >/dev/null || PATH="$PATH:/usr/sbin:/sbin"
  command -v "$t" >/dev/null || { echo "missing $t (apt: iproute2 kea-admin dnsmasq-base kea-dhcp4-server util-linux)" >&2; exit 1; }
done
if [ -z "${DEORCH_BIN:-}" ]; then
  cargo build --release --bin deorch >&2
  DEORCH_BIN="${CARGO_TARGET_DIR:-target}/release/deorch"
fi
DEORCH_BIN=$(realpath "$DEORCH_BIN")

W=$(mktemp -d /tmp/deorch-bench-dhcp.XXXXXX)
S=dbs$$; C=dbc$$
SRV_PID=
cleanup() {
  if [ -n "$SRV_PID" ]; then kill "$SRV_PID" 2>/dev/null || true; wait "$SRV_PID" 2>/dev/null || true; fi
  ip netns del "$S" 2>/dev/null || true
  ip netns del "$C" 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT
ip netns add "$S"; ip netns add "$C"
ip link add vsrv$$ type veth peer name vcli$$
ip link set vsrv$$ netns "$S" name vsrv; ip link set vcli$$ netns "$C" name vcli
ip -n "$S" link add br0 type bridge
ip -n "$S" link set vsrv master br0
ip -n "$S" addr add 10.99.0.1/16 dev br0; ip -n "$C" addr add 10.99.0.2/16 dev vcli
for n in "$S" "$C"; do ip -n "$n" link set lo up; done
ip -n "$S" link set vsrv up; ip -n "$S" link set br0 up; ip -n "$C" link set vcli up

# The clients: one VM per MAC for deorch, the same MACs for the clients.
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

cat > "$W/kea.json" <<JSON
{ "Dhcp4": {
    "interfaces-config": { "interfaces": [ "br0" ] },
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

wait_port() { # the server's UDP 67 is bound
  for _ in $(seq 100); do
    ip netns exec "$S" ss -uln 2>/dev/null | grep -q ':67 ' && return 0
    sleep 0.1
  done
  echo "server did not bind port 67" >&2; return 1
}

start_server() {
  rm -f "$W"/kea.leases* "$W/dnsmasq.leases" "$W/deorch.leases"
  case $1 in
    deorch)
      ip netns exec "$S" taskset -c 0 "$DEORCH_BIN" --log warn dhcp serve --interface br0 \
        --server-id 10.99.0.1 --trust-relay 10.99.0.2 -f "$W/bench.yaml" --leases "$W/deorch.leases" \
        > "$W/deorch.counters" 2> "$W/deorch.log" & ;;
    kea)
      ip netns exec "$S" taskset -c 0 kea-dhcp4 -c "$W/kea.json" > "$W/kea.out" 2>&1 & ;;
    dnsmasq)
      ip netns exec "$S" taskset -c 0 dnsmasq --no-daemon --conf-file=/dev/null --port=0 --user=root \
        --bind-interfaces --interface=br0 --except-interface=lo \
        --dhcp-range=10.99.1.0,10.99.254.254,255.255.0.0,12h --dhcp-lease-max=100000 \
        --dhcp-leasefile="$W/dnsmasq.leases" --dhcp-authoritative --quiet-dhcp --no-ping \
        --pid-file="$W/dnsmasq.pid" > "$W/dnsmasq.log" 2>&1 & ;;
  esac
  SRV_PID=$!
  wait_port
}
stop_server() { kill "$SRV_PID" 2>/dev/null || true; wait "$SRV_PID" 2>/dev/null || true; SRV_PID=; }

# CPU time of the server so far, in clock ticks (utime + stime, every thread).
server_ticks() { awk '{ print $14 + $15 }' "/proc/$SRV_PID/stat"; }

# run PATH RATE -> "acks_per_s unanswered_pct unicast broadcast server_us client_pct":
# server_us is the server's CPU time per completed exchange (µs), client_pct
# the client's CPU use over the run (period + wait; 100 = one core).
run() {
  local log=$W/run.$1.$2.log t0 t1 c0 c1 cpu res TIMEFORMAT='%U %S'
  c0=$(server_ticks); t0=$(date +%s.%N)
  if [ "$1" = relay ]; then
    cpu=$( { time ip netns exec "$C" taskset -c 1 perfdhcp -4 -r "$2" -p "$PERIOD" -W 1000000 \
          -M "$W/macs" -l vcli 10.99.0.1 > "$log" 2>&1 || true; } 2>&1 )
    res=$(awk -v period="$PERIOD" '
      /Statistics for: DISCOVER-OFFER/ { s = "do" }
      /Statistics for: REQUEST-ACK/ { s = "ra" }
      /^sent packets:/ { if (s == "do") disc = $3 }
      /^received packets:/ { if (s == "ra") acks = $3 }
      END { if (disc == 0) { print "0 100 - -"; exit }
            printf "%.0f %.2f - -\n", acks / period, 100 * (1 - acks / disc) }' "$log")
  else
    local as=()
    [ "$1" = lean ] && as=(--relay 10.99.0.2 --server 10.99.0.1)
    cpu=$( { time ip netns exec "$C" taskset -c 1 "$DEORCH_BIN" dhcp perf --interface vcli \
          --rate "$2" --seconds "$PERIOD" --wait-ms 1000 --macs "$W/macs" "${as[@]}" > "$log" 2>&1 || true; } 2>&1 )
    res=$(tail -n 1 "$log" | sed -n 's/.*"unicast":\([0-9]*\),"broadcast":\([0-9]*\).*"acks_per_s":\([0-9.]*\),"unanswered_pct":\([0-9.]*\).*/\3 \4 \1 \2/p' |
      awk 'NF == 4 { printf "%.0f %.2f %s %s\n", $1, $2, $3, $4; ok = 1 } END { if (!ok) print "0 100 - -" }')
  fi
  [ "$1" = lean ] && res=$(echo "$res" | awk '{ print $1, $2, "-", "-" }')
  c1=$(server_ticks); t1=$(date +%s.%N)
  echo "$res" | awk -v c="$((c1 - c0))" -v cpu="$cpu" -v t0="$t0" -v t1="$t1" -v period="$PERIOD" '
    { split(cpu, u, " "); n = $1 * period; wall = t1 - t0
      printf "%s %s %s %s %s %.0f\n", $1, $2, $3, $4, (n > 0 ? sprintf("%.1f", c * 10000 / n) : "-"), 100 * (u[1] + u[2]) / wall }'
}

# search NAME PATH -> "ceiling offered_rate unicast broadcast"; every run is
# appended to $W/steps.
search() {
  local name=$1 path=$2 r=$START pass=0 fail=0 best=0 best_rate=0 best_u=- best_b=- i
  local best_s=- best_c=- acks drop u b sus cpct ok
  step() { # RATE -> sets ok
    read -r acks drop u b sus cpct < <(run "$path" "$1")
    echo "  $name $path offered $1/s: $acks ACKs/s, $drop % unanswered (replies unicast $u, broadcast $b); server $sus µs CPU/exchange, client $cpct % CPU" >&2
    echo "$name $path $1 $acks $drop $u $b $sus $cpct" >> "$W/steps"
    if awk -v d="$drop" 'BEGIN { exit !(d < 2.5) }'; then
      ok=1
      if [ "$acks" -gt "$best" ]; then best=$acks; best_rate=$1; best_u=$u; best_b=$b; best_s=$sus; best_c=$cpct; fi
    else
      ok=0
    fi
  }
  step "$r"
  if [ "$ok" = 1 ]; then
    pass=$r
    while [ "$ok" = 1 ] && [ $((r * 2)) -le "$MAX_RATE" ]; do
      r=$((r * 2)); step "$r"
      if [ "$ok" = 1 ]; then pass=$r; else fail=$r; fi
    done
  else
    fail=$r
    while [ "$ok" = 0 ] && [ $((r / 2)) -ge 10 ]; do
      r=$((r / 2)); step "$r"
      if [ "$ok" = 1 ]; then pass=$r; else fail=$r; fi
    done
  fi
  if [ "$pass" -gt 0 ] && [ "$fail" -gt 0 ]; then
    for i in $(seq "$BISECT"); do
      r=$(( (pass + fail) / 2 ))
      [ "$r" -le "$pass" ] && break
      step "$r"
      if [ "$ok" = 1 ]; then pass=$r; else fail=$r; fi
    done
  fi
  echo "$best $best_rate $best_u $best_b $best_s $best_c"
}

DV=$("$DEORCH_BIN" --version | awk '{ print $2 }')
KV=$(kea-dhcp4 -v)
MV=$(dnsmasq --version | awk 'NR == 1 { print $3 }')
declare -A FIG RATE UNI BRO SUS CPCT
for s in $SERVERS; do
  for p in $PATHS; do
    echo "$s, $p path" >&2
    start_server "$s"
    read -r FIG[$s.$p] RATE[$s.$p] UNI[$s.$p] BRO[$s.$p] SUS[$s.$p] CPCT[$s.$p] < <(search "$s" "$p")
    stop_server
  done
done

ratio() { # A B -> A/B with 2 decimals, or "-"
  awk -v a="${1:-0}" -v b="${2:-0}" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "-" }'
}
cell() { # SERVER PATH
  local k=$1.$2
  [ -n "${FIG[$k]:-}" ] || { echo "not run"; return; }
  echo "${FIG[$k]} (at ${RATE[$k]}/s; server ${SUS[$k]} µs/exchange, client ${CPCT[$k]} % CPU)"
}
replies() { # SERVER
  local k=$1.direct
  [ -n "${UNI[$k]:-}" ] && [ "${UNI[$k]}" != - ] || { echo "-"; return; }
  echo "${UNI[$k]} / ${BRO[$k]}"
}
TABLE=$(cat <<MD
| server | relay path, perfdhcp as the relay: exchanges/s at the ceiling | relay path, \`deorch dhcp perf --relay\` as the relay | direct path (clients on the bridge, as VMs) | direct path replies: unicast to the MAC / broadcast |
|---|---|---|---|---|
| deorch $DV (lease file, written at most once a second) | **$(cell deorch relay)** | **$(cell deorch lean)** | **$(cell deorch direct)** | $(replies deorch) |
| Kea $KV (memfile, persist) | $(cell kea relay) | $(cell kea lean) | $(cell kea direct) | $(replies kea) |
| dnsmasq $MV (lease file) | $(cell dnsmasq relay) | $(cell dnsmasq lean) | $(cell dnsmasq direct) | $(replies dnsmasq) |
| deorch / Kea | $(ratio "${FIG[deorch.relay]:-}" "${FIG[kea.relay]:-}") | $(ratio "${FIG[deorch.lean]:-}" "${FIG[kea.lean]:-}") | $(ratio "${FIG[deorch.direct]:-}" "${FIG[kea.direct]:-}") | |
MD
)
STEPS=$(awk '
  { k = $1 " " $2; if (!(k in seen)) { seen[k] = 1; order[++n] = k }
    line[k] = line[k] (line[k] == "" ? "" : ", ") $3 " → " $4 " (" $5 " %; " $8 " µs; " $9 " %)" }
  END { print "| server, path | offered/s → ACKs/s (unanswered; server CPU per exchange; client CPU), in search order |"; print "|---|---|"
        for (i = 1; i <= n; i++) print "| " order[i] " | " line[order[i]] " |" }' "$W/steps")
echo "$TABLE"
echo
echo "$STEPS"
if [ -n "$DOC" ] && grep -q '<!-- dhcp-bench:start -->' "$DOC"; then
  {
    awk '/<!-- dhcp-bench:start -->/ { print; exit } { print }' "$DOC"
    echo "$TABLE"
    echo
    echo "Run $(date -u +%Y-%m-%d), $CLIENTS clients, ${PERIOD} s per offered rate, search from $START/s. Every run:"
    echo
    echo "$STEPS"
    awk 'p { print } /<!-- dhcp-bench:end -->/ { p = 1; print }' "$DOC"
  } > "$W/doc.md"
  cp "$W/doc.md" "$DOC"
  echo "updated $DOC" >&2
fi

#!/usr/bin/env bash
# How long a roaming client's tunnel stops when its address changes (issue 22): a stream of
# pings every 20 ms through the tunnel while the client's address is replaced (the new one
# added, the old one deleted), N times; prints the pings lost each time and the median gap
# (lost x 20 ms, the time between the last reply before the move and the first after it, to
# within 20 ms). As root on Debian:
#
#   scripts/bench_roam.sh                  # 10 moves, the release binary (built if missing)
#   ROAM_MOVES=20 DTUN=target/debug/dtun scripts/bench_roam.sh
#
#   ns dtroamS<pid> 172.31.197.1 ── veth ── ns dtroamC<pid> 172.31.197.2, then .3, .4, ...
#
# Installs iproute2 and iputils-ping when missing. Everything runs in two network namespaces
# of its own, removed on exit; the root namespace is left alone.
set -uo pipefail
cd "$(dirname "$0")/.."

MOVES=${ROAM_MOVES:-10}
DTUN=${DTUN:-target/release/dtun}
S=dtroamS$$
C=dtroamC$$
KEY=bench-roam-key-0123456789

need=()
command -v ip >/dev/null || need+=(iproute2)
command -v ping >/dev/null || need+=(iputils-ping)
if ((${#need[@]})); then
    apt-get install -y -qq "${need[@]}" >/dev/null
fi
if [[ ! -x $DTUN ]]; then
    cargo build --release --quiet || exit 1
fi

pids=()
log=$(mktemp -d)
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
    wait 2>/dev/null
    ip netns del "$S" 2>/dev/null
    ip netns del "$C" 2>/dev/null
    rm -rf "$log"
}
trap cleanup EXIT

ip netns add "$S"
ip netns add "$C"
ip link add veth0 netns "$S" type veth peer name veth0 netns "$C"
ip -n "$S" addr add 172.31.197.1/24 dev veth0
ip -n "$S" link set veth0 up
ip -n "$S" link set lo up
# The new address takes over when the old one goes (else the kernel deletes it with it).
ip netns exec "$C" sysctl -qw net.ipv4.conf.all.promote_secondaries=1
ip -n "$C" addr add 172.31.197.2/24 dev veth0
ip -n "$C" link set veth0 up
ip -n "$C" link set lo up

ip netns exec "$S" "$DTUN" -key "$KEY" -instance bench-roam >"$log/server" 2>&1 &
pids+=($!)
ip netns exec "$C" "$DTUN" -host 172.31.197.1 -key "$KEY" -id roamer -instance bench-roam \
    >"$log/client" 2>&1 &
pids+=($!)

peer=
for _ in $(seq 100); do
    peer=$(ip -n "$C" -4 -o addr show | sed -n 's/.* peer \([0-9.]*\)\/.*/\1/p' | head -1)
    [[ -n $peer ]] && ip netns exec "$C" ping -c1 -W1 "$peer" >/dev/null 2>&1 && break
    sleep 0.1
done
if [[ -z $peer ]]; then
    echo "the tunnel did not come up:"
    cat "$log/server" "$log/client"
    exit 1
fi
# Roaming starts with the first rekey, right after setup.
for _ in $(seq 50); do
    grep -q "roaming: on" <(ip netns exec "$S" "$DTUN" status bench-roam 2>/dev/null) && break
    sleep 0.1
done

lost=()
old=2
for k in $(seq "$MOVES"); do
    new=$((old + 1))
    ip netns exec "$C" ping -n -q -i 0.02 -c 150 -W 1 "$peer" >"$log/ping" 2>&1 &
    p=$!
    sleep 1
    ip -n "$C" addr add "172.31.197.$new/24" dev veth0
    ip -n "$C" addr del "172.31.197.$old/24" dev veth0
    wait "$p"
    got=$(sed -n 's/.* \([0-9]*\) received.*/\1/p' "$log/ping")
    lost+=($((150 - ${got:-0})))
    echo "move $k (.$old -> .$new): ${lost[-1]} of 150 pings lost"
    old=$new
done
moved=$(grep -c "moved from" "$log/server")
started=$(grep -c "connected from" "$log/server")
median=$(printf '%s\n' "${lost[@]}" | sort -n | sed -n "$(((MOVES + 1) / 2))p")
echo "median: $median pings lost, a gap of about $((median * 20)) ms (20 ms between pings);" \
    "the server logged $moved moves and $started session start(s)"

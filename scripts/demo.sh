#!/usr/bin/env bash
# Shows dtun working on one machine, as root: two network namespaces joined by a veth pair, a
# server in one, a client in the other, ping both ways through the tunnel (IPv4, and IPv6
# inside), `dtun status` on both sides, then the tunnel's addresses and routes on both sides.
# Everything it makes is removed on exit.
#
#   ┌─ ns server ─────────────┐          ┌─ ns client ─────────────┐
#   │ eth0 172.31.250.1/24    ├── veth ──┤ eth0 172.31.250.2/24    │
#   │ dtun server, TUN dtun0  │          │ dtun client, TUN dtun0  │
#   └─────────────────────────┘          └─────────────────────────┘
#       tunnel: server 10.86.0.1 <──── DTLS 1.2 PSK, UDP 443 ────> client 10.86.0.2
#
# Usage: bash scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $(id -u) -ne 0 ]]; then
    echo "demo.sh: run as root (it makes network namespaces and TUN devices)" >&2
    exit 1
fi
# libclang-dev: building dtun runs bindgen for the nftables crate (nothing of it at run time).
missing=()
for p in iproute2 iputils-ping libclang-dev; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi

cargo build --release --quiet
bin="$(realpath "${CARGO_TARGET_DIR:-target}")/release/dtun"

server_ns="dtdemoS$$"
client_ns="dtdemoC$$"
tmp=$(mktemp -d)
pids=()

cleanup() {
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    done
    ip netns del "$server_ns" 2>/dev/null || true
    ip netns del "$client_ns" 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT

# wait_until SECONDS DESCRIPTION COMMAND...: polls COMMAND every 0.1 s.
wait_until() {
    local deadline=$((SECONDS + $1)) what=$2
    shift 2
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            echo "demo.sh: timed out waiting for $what" >&2
            echo "--- server log"; cat "$tmp/server.log"
            echo "--- client log"; cat "$tmp/client.log"
            exit 1
        fi
        sleep 0.1
    done
}

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "namespaces $server_ns and $client_ns joined by a veth pair"
ip netns add "$server_ns"
ip netns add "$client_ns"
ip -n "$server_ns" link set lo up
ip -n "$client_ns" link set lo up
ip -n "$server_ns" link add eth0 type veth peer name eth0 netns "$client_ns"
ip -n "$server_ns" addr add 172.31.250.1/24 dev eth0
ip -n "$client_ns" addr add 172.31.250.2/24 dev eth0
ip -n "$server_ns" link set eth0 up
ip -n "$client_ns" link set eth0 up

step "server: dtun -key ... -v"
ip netns exec "$server_ns" "$bin" -key demo-key -v >"$tmp/server.log" 2>&1 &
pids+=($!)
wait_until 10 "the server to listen on UDP 443" \
    sh -c "ip netns exec $server_ns ss -Hlun | grep -q ':443 '"

cat >"$tmp/up.sh" <<UP
#!/bin/sh
# The client runs this once the tunnel has addresses: it gets TUN, PEER_IP, LOCAL_IP and PATH
# only. (The environment it was started with, read before the shell adds PWD and friends.)
tr '\\0' '\\n' < /proc/\$\$/environ | sort > "$tmp/up.env"
UP
chmod +x "$tmp/up.sh"

step "client: DTUN_KEY=... dtun -host 172.31.250.1 -peernet 10.200.0.0/24 -up up.sh"
ip netns exec "$client_ns" env DTUN_KEY=demo-key \
    "$bin" -host 172.31.250.1 -peernet 10.200.0.0/24 -up "$tmp/up.sh" >"$tmp/client.log" 2>&1 &
pids+=($!)
wait_until 20 "the client to log 'tunnel up'" grep -q "tunnel up" "$tmp/client.log"
wait_until 5 "the up script" test -s "$tmp/up.env"

tun=$(ip -n "$client_ns" -o link show type tun | awk -F': ' 'NR == 1 { print $2 }')
read -r local_ip peer_ip < <(ip -n "$client_ns" -o -4 addr show dev "$tun" |
    awk '{ sub("/.*", "", $6); print $4, $6 }')

step "the up script's environment"
cat "$tmp/up.env"

step "client -> server through the tunnel: ping $peer_ip"
ip netns exec "$client_ns" ping -c 3 -i 0.2 -W 1 "$peer_ip"
step "server -> client through the tunnel: ping $local_ip"
ip netns exec "$server_ns" ping -c 3 -i 0.2 -W 1 "$local_ip"

# IPv6 inside: the server gave the client a pair from -pool6 (LOCAL_IP6/PEER_IP6 in the up
# script's environment above).
peer_ip6=$(sed -n 's/^PEER_IP6=//p' "$tmp/up.env")
if [[ -n $peer_ip6 ]]; then
    step "IPv6 inside, client -> server: ping $peer_ip6"
    ip netns exec "$client_ns" ping -6 -c 3 -i 0.2 -W 1 "$peer_ip6"
else
    echo "demo.sh: the tunnel has no IPv6 pair (PEER_IP6 missing from the up script's environment)" >&2
    exit 1
fi

step "dtun status (server), as wg show"
ip netns exec "$server_ns" "$bin" status
step "dtun status (client)"
ip netns exec "$client_ns" "$bin" status

step "server side: ip addr / ip route (main table, then table 25717: the clients' LANs)"
ip -n "$server_ns" addr show type tun
ip -n "$server_ns" route
ip -n "$server_ns" route show table all | grep ' table 25717 ' || true
step "client side: ip addr / ip route"
ip -n "$client_ns" addr show type tun
ip -n "$client_ns" route

step "logs"
echo "--- server"; cat "$tmp/server.log"
echo "--- client"; cat "$tmp/client.log"
step "cleaning up"

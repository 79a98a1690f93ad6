#!/usr/bin/env bash
# What one wake-up from idle costs on this machine, by how a process waits for a datagram
# (examples/wake_echo.rs): two UDP echo servers run side by side in one namespace and are
# timed during the same seconds from another, pair after pair, both orders. As root:
#
#   scripts/bench/wake.sh            # block vs poll, poll vs tokio-ct, tokio-ct vs tokio
#   WAKE_PAIRS="poll:tokio" WAKE_COUNT=500 scripts/bench/wake.sh
#
# Every echo wakes the server once from idle (50 ms apart), so a median's difference between
# two modes is what that way of waiting adds to each wake-up. Not part of CI.
set -uo pipefail
cd "$(dirname "$0")/../.."
[[ $EUID -eq 0 ]] || { echo "wake.sh: run as root (it makes network namespaces)" >&2; exit 1; }
pairs=${WAKE_PAIRS:-"block:poll poll:tokio-ct tokio-ct:tokio"}
count=${WAKE_COUNT:-300}

cargo build --release --example wake_echo -q || { echo "wake.sh: build failed" >&2; exit 1; }
bin=${CARGO_TARGET_DIR:-target}/release/examples/wake_echo

ns_a=dtwakeA$$ ns_b=dtwakeB$$
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
    wait 2>/dev/null
    ip netns del "$ns_a" 2>/dev/null
    ip netns del "$ns_b" 2>/dev/null
}
trap cleanup EXIT
ip netns add "$ns_a" && ip netns add "$ns_b" || exit 1
ip -n "$ns_a" link add vw0 type veth peer name vw0 netns "$ns_b" || exit 1
ip -n "$ns_a" addr add 172.31.251.1/24 dev vw0
ip -n "$ns_b" addr add 172.31.251.2/24 dev vw0
ip -n "$ns_a" link set vw0 up
ip -n "$ns_b" link set vw0 up

port=7000
# one X Y: X and Y echo servers, their clients 25 ms out of step; prints both medians.
one() {
    local x=$1 y=$2 px=$((port += 1)) py=$((port += 1)) sx sy cx cy out
    ip netns exec "$ns_a" "$bin" "$x" "172.31.251.1:$px" & sx=$!
    ip netns exec "$ns_a" "$bin" "$y" "172.31.251.1:$py" & sy=$!
    pids=("$sx" "$sy")
    sleep 0.3
    out=$(mktemp -d)
    ip netns exec "$ns_b" "$bin" client "172.31.251.1:$px" "$count" >"$out/x" & cx=$!
    sleep 0.025
    ip netns exec "$ns_b" "$bin" client "172.31.251.1:$py" "$count" >"$out/y" & cy=$!
    wait "$cx" "$cy"
    printf '%-9s %s   |   %-9s %s\n' "$x" "$(cat "$out/x")" "$y" "$(cat "$out/y")"
    rm -rf "$out"
    kill "$sx" "$sy" 2>/dev/null
    wait "$sx" "$sy" 2>/dev/null
    pids=()
}
for pair in $pairs; do
    x=${pair%%:*} y=${pair#*:}
    one "$x" "$y"
    one "$y" "$x"
done

#!/bin/bash
# Probes a dtun client binary against tests/tools/hostile_dtls_server.py in two network
# namespaces of its own (made and removed here): samples the client's RSS and CPU while the
# hostile server runs MODE, then says whether the client is still alive.
# Usage: client_probe.sh BINARY MODE [SECONDS]     (root; never touches the root namespace)
set -u
BIN=$1; MODE=$2; SECS=${3:-15}
TAG=rv$$; C=${TAG}c; S=${TAG}s
HERE=$(cd "$(dirname "$0")" && pwd)
cleanup() { [ -n "${CPID:-}" ] && kill "$CPID" 2>/dev/null; ip netns del $C 2>/dev/null; ip netns del $S 2>/dev/null; }
trap cleanup EXIT
ip netns add $C; ip netns add $S
ip link add ${TAG}a netns $C type veth peer name ${TAG}b netns $S
ip -n $C addr add 10.213.0.1/24 dev ${TAG}a; ip -n $S addr add 10.213.0.2/24 dev ${TAG}b
ip -n $C link set ${TAG}a up; ip -n $S link set ${TAG}b up; ip -n $C link set lo up; ip -n $S link set lo up
ip netns exec $S python3 "$HERE/hostile_dtls_server.py" "$MODE" 4433 "$SECS" > /tmp/$TAG.srv 2>&1 &
SPID=$!
sleep 0.3
ip netns exec $C env RUST_LOG=${RUST_LOG:-info} "$BIN" -host 10.213.0.2:4433 -id probe -key k > /tmp/$TAG.cli 2>&1 &
CPID=$!
HZ=$(getconf CLK_TCK); max=0; t0=$(awk '{print $14+$15}' /proc/$CPID/stat)
for i in $(seq 1 $((SECS + 3))); do
  sleep 1
  [ -d /proc/$CPID ] || { echo "client exited"; break; }
  rss=$(awk '/VmRSS/{print $2}' /proc/$CPID/status); [ "$rss" -gt "$max" ] && max=$rss
  t=$(awk '{print $14+$15}' /proc/$CPID/stat)
  echo "t=${i}s rss=${rss}kB cpu=$(( (t - t0) * 100 / HZ ))%"; t0=$t
done
wait $SPID; cat /tmp/$TAG.srv
if [ -d /proc/$CPID ]; then echo "client alive, peak rss ${max}kB"; else wait $CPID; echo "client exit code $?"; fi
tail -3 /tmp/$TAG.cli

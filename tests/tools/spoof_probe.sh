#!/bin/bash
# A real dtun server and client in two network namespaces of their own, and an off-path
# spoofer (tests/tools/spoof_flood.py, source = the server's address and port) flooding the
# client's port from before the client starts (the client namespace's ephemeral range is one
# port: the spoofer guessed right). Reports how long the tunnel took to come up, the client's
# CPU and RSS during the flood, and whether ping crosses the tunnel during the flood.
# Usage: spoof_probe.sh BINARY KINDS [SECONDS]     (root; never touches the root namespace)
set -u
BIN=$1; KINDS=$2; SECS=${3:-20}
TAG=rp$$; C=${TAG}c; S=${TAG}s; PORT=40404
HERE=$(cd "$(dirname "$0")" && pwd)
cleanup() { for p in ${CPID:-} ${SRV:-} ${FPID:-}; do kill $p 2>/dev/null; done; sleep 0.3; ip netns del $C 2>/dev/null; ip netns del $S 2>/dev/null; }
trap cleanup EXIT
ip netns add $C; ip netns add $S
ip link add ${TAG}a netns $C type veth peer name ${TAG}b netns $S
ip -n $C addr add 10.213.0.1/24 dev ${TAG}a; ip -n $S addr add 10.213.0.2/24 dev ${TAG}b
ip -n $C link set ${TAG}a up; ip -n $S link set ${TAG}b up; ip -n $C link set lo up; ip -n $S link set lo up
ip netns exec $C sysctl -qw net.ipv4.ip_local_port_range="$PORT $PORT"
ip netns exec $S "$BIN" -key k -port 4433 > /tmp/$TAG.srv 2>&1 &
SRV=$!
for i in $(seq 50); do ip netns exec $S ss -uln | grep -q ':4433 ' && break; sleep 0.1; done
ip netns exec $S python3 "$HERE/spoof_flood.py" "$KINDS" 10.213.0.2 4433 10.213.0.1 $PORT "$SECS" > /tmp/$TAG.spoof 2>&1 &
FPID=$!
sleep 1
start=$(date +%s.%N)
ip netns exec $C "$BIN" -host 10.213.0.2:4433 -id probe -key k -keepalive 2s > /tmp/$TAG.cli 2>&1 &
CPID=$!
HZ=$(getconf CLK_TCK); t0=$(awk '{print $14+$15}' /proc/$CPID/stat); up=""
for i in $(seq 1 $((SECS - 2))); do
  sleep 1
  [ -d /proc/$CPID ] || { echo "client exited"; break; }
  if [ -z "$up" ] && grep -q "tunnel up" /tmp/$TAG.cli; then up=$(echo "$(date +%s.%N) - $start" | bc); echo "tunnel up after ~${up}s"; fi
  t=$(awk '{print $14+$15}' /proc/$CPID/stat)
  echo "t=${i}s rss=$(awk '/VmRSS/{print $2}' /proc/$CPID/status)kB cpu=$(( (t - t0) * 100 / HZ ))%"; t0=$t
done
PEER=$(grep -o "tunnel up: dev [^ ]* local [0-9.]* peer [0-9.]*" /tmp/$TAG.cli | head -1 | awk '{print $NF}')
[ -n "$up" ] && ip netns exec $C sysctl -qw net.ipv4.ip_local_port_range="32768 60999"
[ -n "$up" ] && ip netns exec $C ping -c 5 -i 0.2 -W 1 "$PEER" | tail -2
[ -z "$up" ] && echo "TUNNEL NOT UP during the flood"
wait $FPID; cat /tmp/$TAG.spoof
[ -d /proc/$CPID ] && echo "client alive" || { wait $CPID; echo "client exit code $?"; }
grep -v "^$" /tmp/$TAG.cli | cut -c1-220 | tail -6

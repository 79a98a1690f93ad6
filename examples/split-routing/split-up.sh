#!/bin/sh
# dtun -up script: the original dtun README's split routing, for an original dtun client or a
# dtun client with -compat (a dtun client can say `-route all -exclude @FILE` instead):
#   - the server's address(es) and every WHITELIST prefix via the old gateway,
#   - 0.0.0.0/1 and 128.0.0.0/1 via PEER_IP (they beat the default route, which stays as it
#     is, and vanish with the TUN).
# dtun runs it with only TUN, PEER_IP and LOCAL_IP set; the rest comes from split.conf next
# to this script (see split.conf.example).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
. "$here/split.conf"
: "${SERVER:?set SERVER in $here/split.conf}"
STATE=${STATE:-/run/dtun-split}.$TUN
WHITELIST=${WHITELIST:-}

# The server may be a name: pin every IPv4 address it has (resolved the way dtun does).
servers=$(getent ahostsv4 "$SERVER" | awk '{ print $1 }' | sort -u)
if [ -z "$servers" ]; then
	echo "split-up: cannot resolve $SERVER" >&2
	exit 1
fi
first=$(echo "$servers" | head -n 1)

# The old path: how the server is reached now, before 0/1 and 128/1 exist.
old=$(ip -4 route get "$first" | head -n 1)
gw=$(echo "$old" | sed -n 's/.* via \([^ ]*\).*/\1/p')
dev=$(echo "$old" | sed -n 's/.* dev \([^ ]*\).*/\1/p')
if [ -z "$dev" ]; then
	echo "split-up: no route to $first: $old" >&2
	exit 1
fi
via="dev $dev"
[ -n "$gw" ] && via="via $gw dev $dev"

# Everything added is noted first, so split-down.sh removes it even after a failure here.
: > "$STATE"
batch=$(mktemp)
trap 'rm -f "$batch"' EXIT
for ip in $servers; do
	echo "$ip/32" >> "$STATE"
	echo "route replace $ip/32 $via" >> "$batch"
done
if [ -n "$WHITELIST" ]; then
	sed -e 's/#.*//' -e 's/[[:space:]]//g' -e '/^$/d' "$WHITELIST" | while read -r net; do
		echo "$net" >> "$STATE"
		echo "route replace $net $via" >> "$batch"
	done
fi
# One `ip` process for the whole list: thousands of prefixes take well under a second.
ip -batch "$batch"
ip route replace 0.0.0.0/1 via "$PEER_IP" dev "$TUN"
ip route replace 128.0.0.0/1 via "$PEER_IP" dev "$TUN"
echo "split-up: everything via $PEER_IP on $TUN but $(wc -l < "$STATE") prefixes via ${gw:-$dev}"

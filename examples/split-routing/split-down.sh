#!/bin/sh
# dtun -down script: undoes split-up.sh (the routes it noted in its state file).
set -u
here=$(cd "$(dirname "$0")" && pwd)
. "$here/split.conf"
STATE=${STATE:-/run/dtun-split}.$TUN
ip route del 0.0.0.0/1 dev "$TUN" 2>/dev/null
ip route del 128.0.0.0/1 dev "$TUN" 2>/dev/null
if [ -f "$STATE" ]; then
	batch=$(mktemp)
	sed 's/^/route del /' "$STATE" > "$batch"
	ip -force -batch "$batch" 2>/dev/null
	rm -f "$batch" "$STATE"
fi
exit 0

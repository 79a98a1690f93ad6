#!/usr/bin/env bash
# Throughput benchmark (issue 3): dtun against OpenVPN, boringtun and wireguard-go, one run,
# one machine, the same veth. As root on Debian:
#
#   scripts/bench.sh                          # every tunnel, iperf3 TCP 3 x 10 s + reverse + ping
#   BENCH_ONLY=dtun scripts/bench.sh          # a subset (comma list; "dtun" = every dtun row)
#   BENCH_TIME=5 scripts/bench.sh             # seconds per iperf3 run (default 10)
#   DTUN_BASELINE=/path/to/old/dtun scripts/bench.sh   # adds the earlier binary's rows
#
# Rows (BENCH_ONLY names): dtun, dtun-ccm8, dtun-ipv6 (IPv6 inside, default cipher), openvpn, boringtun, boringtun-1t, wireguard-go.
# With DTUN_BASELINE, each selected dtun row is measured a second time right after it with that
# binary ("baseline ..." rows, same veth, same settings), and the table says this tree's
# forward median over the baseline's for each (the new/old ratio).
#
#   ┌─ ns dtbenchA<pid> ─────────┐          ┌─ ns dtbenchB<pid> ─────────┐
#   │ vb0 172.31.254.1/24        ├── veth ──┤ vb0 172.31.254.2/24        │
#   │ tunnel server, iperf3 -s   │          │ tunnel client, iperf3 -c   │
#   └────────────────────────────┘          └────────────────────────────┘
#
# For each tunnel: 200 pings (median RTT, and what it adds to the median of the bare veth's,
# pinged in the same seconds), iperf3 TCP
# client -> server 3 times (median Mbit/s), once reversed (-R), and the CPU time (utime+stime
# of every thread of both tunnel processes, /proc/PID/stat) over the three forward runs per
# Gbit received. A tunnel that does not come up is reported as failed and the others still run.
# The table is printed and written to $CARGO_TARGET_DIR/bench/latest.md (default
# target/bench/latest.md), with the raw iperf3/ping output beside it in last-run/.
#
# Installs what it needs when missing: Debian packages (iperf3, iproute2, iputils-ping,
# openvpn, openssl, wireguard-go, wireguard-tools, procps, python3) and boringtun-cli
# (`cargo install --locked` into $BENCH_TOOLS, default ~/.cache/dtun-bench). Everything runs
# in two network namespaces of its own, removed on exit; the root namespace is left alone.
set -uo pipefail
cd "$(dirname "$0")/.."

BENCH_TIME=${BENCH_TIME:-10}
PINGS=${BENCH_PINGS:-200}
BENCH_ONLY=${BENCH_ONLY:-}
BENCH_TOOLS=${BENCH_TOOLS:-$HOME/.cache/dtun-bench}
DTUN_BASELINE=${DTUN_BASELINE:-}
export BENCH_TIME

rows=(dtun dtun-ccm8 dtun-ipv6 openvpn boringtun boringtun-1t wireguard-go)

die() {
    echo "bench.sh: $*" >&2
    exit 1
}
log() { printf '\033[1m== %s\033[0m\n' "$*"; }

[[ $(id -u) -eq 0 ]] || die "run as root (it makes network namespaces and TUN devices)"
[[ -c /dev/net/tun ]] || die "/dev/net/tun missing"
[[ $BENCH_TIME =~ ^[1-9][0-9]*$ ]] || die "BENCH_TIME must be a whole number of seconds"

# selected ROW: is ROW in BENCH_ONLY (an item names a row or the rows "ITEM-*")?
selected() {
    [[ -z $BENCH_ONLY ]] && return 0
    local item items
    IFS=, read -ra items <<<"$BENCH_ONLY"
    for item in "${items[@]}"; do
        item=${item//[[:space:]]/}
        [[ -n $item && ($1 == "$item" || $1 == "$item"-*) ]] && return 0
    done
    return 1
}
if [[ -n $BENCH_ONLY ]]; then
    IFS=, read -ra wanted <<<"$BENCH_ONLY"
    for item in "${wanted[@]}"; do
        item=${item//[[:space:]]/}
        [[ -z $item ]] && continue
        ok=0
        for r in "${rows[@]}"; do
            [[ $r == "$item" || $r == "$item"-* ]] && ok=1
        done
        ((ok)) || die "BENCH_ONLY: unknown row '$item' (rows: ${rows[*]})"
    done
fi

# The earlier binary of DTUN_BASELINE, as an absolute path (the rows run it from elsewhere).
baseline=""
if [[ -n $DTUN_BASELINE ]]; then
    baseline=$(realpath -e -- "$DTUN_BASELINE" 2>/dev/null) && [[ -f $baseline && -x $baseline ]] ||
        die "DTUN_BASELINE=$DTUN_BASELINE: no executable file there (give the path of an earlier dtun binary, e.g. a copy of target/release/dtun)"
    "$baseline" --version >/dev/null 2>&1 ||
        die "DTUN_BASELINE=$DTUN_BASELINE: '$baseline --version' failed; is it a dtun binary?"
    selected dtun || die "DTUN_BASELINE is set but BENCH_ONLY selects no dtun row"
fi

# ---------------------------------------------------------------- tools
packages=(iperf3 iproute2 iputils-ping procps python3 coreutils libclang-dev)  # libclang-dev: building dtun (bindgen)
selected openvpn && packages+=(openvpn openssl)
{ selected boringtun || selected boringtun-1t; } && packages+=(wireguard-tools)
selected wireguard-go && packages+=(wireguard-go wireguard-tools)
missing=()
for p in "${packages[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    apt-get update -qq || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null || die "apt-get install ${missing[*]} failed"
fi

if ! command -v cargo >/dev/null 2>&1 && [[ -x $HOME/.cargo/bin/cargo ]]; then
    PATH=$HOME/.cargo/bin:$PATH
fi
command -v cargo >/dev/null 2>&1 || die "cargo not found; install a Rust toolchain"

boringtun=""
boringtun_error=""
if selected boringtun || selected boringtun-1t; then
    if command -v boringtun-cli >/dev/null 2>&1; then
        boringtun=$(command -v boringtun-cli)
    elif [[ -x $BENCH_TOOLS/bin/boringtun-cli ]]; then
        boringtun=$BENCH_TOOLS/bin/boringtun-cli
    else
        log "cargo install boringtun-cli --locked --root $BENCH_TOOLS (once; a few minutes)"
        mkdir -p "$BENCH_TOOLS"
        # Its own temporary target directory, not ours (CARGO_TARGET_DIR would be used).
        if env -u CARGO_TARGET_DIR cargo install boringtun-cli --locked --quiet \
            --root "$BENCH_TOOLS" && [[ -x $BENCH_TOOLS/bin/boringtun-cli ]]; then
            boringtun=$BENCH_TOOLS/bin/boringtun-cli
        else
            boringtun_error="cargo install boringtun-cli failed"
        fi
    fi
fi

log "cargo build --release"
cargo build --release --quiet || die "cargo build --release failed"
target_dir=$(realpath "${CARGO_TARGET_DIR:-target}")
bin=$target_dir/release/dtun
[[ -x $bin ]] || die "no $bin after the build"
out_dir=$target_dir/bench
mkdir -p "$out_dir"

# ---------------------------------------------------------------- namespaces, processes
ns_a="dtbenchA$$"
ns_b="dtbenchB$$"
ip_a=172.31.254.1
ip_b=172.31.254.2
tmp=$(mktemp -d /tmp/dtun-bench.XXXXXX)
res=$tmp/results
mkdir -p "$res"
all_pids=()   # every process we started, for the exit trap
tun_pids=()   # the current tunnel's processes (and its iperf3 server)
wg_socks=()   # userspace WireGuard control sockets (a shared path, not per namespace)
clk_tck=$(getconf CLK_TCK)
cut -d' ' -f1-3 /proc/loadavg >"$res/loadavg"
[[ -n $baseline ]] && echo "$baseline" >"$res/baseline"
started=$SECONDS

# stop PID...: SIGTERM, up to 5 s, then SIGKILL; only our own children.
stop() {
    local pid
    for pid in "$@"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "$@"; do
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
}

cleanup() {
    trap - EXIT INT TERM
    ((${#all_pids[@]})) && stop "${all_pids[@]}"
    ip netns del "$ns_a" 2>/dev/null || true
    ip netns del "$ns_b" 2>/dev/null || true
    local s
    for s in "${wg_socks[@]}"; do
        rm -f "$s"
    done
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'echo "bench.sh: interrupted" >&2; exit 130' INT TERM

# spawn NS LOG CMD...: starts CMD in NS in the background; its pid in $last_pid.
# (`ip netns exec` and `env` exec, so the pid is the tunnel process itself.)
last_pid=""
spawn() {
    local ns=$1 logfile=$2
    shift 2
    ip netns exec "$ns" "$@" >"$logfile" 2>&1 </dev/null &
    last_pid=$!
    all_pids+=("$last_pid")
    tun_pids+=("$last_pid")
}

# wait_for SECONDS COMMAND...: polls COMMAND every 0.1 s until it succeeds or time runs out.
wait_for() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@" >/dev/null 2>&1; do
        ((SECONDS >= deadline)) && return 1
        sleep 0.1
    done
}

# alive PID: running (an exited child stays a zombie until reaped, so kill -0 is not enough).
alive() {
    local state
    state=$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | awk '{ print $1 }')
    [[ -n $state && $state != Z ]]
}

# wait_up SECONDS "PID..." COMMAND...: wait_for, but gives up at once (status 2) when one of
# PIDs has exited.
wait_up() {
    local deadline=$((SECONDS + $1)) pids=$2 pid
    shift 2
    until "$@" >/dev/null 2>&1; do
        for pid in $pids; do
            alive "$pid" || return 2
        done
        ((SECONDS >= deadline)) && return 1
        sleep 0.1
    done
}

# why STATUS TEXT: the failure reason for wait_up's STATUS.
why() {
    if (($1 == 2)); then echo "a tunnel process exited during setup"; else echo "$2"; fi
}
udp_listening() { [[ -n $(ip netns exec "$1" ss -Hlun "sport = :$2") ]]; }
tcp_listening() { [[ -n $(ip netns exec "$1" ss -Hltn "sport = :$2") ]]; }
pings() { ip netns exec "$ns_b" ping -c 1 -W 1 "$1"; }

# cpu_ticks PID...: utime + stime of every thread of the processes, in clock ticks.
cpu_ticks() {
    local pid total=0 t
    for pid in "$@"; do
        # Fields after "pid (comm) ": state is $1, utime $12, stime $13.
        t=$(sed 's/^.*) //' "/proc/$pid/stat" | awk '{ print $12 + $13 }') || return 1
        total=$((total + t))
    done
    echo "$total"
}

# A row's directory: label, status ("ok" or "failed: why"), fwd1-3.json, rev.json, ping.txt,
# cpu_ticks, clk_tck, and for dtun rss_kb.
row_dir=""
row_index=0
begin_row() { # KEY LABEL
    row_index=$((row_index + 1))
    row_dir=$res/$(printf '%02d' "$row_index")-$1
    mkdir -p "$row_dir"
    echo "$2" >"$row_dir/label"
    tun_pids=()
    log "$2"
}
fail_row() { # REASON [LOG...]
    local reason=$1 f
    shift
    echo "failed: $reason" >"$row_dir/status"
    echo "bench.sh: $(cat "$row_dir/label"): $reason" >&2
    for f in "$@"; do
        [[ -s $f ]] || continue
        echo "--- ${f##*/} (last 15 lines)" >&2
        tail -n 15 "$f" >&2
    done
}
end_row() {
    ((${#tun_pids[@]})) && stop "${tun_pids[@]}"
    tun_pids=()
    python3 -B scripts/bench/table.py row "$row_dir" || true
}

# iperf_run ADDR OUT [ARGS...]: one iperf3 TCP run from ns B to ADDR in ns A, JSON in OUT.
iperf_run() {
    local addr=$1 out=$2
    shift 2
    timeout $((BENCH_TIME + 30)) ip netns exec "$ns_b" \
        iperf3 -c "$addr" -p 5201 -t "$BENCH_TIME" -J "$@" >"$out" 2>"$out.err" &&
        python3 -B -c 'import json,sys; json.load(open(sys.argv[1]))["end"]["sum_received"]["bytes"]' \
            "$out" 2>/dev/null
}

# measure ADDR PID...: ping, 3 forward runs with CPU accounting of PIDs, 1 reverse run.
measure() {
    local addr=$1 i before after
    shift
    spawn "$ns_a" "$row_dir/iperf3-server.log" iperf3 -s -B "$addr" -p 5201
    if ! wait_for 10 tcp_listening "$ns_a" 5201; then
        fail_row "iperf3 server did not listen on $addr" "$row_dir/iperf3-server.log"
        return 1
    fi
    # The bare veth is pinged at the same time, 25 ms out of step, so "added" compares two
    # medians of the same seconds: this VM's wake-up cost drifts by 2-3x between minutes.
    ip netns exec "$ns_b" ping -c "$PINGS" -i 0.05 -W 1 "$ip_a" >"$row_dir/bare-ping.txt" 2>&1 &
    local bare_ping=$!
    sleep 0.025
    ip netns exec "$ns_b" ping -c "$PINGS" -i 0.05 -W 1 "$addr" >"$row_dir/ping.txt" 2>&1
    wait "$bare_ping"
    before=$(cpu_ticks "$@") || { fail_row "a tunnel process died"; return 1; }
    for i in 1 2 3; do
        if ! iperf_run "$addr" "$row_dir/fwd$i.json"; then
            fail_row "iperf3 forward run $i failed" "$row_dir/fwd$i.json.err"
            return 1
        fi
        sleep 0.5
    done
    after=$(cpu_ticks "$@") || { fail_row "a tunnel process died"; return 1; }
    echo $((after - before)) >"$row_dir/cpu_ticks"
    echo "$clk_tck" >"$row_dir/clk_tck"
    if ! iperf_run "$addr" "$row_dir/rev.json" -R; then
        fail_row "iperf3 reverse run failed" "$row_dir/rev.json.err"
        return 1
    fi
    echo ok >"$row_dir/status"
}

log "namespaces $ns_a and $ns_b joined by a veth pair"
ip netns add "$ns_a" || die "ip netns add failed"
ip netns add "$ns_b" || die "ip netns add failed"
ip -n "$ns_a" link set lo up
ip -n "$ns_b" link set lo up
ip -n "$ns_a" link add vb0 type veth peer name vb0 netns "$ns_b" || die "veth failed"
ip -n "$ns_a" addr add "$ip_a/24" dev vb0
ip -n "$ns_b" addr add "$ip_b/24" dev vb0
ip -n "$ns_a" link set vb0 up
ip -n "$ns_b" link set vb0 up
wait_for 10 pings "$ip_a" || die "the bare veth does not pass pings"

# ---------------------------------------------------------------- bare veth (context)
mkdir -p "$res/veth"
ip netns exec "$ns_b" ping -c "$PINGS" -i 0.05 -W 1 "$ip_a" >"$res/veth/ping.txt" 2>&1
spawn "$ns_a" "$res/veth/iperf3-server.log" iperf3 -s -B "$ip_a" -p 5201
if wait_for 10 tcp_listening "$ns_a" 5201; then
    log "bare veth: iperf3 ${BENCH_TIME} s"
    iperf_run "$ip_a" "$res/veth/fwd1.json" || rm -f "$res/veth/fwd1.json"
fi
stop "${tun_pids[@]}"
tun_pids=()

# ---------------------------------------------------------------- dtun
key="bench-key-$$-$RANDOM$RANDOM"
dtun_port=4433

# dtun_row KEY LABEL [ARGS...]: server in A, client in B, both with ARGS, both the binary
# $dtun_bin. With inner6=1 in its environment the row measures IPv6 inside the tunnel (the pair
# from -pool6).
dtun_row() {
    local rowkey=$1 label=$2
    shift 2
    begin_row "$rowkey" "$label"
    local slog=$row_dir/server.log clog=$row_dir/client.log srv cli addrs peer suite
    spawn "$ns_a" "$slog" "$dtun_bin" -key "$key" -port "$dtun_port" "$@"
    srv=$last_pid
    wait_up 10 "$srv" udp_listening "$ns_a" "$dtun_port" || {
        fail_row "$(why $? "server not listening within 10 s")" "$slog"
        return
    }
    spawn "$ns_b" "$clog" "$dtun_bin" -host "$ip_a" -port "$dtun_port" -key "$key" -id bench "$@"
    cli=$last_pid
    # The client's TUN has "inet LOCAL peer PEER/32" once the tunnel is up.
    wait_up 20 "$srv $cli" sh -c "ip -n $ns_b -o -4 addr show type tun | grep -q ' peer '" || {
        fail_row "$(why $? "client TUN without address after 20 s")" "$slog" "$clog"
        return
    }
    local family=-4
    if [[ ${inner6:-0} == 1 ]]; then
        family=-6
        wait_up 20 "$srv $cli" sh -c "ip -n $ns_b -o -6 addr show type tun scope global | grep -q ' peer '" || {
            fail_row "$(why $? "client TUN without IPv6 address after 20 s")" "$slog" "$clog"
            return
        }
    fi
    addrs=$(ip -n "$ns_b" -o "$family" addr show type tun scope global)
    peer=$(awk '{ for (i = 1; i < NF; i++) if ($i == "peer") { sub("/.*", "", $(i + 1)); print $(i + 1); exit } }' <<<"$addrs")
    wait_up 10 "$srv $cli" pings "$peer" || {
        fail_row "$(why $? "no ping through the tunnel to '$peer' within 10 s")" "$slog" "$clog"
        return
    }
    suite=$(grep -o 'tunnel up.*' "$clog" | head -n 1 | awk -F', ' '{ print $NF }')
    [[ -n $suite ]] && echo "$label ($suite)" >"$row_dir/label"
    measure "$peer" "$srv" "$cli" || return
    alive "$srv" && awk '/^VmRSS:/ { print $2 }' "/proc/$srv/status" >"$row_dir/rss_kb"
}

# dtun_rows KEY LABEL [ARGS...]: the row with this tree's binary, then (DTUN_BASELINE) with the
# earlier one, right after it: both see the same minutes of this machine.
dtun_rows() {
    local rowkey=$1 label=$2
    shift 2
    dtun_bin=$bin dtun_row "$rowkey" "$label" "$@"
    end_row
    if [[ -n $baseline ]]; then
        dtun_bin=$baseline dtun_row "baseline-$rowkey" "baseline $label" "$@"
        end_row
    fi
}

if selected dtun; then
    dtun_rows dtun "dtun default"
fi
if selected dtun-ipv6; then
    inner6=1 dtun_rows dtun-ipv6 "dtun default, IPv6 inside"
fi
# ccm8_row BIN KEY LABEL-PREFIX: the CCM_8 row of BIN (a binary older than -cipher spoke CCM_8
# only).
ccm8_row() {
    if "$1" --help 2>&1 | grep -q -- '--cipher'; then
        dtun_bin=$1 dtun_row "$2" "${3}dtun -cipher ccm8" -cipher ccm8
    else
        dtun_bin=$1 dtun_row "$2" "${3}dtun (ccm8: default)"
    fi
    end_row
}
if selected dtun-ccm8; then
    ccm8_row "$bin" dtun-ccm8 ""
    if [[ -n $baseline ]]; then
        ccm8_row "$baseline" baseline-dtun-ccm8 "baseline "
    fi
fi

# ---------------------------------------------------------------- OpenVPN
make_pki() ( # DIR
    set -e
    cd "$1"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout ca.key -out ca.crt -days 2 -subj /CN=bench-ca
    for n in server client; do
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
            -keyout "$n.key" -out "$n.csr" -subj "/CN=bench-$n"
        openssl x509 -req -in "$n.csr" -CA ca.crt -CAkey ca.key -CAcreateserial \
            -out "$n.crt" -days 2
    done
)

openvpn_row() {
    begin_row openvpn "OpenVPN $(openvpn --version 2>/dev/null | awk 'NR == 1 { print $2 }') AES-128-GCM, no DCO"
    local d=$row_dir/pki slog=$row_dir/server.log clog=$row_dir/client.log srv cli
    mkdir -p "$d"
    # A throwaway CA and one certificate per side (EC P-256).
    if ! make_pki "$d" >"$d/openssl.log" 2>&1; then
        fail_row "openssl could not make certificates" "$d/openssl.log"
        return
    fi
    # Peer-to-peer TLS mode over UDP, AES-128-GCM data channel, userspace (no DCO).
    local common=(--dev-type tun --proto udp --data-ciphers AES-128-GCM --disable-dco
        --ca "$d/ca.crt" --verb 3 --ping 10 --ping-restart 60)
    spawn "$ns_a" "$slog" openvpn "${common[@]}" --dev ovpnA --lport 1194 \
        --ifconfig 10.87.0.1 10.87.0.2 --tls-server --dh none \
        --cert "$d/server.crt" --key "$d/server.key"
    srv=$last_pid
    wait_up 10 "$srv" udp_listening "$ns_a" 1194 || {
        fail_row "$(why $? "server not listening within 10 s")" "$slog"
        return
    }
    spawn "$ns_b" "$clog" openvpn "${common[@]}" --dev ovpnB --nobind \
        --remote "$ip_a" 1194 --ifconfig 10.87.0.2 10.87.0.1 --tls-client \
        --cert "$d/client.crt" --key "$d/client.key"
    cli=$last_pid
    wait_up 30 "$srv $cli" sh -c "grep -q 'Initialization Sequence Completed' '$clog' &&
        grep -q 'Initialization Sequence Completed' '$slog'" || {
        fail_row "$(why $? "no 'Initialization Sequence Completed' within 30 s")" "$slog" "$clog"
        return
    }
    if ! grep -q "Data Channel: cipher 'AES-128-GCM'" "$clog"; then
        fail_row "data channel is not AES-128-GCM" "$clog"
        return
    fi
    wait_up 10 "$srv $cli" pings 10.87.0.1 || {
        fail_row "$(why $? "no ping through the tunnel within 10 s")" "$slog" "$clog"
        return
    }
    measure 10.87.0.1 "$srv" "$cli"
}
if selected openvpn; then
    openvpn_row
    end_row
fi

# ---------------------------------------------------------------- WireGuard, userspace
# wg_row KEY LABEL CMD...: CMD IFNAME starts a userspace WireGuard in the foreground; it is
# configured with wg(8) over its UAPI socket, /var/run/wireguard/IFNAME.sock. That path is the
# same in every namespace, so the interface names are unique to this run.
wg_row() {
    local rowkey=$1 label=$2
    shift 2
    begin_row "$rowkey" "$label"
    local if_a="wb${row_index}a$$" if_b="wb${row_index}b$$" srv cli
    local slog=$row_dir/server.log clog=$row_dir/client.log
    if_a=${if_a:0:15}
    if_b=${if_b:0:15}
    wg_socks+=("/var/run/wireguard/$if_a.sock" "/var/run/wireguard/$if_b.sock")
    if ! (umask 077 && wg genkey >"$row_dir/a.key" && wg genkey >"$row_dir/b.key"); then
        fail_row "wg genkey failed"
        return
    fi
    local pub_a pub_b
    pub_a=$(wg pubkey <"$row_dir/a.key")
    pub_b=$(wg pubkey <"$row_dir/b.key")
    spawn "$ns_a" "$slog" "$@" "$if_a"
    srv=$last_pid
    spawn "$ns_b" "$clog" "$@" "$if_b"
    cli=$last_pid
    wait_up 10 "$srv $cli" test -S "/var/run/wireguard/$if_a.sock" -a \
        -S "/var/run/wireguard/$if_b.sock" || {
        fail_row "$(why $? "no UAPI socket within 10 s")" "$slog" "$clog"
        return
    }
    if ! {
        ip netns exec "$ns_a" wg set "$if_a" private-key "$row_dir/a.key" listen-port 51820 \
            peer "$pub_b" allowed-ips 10.88.0.2/32 &&
            ip netns exec "$ns_b" wg set "$if_b" private-key "$row_dir/b.key" \
                peer "$pub_a" allowed-ips 10.88.0.1/32 endpoint "$ip_a:51820" &&
            ip -n "$ns_a" addr add 10.88.0.1 peer 10.88.0.2 dev "$if_a" &&
            ip -n "$ns_b" addr add 10.88.0.2 peer 10.88.0.1 dev "$if_b" &&
            ip -n "$ns_a" link set "$if_a" mtu 1420 up &&
            ip -n "$ns_b" link set "$if_b" mtu 1420 up
    } >"$row_dir/config.log" 2>&1; then
        fail_row "configuring the interfaces failed" "$row_dir/config.log" "$slog" "$clog"
        return
    fi
    wait_up 15 "$srv $cli" pings 10.88.0.1 || {
        fail_row "$(why $? "no ping through the tunnel within 15 s")" "$slog" "$clog"
        return
    }
    measure 10.88.0.1 "$srv" "$cli"
}

bt_version=""
[[ -n $boringtun ]] && bt_version=$("$boringtun" --version 2>/dev/null | awk '{ print $2 }')
for which in boringtun boringtun-1t; do
    selected "$which" || continue
    if [[ $which == boringtun ]]; then
        label="boringtun-cli $bt_version, default threads"
        envs=(env -u WG_THREADS)
    else
        label="boringtun-cli $bt_version, WG_THREADS=1"
        envs=(env WG_THREADS=1)
    fi
    if [[ -z $boringtun ]]; then
        begin_row "$which" "$label"
        fail_row "${boringtun_error:-boringtun-cli not available}"
    else
        wg_row "$which" "$label" "${envs[@]}" "$boringtun" --foreground --disable-drop-privileges
    fi
    end_row
done

if selected wireguard-go; then
    wg_row wireguard-go "wireguard-go $(dpkg-query -W -f='${Version}' wireguard-go 2>/dev/null | sed 's/^0\.0\.//; s/-.*//')" \
        env WG_PROCESS_FOREGROUND=1 LOG_LEVEL=error wireguard-go -f
    end_row
fi

# ---------------------------------------------------------------- the table
elapsed=$((SECONDS - started))
cut -d' ' -f1-3 /proc/loadavg >"$res/loadavg_end"
python3 -B scripts/bench/table.py table "$res" "$elapsed" >"$out_dir/latest.md" ||
    die "making the table failed (raw results in $res)"
rm -rf "$out_dir/last-run"
cp -r "$res" "$out_dir/last-run"
echo
cat "$out_dir/latest.md"
echo
echo "bench.sh: table in $out_dir/latest.md, raw output in $out_dir/last-run/"

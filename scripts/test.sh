#!/usr/bin/env bash
# Runs every check CI runs, on a fresh Debian 12 machine as root: installs the tools the
# end-to-end tests use (only those missing), then cargo fmt, the protocol crate's dependency
# deny-list, clippy, the docs, the fuzz crate's clippy and the whole test suite.
# The end-to-end tests make their own network namespaces, so they need root and /dev/net/tun:
# without them they skip (dtun-testgate), and this script says how many ran and how many
# skipped. With CI=true a skip is a failure. Then every test binary runs again as uid 65534,
# where every test must pass or skip: a test that needs root without saying so
# (`need_root!()` as its first line) fails there. docs/TESTS.md has the details.
set -euo pipefail
cd "$(dirname "$0")/.."
ci=false
[[ ${CI:-} == [Tt][Rr][Uu][Ee] ]] && ci=true

# iproute2: ip netns/veth/ss; iputils-ping: ping; openssl: s_client/s_server interop tests;
# python3: tests/tools/inject.py; iperf3 and nftables: throughput and firewall checks;
# procps: pgrep/kill; dnsmasq-base: the DNS server of tests/dns.rs; libclang-dev: the rustables
# crate generates its nf_tables constants with bindgen at build time (nothing of it at run
# time); util-linux: setpriv (tests/nat.rs, tests/status.rs, tests/privilege.rs); curl: scrapes
# -metrics (tests/status.rs); dbus-daemon: the private bus of tests/resolved.rs.
# systemd: systemd-analyze (tests/service.rs, tests/sandbox.rs; systemd need not run); strace:
# the system calls dtun makes (tests/sandbox.rs); man-db and groff-base: the man page renders
# without warnings; lintian and adduser: the Debian package's checks (scripts/package.sh).
packages=(iproute2 iputils-ping openssl iperf3 nftables python3 procps dnsmasq-base libclang-dev util-linux
    curl systemd strace man-db groff-base lintian adduser dbus-daemon)
missing=()
for p in "${packages[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "test.sh: missing packages ${missing[*]}; run as root to install them" >&2
        exit 1
    fi
    echo "test.sh: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1 && [[ -x $HOME/.cargo/bin/cargo ]]; then
    PATH=$HOME/.cargo/bin:$PATH
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "test.sh: cargo not found; install a Rust toolchain (rustup, with rustfmt and clippy)" >&2
    exit 1
fi
for tool in fmt clippy; do
    if ! cargo "$tool" --version >/dev/null 2>&1; then
        echo "test.sh: cargo $tool missing; run: rustup component add ${tool/fmt/rustfmt}" >&2
        exit 1
    fi
done
root_missing=()
[[ $(id -u) -eq 0 ]] || root_missing+=("root")
[[ -c /dev/net/tun ]] || root_missing+=("/dev/net/tun")
if ((${#root_missing[@]})); then
    if $ci; then
        echo "test.sh: CI=true and no ${root_missing[*]}: the end-to-end tests need root and" \
            "TUN support and may not skip under CI; run as root on a machine with /dev/net/tun" >&2
        exit 1
    fi
    echo "test.sh: no ${root_missing[*]}: the tests that need root will skip" >&2
fi

# Runs every test binary (tests/ and the unit tests of each crate, already built) as uid 65534 without CI: each test must pass
# or skip. One that needs root but lacks `common::need_root!()` fails here on the first thing
# only root may do (or on the gate check in the namespace fixtures). The binaries run from the
# source tree, as cargo runs them; uid 65534 must be able to reach them.
unprivileged_run() {
    local tmp line dir exe out passed=0 skips=0 failed=() binaries=()
    # "PACKAGE_DIR<tab>EXECUTABLE" per test binary; each runs in its package's
    # directory, as cargo runs it.
    mapfile -t binaries < <(cargo test --workspace --tests --no-run --message-format=json \
        2>/dev/null | python3 -c '
import json, os, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["profile"]["test"] \
            and m.get("executable"):
        print(os.path.dirname(m["manifest_path"]), m["executable"], sep="\t")')
    if ((${#binaries[@]} == 0)); then
        echo "test.sh: no test binaries found for the uid-65534 run" >&2
        return 1
    fi
    tmp=$(mktemp -d)
    chown 65534:65534 "$tmp"
    local as_nobody=(setpriv --reuid=65534 --regid=65534 --clear-groups
        env -u CI -u DTUN_TEST_ROOT_LOG HOME="$tmp" TMPDIR="$tmp")
    local first=${binaries[0]#*$'\t'} who="uid 65534"
    if ! "${as_nobody[@]}" test -x "$first"; then
        # A checkout uid 65534 cannot reach (under a 0700 home): uid 65534 with the one
        # capability to read and search any directory (CAP_DAC_READ_SEARCH), nothing else: the
        # gate skips it like any user, and it cannot make a namespace either.
        as_nobody=(setpriv --reuid=65534 --regid=65534 --clear-groups
            --inh-caps=+dac_read_search --ambient-caps=+dac_read_search
            env -u CI -u DTUN_TEST_ROOT_LOG HOME="$tmp" TMPDIR="$tmp")
        who="uid 65534 (with CAP_DAC_READ_SEARCH to reach the checkout)"
        echo "test.sh: uid 65534 cannot reach $first: running the tests as $who" >&2
    fi
    for line in "${binaries[@]}"; do
        dir=${line%%$'\t'*}
        exe=${line#*$'\t'}
        if out=$(cd "$dir" && "${as_nobody[@]}" "$exe" 2>&1); then
            # Not anchored: with --test-threads=1 it follows libtest's "test NAME ... ".
            skips=$((skips + $(grep -c 'SKIPPED [^ ]*: needs root' <<<"$out" || true)))
            passed=$((passed + $(sed -n 's/^test result: ok\. \([0-9]*\) passed.*/\1/p' <<<"$out")))
        else
            printf '%s\n' "$out"
            failed+=("$(basename "$exe")")
        fi
    done
    rm -rf "$tmp"
    if ((${#failed[@]})); then
        echo "test.sh: as $who these failed: ${failed[*]}; a test that needs root must start" \
            "with common::need_root!(), one that does not must pass without root" >&2
        return 1
    fi
    echo "as $who: $((passed - skips)) passed, $skips skipped (need root), 0 failed"
}

# timed TITLE COMMAND...: runs COMMAND under a "== TITLE" line and says how long it took.
timed() {
    local title=$1 start=$SECONDS
    shift
    echo "== $title"
    "$@"
    echo "   ($((SECONDS - start)) s)"
}

# The protocol crate's rule (crates/dtun-proto/src/lib.rs): no async runtime, socket, TUN,
# netlink, nftables, D-Bus, HTTP or DTLS stack in its normal dependency tree, nor the Linux
# layer. Every crate of `cargo tree` is matched against these names (globs); one that matches
# fails the run with the path that pulls it in.
proto_deny=(tokio async-std smol async-io async-executor socket2 quinn-udp tun-rs rtnetlink
    'netlink-*' nix rustables zbus hyper dtls dtun-linux)
proto_layer() {
    local tree name pat
    local -a bad=()
    tree=$(cargo tree --locked -p dtun-proto -e normal --prefix none) || return 1
    while read -r name _; do
        for pat in "${proto_deny[@]}"; do
            # shellcheck disable=SC2053 # $pat is a glob on purpose
            [[ $name == $pat ]] && bad+=("$name")
        done
    done <<<"$tree"
    ((${#bad[@]})) || return 0
    for name in $(printf '%s\n' "${bad[@]}" | sort -u); do
        echo "test.sh: dtun-proto depends on $name, which the protocol crate must not use" \
            "(no I/O there: put the code that needs it in dtun-linux or dtun). It comes in by:" >&2
        cargo tree --locked -i "$name" -p dtun-proto -e normal >&2 || true
    done
    return 1
}

# fuzz/ is a workspace of its own (its own Cargo.lock), so the workspace's clippy never sees
# it. Its targets are checked, not built: a check links nothing, so libFuzzer (C++) is not
# compiled (CUSTOM_LIBFUZZER_PATH stands in for it) and nothing needs nightly; running the
# fuzzers is fuzz/README.md's business. One target directory for both workspaces.
fuzz_clippy() {
    local target
    target=$(realpath "${CARGO_TARGET_DIR:-target}")
    (cd fuzz && CARGO_TARGET_DIR=$target CUSTOM_LIBFUZZER_PATH=$target/no-libfuzzer/libfuzzer.a \
        cargo clippy --locked --all-targets --quiet -- -D warnings) || {
        echo "test.sh: fuzz/ does not check cleanly; after a change to dtun-proto's" \
            "dependencies run (cd fuzz && cargo update -p dtun-proto) and commit fuzz/Cargo.lock" >&2
        return 1
    }
}

echo "== cargo fmt --all --check"
cargo fmt --all --check
timed "dtun-proto's dependencies: none of ${proto_deny[*]}" proto_layer
echo "== cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings
timed "cargo doc --workspace --no-deps (RUSTDOCFLAGS=-D warnings)" \
    env RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet
timed "fuzz/: cargo clippy --all-targets -- -D warnings (checked, not linked)" fuzz_clippy
echo "== cargo test --workspace --all-targets"
# Each test that needs root appends "ran NAME" or "skipped NAME" here (dtun-testgate).
root_log=$(mktemp)
trap 'rm -f "$root_log"' EXIT
status=0
DTUN_TEST_ROOT_LOG=$root_log cargo test --workspace --all-targets || status=$?
ran=$(grep -c '^ran ' "$root_log" || true)
skipped=$(grep -c '^skipped ' "$root_log" || true)
echo "root tests run: $ran, skipped: $skipped"
if ((status)); then
    exit "$status"
fi
if $ci && ((skipped)); then
    echo "test.sh: CI=true but $skipped tests that need root skipped" >&2
    exit 1
fi
if ((ran + skipped == 0)); then
    echo "test.sh: no test reported through DTUN_TEST_ROOT_LOG; is the gate (crates/dtun-testgate) used?" >&2
    exit 1
fi

if [[ $(id -u) -eq 0 ]]; then
    echo "== every test binary as uid 65534: each test passes or skips (need_root!() is not forgotten)"
    unprivileged_run
    echo "== scripts/package.sh (Debian package: cargo-deb, dpkg-deb -c, lintian)"
    scripts/package.sh
else
    echo "test.sh: not root: left out the uid-65534 run and scripts/package.sh (needs root)" >&2
fi

#!/usr/bin/env bash
# Runs every check CI runs, on a fresh Debian 12 machine as root: installs the tools the
# end-to-end tests use (only those missing), then cargo fmt, the protocol crate's dependency
# deny-list, clippy, the docs, the fuzz crate's clippy and the whole test suite.
# The end-to-end tests make their own network namespaces, so they need root and /dev/net/tun.
set -euo pipefail
cd "$(dirname "$0")/.."

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
if [[ ! -c /dev/net/tun ]]; then
    echo "test.sh: /dev/net/tun missing; the end-to-end tests need TUN support" >&2
    exit 1
fi

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
cargo test --workspace --all-targets
echo "== scripts/package.sh (Debian package: cargo-deb, dpkg-deb -c, lintian)"
scripts/package.sh

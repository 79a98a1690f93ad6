#!/usr/bin/env bash
# Runs every check CI runs, on a fresh Debian 12 machine as root: installs the tools the
# end-to-end tests use (only those missing), then cargo fmt, clippy and the whole test suite.
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

echo "== cargo fmt --all --check"
cargo fmt --all --check
echo "== cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== cargo test --workspace --all-targets"
cargo test --workspace --all-targets
echo "== scripts/package.sh (Debian package: cargo-deb, dpkg-deb -c, lintian)"
scripts/package.sh

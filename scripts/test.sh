#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what is missing, then
# formatting, lints, and every test (schema staleness and real-tool tests
# included). Usage: scripts/test.sh [extra nextest args]
#
# CI semantics by default: a real-tool test whose tool is missing fails, it
# never turns into a skip (this script installs every tool, so a missing one
# is a bug in the lists below). To let such tests skip loudly on a partial
# machine, run `cargo nextest run` by hand without CI in the environment.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
export CI="${CI:-true}"

need_rust
need_python_tool check-jsonschema check-jsonschema
need_qemu
# What the tests run by name: busybox (udhcpc) and cpio (the tiny guest),
# ip, kill and pgrep (procps), git (the git source), openssl, python3 (a
# DHCP test's raw sender), slapd, zfs/zpool.
apt_install busybox-static cpio iproute2 util-linux mount findutils procps git openssl python3 slapd ldap-utils zfs-fuse
need_samba
# libvirtd for the libvirt driver's tests (the tests start the daemon).
apt_install libvirt-daemon-system libvirt-clients
# DHCP: dnsmasq is the DHCPCAST central server in tests, dhcpcd the probing
# client (ARP, DECLINE); Kea and perfdhcp
# (kea-admin) are the benchmark peers.
apt_install dnsmasq-base dhcpcd-base kea-dhcp4-server kea-admin
command -v npm >/dev/null || apt_install nodejs npm
# Real Bitcoin libraries for the interop tests (python-bitcoinlib, bitcoinjs-message).
sh tests/interop/setup.sh
# The web page's browser test: Debian's chromium (its font is only a
# Recommend), driven by playwright-core with axe-core (npm, outside the
# tree); curl reads the server-sent events in tests/command_line.rs;
# spice-html5 is what web/spice/ must equal (tests/web_console.rs).
apt_install chromium fonts-dejavu-core curl spice-html5
# Layer 2 (tests/interstellar.rs): nftables (the node's anti-spoofing and
# underlay rules), tcpdump (what crossed the wires). The package test
# (tests/packaging.rs): binutils (strip, readelf), systemd
# (systemd-analyze verify), man-db (verify reads Documentation=man:).
apt_install nftables tcpdump binutils systemd man-db
sh tests/web/setup.sh
if ! cargo nextest --version >/dev/null 2>&1; then
  say "cargo-nextest not found: installing it from crates.io"
  cargo install --locked cargo-nextest >/dev/null
fi

say "cargo fmt --check"
cargo fmt --all -- --check
say "cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
# Userspace ZFS for the storage tests: one daemon for the whole run (the
# tests make their pool), stopped afterwards if this script started it.
if ! zpool list >/dev/null 2>&1; then
  say "starting zfs-fuse"
  scripts/zfs-fuse.sh up
  trap 'scripts/zfs-fuse.sh down' EXIT
fi
say "tests"
cargo nextest run --locked --no-fail-fast "$@"

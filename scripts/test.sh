#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what is missing, then
# formatting, lints, and every test (schema staleness and real-tool tests
# included). Usage: scripts/test.sh [extra nextest args]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

need_rust
need_python_tool check-jsonschema check-jsonschema
need_qemu
apt_install busybox-static cpio iproute2 slapd ldap-utils zfs-fuse
need_samba
# libvirtd for the libvirt driver's tests (the tests start the daemon).
apt_install libvirt-daemon-system libvirt-clients
# DHCP: dnsmasq is the DHCPCAST central server in tests; Kea and perfdhcp
# (kea-admin) are the benchmark peers.
apt_install dnsmasq-base kea-dhcp4-server kea-admin
command -v npm >/dev/null || apt_install nodejs npm
# Real Bitcoin libraries for the interop tests (python-bitcoinlib, bitcoinjs-message).
sh tests/interop/setup.sh
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

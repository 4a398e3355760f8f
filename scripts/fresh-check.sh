#!/usr/bin/env bash
# The README's two commands, run as a new user would on a fresh Debian 12
# machine: a bare root (mmdebstrap --variant=minbase bookworm: the
# Essential packages and apt, from Debian's own archive), a clone of this
# repository's HEAD in it, and inside it
#     scripts/run-node.sh --until-ready   (the node boots the tiny VM)
#     scripts/test.sh                     (the whole suite, CI semantics)
# Nothing else comes from the host: no Debian package beyond minbase, no
# build cache, no crate, no cargo-nextest, no Python or npm tool. The
# scripts must install all of it; a package they forget fails here.
# Rerun it whenever a change adds a package or a tool.
#
# From the host the root gets what a fresh machine has without any package:
# the kernel's /dev (KVM, TUN, FUSE, loop), /proc, /sys, a tmpfs /run, the
# Rust toolchain from rustup (README: a fresh machine of this kind has one;
# ~/.rustup is mounted read-only, the rustup proxies copied into the root's
# ~/.cargo/bin), and the site's network settings: /etc/resolv.conf,
# /etc/hosts, the local CA certificates of /usr/local/share/ca-certificates
# (a TLS-intercepting egress proxy's, say; the ca-certificates package the
# scripts install adds them to the system bundle) and the environment
# variables that name a CA bundle or a proxy.
# The root has no init system, so a policy-rc.d keeps package scripts from
# starting services; the tests start the daemons they need themselves.
# Everything runs in a private mount namespace: the root's FUSE mounts
# (zfs-fuse), network namespaces and daemons' sockets stay its own.
# At the end every process whose root is the root is killed and every mount
# released, also on failure or Ctrl-C. The root stays for inspection and is
# made anew at the next run.
#
# The bare minbase tree is cached as a tarball (it is Debian's own minimal
# set, identical from run to run for the same mirror state): delete
# $DEORCH_FRESH_CACHE or set DEORCH_FRESH_NO_CACHE=1 to rebuild it.
#
# Usage (as root): scripts/fresh-check.sh
#   DEORCH_FRESH_ROOT   where the root is made (default /var/tmp/deorch-fresh/root)
#   DEORCH_FRESH_CACHE  the minbase tarball (default ~/.cache/deorch/fresh-minbase.tar)
#   DEORCH_FRESH_MIN_GB the free space it insists on first (default 20)
#   DEORCH_FRESH_COMMAND  run this inside instead (to look around in the
#                       root, e.g. 'bash -i'); the run is then no check
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"

ROOT="${DEORCH_FRESH_ROOT:-/var/tmp/deorch-fresh/root}"
CACHE="${DEORCH_FRESH_CACHE:-$HOME/.cache/deorch/fresh-minbase.tar}"

say() { printf '\033[1m==> fresh-check: %s\033[0m\n' "$*" >&2; }

# PIDs of the processes whose root directory is $ROOT (chrooted there).
procs_in_root() {
  [ -d "$ROOT" ] || return 0
  local want p
  want=$(stat -c %d:%i "$ROOT")
  for p in /proc/[0-9]*; do
    [ "$(stat -L -c %d:%i "$p/root" 2>/dev/null)" = "$want" ] && echo "${p#/proc/}"
  done
  return 0
}

kill_root_procs() {
  local pids
  for _ in $(seq 50); do
    pids=$(procs_in_root)
    [ -z "$pids" ] && return 0
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
    sleep 0.2
  done
  say "processes still in $ROOT after SIGKILL: $(procs_in_root | tr '\n' ' ')"
  return 1
}

# Mount points at or below $ROOT in this mount namespace, deepest first.
mounts_in_root() {
  awk -v r="$ROOT" '$2 == r || index($2, r "/") == 1 { print $2 }' /proc/self/mounts | sort -r
}

# ---- stage 2: inside the private mount namespace --------------------------
if [ "${1:-}" = "--inside" ]; then
  release() {
    kill_root_procs || true
    for m in $(mounts_in_root); do umount -l "$m" 2>/dev/null || true; done
  }
  trap release EXIT
  trap 'exit 130' INT TERM
  # The root must be a mount point of its own, as / is on a machine:
  # `ip netns exec`, libvirt's QEMU and samba's namespace set-up make /
  # a slave mount, which fails with EINVAL on a plain directory.
  mount --bind "$ROOT" "$ROOT"
  mount --rbind /dev "$ROOT/dev"
  mount -t proc proc "$ROOT/proc"
  mount --rbind /sys "$ROOT/sys"
  mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs "$ROOT/run"
  mkdir -p "$ROOT/run/lock"
  mkdir -p "$ROOT/root/.rustup"
  mount --bind "$HOME/.rustup" "$ROOT/root/.rustup"
  mount -o remount,bind,ro "$ROOT/root/.rustup"
  # This namespace began as a copy of the host's mounts. A copy of a FUSE
  # mount keeps that filesystem mounted for its daemon (the host's zfs-fuse
  # then answers "dataset is busy" to the host's own tests), and a copy of
  # a /run/netns bind keeps that namespace alive: drop every copy the root
  # does not need (all but /, the mounts holding $ROOT, and /dev, /proc,
  # /sys, which this script still reads).
  awk '{ print $2 }' /proc/self/mounts | sort -r | while read -r m; do
    case "$m" in
      / | /dev | /dev/* | /proc | /proc/* | /sys | /sys/* | "$ROOT" | "$ROOT"/*) continue ;;
    esac
    case "$ROOT/" in "$m"/*) continue ;; esac
    umount -l "$m" 2>/dev/null || true
  done
  # shellcheck disable=SC2016 # expanded inside the root
  check='
    set -e
    cd /root/deorch
    start=$SECONDS
    scripts/run-node.sh --until-ready
    echo "fresh-check: scripts/run-node.sh --until-ready passed in $((SECONDS - start)) s" >&2
    start=$SECONDS
    scripts/test.sh
    echo "fresh-check: scripts/test.sh passed in $((SECONDS - start)) s" >&2
  '
  if [ -n "${DEORCH_FRESH_COMMAND:-}" ]; then
    say "running DEORCH_FRESH_COMMAND instead of the check: $DEORCH_FRESH_COMMAND"
    check="cd /root/deorch; $DEORCH_FRESH_COMMAND"
  fi
  # The site's CA-bundle and proxy variables, when the host has them.
  site_env=()
  for v in SSL_CERT_FILE SSL_CERT_DIR CURL_CA_BUNDLE GIT_SSL_CAINFO PIP_CERT \
    REQUESTS_CA_BUNDLE NODE_EXTRA_CA_CERTS http_proxy https_proxy no_proxy \
    HTTP_PROXY HTTPS_PROXY NO_PROXY; do
    [ -n "${!v:-}" ] && site_env+=("$v=${!v}")
  done
  chroot "$ROOT" /usr/bin/env -i "${site_env[@]}" \
    HOME=/root USER=root LOGNAME=root LANG=C.UTF-8 TERM="${TERM:-dumb}" \
    PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    /bin/bash -c "$check"
  exit $?
fi

# ---- stage 1: on the host --------------------------------------------------
[ "$(id -u)" = 0 ] || { echo "fresh-check: run as root (it builds a root and chroots)" >&2; exit 1; }
[ -d "$HOME/.rustup/toolchains" ] && [ -x "$HOME/.cargo/bin/rustup" ] || {
  echo "fresh-check: no rustup toolchain in $HOME/.rustup and $HOME/.cargo/bin" >&2
  exit 1
}
started=$SECONDS
cd "$repo"
if [ -n "$(git status --porcelain --untracked-files=no)" ]; then
  say "warning: uncommitted changes are not checked (the root gets a clone of HEAD $(git rev-parse --short HEAD))"
fi
command -v mmdebstrap >/dev/null || {
  say "installing mmdebstrap on the host"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mmdebstrap >/dev/null ||
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mmdebstrap >/dev/null; }
}

# The host's Debian entries (those signed by Debian's archive key), without
# backports: a fresh machine has the release, its updates and security;
# scripts/lib.sh adds backports for QEMU itself.
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
sources="$work/debian.sources"
for f in /etc/apt/sources.list.d/*.sources; do
  [ -f "$f" ] || continue
  awk 'BEGIN { RS = ""; ORS = "\n\n" } /debian-archive-keyring/ && !/backports/' "$f"
done >"$sources"
if [ ! -s "$sources" ]; then
  # One-line format only: the same rule on /etc/apt/sources.list.
  sources="$work/debian.list"
  grep -hE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
    grep -v backports | grep -E 'debian' >"$sources" || true
fi
[ -s "$sources" ] || sources="http://deb.debian.org/debian"
say "Debian sources for the root: $(grep -hE '^(URIs|deb)' "$sources" 2>/dev/null | tr '\n' ' ' || echo "$sources")"

if [ -n "${DEORCH_FRESH_NO_CACHE:-}" ] || [ ! -s "$CACHE" ]; then
  say "building the bare minbase tarball $CACHE"
  mkdir -p "$(dirname "$CACHE")"
  mmdebstrap --quiet --variant=minbase --format=tar bookworm "$CACHE.tmp" "$sources"
  mv "$CACHE.tmp" "$CACHE"
fi

# A from-scratch build (release for run-node.sh, debug and clippy for the
# tests, cargo-nextest) and the suite's pools and images take ~15 GB: say so
# up front rather than fail an hour in on "No space left on device".
need_gb="${DEORCH_FRESH_MIN_GB:-20}"
mkdir -p "$(dirname "$ROOT")"
avail_gb=$(df --output=avail -B1G "$(dirname "$ROOT")" | tail -n1 | tr -d ' ')
if [ "$avail_gb" -lt "$need_gb" ]; then
  echo "fresh-check: only ${avail_gb} GB free below $(dirname "$ROOT"); it needs ${need_gb} GB (DEORCH_FRESH_MIN_GB)" >&2
  exit 1
fi

# A new root: nothing may still run or be mounted in the old one.
kill_root_procs
if [ -n "$(mounts_in_root)" ]; then
  echo "fresh-check: still mounted below $ROOT: $(mounts_in_root | tr '\n' ' ')" >&2
  exit 1
fi
rm -rf --one-file-system "$ROOT"
mkdir -p "$ROOT"
tar -C "$ROOT" -xpf "$CACHE"
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
cp /etc/hosts "$ROOT/etc/hosts"
if [ -d /usr/local/share/ca-certificates ]; then
  mkdir -p "$ROOT/usr/local/share/ca-certificates"
  cp -a /usr/local/share/ca-certificates/. "$ROOT/usr/local/share/ca-certificates/"
fi
printf '#!/bin/sh\n# No init system in this root: services are not started.\nexit 101\n' \
  >"$ROOT/usr/sbin/policy-rc.d"
chmod 0755 "$ROOT/usr/sbin/policy-rc.d"
# rustup's proxies (cargo, rustc, ...), as rustup installs them.
mkdir -p "$ROOT/root/.cargo/bin"
cp -a "$HOME/.cargo/bin/." "$ROOT/root/.cargo/bin/"
git clone -q --no-hardlinks "$repo" "$ROOT/root/deorch"
git -C "$ROOT/root/deorch" checkout -q --detach "$(git rev-parse HEAD)"
say "root ready in $ROOT ($(du -sh "$ROOT" | cut -f1)) after $((SECONDS - started)) s; HEAD $(git rev-parse --short HEAD)"

rc=0
unshare --mount --propagation private -- "$0" --inside || rc=$?
# The namespace is gone with its last process; make sure none is left.
kill_root_procs || rc=1
if [ "$rc" = 0 ]; then
  say "PASSED in $((SECONDS - started)) s${DEORCH_FRESH_COMMAND:+ (DEORCH_FRESH_COMMAND was set: not a check)}"
else
  say "FAILED (exit $rc) after $((SECONDS - started)) s"
fi
exit "$rc"

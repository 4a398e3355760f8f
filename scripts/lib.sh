# Shared by scripts/*.sh: install what is missing, find the build cache.
# shellcheck shell=bash

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# The build cache lives outside the clone, so fresh clones reuse it.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/deorch/target}"
mkdir -p "$CARGO_TARGET_DIR"

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

apt_updated=""
# apt_install PKG...: install the Debian packages that are not installed yet.
# Recommends are never installed (--no-install-recommends), so every package
# a command or test needs is named here even when another one recommends it
# (check with `apt-cache depends --recommends PKG`): gcc only recommends
# libc6-dev, samba only recommends samba-vfs-modules, git only
# ca-certificates. scripts/fresh-check.sh proves the lists on a bare root.
apt_install() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "installing Debian packages: ${missing[*]}"
  if [ -z "$apt_updated" ]; then
    as_root apt-get update -qq
    apt_updated=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

need_rust() {
  # deorch needs Rust >= 1.89 (rust-version in Cargo.toml). Debian 12's own
  # rustc is 1.63, too old, so it is not installed from apt: use rustup.
  if ! command -v cargo >/dev/null; then
    echo "cargo not found: install Rust >= 1.89 with rustup (https://rustup.rs)" >&2
    exit 1
  fi
  local v
  v=$(rustc --version | awk '{print $2}')
  if [ "$(printf '%s\n1.89.0\n' "$v" | sort -V | head -n1)" != "1.89.0" ]; then
    echo "rustc $v is older than 1.89: update it with rustup" >&2
    exit 1
  fi
  # The linker is gcc, with the C library's start files (libc6-dev, only a
  # recommend of gcc). The libvirt driver links libvirt (the `virt` crate
  # finds it with pkg-config). ca-certificates for crates.io. The node
  # and the tests run `kill` (procps: only "important", absent from slim
  # images) and `mount`/`umount` (tmpfs in the relocation tests).
  apt_install gcc libc6-dev pkg-config ca-certificates libvirt-dev procps mount
}

# Python tools (check-jsonschema) go into a private venv, never the system.
PY_VENV="${DEORCH_VENV:-$HOME/.cache/deorch/venv}"
need_python_tool() { # need_python_tool COMMAND PYPI-PACKAGE
  if [ ! -x "$PY_VENV/bin/$1" ]; then
    command -v python3 >/dev/null || apt_install python3
    if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
      apt_install python3-venv
    fi
    [ -x "$PY_VENV/bin/pip" ] || python3 -m venv "$PY_VENV"
    say "installing $2 into $PY_VENV"
    "$PY_VENV/bin/pip" install -q "$2"
  fi
  export PATH="$PY_VENV/bin:$PATH"
}

# Samba as an Active Directory DC for the level-2 test (tests/identity_ad.rs
# provisions its own domain in a temporary directory and runs it in a
# network namespace). Debian splits the DC: samba (the `samba` binary),
# samba-ad-provision (the AD schema samba-tool provisions from),
# samba-dsdb-modules and samba-vfs-modules (acl_xattr.so, which
# `samba-tool domain provision` loads for the sysvol share), all three only
# recommended; openssl makes the DC's test certificate. The test never uses /etc/samba or /var/lib/samba, nor the
# smbd/nmbd services the package installs (this image's policy-rc.d keeps
# them from starting; elsewhere they would run outside the test's
# namespace, unused).
need_samba() {
  apt_install samba samba-ad-provision samba-dsdb-modules samba-vfs-modules openssl iproute2
}

# QEMU 10 comes from bookworm-backports: the image already carries
# backports' qemu-utils, so the suite must be in the sources for
# qemu-system-x86 to resolve (see docs/ and shared recipes).
need_qemu() {
  # SPICE is a loadable module in Debian's QEMU: its package is separate.
  if command -v qemu-system-x86_64 >/dev/null && command -v qemu-img >/dev/null \
    && ls /usr/lib/*/qemu/ui-spice-core.so >/dev/null 2>&1; then
    return 0
  fi
  local src=/etc/apt/sources.list.d/deorch-backports.sources
  if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
    local uris keyring
    uris=$(awk '/^URIs:/ && /debian\/?$/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null)
    keyring=$(awk '/^Signed-By:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null)
    say "adding bookworm-backports to the apt sources ($src)"
    as_root tee "$src" >/dev/null <<SRC
Types: deb
URIs: ${uris:-http://deb.debian.org/debian}
Suites: bookworm-backports
Components: main
Signed-By: ${keyring:-/usr/share/keyrings/debian-archive-keyring.gpg}
SRC
    apt_updated=""
  fi
  if [ -z "$apt_updated" ]; then as_root apt-get update -qq; apt_updated=1; fi
  say "installing QEMU from bookworm-backports"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    -t bookworm-backports qemu-system-x86 qemu-utils qemu-system-modules-spice >/dev/null
}

#!/usr/bin/env bash
# Build the Debian package of deorch with dpkg-deb alone (no cargo-deb, no
# debhelper): the binary (stripped), the systemd unit, the default
# /etc/deorch/node.yaml (a conffile), /etc/deorch/manifests and
# /var/lib/deorch root's only (0700), shell completions and man pages made
# by the binary itself (`deorch completions`, `deorch man`), and the
# maintainer scripts in packaging/.
#
# Usage: scripts/deb.sh [--binary FILE] [--out DIR] [--fast]
#   --binary FILE  package this deorch executable; default: build the
#                  release binary (cargo build --release --locked)
#   --out DIR      where the .deb is written; default $CARGO_TARGET_DIR/debian
#   --fast         gzip -1 instead of xz -6 (tests/packaging.rs)
# Prints the path of the .deb on its last line. Needs dpkg-deb (dpkg),
# strip and readelf (binutils), gzip.
set -euo pipefail
cd "$(dirname "$0")/.."

binary=""
out=""
compress=(-Zxz -z6)
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --fast) compress=(-Zgzip -z1); shift ;;
    *) echo "scripts/deb.sh: unknown argument $1 (see the usage at the top of the script)" >&2; exit 2 ;;
  esac
done

if [ -z "$binary" ]; then
  source scripts/lib.sh
  say "building the release binary"
  cargo build --release --locked --bin deorch >&2
  binary="$CARGO_TARGET_DIR/release/deorch"
fi
[ -x "$binary" ] || { echo "scripts/deb.sh: $binary is not an executable" >&2; exit 1; }
out="${out:-${CARGO_TARGET_DIR:-$HOME/.cache/deorch/target}/debian}"
mkdir -p "$out"

# The version is the binary's own ("deorch 0.1.0").
version="$("$binary" version | awk 'NR == 1 { print $2 }')"
[ -n "$version" ] || { echo "scripts/deb.sh: $binary version printed no version" >&2; exit 1; }
arch="$(dpkg --print-architecture)"

root="$(mktemp -d "${TMPDIR:-/tmp}/deorch-deb.XXXXXX")"
trap 'rm -rf "$root"' EXIT
chmod 0755 "$root"

# The program.
install -d -m0755 "$root/usr/bin"
strip --strip-unneeded --remove-section=.comment --remove-section=.note \
  -o "$root/usr/bin/deorch" "$binary"
chmod 0755 "$root/usr/bin/deorch"
bin="$root/usr/bin/deorch"

# The service, its configuration and its directories.
install -D -m0644 packaging/deorch.service "$root/lib/systemd/system/deorch.service"
install -d -m0755 "$root/etc/deorch"
install -m0644 packaging/node.yaml "$root/etc/deorch/node.yaml"
install -d -m0700 "$root/etc/deorch/manifests" "$root/var/lib/deorch"

# Completions, from the binary.
install -d -m0755 "$root/usr/share/bash-completion/completions" \
  "$root/usr/share/zsh/vendor-completions" "$root/usr/share/fish/vendor_completions.d"
"$bin" completions bash >"$root/usr/share/bash-completion/completions/deorch"
"$bin" completions zsh >"$root/usr/share/zsh/vendor-completions/_deorch"
"$bin" completions fish >"$root/usr/share/fish/vendor_completions.d/deorch.fish"

# Man pages, from the binary: one per command, compressed as Debian does.
install -d -m0755 "$root/usr/share/man/man1"
"$bin" man --out "$root/usr/share/man/man1" >/dev/null
gzip -9n "$root"/usr/share/man/man1/*.1

install -D -m0644 packaging/copyright "$root/usr/share/doc/deorch/copyright"
find "$root" -type f -path "$root/usr/share/*" -exec chmod 0644 {} +

# Depends: the package of every shared library the binary names (libc6
# at least the newest GLIBC_ symbol version it uses), then the tools the
# node runs.
libs=""
while read -r soname; do
  path="$(ldd "$bin" | awk -v s="$soname" '$1 == s { print $3 } $1 ~ "/"s"$" { print $1 }' | head -1)"
  [ -n "$path" ] || { echo "scripts/deb.sh: cannot find $soname, which deorch needs" >&2; exit 1; }
  pkg="$(dpkg -S "*/$(basename "$(dirname "$path")")/$soname" 2>/dev/null | head -1 | cut -d: -f1)"
  [ -n "$pkg" ] || { echo "scripts/deb.sh: no installed package owns $path ($soname)" >&2; exit 1; }
  libs="$libs $pkg"
done < <(readelf -d "$bin" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
glibc="$(readelf -V "$bin" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1)"
depends=""
for pkg in $(printf '%s\n' $libs | sort -u); do
  if [ "$pkg" = libc6 ] && [ -n "$glibc" ]; then pkg="libc6 (>= $glibc)"; fi
  depends="$depends${depends:+, }$pkg"
done
depends="$depends, init-system-helpers (>= 1.54~), qemu-system-x86, qemu-utils"
# The linux network driver (`net: linux`): bridges and taps, VXLAN entries
# and the anti-spoofing rules; a node with it refuses to start without them.
recommends="iproute2, nftables"

install -d -m0755 "$root/DEBIAN"
installed_size="$(du -sk --exclude=DEBIAN "$root" | cut -f1)"
cat >"$root/DEBIAN/control" <<EOF
Package: deorch
Version: $version
Architecture: $arch
Maintainer: deorch developers <deorch@localhost>
Installed-Size: $installed_size
Depends: $depends
Recommends: $recommends
Suggests: libvirt-daemon-system, zfsutils-linux
Section: admin
Priority: optional
Description: decentralized de-orchestrator for QEMU/KVM virtual machines
 Every machine runs the same daemon; there is no central controller. Each
 node applies the Kubernetes-style manifests of its manifest directory and
 the signed documents its peers gossip, and runs its VMs under QEMU or
 libvirt on dir (qcow2) or zfs storage.
 .
 This package holds the deorch binary (daemon and CLI), the
 deorch.service unit, /etc/deorch/node.yaml, shell completions and man
 pages.
EOF
echo /etc/deorch/node.yaml >"$root/DEBIAN/conffiles"
for script in postinst prerm postrm; do
  install -m0755 "packaging/$script" "$root/DEBIAN/$script"
done

deb="$out/deorch_${version}_${arch}.deb"
dpkg-deb --root-owner-group "${compress[@]}" --build "$root" "$deb" >&2
echo "$deb"

#!/usr/bin/env bash
# Build deorch's tiny real guest from Debian packages only:
#   OUT/vmlinuz     the kernel of linux-image-*-cloud-amd64 (downloaded with
#                   apt-get download, unpacked with dpkg-deb -x; never
#                   installed on the host)
#   OUT/initrd.img  a busybox-static initramfs with the virtio modules, whose
#                   /init brings eth0 up with udhcpc, prints the lease and a
#                   ready marker on the serial console, then a counter every
#                   100 ms
# Usage: guest/build.sh [OUT]   (default /var/lib/deorch/guest)
# Idempotent: does nothing when OUT already holds this script's output.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-/var/lib/deorch/guest}"
stamp="$(sha256sum "$here/build.sh" "$here/init" "$here/udhcpc.script" | sha256sum | cut -c1-16)"
built() { [ -f "$out/vmlinuz" ] && [ -f "$out/initrd.img" ] && [ "$(cat "$out/STAMP" 2>/dev/null)" = "$stamp" ]; }
built && exit 0
command -v flock >/dev/null || { echo "guest/build.sh: flock missing (apt-get install util-linux)" >&2; exit 1; }
# One build at a time per OUT (tests in separate processes ask at once);
# whoever waited finds it built.
mkdir -p "$out"
exec 9>"$out/.lock"
flock 9
built && exit 0
for tool in busybox cpio dpkg-deb apt-get gzip; do
  command -v "$tool" >/dev/null || { echo "guest/build.sh: $tool missing (apt-get install busybox-static cpio)" >&2; exit 1; }
done
[ -x /bin/busybox ] && file_busybox=/bin/busybox || file_busybox="$(command -v busybox)"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
pkg="$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-/{print $2; exit}')"
if [ -z "$pkg" ]; then
  apt-get update -qq
  pkg="$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/{print $2; exit}')"
fi
[ -n "$pkg" ] || { echo "guest/build.sh: no linux-image-*-cloud-amd64 package found" >&2; exit 1; }
apt-get download -q "$pkg" >/dev/null
dpkg-deb -x ./"$pkg"_*.deb kroot
kver="${pkg#linux-image-}"
kernel="kroot/boot/vmlinuz-$kver"
[ -f "$kernel" ] || { echo "guest/build.sh: $kernel not in $pkg" >&2; exit 1; }

root="$work/root"
mkdir -p "$root"/{bin,sbin,etc/udhcpc,proc,sys,dev,run,tmp,lib/modules/"$kver"/kernel}
cp "$file_busybox" "$root/bin/busybox"
# The applet links, made here rather than by `busybox --install` at boot.
for applet in $("$file_busybox" --list); do
  [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
done
install -m 0755 "$here/init" "$root/init"
install -m 0755 "$here/udhcpc.script" "$root/etc/udhcpc/default.script"
# The cloud kernel builds virtio as modules; take them (and what they need).
for m in virtio virtio_ring virtio_pci virtio_pci_modern_dev virtio_pci_legacy_dev virtio_mmio \
         failover net_failover virtio_net virtio_blk button evdev; do
  f="$(find kroot/lib/modules/"$kver" -name "$m.ko*" | head -n1)"
  [ -n "$f" ] || continue
  case "$f" in
    *.ko.xz) xz -dc "$f" > "$root/lib/modules/$kver/kernel/$m.ko" ;;
    *.ko.zst) zstd -qdc "$f" > "$root/lib/modules/$kver/kernel/$m.ko" ;;
    *) cp "$f" "$root/lib/modules/$kver/kernel/$m.ko" ;;
  esac
done
"$file_busybox" depmod -b "$root" "$kver"
mkdir -p "$out"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -9) > "$out/initrd.img.tmp"
cp "$kernel" "$out/vmlinuz.tmp"
mv "$out/initrd.img.tmp" "$out/initrd.img"
mv "$out/vmlinuz.tmp" "$out/vmlinuz"
echo "$kver" > "$out/KERNEL"
echo "$stamp" > "$out/STAMP"
echo "guest built in $out: kernel $kver, initrd $(du -h "$out/initrd.img" | cut -f1)" >&2

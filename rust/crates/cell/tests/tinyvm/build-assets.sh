#!/usr/bin/env bash
# Builds the tiny VMs of the boot test (tests/boot.rs) from Debian packages:
#
#   OUTDIR/vmlinuz        the distribution kernel (linux-image-amd64's current version)
#   OUTDIR/busybox        busybox-static
#   OUTDIR/base.cpio.gz   an initramfs: busybox, the virtio network modules, and an /init
#                         that mounts the basics, loads the modules, runs /test/init.sh
#                         (console output on ttyS0) and powers off when it returns
#   OUTDIR/pack-test.sh   DIR OUT.cpio.gz: packs DIR as /test; append it to base.cpio.gz
#                         (the kernel unpacks concatenated archives in order)
#
# Cached: when OUTDIR/stamp names the same package versions and this script's hash,
# nothing is downloaded. A rebuild happens in a temporary directory that replaces
# OUTDIR by rename, so an interrupted build never leaves half an OUTDIR behind.
set -euo pipefail

out=${1:?usage: build-assets.sh OUTDIR}
say() { echo "tinyvm assets: $*" >&2; }

kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
if [ -z "$kpkg" ]; then
  say "no linux-image-amd64 in the package index; run apt-get update (as root) and try again"
  exit 1
fi
kver=$(apt-cache policy "$kpkg" | awk '/Candidate:/ {print $2}')
bver=$(apt-cache policy busybox-static | awk '/Candidate:/ {print $2}')
stamp="$kpkg $kver busybox-static $bver $(sha256sum "$0" | cut -c1-16)"
if [ -f "$out/stamp" ] && [ "$(cat "$out/stamp")" = "$stamp" ]; then
  say "cached ($kpkg $kver, busybox $bver)"
  exit 0
fi

parent=$(dirname "$out")
mkdir -p "$parent"
tmp=$(mktemp -d "$parent/.tinyvm-build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"

say "downloading $kpkg ($kver) and busybox-static ($bver)"
mkdir debs
# As root apt drops to _apt for downloads, which cannot write into our directory.
if ! (cd debs && apt-get download -q -o APT::Sandbox::User=root "$kpkg" busybox-static >/dev/null 2>&1); then
  say "apt-get download failed: is the Debian package index reachable? run apt-get update and try again"
  exit 1
fi
say "extracting"
mkdir kernel bb
dpkg-deb -x debs/"$kpkg"_*.deb kernel
dpkg-deb -x debs/busybox-static_*.deb bb
busybox=$PWD/bb/bin/busybox
modroot=$(echo kernel/lib/modules/*)
kname=${modroot##*/}

# The modules virtio networking needs, dependencies first, read from each module's
# own `depends=` (the package ships no modules.dep; depmod runs at install time).
declare -A path_of=() seen=()
while IFS= read -r ko; do
  n=${ko##*/}; n=${n%%.ko*}; path_of[$n]=$ko
done < <(find "$modroot/kernel" -name '*.ko*')
order=()
add() {
  local m=$1 deps d
  [ -n "${seen[$m]:-}" ] && return 0
  seen[$m]=1
  [ -n "${path_of[$m]:-}" ] || return 0 # built into the kernel
  deps=$(grep -a -o 'depends=[a-z0-9_,-]*' "${path_of[$m]}" | head -n1 | cut -d= -f2 | tr ',-' ' _')
  for d in $deps; do add "$d"; done
  order+=("$m")
}
for m in virtio_pci virtio_net; do add "$m"; done

say "building the initramfs ($kname; modules: ${order[*]})"
root=$PWD/root
mkdir -p root/bin root/dev root/proc root/sys root/tmp root/lib/modules root/test
cp "$busybox" root/bin/busybox
for m in "${order[@]}"; do
  src=${path_of[$m]}
  case "$src" in
    *.ko.xz) xz -dc "$src" > "root/lib/modules/$m.ko" ;;
    *.ko.zst) zstd -qdc "$src" > "root/lib/modules/$m.ko" ;;
    *) cp "$src" "root/lib/modules/$m.ko" ;;
  esac
done
printf '%s\n' "${order[@]}" > root/lib/modules/order
cat > root/init <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
while read -r m; do insmod "/lib/modules/$m.ko" || echo "cell-tinyvm: insmod $m failed"; done < /lib/modules/order
ip link set lo up
echo "cell-tinyvm: ready"
if [ -f /test/init.sh ]; then
  sh /test/init.sh
else
  echo "cell-tinyvm: no /test/init.sh"
fi
poweroff -f
INIT
chmod 0755 root/init
(cd root && find . | LC_ALL=C sort | "$busybox" cpio -o -H newc 2>/dev/null) | gzip -9n > base.cpio.gz

cat > pack-test.sh <<'PACK'
#!/usr/bin/env bash
# pack-test.sh DIR OUT.cpio.gz: DIR's files as /test/... in a gzipped newc archive.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src=${1:?usage: pack-test.sh DIR OUT.cpio.gz}
dst=${2:?usage: pack-test.sh DIR OUT.cpio.gz}
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir "$stage/test"
cp -R "$src"/. "$stage/test/"
(cd "$stage" && find test | LC_ALL=C sort | "$here/busybox" cpio -o -H newc 2>/dev/null) | gzip -9n > "$dst"
PACK
chmod 0755 pack-test.sh

mkdir result
mv "kernel/boot/vmlinuz-$kname" result/vmlinuz
mv "$busybox" result/busybox
mv base.cpio.gz pack-test.sh result/
echo "$stamp" > result/stamp
rm -rf "$out"
mv result "$out"
say "built in $out ($(du -sh "$out" | cut -f1))"

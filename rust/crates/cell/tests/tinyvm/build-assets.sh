#!/usr/bin/env bash
# Builds the tiny VMs of the boot test (tests/boot.rs) from Debian packages:
#
#   OUTDIR/vmlinuz        the distribution kernel (linux-image-amd64's current version)
#   OUTDIR/busybox        busybox-static
#                         (the initramfs also holds dropbear, the SSH server, with the
#                         shared libraries it needs, so `cell` can reach the VMs as it
#                         reaches the real ones: SSH to the firewall, through it to the agent)
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
dver=$(apt-cache policy dropbear-bin | awk '/Candidate:/ {print $2}')
stamp="$kpkg $kver busybox-static $bver dropbear-bin $dver $(sha256sum "$0" | cut -c1-16)"
if [ -f "$out/stamp" ] && [ "$(cat "$out/stamp")" = "$stamp" ]; then
  say "cached ($kpkg $kver, busybox $bver, dropbear $dver)"
  exit 0
fi

parent=$(dirname "$out")
mkdir -p "$parent"
tmp=$(mktemp -d "$parent/.tinyvm-build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"

say "downloading $kpkg ($kver), busybox-static ($bver) and dropbear-bin ($dver)"
mkdir debs
# As root apt drops to _apt for downloads, which cannot write into our directory.
if ! (cd debs && apt-get download -q -o APT::Sandbox::User=root "$kpkg" busybox-static \
  dropbear-bin libtomcrypt1 libtommath1 >/dev/null 2>&1); then
  say "apt-get download failed: is the Debian package index reachable? run apt-get update and try again"
  exit 1
fi
say "extracting"
mkdir kernel bb db
dpkg-deb -x debs/"$kpkg"_*.deb kernel
dpkg-deb -x debs/busybox-static_*.deb bb
for d in debs/dropbear-bin_*.deb debs/libtomcrypt1_*.deb debs/libtommath1_*.deb; do dpkg-deb -x "$d" db; done
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

# dropbear and the libraries it links (from its packages, the rest from this
# Debian system's own packages), at the paths the dynamic loader looks in.
mkdir -p root/usr/sbin root/etc/dropbear
cp db/usr/sbin/dropbear root/usr/sbin/dropbear
libs=$(LD_LIBRARY_PATH="$PWD/db/usr/lib/x86_64-linux-gnu" ldd db/usr/sbin/dropbear | awk '/=> \// {print $3} /^\t\/lib64/ {print $1}')
for lib in $libs; do
  case "$lib" in
    /lib64/*) mkdir -p root/lib64 && cp -L "$lib" root/lib64/ ;;
    *) mkdir -p root/lib/x86_64-linux-gnu && cp -L "$lib" root/lib/x86_64-linux-gnu/ ;;
  esac
done
if ! [ -e root/lib64/ld-linux-x86-64.so.2 ]; then
  say "dropbear's dynamic loader did not make it into the initramfs"; exit 1
fi
cat > root/etc/passwd <<'PASSWD'
root:x:0:0:root:/root:/bin/sh
agent:x:1000:1000:agent:/home/agent:/bin/sh
PASSWD
cat > root/etc/group <<'GROUP'
root:x:0:
agent:x:1000:
GROUP
echo /bin/sh > root/etc/shells
cat > root/init <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/usr/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
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

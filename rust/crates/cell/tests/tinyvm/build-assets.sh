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
# For the real firewall of tests/boot_real.rs, when this host has nft and curl
# (scripts/dev deps installs them):
#
#   OUTDIR/firewall-real.cpio.gz  append to base.cpio.gz: Debian's nft (this host's
#                         nftables package) with its libraries, and the netfilter modules
#                         cell-proxy's ruleset needs (nf_tables, nat/redirect, reject, ct,
#                         limit, log → nfnetlink_log), added to the modules /init loads
#   OUTDIR/agent-real.cpio.gz     append to base.cpio.gz: curl, iputils ping and tracepath, with their libraries
#   OUTDIR/pack-root.sh   STAGE OUT.cpio.gz [BIN...]: copies each BIN (stripped) to
#                         STAGE/usr/bin with the shared libraries it links, packs STAGE as /
#
# Cached: when OUTDIR/stamp names the same package versions and this script's hash,
# nothing is downloaded. A rebuild happens in a temporary directory that replaces
# OUTDIR by rename, so an interrupted build never leaves half an OUTDIR behind.
set -euo pipefail

out=${1:?usage: build-assets.sh OUTDIR}
say() { echo "tinyvm assets: $*" >&2; }
# Two test binaries may build the same OUTDIR at once: one at a time.
mkdir -p "$(dirname "$out")"
exec 9>"$out.lock"
flock 9

kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
if [ -z "$kpkg" ]; then
  say "no linux-image-amd64 in the package index; run apt-get update (as root) and try again"
  exit 1
fi
kver=$(apt-cache policy "$kpkg" | awk '/Candidate:/ {print $2}')
bver=$(apt-cache policy busybox-static | awk '/Candidate:/ {print $2}')
iver=$(apt-cache policy iputils-ping | awk '/Candidate:/ {print $2}')
dver=$(apt-cache policy dropbear-bin | awk '/Candidate:/ {print $2}')
hostver() { dpkg-query -W -f '${Version}' "$1" 2>/dev/null || echo none; }
real=yes
command -v nft >/dev/null 2>&1 && command -v curl >/dev/null 2>&1 || real=
stamp="$kpkg $kver busybox-static $bver dropbear-bin $dver iputils $iver $(sha256sum "$0" | cut -c1-16)"
[ -z "$real" ] || stamp="$stamp nftables $(hostver nftables) curl $(hostver curl)"
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
  dropbear-bin libtomcrypt1 libtommath1 iputils-ping iputils-tracepath >/dev/null 2>&1); then
  say "apt-get download failed: is the Debian package index reachable? run apt-get update and try again"
  exit 1
fi
say "extracting"
mkdir kernel bb db
dpkg-deb -x debs/"$kpkg"_*.deb kernel
dpkg-deb -x debs/busybox-static_*.deb bb
for d in debs/dropbear-bin_*.deb debs/libtomcrypt1_*.deb debs/libtommath1_*.deb; do dpkg-deb -x "$d" db; done
# iputils' ping and tracepath for the real agent: unlike busybox's they report
# an ICMP error at once (ping: "Packet filtered"; tracepath: "!H" on a UDP
# datagram), so the boot test can tell a refusal from a timeout.
mkdir iputils
for d in debs/iputils-ping_*.deb debs/iputils-tracepath_*.deb; do dpkg-deb -x "$d" iputils; done
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

cat > pack-root.sh <<'PACK'
#!/usr/bin/env bash
# pack-root.sh STAGE OUT.cpio.gz [BIN...]: each BIN (stripped when strip exists)
# into STAGE/usr/bin with the shared libraries it links (from this host, where
# the dynamic loader looks for them), then STAGE packed as / in a gzipped
# newc archive to append to base.cpio.gz.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
stage=${1:?usage: pack-root.sh STAGE OUT.cpio.gz [BIN...]}
dst=${2:?usage: pack-root.sh STAGE OUT.cpio.gz [BIN...]}
shift 2
mkdir -p "$stage/usr/bin"
for bin in "$@"; do
  name=${bin##*/}
  if command -v strip >/dev/null 2>&1; then
    strip -o "$stage/usr/bin/$name" "$bin"
  else
    cp -L "$bin" "$stage/usr/bin/$name"
  fi
  for lib in $(ldd "$bin" | awk '/=> \// {print $3} /^\t\/lib64/ {print $1}'); do
    case "$lib" in
      /lib64/*) mkdir -p "$stage/lib64" && cp -L "$lib" "$stage/lib64/" ;;
      *) mkdir -p "$stage/lib/x86_64-linux-gnu" && cp -L "$lib" "$stage/lib/x86_64-linux-gnu/" ;;
    esac
  done
done
(cd "$stage" && find . | LC_ALL=C sort | "$here/busybox" cpio -o -H newc 2>/dev/null) | gzip -9n > "$dst"
PACK
chmod 0755 pack-root.sh

mkdir result
if [ -n "$real" ]; then
  # The netfilter modules of the same kernel, after the virtio ones in /init's
  # order (the list replaces base's: later archives overwrite earlier files).
  # crc32c_generic first: libcrc32c (nf_tables needs it) only names it as a
  # softdep, and its init fails without a crc32c implementation.
  nf=(crc32c_generic nf_tables nfnetlink nf_conntrack nf_nat nft_chain_nat nft_redir nft_reject
    nft_reject_inet nf_reject_ipv4 nf_reject_ipv6 nft_ct nft_limit nft_log nfnetlink_log
    nft_fib nft_fib_ipv4 nft_fib_ipv6 nft_fib_inet)
  base_order=("${order[@]}")
  order=()
  for m in "${nf[@]}"; do
    if [ -z "${path_of[$m]:-}" ] && ! grep -q "/$m.ko" "$modroot/modules.builtin"; then
      say "$kpkg has no module $m"; exit 1
    fi
    add "$m"
  done
  say "the real firewall's extra modules: ${order[*]}"
  mkdir -p fw/lib/modules
  for m in "${order[@]}"; do
    src=${path_of[$m]}
    case "$src" in
      *.ko.xz) xz -dc "$src" > "fw/lib/modules/$m.ko" ;;
      *.ko.zst) zstd -qdc "$src" > "fw/lib/modules/$m.ko" ;;
      *) cp "$src" "fw/lib/modules/$m.ko" ;;
    esac
  done
  printf '%s\n' "${base_order[@]}" "${order[@]}" > fw/lib/modules/order
  cp "$busybox" result/busybox
  cp pack-root.sh result/
  bash result/pack-root.sh fw firewall-real.cpio.gz "$(command -v nft)"
  mkdir ag
  bash result/pack-root.sh ag agent-real.cpio.gz "$(command -v curl)" iputils/bin/ping iputils/usr/bin/tracepath
  mv firewall-real.cpio.gz agent-real.cpio.gz result/
  rm result/busybox
fi
mv "kernel/boot/vmlinuz-$kname" result/vmlinuz
mv "$busybox" result/busybox
mv base.cpio.gz pack-test.sh pack-root.sh result/
echo "$stamp" > result/stamp
rm -rf "$out"
mv result "$out"
say "built in $out ($(du -sh "$out" | cut -f1))"

#!/usr/bin/env bash
# demo.sh CELL: the host CLI driving two tiny VMs under qemu (TCG), the same
# ones the boot test uses — a Debian kernel and a busybox initramfs with
# dropbear, built from Debian packages. Their firewall is a stand-in (no
# nftables, no cell-proxy): this shows the launcher, the private link and the
# CLI, not the firewall's rules (the lab demo above shows those).
set -euo pipefail
bin=${1:?usage: demo.sh PATH-TO-cell}
here=$(cd "$(dirname "$0")" && pwd)
assets=$(cd "$here/../../../.." && pwd)/target/tmp/tinyvm-assets
work=$(mktemp -d)
export CELL_STATE_DIR=$work/state
cell() { "$bin" "$@"; }
cleanup() { cell destroy -i demo --yes >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT

bash "$here/build-assets.sh" "$assets"
mkdir -p "$work/specs"
for role in firewall agent; do
  mkdir -p "$work/test-$role"
  cat "$here/ssh-setup.sh" "$here/$role.sh" > "$work/test-$role/init.sh"
  bash "$assets/pack-test.sh" "$work/test-$role" "$work/$role-test.cpio.gz"
  cat "$assets/base.cpio.gz" "$work/$role-test.cpio.gz" > "$work/specs/$role.initrd"
done
spec() { # role link-mac uplink-json
  printf '{"version":1,"role":"%s","system":"x86_64-linux","kernel":"%s","initrd":"%s","cmdline":["quiet","cell.test_hostport=9"],"vcpu":1,"mem":256,"linkMac":"%s","uplinkMac":%s}\n' \
    "$1" "$assets/vmlinuz" "$work/specs/$1.initrd" "$2" "$3" > "$work/specs/$1.json"
}
spec firewall 02:ce:11:00:00:01 '"02:ce:11:00:01:01"'
spec agent 02:ce:11:00:00:02 null
echo '{"https":[{"host":"api.anthropic.com","methods":["POST"]}],"tcp":[{"host":"github.com","ports":[22]}]}' > "$work/specs/policy.json"

show() {
  printf '\n$ cell %s\n' "$*"
  cell "$@" 2>&1 | sed 's/^/  /' || true
}
show start -i demo --specs "$work/specs" --accel tcg
show status -i demo
show run -i demo -- ls /sys/class/net
show run -i demo -- ip -o -4 addr show
# qemu's address for the host: reachable from the firewall's uplink, not from the agent.
show run -i demo -- nc -w 3 10.0.2.2 22
show allow -i demo https pypi.org --method GET
show allow -i demo https '*'
show policy -i demo
show blocked -i demo -n 2
show stop -i demo --timeout 2s

# The real firewall VM of tests/boot_real.rs (runs as /test/init.sh after
# ssh-setup.sh): what modules/firewall/default.nix sets up, without systemd.
# The interfaces named by MAC as the module's .link units name them, its
# sysctls, the policy and secrets documents in /etc/cell, the workspace's
# cell-proxy with the module's flags, and the module's three scripts for the
# host CLI. Markers on the console say how far boot got (uptime in seconds).
set -u
up() { cut -d' ' -f1 /proc/uptime; }
# devtmpfs has no /dev/stdin and friends (nft -f - opens /dev/stdin).
ln -sf /proc/self/fd /dev/fd
ln -sf /proc/self/fd/0 /dev/stdin
ln -sf /proc/self/fd/1 /dev/stdout
ln -sf /proc/self/fd/2 /dev/stderr
for i in /sys/class/net/*; do
  n=${i##*/}
  case "$(cat $i/address)" in
    02:ce:11:00:00:01) ip link set "$n" name agent0 ;;
    02:ce:11:00:01:01) ip link set "$n" name uplink0 ;;
  esac
done
# The module's sysctls: rejected UDP and ICMP fail fast (destination-unreachable
# is exempt from the ICMP rate limits); no forwarding (the policy has no cidr rule).
echo 6160 > /proc/sys/net/ipv4/icmp_ratemask
echo 0,3-127 > /proc/sys/net/ipv6/icmp/ratemask
echo 0 > /proc/sys/net/ipv4/ip_forward
echo 0 > /proc/sys/net/ipv6/conf/all/forwarding
echo 0 > /proc/sys/net/ipv6/conf/agent0/accept_ra
echo 0 > /proc/sys/net/ipv6/conf/agent0/accept_dad
ip addr add 10.89.0.1/24 dev agent0
ip addr add fd89::1/64 dev agent0
ip link set agent0 up
# The uplink: qemu's user-mode network (what DHCP would hand out there).
ip addr add 10.0.2.15/24 dev uplink0
ip link set uplink0 up
ip route add default via 10.0.2.2

mkdir -p /etc/cell /var/lib/cell-proxy /run/cell-proxy /var/log/cell-proxy /usr/bin
chmod 700 /var/lib/cell-proxy /run/cell-proxy
# nft resolves protocol names (tcp, udp, icmpv6 …) through /etc/protocols
# (netbase's, in a full system).
cat > /etc/protocols <<'P'
ip 0 IP
icmp 1 ICMP
igmp 2 IGMP
tcp 6 TCP
udp 17 UDP
ipv6 41 IPv6
ipv6-route 43 IPv6-Route
ipv6-frag 44 IPv6-Frag
gre 47 GRE
esp 50 IPSEC-ESP
ah 51 IPSEC-AH
ipv6-icmp 58 IPv6-ICMP icmpv6
ipv6-nonxt 59 IPv6-NoNxt
ipv6-opts 60 IPv6-Opts
sctp 132 SCTP
udplite 136 UDPLite
P
cp /test/policy.json /test/secrets.json /test/upstream-ca.pem /etc/cell/
# Debian's kernels are built without CONFIG_NFT_REJECT_NETDEV, which the
# ruleset's netdev table uses for link-local sources (the NixOS kernel has
# it). The one departure from the real image: those two rejects become drops
# on their way to nft; every other statement reaches the kernel as compiled.
cat > /usr/bin/nft-debian <<'NFT'
#!/bin/sh
case " $* " in
  *" -f - "*)
    tr -d '\n' | sed -e 's/{ *"\(add\|delete\|flush\)" *:/\n&/g' |
      sed -e '/"family" *: *"netdev"/ s/{ *"reject" *: *{[^}]*} *}/{"drop":null}/g' |
      tr -d '\n' | /usr/bin/nft "$@" ;;
  *) exec /usr/bin/nft "$@" ;;
esac
NFT
chmod 755 /usr/bin/nft-debian

# The module's scripts, calling cell-proxy exactly as they do there.
cat > /usr/bin/cell-overlay-install <<'S'
#!/bin/sh
exec /usr/bin/cell-proxy --policy /etc/cell/policy.json \
  --overlay /var/lib/cell-proxy/overlay.json \
  --control /run/cell-proxy/control \
  --install-overlay -
S
cat > /usr/bin/cell-secrets-load <<'S'
#!/bin/sh
exec /usr/bin/cell-proxy --control /run/cell-proxy/control --load-secrets -
S
cat > /usr/bin/cell-secrets-status <<'S'
#!/bin/sh
exec /usr/bin/cell-proxy --control /run/cell-proxy/control --secrets-status
S
cat > /usr/bin/cell-proxy-status <<'S'
#!/bin/sh
exec /usr/bin/cell-proxy --control /run/cell-proxy/control --status
S
chmod 755 /usr/bin/cell-overlay-install /usr/bin/cell-secrets-load /usr/bin/cell-secrets-status \
  /usr/bin/cell-proxy-status

echo "FW-BOOTED $(up)"
# The module's ExecStart (its `args`), RUST_LOG=info as there.
RUST_LOG=info /usr/bin/cell-proxy \
  --policy /etc/cell/policy.json \
  --secrets /etc/cell/secrets.json \
  --overlay /var/lib/cell-proxy/overlay.json \
  --agent-iface agent0 \
  --listen 10.89.0.1 \
  --agent-addr 10.89.0.2 \
  --agent-addr fd89::2 \
  --dns-port 53 \
  --transparent-port 15001 \
  --explicit-port 3128 \
  --nflog-group 7 \
  --nft /usr/bin/nft-debian \
  --state-dir /var/lib/cell-proxy \
  --control /run/cell-proxy/control \
  --events /var/log/cell-proxy/events.jsonl \
  --events-max-bytes 16777216 \
  --events-keep 4 \
  --upstream-ca /etc/cell/upstream-ca.pem \
  --spy /var/lib/cell-proxy/spy.jsonl \
  --spy-max-bytes 67108864 \
  --spy-keep 4 \
  --spy-body-max 1048576 \
  </dev/null >/dev/console 2>&1 &
echo $! > /run/cell-proxy/pid
for try in $(seq 1 600); do
  grep -q '"event":"ready"' /var/log/cell-proxy/events.jsonl 2>/dev/null && break
  kill -0 "$(cat /run/cell-proxy/pid)" 2>/dev/null || break
  sleep 0.2
done
if grep -q '"event":"ready"' /var/log/cell-proxy/events.jsonl 2>/dev/null; then
  echo "FW-PROXY-READY $(up)"
else
  echo "FW-PROXY-FAILED $(up)"
fi
# sshd after cell-proxy: a connection to the agent opened before the ruleset
# loads is not tracked, so its replies would be refused as new.
start_ssh root /root 0 10.0.2.15
while true; do sleep 60; done

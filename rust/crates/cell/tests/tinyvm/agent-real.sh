# The agent VM of tests/boot_real.rs (runs as /test/init.sh after
# ssh-setup.sh): one NIC, the link; DNS and gateway the firewall; the cell CA
# fetched from the firewall at boot as modules/agent/default.nix's
# cell-fetch-ca does, and trusted by curl. Markers carry the uptime.
set -u
up() { cut -d' ' -f1 /proc/uptime; }
ln -sf /proc/self/fd /dev/fd
ln -sf /proc/self/fd/0 /dev/stdin
ln -sf /proc/self/fd/1 /dev/stdout
ln -sf /proc/self/fd/2 /dev/stderr
for i in /sys/class/net/*; do
  [ "$(cat $i/address)" = 02:ce:11:00:00:02 ] && ip link set "${i##*/}" name cell0
done
echo 0 > /proc/sys/net/ipv6/conf/cell0/accept_dad
ip addr add 10.89.0.2/24 dev cell0
ip addr add fd89::2/64 dev cell0
ip link set cell0 up
ip route add default via 10.89.0.1
ip -6 route add default via fd89::1
echo "nameserver 10.89.0.1" > /etc/resolv.conf
start_ssh agent /home/agent 1000 10.89.0.2
echo "AGENT-BOOTED $(up)"
ca=http://10.89.0.1:3128/cell/ca.crt
umask 022
mkdir -p /run/cell
if curl --fail --silent --show-error --noproxy '*' \
  --retry 120 --retry-delay 1 --retry-connrefused --retry-all-errors \
  --connect-timeout 2 --max-time 5 --max-filesize 65536 \
  --output /run/cell/ca.tmp "$ca" && grep -q 'BEGIN CERTIFICATE' /run/cell/ca.tmp; then
  mv /run/cell/ca.tmp /run/cell/ca.crt
  cp /run/cell/ca.crt /run/cell/ca-bundle.crt
  # What the module's CURL_CA_BUNDLE does for every session.
  echo "cacert = /run/cell/ca-bundle.crt" > /home/agent/.curlrc
  chown 1000:1000 /home/agent/.curlrc
  echo "AGENT-CA $(up)"
else
  echo "AGENT-NO-CA $(up)"
fi
# ICMP to the internet, IPv4 and IPv6, as root (ping needs a raw socket; the
# agent user has none): `AGENT-PING START END STATUS | what ping said`, one
# line, so the console's other writers (dropbear's log) cannot come between
# (iputils' ping ends at once on an ICMP error: "Packet filtered").
for v in 4:203.0.113.10 6:2001:db8:2::10; do
  s=$(up)
  /usr/bin/ping -"${v%%:*}" -n -c 1 -W 5 "${v#*:}" > /tmp/ping.out 2>&1
  r=$?
  echo "AGENT-PING${v%%:*} $s $(up) status=$r | $(grep -m1 -E 'From|bytes from|ping:' /tmp/ping.out)"
done
while true; do sleep 60; done

# The tiny firewall VM of the boot test and the demo (runs as /test/init.sh after
# ssh-setup.sh): link + uplink, sshd, a service on the link, stand-ins for
# cell-overlay-install and the secrets scripts, sample cell-proxy events. It has no nftables: it stands
# in for the real image only as far as the launcher wiring goes.
set -u
HOSTPORT=$(sed -n 's/.*cell.test_hostport=\([0-9]*\).*/\1/p' /proc/cmdline)
for i in /sys/class/net/*; do
  n=${i##*/}
  case "$(cat $i/address)" in
    02:ce:11:00:00:01) LINK=$n ;;
    02:ce:11:00:01:01) UP=$n ;;
  esac
done
ip link set "$LINK" up
ip addr add 10.89.0.1/24 dev "$LINK"
ip link set "$UP" up
ip addr add 10.0.2.15/24 dev "$UP"
ip route add default via 10.0.2.2
# No forwarding: the firewall answers the agent itself, routes nothing.
echo 0 > /proc/sys/net/ipv4/ip_forward
# The control path: the host's forwarded loopback port lands on sshd.
start_ssh root /root 0 10.0.2.15
# What `cell allow` runs over SSH (the real image runs cell-proxy
# --install-overlay, tested on its own): show what arrived.
mkdir -p /usr/bin /var/lib/cell-proxy /var/log/cell-proxy
cat > /usr/bin/cell-overlay-install <<'INSTALL'
#!/bin/sh
cat > /var/lib/cell-proxy/overlay.json
echo "FW-OVERLAY $(cat /var/lib/cell-proxy/overlay.json)" > /dev/console
echo '{"ok":true,"event":{"decision":"applied"}}'
INSTALL
chmod 755 /usr/bin/cell-overlay-install
# What cell runs over SSH to push secret values (the real image hands stdin
# to cell-proxy --load-secrets -, tested on its own) and to ask which are
# loaded: stand-ins that keep what arrived in RAM and say its digest, never
# the value, on the console.
cat > /usr/bin/cell-secrets-load <<'LOAD'
#!/bin/sh
cat > /tmp/cell-secrets.got
echo "FW-SECRETS $(sha256sum < /tmp/cell-secrets.got | cut -d' ' -f1)" > /dev/console
echo '{"ok":true,"loaded":["boot"],"refused":[]}'
LOAD
cat > /usr/bin/cell-secrets-status <<'STATUS'
#!/bin/sh
if [ -s /tmp/cell-secrets.got ]; then l=true; else l=false; fi
echo '{"ok":true,"secrets":[{"name":"boot","placeholder":"cell-placeholder-boot","kind":"token","hosts":["api.anthropic.com"],"locations":["header"],"source":"env","loaded":'$l',"uses":0}]}'
STATUS
# This stand-in runs no cell-proxy; `cell status` asks it anyway and is
# told so (boot_real.rs checks the real daemon's answer, up and down).
cat > /usr/bin/cell-proxy-status <<'STATUS'
#!/bin/sh
echo '{"ok":true,"https":0,"tcp":0,"cidr":0,"deny":0,"names":0,"secrets_loaded":0,"pid":0,"uptime_secs":0,"note":"the boot test stand-in runs no cell-proxy"}'
STATUS
chmod 755 /usr/bin/cell-secrets-load /usr/bin/cell-secrets-status /usr/bin/cell-proxy-status
# An event line in cell-proxy's format, for `cell blocked` to fetch.
echo '{"event":"dns","client":"10.89.0.2:41000","name":"evil.example","type":"A","decision":"deny","rcode":"NXDomain","reason":"no-rule","time":"2026-11-24T10:00:01.000Z"}' > /var/log/cell-proxy/events.jsonl
# …and a denial every second from now on, for `cell blocked --follow`.
( while true; do sleep 1; echo '{"event":"conn","client":"10.89.0.2:40000","host":"db.example","port":5432,"kind":"tcp","decision":"deny","reason":"no-rule","time":"2026-11-24T10:00:02.000Z"}' >> /var/log/cell-proxy/events.jsonl; done ) &
# The private link service the agent must reach.
( while true; do echo hello-from-firewall | nc -l -p 7000; done ) &
# Positive control: the host's listener is reachable from the uplink.
sleep 1
if echo fw-was-here | nc -w 5 10.0.2.2 "$HOSTPORT"; then echo FW-REACHED-HOST; else echo FW-HOST-FAILED; fi
echo FW-UP
while true; do sleep 60; done

# The tiny agent VM of the boot test and the demo (runs as /test/init.sh after
# ssh-setup.sh): configure the link, reach the firewall, try to reach anything
# else, report on the console, stay up for SSH.
set -u
HOSTPORT=$(sed -n 's/.*cell.test_hostport=\([0-9]*\).*/\1/p' /proc/cmdline)
echo "AGENT-NICS $(ls /sys/class/net | tr '\n' ' ')"
for i in /sys/class/net/*; do
  [ "$(cat $i/address)" = 02:ce:11:00:00:02 ] && LINK=${i##*/}
done
ip link set "$LINK" up
ip addr add 10.89.0.2/24 dev "$LINK"
ip route add default via 10.89.0.1
start_ssh agent /home/agent 1000 10.89.0.2
# Where the NixOS agent's cell-agent-key unit keeps the user's git key.
mkdir -p /var/lib/cell-agent
echo "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ7cellTinyVmTestKeyOnly agent@cell" > /var/lib/cell-agent/id_ed25519.pub
got=""
for try in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
  got=$(nc -w 3 10.89.0.1 7000 </dev/null 2>/dev/null)
  [ "$got" = hello-from-firewall ] && break
  sleep 1
done
if [ "$got" = hello-from-firewall ]; then echo AGENT-REACHED-FIREWALL; else echo AGENT-NO-FIREWALL; fi
# Everything beyond the firewall VM must fail: the host through qemu's gateway
# address, qemu's DNS, the wider world. (The firewall VM's own addresses are
# the firewall's to guard: this busybox stand-in has no nftables; the real
# image's ruleset admits only DNS and the proxy from the link, proven by the
# lab tests.)
for target in 10.0.2.2:$HOSTPORT 10.0.2.3:53 192.0.2.1:80; do
  if echo agent-was-here | nc -w 3 ${target%:*} ${target#*:} >/dev/null 2>&1; then
    echo "AGENT-ESCAPED $target"
  else
    echo "AGENT-BLOCKED $target"
  fi
done
echo AGENT-DONE
while true; do sleep 60; done

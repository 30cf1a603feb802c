# start_ssh USER HOME UID ADDRESS: the host CLI key from the kernel command line
# (cell.ssh_key=, base64url, as the NixOS cell-boot-key unit reads it), then dropbear.
start_ssh() {
  k=$(sed -n 's/.*cell.ssh_key=\([A-Za-z0-9_-]*\).*/\1/p' /proc/cmdline | tr '_-' '/+')
  while [ $(( ${#k} % 4 )) -ne 0 ]; do k="$k="; done
  mkdir -p "$2/.ssh"
  printf '%s' "$k" | base64 -d > "$2/.ssh/authorized_keys"
  echo >> "$2/.ssh/authorized_keys"
  chmod 755 "$2"; chmod 700 "$2/.ssh"; chmod 600 "$2/.ssh/authorized_keys"
  chown -R "$3:$3" "$2"
  dropbear -R -E -p "$4:22" 2>/dev/console
}

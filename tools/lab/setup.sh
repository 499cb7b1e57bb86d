#!/usr/bin/env bash
# tools/lab/setup.sh: what the lab VM needs on a Debian 12 host (root). Idempotent; --check only reports.
set -euo pipefail
APT=(qemu-system-x86 linux-image-amd64 busybox-static    # the VM: QEMU, Debian's kernel and modules, initramfs
     iptables nftables iproute2 conntrack nfct conntrackd  # the firewall and the reference daemon
     rpcbind python3 python3-pyftpdlib kmod file         # peers; modprobe; virtme-ng runs `file`
     pptpd pptp-linux ppp)                                # the pptp scenario's VPN server, client and pppd
PIP=virtme-ng                                            # provides vng
[ "$(id -u)" = 0 ] || { echo "setup.sh: run as root" >&2; exit 1; }
missing=()
for p in "${APT[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p"); done
need_pip=0; command -v vng >/dev/null 2>&1 || need_pip=1
if [ "${1:-}" = --check ]; then
    [ ${#missing[@]} -eq 0 ] && [ $need_pip = 0 ] && { echo "setup.sh: all present"; exit 0; }
    echo "setup.sh: missing: ${missing[*]} $([ $need_pip = 1 ] && echo "pip:$PIP")"; exit 1
fi
if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    echo "setup.sh: apt installed ${missing[*]}"
fi
if [ $need_pip = 1 ]; then
    # a venv of the lab's own (Debian's python refuses system-wide pip installs), vng linked onto PATH
    venv=${LAB_PIP_VENV:-/opt/lab-venv}
    python3 -m venv "$venv" && "$venv/bin/pip" install -q "$PIP"
    ln -sf "$venv"/bin/vng /usr/local/bin/vng
    for c in "$venv"/bin/virtme-*; do ln -sf "$c" /usr/local/bin/; done
    echo "setup.sh: $PIP in $venv"
fi

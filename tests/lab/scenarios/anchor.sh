#!/bin/bash
# anchor: the shared lab's reference run (anchor-conntrackd.sh, outside this repository) twice on the same
# traffic, first with conntrackd's own rpc and ftp helpers, then with alg serving both
# (helpers pre-registered with `nfct add helper`, which alg takes over: same policy names
# rpc/ftp and priv_data_len 16/24). Each run: RPC GETPORT over UDP then TCP to the returned
# port, FTP PASV + RETR; RELATED through a firewall that drops other NEW flows; negative
# controls (helpers registered but no daemon; daemon killed; helpers disabled).
# Passes when both runs PASS and alg's expectations equal conntrackd's (ports normalised).
# It needs that script: LAB_REFERENCE names the folder holding it (the lab this project's runner was
# learnt from); without it the scenario is skipped (exit 77, reported as a skip by tests/test_lab.py).
set -u
# shellcheck source=../lib.sh
source "$ALG_ROOT/tests/lab/lib.sh"
ANCHOR=${LAB_REFERENCE:-}/anchor-conntrackd.sh
[ -n "${LAB_REFERENCE:-}" ] && [ -r "$ANCHOR" ] || { echo "SKIP anchor: set LAB_REFERENCE to the folder of anchor-conntrackd.sh"; exit 77; }
OUT=$LAB_SCRATCH/anchor-alg; mkdir -p "$OUT" /run/alg-lab/anchor
POL=/run/alg-lab/anchor/policy; mkdir -p "$POL"
cat >"$POL/rpc.toml" <<TOML
helper = "rpc"
queue = 1
protocols = ["udp"]
families = ["ipv4"]
TOML
cat >"$POL/ftp.toml" <<TOML
helper = "ftp"
queue = 0
families = ["ipv4"]
TOML
normalise() {  # drop timeouts, ephemeral client ports and the FTP data port
    sed -E 's/^(rpc|ftp): [0-9]+ /\1: /; s/(master-dst=[^ ]+ sport=)[0-9]+/\1C/; s/dport=5000[0-9]/dport=P/' "$1" | sort
}

mkdir -p "$LAB_SCRATCH/conntrackd"
LAB_DIR=$LAB_REFERENCE LAB_SCRATCH=$LAB_SCRATCH/conntrackd bash "$ANCHOR" >"$OUT/conntrackd.out" 2>&1
tail -1 "$OUT/conntrackd.out"
tail -1 "$OUT/conntrackd.out" | grep -q "rpc PASS ftp PASS (negative controls PASS)" && pass conntrackd-anchor \
    || fail conntrackd-anchor
# the first run leaves its helpers (disabled) in the kernel, which is global: remove them
# once the namespaces' conntracks that refer to them are gone
for _ in $(seq 30); do
    nfct del helper rpc inet udp 2>/dev/null; nfct del helper ftp inet tcp 2>/dev/null
    nfct list helper 2>/dev/null | grep -Eq 'name = (rpc|ftp),' || break
    sleep 0.5
done
mkdir -p "$LAB_SCRATCH/alg"
LAB_DIR=$LAB_REFERENCE LAB_SCRATCH=$LAB_SCRATCH/alg LAB_DAEMON_NAME=alg LAB_DAEMON_CMD="$ALG run --policy $POL" \
    bash "$ANCHOR" >"$OUT/alg.out" 2>&1
tail -1 "$OUT/alg.out"
tail -1 "$OUT/alg.out" | grep -q "rpc PASS ftp PASS (negative controls PASS)" && pass alg-anchor \
    || { fail alg-anchor; tail -40 "$OUT/alg.out"; }
normalise "$LAB_SCRATCH/conntrackd/anchor/expectations.txt" >"$OUT/conntrackd.norm"
normalise "$LAB_SCRATCH/alg/anchor/expectations.txt" >"$OUT/alg.norm"
echo "conntrackd:"; sed 's/^/  /' "$OUT/conntrackd.norm"
echo "alg:"; sed 's/^/  /' "$OUT/alg.norm"
[ -s "$OUT/alg.norm" ] && cmp -s "$OUT/alg.norm" "$OUT/conntrackd.norm" && pass expectations-equal-conntrackd \
    || fail expectations-equal-conntrackd
exit $((FAILS > 0))

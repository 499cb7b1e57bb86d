#!/bin/bash
# nfs: an NFSv3 mount across the firewall with alg's rpc helper (the conntrack-tools manual's
# example), inside the lab VM.
#   lab-srv: rpcbind, the kernel's nfsd (its own instance in the namespace) and
#            tools/nfs_mountd.py in place of nfs-kernel-server (not in the lab image: no
#            rpc.nfsd / rpc.mountd / exportfs; the guest kernel has nfsd.ko); export on /run
#   lab-fw:  alg's rpc helper on udp/111 and tcp/111 (raw CT --helper rpc via `alg rules`);
#            FORWARD lets only udp/tcp 111 in as NEW: mountd (20048) and nfsd (2049) can only
#            pass as RELATED to a portmapper/rpcbind reply
#   lab-cli: `mount -t nfs -o nfsvers=3` (mount.nfs when installed, else the kernel's own
#            mount client, `mount -i ... addr=`), read a file, write one, umount
# negative control: alg stopped -> the mount fails, the firewall drops the follow-up flows.
set -u
source "$LAB_DIR/netns.sh"
# shellcheck source=../lib.sh
source "$ALG_ROOT/tests/lab/lib.sh"
RUN=/run/alg-lab/nfs; OUT=$LAB_SCRATCH/nfs; EXP=$RUN/export; MNT=$RUN/mnt
mkdir -p "$RUN" "$OUT" "$EXP" "$MNT" /run/rpcbind
PY=$ALG_ROOT/.venv/bin/python
POLICY=$RUN/rpc.toml
SOCK=$RUN/alg.sock
PIDS=(); ALG_PID=
cleanup() {
    [ -n "$ALG_PID" ] && kill "$ALG_PID" 2>/dev/null
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    wait 2>/dev/null
    lab_net_down
    nfct del helper rpc inet udp 2>/dev/null; nfct del helper rpc inet tcp 2>/dev/null
    true
}
trap cleanup EXIT
t0=$(date +%s)
ts() { echo "[t=$(( $(date +%s) - t0 ))s] $*"; }

cat >"$POLICY" <<TOML
helper = "rpc"
queue = 22
families = ["ipv4"]
TOML
cat >"$RUN/alg.toml" <<TOML
[core]
status_socket = "$SOCK"
TOML
echo "nfs through alg" >"$EXP/hello.txt"

helpers_ready() {  # rpc enabled for udp and tcp on queue 22, the queue bound (no Python start: cheap)
    [ "$(lab_fw nfct list helper 2>/dev/null | tr -s '\t\n' ' ' | grep -o "name = rpc, .queuenum = 22,[^}]*status = enabled" | wc -l)" = 2 ] &&
        lab_fw awk '$1 == 22 {f = 1} END {exit !f}' /proc/net/netfilter/nfnetlink_queue 2>/dev/null
}
launch_alg() {
    ip netns exec "$LAB_NS_FW" "$ALG" run --policy "$POLICY" --policy "$RUN/alg.toml" >>"$OUT/alg.log" 2>&1 &
    ALG_PID=$!
    [ -s "$RUN/rules.txt" ] || "$ALG" rules --policy "$POLICY" >"$RUN/rules.txt" 2>"$OUT/rules.err" & RULES_PID=$!  # in parallel: slow start
}
wait_alg() {
    for _ in $(seq 1500); do  # Python starts take 5-90 s under TCG on a loaded host
        helpers_ready && return 0
        kill -0 "$ALG_PID" 2>/dev/null || break
        sleep 0.2
    done
    echo "alg did not come up:"; tail -20 "$OUT/alg.log"; return 1
}
modprobe nfsd && modprobe nfs && pass modules-nfsd-nfs || { fail modules-nfsd-nfs; exit 1; }
lab_net_up udp/111 tcp/111 || { echo "FAIL lab_net_up"; exit 1; }
launch_alg  # its start-up (a Python start: slow under TCG) overlaps the server's
ip netns exec "$LAB_NS_SERVER" rpcbind -f & PIDS+=($!)
for _ in $(seq 50); do lab_srv rpcinfo -p 127.0.0.1 >/dev/null 2>&1 && break; sleep 0.1; done
ip netns exec "$LAB_NS_SERVER" "$PY" "$ALG_ROOT/tools/nfs_mountd.py" --export "$EXP" --client "$LAB_CLIENT4" \
    >"$OUT/mountd.out" 2>"$OUT/mountd.log" & PIDS+=($!)
for _ in $(seq 1500); do grep -q ready "$OUT/mountd.out" && break; sleep 0.2; done
cat "$OUT/mountd.log"
grep -q ready "$OUT/mountd.out" && pass nfs-server-up || { fail nfs-server-up; dmesg | tail -20; exit 1; }
lab_srv rpcinfo -p 127.0.0.1 | sed 's/^/    /'
ts "server up"

if command -v mount.nfs >/dev/null; then
    MOUNT="mount -t nfs -o nfsvers=3,nolock,retry=0"; echo "client: mount.nfs ($(mount.nfs -V 2>&1 | head -1))"
else
    MOUNT="mount -i -t nfs -o nfsvers=3,nolock,addr=$LAB_SERVER4"; echo "client: no mount.nfs, the kernel's mount client"
fi
# one mount namespace for mount, read, write, umount (ip netns exec's own ends with the command)
nfs_session() {  # TIMEOUT LOG
    lab_cli timeout -s KILL "$1" bash -c "$MOUNT $LAB_SERVER4:$EXP $MNT && cat $MNT/hello.txt &&
        echo written-by-client >$MNT/from-client.txt && grep -F $MNT /proc/mounts; umount $MNT" >"$2" 2>&1
}

ts "start alg"
wait_alg && pass alg-starts-rpc-udp-tcp-enabled || { fail alg-starts-rpc-udp-tcp-enabled; lab_fw nfct list helper; exit 1; }
ts "alg ready"
wait "$RULES_PID"; lab_fw iptables-restore --noflush <"$RUN/rules.txt" && pass rules-applied || fail rules-applied

# follow-up flows: alg's RELATED accept (inserted at the top by `alg rules`) or, after it, lab-related
related() { echo $(( $(alg_related_count rpc) + $(lab_fw_count related) )); }
r0=$(related); d0=$(lab_fw_count drop)
ts "mount"
nfs_session 60 "$OUT/mount.log"; rc=$?
ts "mount done rc=$rc"
sed 's/^/    /' "$OUT/mount.log"
lab_fw conntrack -L 2>/dev/null | sed 's/^/    /'
lab_fw conntrack -L expect 2>/dev/null | sed 's/^/    /'
echo "  related +$(( $(related) - r0 )), lab-drop +$(( $(lab_fw_count drop) - d0 ))"
[ $rc = 0 ] && grep -q "nfs through alg" "$OUT/mount.log" && pass nfsv3-mount-read || fail nfsv3-mount-read
[ "$(cat "$EXP/from-client.txt" 2>/dev/null)" = written-by-client ] && pass nfsv3-write || fail nfsv3-write
[ "$(related)" -gt "$r0" ] && pass follow-up-related || fail follow-up-related
lab_fw "$ALG" status --socket "$SOCK" >"$OUT/status.txt" 2>&1; sed 's/^/    /' "$OUT/status.txt"
stop_alg && pass alg-stops-cleanly || fail alg-stops-cleanly

fw_reset; rm -f "$EXP/from-client.txt"
d0=$(lab_fw_count drop)
ts "negative control"
nfs_session 10 "$OUT/neg.log"; rc=$?
ts "negative done rc=$rc"
sed 's/^/    /' "$OUT/neg.log"
[ $rc != 0 ] && [ "$(lab_fw_count drop)" -gt "$d0" ] && [ ! -e "$EXP/from-client.txt" ] \
    && pass negative-control-dropped || fail negative-control-dropped
lab_fw_show | sed 's/^/    /'
exit $((FAILS > 0))

#!/usr/bin/env python3
"""Minimal NFSv3 MOUNT daemon for the lab: the kernel's nfsd without nfs-kernel-server.

    nfs_mountd.py --export /srv/x --client 10.0.1.2 [--fsid 1] [--port 20048] [--threads 2]

The lab guest has the kernel's nfsd module but not nfs-kernel-server (no rpc.nfsd,
rpc.mountd, exportfs). This stands in for those three, in the network namespace it
is started in (nfsd is per network namespace; run it under `ip netns exec`, which
also gives it a private mount namespace):

* mounts the nfsd filesystem on /proc/fs/nfsd (this namespace's nfsd instance),
  enables NFSv3 only and starts the threads, which listen on udp/tcp 2049 and
  register NFS and NLM with the rpcbind running in the namespace (which must be up);
* fills the kernel's export caches once, with a far expiry, as rpc.mountd does on
  upcall (/proc/net/rpc/auth.unix.ip: client address -> domain; nfsd.export: domain
  and path -> flags, anon ids, fsid; nfsd.fh: domain and fsid -> path);
  the export is read-write, no root squash, no_subtree_check, fsid=N (required for a
  tmpfs export);
* serves the MOUNT protocol (RFC 1813 appendix I, program 100005 version 3) on udp
  and tcp PORT: MNT answers the root file handle from /proc/fs/nfsd/filehandle,
  with AUTH_UNIX; NULL, DUMP, UMNT, UMNTALL and EXPORT are answered too; and
  registers it with rpcbind (portmapper v2 SET).

On exit (SIGTERM) the mount namespace goes away with the process: unmounting the
nfsd filesystem stops the threads. Stdlib only; not a general mountd (one export,
fixed clients, no upcalls answered after the start).
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import socket
import struct
import subprocess
import sys

MOUNT_PROG, MOUNT_VERS = 100005, 3
PMAP_PROG, PMAP_VERS, PMAPPROC_SET, PMAPPROC_UNSET = 100000, 2, 1, 2
NFSEXP_NOSUBTREECHECK, NFSEXP_FSID = 0x0400, 0x2000
FSID_NUM = 1
EXPIRY = 2**31 - 1  # seconds since the epoch: never, for a lab run
NFSD = "/proc/fs/nfsd"
U32 = struct.Struct("!I")


def log(*a: object) -> None:
    print("nfs_mountd:", *a, file=sys.stderr, flush=True)


def xdr_opaque(b: bytes) -> bytes:
    return U32.pack(len(b)) + b + b"\0" * (-len(b) % 4)


def write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def start_nfsd(threads: int) -> None:
    os.makedirs(NFSD, exist_ok=True)
    if not os.path.exists(f"{NFSD}/threads"):
        subprocess.run(["mount", "-t", "nfsd", "nfsd", NFSD], check=True)
    write(f"{NFSD}/versions", "+3 -4\n")
    write(f"{NFSD}/threads", f"{threads}\n")
    log("nfsd threads", open(f"{NFSD}/threads").read().strip(), "versions", open(f"{NFSD}/versions").read().strip())


def prime_caches(domain: str, clients: list[str], export: str, fsid: int) -> bytes:
    for c in clients:
        write("/proc/net/rpc/auth.unix.ip/channel", f"nfsd {c} {EXPIRY} {domain}\n")
    flags = NFSEXP_NOSUBTREECHECK | NFSEXP_FSID
    write("/proc/net/rpc/nfsd.export/channel", f"{domain} {export} {EXPIRY} {flags} 65534 65534 {fsid}\n")
    key = struct.pack("=I", fsid).hex()  # FSID_NUM: the fsid as the kernel stores it (host order)
    write("/proc/net/rpc/nfsd.fh/channel", f"{domain} {FSID_NUM} \\x{key} {EXPIRY} {export}\n")
    with open(f"{NFSD}/filehandle", "r+") as f:  # transaction file: write the request, read the answer
        f.write(f"{domain} {export} 64\n")
        f.flush()
        f.seek(0)
        ans = f.read().strip()
    if not ans.startswith("\\x"):
        raise RuntimeError(f"filehandle: {ans!r}")
    return bytes.fromhex(ans[2:])


def pmap(proc: int, prot: int, port: int) -> bool:
    args = struct.pack("!IIII", MOUNT_PROG, MOUNT_VERS, prot, port)
    call = struct.pack("!IIIIII", 0x4D4E5444 + prot, 0, 2, PMAP_PROG, PMAP_VERS, proc) + b"\0" * 16 + args
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.sendto(call, ("127.0.0.1", 111))
        rep = s.recv(512)
    return len(rep) >= 28 and U32.unpack_from(rep, 24)[0] == 1


class Mountd:
    def __init__(self, export: str, fh: bytes) -> None:
        self.export, self.fh = export, fh

    def reply(self, call: bytes) -> bytes | None:
        if len(call) < 24:
            return None
        xid, mtype, rpcvers, prog, vers, proc = struct.unpack_from("!6I", call)
        if mtype != 0 or rpcvers != 2:
            return None
        off = 24
        for _ in range(2):  # credential, verifier
            (n,) = U32.unpack_from(call, off + 4)
            off += 8 + n + (-n % 4)
        head = struct.pack("!5I", xid, 1, 0, 0, 0)  # REPLY, MSG_ACCEPTED, verifier AUTH_NONE
        if prog != MOUNT_PROG:
            return head + U32.pack(1)  # PROG_UNAVAIL
        if vers != MOUNT_VERS:
            return head + struct.pack("!3I", 2, MOUNT_VERS, MOUNT_VERS)  # PROG_MISMATCH
        ok = head + U32.pack(0)
        if proc in (0, 3, 4):  # NULL, UMNT, UMNTALL
            return ok
        if proc == 2:  # DUMP: no list kept
            return ok + U32.pack(0)
        if proc == 5:  # EXPORT: one entry, no groups
            return ok + U32.pack(1) + xdr_opaque(self.export.encode()) + struct.pack("!II", 0, 0)
        if proc == 1:  # MNT
            (n,) = U32.unpack_from(call, off)
            path = call[off + 4 : off + 4 + n].decode(errors="replace")
            log("MNT", path)
            if path.rstrip("/") != self.export.rstrip("/"):
                return ok + U32.pack(2)  # MNT3ERR_NOENT
            return ok + U32.pack(0) + xdr_opaque(self.fh) + struct.pack("!II", 1, 1)  # flavors: AUTH_UNIX
        return head + U32.pack(3)  # PROC_UNAVAIL


def serve(m: Mountd, port: int) -> None:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    udp.bind(("0.0.0.0", port))
    tcp.bind(("0.0.0.0", port))
    tcp.listen(8)
    pmap(PMAPPROC_UNSET, 0, 0)  # UNSET drops every protocol of the program version
    for prot in (17, 6):
        if not pmap(PMAPPROC_SET, prot, port):
            raise RuntimeError(f"rpcbind SET failed for proto {prot}")
    print(f"mountd ready on udp/tcp {port}", flush=True)
    conns: dict[socket.socket, bytes] = {}
    while True:
        r, _, _ = select.select([udp, tcp, *conns], [], [])
        for s in r:
            if s is udp:
                data, peer = udp.recvfrom(65536)
                rep = m.reply(data)
                if rep:
                    udp.sendto(rep, peer)
            elif s is tcp:
                c, _ = tcp.accept()
                conns[c] = b""
            else:
                chunk = s.recv(65536)
                if not chunk:
                    s.close()
                    del conns[s]
                    continue
                buf = conns[s] + chunk
                while len(buf) >= 4:  # record marking (RFC 5531 11): one fragment per record here
                    (mark,) = U32.unpack_from(buf)
                    n = mark & 0x7FFFFFFF
                    if len(buf) < 4 + n:
                        break
                    rep = m.reply(buf[4 : 4 + n])
                    buf = buf[4 + n :]
                    if rep:
                        s.sendall(U32.pack(0x80000000 | len(rep)) + rep)
                conns[s] = buf


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--export", required=True)
    p.add_argument("--client", action="append", required=True, help="client address (repeat)")
    p.add_argument("--domain", default="lab")
    p.add_argument("--fsid", type=int, default=1)
    p.add_argument("--port", type=int, default=20048)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    start_nfsd(a.threads)
    fh = prime_caches(a.domain, a.client, a.export, a.fsid)
    log("root file handle", fh.hex())
    serve(Mountd(a.export, fh), a.port)


if __name__ == "__main__":
    main()

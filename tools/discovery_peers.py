"""Scripted discovery peers for recordings and the lab (stdlib only).

  upnp-device ADDR      SSDP responder on 239.255.255.250:1900 answering M-SEARCH by unicast with
                        LOCATION http://ADDR:49152/desc.xml; HTTP on ADDR:49152 serving the description,
                        one service's SCPD, and SUBSCRIBE (answers SID, then sends the initial NOTIFY to
                        the CALLBACK URL, UDA 2.0 §4.1.2, §4.3)
  upnp-control-point ADDR [TARGET]   M-SEARCH (unicast to TARGET:1900 if given), fetch LOCATION,
                        SUBSCRIBE with a callback on ADDR:49200, wait for the NOTIFY
  slp-agent ADDR        SLPv2 SA (RFC 2608): joins 239.255.255.253, answers SrvRqst with a SrvRply
  slp-ua DST [SRC]      sends one SLPv2 SrvRqst for service:printer to DST:427 and prints replies
  responders ADDR       upnp-device and slp-agent in one process (the lab: one Python start, not two)
  discover ADDR BCAST   the lab's discovering client, all at once (threads), each question asked from
                        one socket and asked again after 1 s without answer, as real clients retransmit
                        (RFC 6762 §5.2 continuous querying, RFC 2608 §6.3 multicast convergence, UDA
                        §1.3.2 "send more than once"): mDNS legacy-unicast A query (RFC 6762 §6.7), SLP
                        SrvRqst to 239.255.255.253 and to BCAST, SSDP M-SEARCH then LOCATION fetch,
                        SUBSCRIBE and wait for the NOTIFY. Prints one `RESULT name ok tries=N` line each
  client ADDR BCAST FIFO  the same client kept running (a Python start costs seconds in the lab VM): reads
                        commands from FIFO: `discover OUT` (results to OUT, then OUT.done), `status SOCK OUT`
                        (alg's status JSON from its unix socket), `quit`
"""

from __future__ import annotations

import re
import socket
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.request import urlopen

SSDP = ("239.255.255.250", 1900)
DESC = """<?xml version="1.0"?>
<root xmlns="urn:schemas-upnp-org:device-1-0"><specVersion><major>1</major><minor>0</minor></specVersion>
<device><deviceType>urn:schemas-upnp-org:device:BinaryLight:1</deviceType><friendlyName>alg lab light</friendlyName>
<manufacturer>alg</manufacturer><modelName>lab</modelName><UDN>uuid:00000000-0000-0000-0000-00000000a1a1</UDN>
<serviceList><service><serviceType>urn:schemas-upnp-org:service:SwitchPower:1</serviceType>
<serviceId>urn:upnp-org:serviceId:SwitchPower</serviceId><SCPDURL>/scpd.xml</SCPDURL>
<controlURL>/ctl</controlURL><eventSubURL>/evt</eventSubURL></service></serviceList></device></root>
"""
SCPD = """<?xml version="1.0"?>
<scpd xmlns="urn:schemas-upnp-org:service-1-0"><specVersion><major>1</major><minor>0</minor></specVersion>
<actionList/><serviceStateTable><stateVariable sendEvents="yes"><name>Status</name><dataType>boolean</dataType>
<defaultValue>0</defaultValue></stateVariable></serviceStateTable></scpd>
"""


def upnp_device(addr: str, block: bool = True) -> None:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _send(self, body: str, ctype="text/xml; charset=\"utf-8\"", extra=()):
            data = body.encode()
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            for k, v in extra:
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self._send(SCPD if "scpd" in self.path else DESC)

        def do_SUBSCRIBE(self):
            print("subscribe CALLBACK:", self.headers.get("CALLBACK"), flush=True)
            cb = re.findall(r"<([^>]*)>", self.headers.get("CALLBACK", ""))
            self._send("", extra=(("SID", "uuid:sub-1"), ("TIMEOUT", "Second-300")))
            if cb:
                threading.Thread(target=notify, args=(cb[0],), daemon=True).start()

        def do_UNSUBSCRIBE(self):
            self._send("")

    def notify(url: str) -> None:
        time.sleep(0.3)
        m = re.match(r"http://\[?([^\]/]+?)\]?:(\d+)(/.*)?$", url)
        if not m:
            return
        body = ('<?xml version="1.0"?><e:propertyset xmlns:e="urn:schemas-upnp-org:event-1-0">'
                "<e:property><Status>0</Status></e:property></e:propertyset>").encode()
        head = (f"NOTIFY {m[3] or '/'} HTTP/1.1\r\nHOST: {m[1]}:{m[2]}\r\nCONTENT-TYPE: text/xml\r\n"
                f"NT: upnp:event\r\nNTS: upnp:propchange\r\nSID: uuid:sub-1\r\nSEQ: 0\r\n"
                f"CONTENT-LENGTH: {len(body)}\r\n\r\n").encode()
        try:
            with socket.create_connection((m[1], int(m[2])), timeout=3) as s:
                s.sendall(head + body)
                s.recv(4096)
            print("notified", url, flush=True)
        except OSError as exc:
            print("notify failed", url, exc, flush=True)

    srv = ThreadingHTTPServer((addr, 49152), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("", 1900))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, socket.inet_aton(SSDP[0]) + socket.inet_aton(addr))
    print("device ready", flush=True)
    if not block:
        threading.Thread(target=_ssdp_loop, args=(s, addr), daemon=True).start()
        return
    _ssdp_loop(s, addr)


def _ssdp_loop(s: socket.socket, addr: str) -> None:
    while True:
        data, peer = s.recvfrom(4096)
        if not data.startswith(b"M-SEARCH"):
            continue
        st = re.search(rb"(?im)^ST:\s*(.+?)\s*$", data)
        target = st[1].decode() if st else "ssdp:all"
        if target == "ssdp:all":
            target = "upnp:rootdevice"
        reply = (f"HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=1800\r\nEXT:\r\n"
                 f"LOCATION: http://{addr}:49152/desc.xml\r\nSERVER: Linux/6 UPnP/1.0 alg-lab/1\r\n"
                 f"ST: {target}\r\nUSN: uuid:00000000-0000-0000-0000-00000000a1a1::{target}\r\n\r\n")
        # a device answers from its SSDP socket (port 1900) by unicast
        s.sendto(reply.encode(), peer)
        print("answered", peer, flush=True)


def upnp_control_point(addr: str, target: str = "") -> None:
    """M-SEARCH (to the SSDP group, or by unicast to TARGET:1900), fetch the LOCATION of the first
    answer, SUBSCRIBE with a callback on ADDR:49200 and wait for the initial NOTIFY; one line per
    step, the first that fails ends it (exit status 1 without an event)."""
    got: list[str] = []

    class Cb(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_NOTIFY(self):
            n = int(self.headers.get("Content-Length", 0))
            got.append(self.rfile.read(n).decode())
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

    cb = ThreadingHTTPServer((addr, 49200), Cb)
    threading.Thread(target=cb.serve_forever, daemon=True).start()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((addr, 0))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 2)
    s.settimeout(3)
    for _ in range(3):  # UDA §1.3.2: a control point sends its search more than once
        s.sendto(b'M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nMAN: "ssdp:discover"\r\nMX: 1\r\n'
                 b"ST: upnp:rootdevice\r\n\r\n", (target, SSDP[1]) if target else SSDP)
        try:
            data, peer = s.recvfrom(4096)
            break
        except TimeoutError:
            continue
    else:
        sys.exit("no answer")
    loc = re.search(rb"(?im)^LOCATION:\s*(\S+)", data)[1].decode()
    print("answer from", peer, loc, flush=True)
    host, port = re.match(r"http://([^/:]+):(\d+)", loc).groups()
    try:
        desc = urlopen(loc, timeout=5).read()
        print("description", len(desc), "bytes", flush=True)
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(f"SUBSCRIBE /evt HTTP/1.1\r\nHOST: {host}:{port}\r\nCALLBACK: <http://{addr}:49200/cb>\r\n"
                         f"NT: upnp:event\r\nTIMEOUT: Second-300\r\nContent-Length: 0\r\n\r\n".encode())
            print("subscribe:", sock.recv(4096).split(b"\r\n")[0].decode(), flush=True)
    except OSError as exc:
        sys.exit(f"failed: {exc}")
    for _ in range(50):
        if got:
            break
        time.sleep(0.1)
    print("events", len(got), flush=True)
    sys.exit(0 if got else 1)


# SLPv2, RFC 2608 §8: version, function, length(3), flags(2), next-ext(3), xid(2), lang-len(2), lang
def slp_header(function: int, xid: int, body: bytes, multicast: bool) -> bytes:
    lang = b"en"
    total = 14 + len(lang) + len(body)
    flags = 0x2000 if multicast else 0
    return struct.pack("!BB", 2, function) + total.to_bytes(3, "big") + struct.pack("!H", flags) + \
        b"\x00\x00\x00" + struct.pack("!HH", xid, len(lang)) + lang + body


def _s(text: str) -> bytes:
    return struct.pack("!H", len(text)) + text.encode()


def slp_agent(addr: str) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    s.bind(("", 427))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                 socket.inet_aton("239.255.255.253") + socket.inet_aton(addr))
    print("slp agent ready", flush=True)
    while True:
        data, peer = s.recvfrom(4096)
        if len(data) < 16 or data[0] != 2 or data[1] != 1:
            continue
        xid = struct.unpack_from("!H", data, 10)[0]
        url = f"service:printer:lpr://{addr}/queue"
        entry = b"\x00" + struct.pack("!H", 65535) + _s(url) + b"\x00"  # RFC 2608 §4.3 URL entry
        body = struct.pack("!HH", 0, 1) + entry  # SrvRply: error 0, one URL entry
        reply = slp_header(2, xid, body, False)
        s.sendto(reply, peer)  # unicast from port 427
        print("answered", peer, flush=True)


def slp_ua(dst: str, src: str = "") -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    s.bind((src, 0))
    s.settimeout(2)
    body = _s("") + _s("service:printer") + _s("DEFAULT") + _s("") + _s("")  # PRList, type, scopes, pred, SPI
    s.sendto(slp_header(1, 0x4242, body, True), (dst, 427))
    n = 0
    try:
        while True:
            data, peer = s.recvfrom(4096)
            n += 1
            print("reply from", peer, len(data), "bytes", flush=True)
    except socket.timeout:
        pass
    print("replies", n, flush=True)
    sys.exit(0 if n else 1)


def responders(addr: str) -> None:
    upnp_device(addr, block=False)
    slp_agent(addr)


def _ask(sock: socket.socket, packet: bytes, dst: tuple, accept=lambda data, peer: True,
         tries: int = 2, wait: float = 1.0) -> tuple[int, bytes, tuple] | None:
    """Send, wait `wait` s for an accepted answer, send again from the same socket: (try, data, peer)."""
    sock.settimeout(wait)
    for n in range(1, tries + 1):
        sock.sendto(packet, dst)
        end = time.monotonic() + wait
        while (left := end - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                data, peer = sock.recvfrom(4096)
            except (socket.timeout, ConnectionRefusedError):
                continue
            if accept(data, peer):
                return n, data, peer
    return None


def _udp(addr: str, broadcast: bool = False) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, int(broadcast))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 2)
    s.bind((addr, 0))
    return s


def _mdns_query(name: str, qid: int) -> bytes:
    """RFC 6762 §6.7 legacy unicast: an ordinary DNS query (RFC 1035 §4.1) to 224.0.0.251:5353."""
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return struct.pack("!HHHHHH", qid, 0, 1, 0, 0, 0) + qname + struct.pack("!HH", 1, 1)


def discover(addr: str, bcast: str, out=None) -> None:
    results: dict[str, str] = {}

    def mdns() -> None:
        got = _ask(_udp(addr), _mdns_query("alg-lab-srv.local", 0x4D44), ("224.0.0.251", 5353),
                   lambda d, p: d[:2] == b"\x4d\x44" and d[2] & 0x80)
        results["mdns"] = f"ok tries={got[0]} from={got[2][0]}" if got else "none"

    def slp(name: str, dst: str) -> None:
        body = _s("") + _s("service:printer") + _s("DEFAULT") + _s("") + _s("")
        got = _ask(_udp(addr, True), slp_header(1, 0x4242, body, True), (dst, 427),
                   lambda d, p: len(d) > 12 and d[1] == 2)
        results[name] = f"ok tries={got[0]} from={got[2][0]}" if got else "none"

    def ssdp() -> None:
        got_events: list[bytes] = []

        class Cb(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_NOTIFY(self):
                got_events.append(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        cb = ThreadingHTTPServer((addr, 49200), Cb)
        threading.Thread(target=cb.serve_forever, daemon=True).start()
        results["_close"] = lambda: (cb.shutdown(), cb.server_close())
        search = (b'M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nMAN: "ssdp:discover"\r\nMX: 1\r\n'
                  b"ST: upnp:rootdevice\r\n\r\n")
        got = _ask(_udp(addr), search, SSDP, lambda d, p: d.startswith(b"HTTP/1.1 200"))
        if not got:
            results["ssdp-search"] = "none"
            return
        results["ssdp-search"] = f"ok tries={got[0]} from={got[2][0]}"
        loc = re.search(rb"(?im)^LOCATION:\s*(\S+)", got[1])[1].decode()
        try:
            urlopen(loc, timeout=2).read()
            host, port = re.match(r"http://([^/:]+):(\d+)", loc).groups()
            with socket.create_connection((host, int(port)), timeout=2) as t:
                t.sendall(f"SUBSCRIBE /evt HTTP/1.1\r\nHOST: {host}:{port}\r\nCALLBACK: <http://{addr}:49200/cb>\r\n"
                          f"NT: upnp:event\r\nTIMEOUT: Second-300\r\nContent-Length: 0\r\n\r\n".encode())
                status = t.recv(4096).split(b"\r\n")[0]
            results["ssdp-location"] = "ok subscribe=" + status.decode().replace(" ", "_")
        except OSError as exc:
            results["ssdp-location"] = f"none {type(exc).__name__}"
            return
        for _ in range(40):  # the device notifies 0.3 s after its answer, then retries its SYN (1 s, 3 s)
            if got_events:
                break
            time.sleep(0.1)
        results["ssdp-event"] = f"ok events={len(got_events)}" if got_events else "none"

    threads = [threading.Thread(target=f, args=a) for f, a in
               ((mdns, ()), (slp, ("slp-multicast", "239.255.255.253")), (slp, ("slp-broadcast", bcast)), (ssdp, ()))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(12)
    cb_close = results.pop("_close", None)
    if cb_close:
        cb_close()
    for name in ("mdns", "slp-multicast", "slp-broadcast", "ssdp-search", "ssdp-location", "ssdp-event"):
        print("RESULT", name, results.get(name, "none"), file=out or sys.stdout, flush=True)


def client(addr: str, bcast: str, fifo: str) -> None:
    import io
    import os
    print("client ready", flush=True)
    while True:
        with open(fifo) as f:
            lines = f.read().splitlines()
        for line in lines:
            cmd, *args = line.split()
            if cmd == "quit":
                return
            buf = io.StringIO()
            try:
                if cmd == "discover":
                    discover(addr, bcast, buf)
                elif cmd == "status":
                    with socket.socket(socket.AF_UNIX) as u:
                        u.settimeout(5)
                        u.connect(args[0])
                        while chunk := u.recv(65536):
                            buf.write(chunk.decode())
                    args = args[1:]
            except OSError as exc:
                buf.write(f"ERROR {exc}\n")
            with open(args[0] + ".tmp", "w") as o:
                o.write(buf.getvalue())
            os.replace(args[0] + ".tmp", args[0])
            open(args[0] + ".done", "w").close()


if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    {"upnp-device": upnp_device, "upnp-control-point": upnp_control_point, "slp-agent": slp_agent,
     "slp-ua": slp_ua, "responders": responders, "discover": discover, "client": client}[cmd](*args)

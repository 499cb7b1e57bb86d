"""Writes the SIPp scenario files in this folder (run it here: python3 make-scenarios.py).

uac-X.xml / uas-X.xml pairs for tools/record-sip.sh and the lab scenarios;
SIPp expands [media_port] and the other [keywords] when it sends.
"""
HDR = '''<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<!-- alg: {doc} -->
<scenario name="{name}">
'''
def req(method, cseq, sdp=None, retrans=True, extra="", to_tag=True, uri="[service]@[remote_ip]:[remote_port]"):
    body = sdp or ""
    ctype = "      Content-Type: application/sdp\n" if sdp else ""
    rt = ' retrans="500"' if retrans else ''
    tt = '[peer_tag_param]' if to_tag else ''
    return f'''  <send{rt}>
    <![CDATA[

      {method} sip:{uri} SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: [service] <sip:[service]@[remote_ip]:[remote_port]>{tt}
      Call-ID: [call_id]
      CSeq: {cseq} {method}
      Contact: <sip:sipp@[local_ip]:[local_port];transport=[transport]>
      Max-Forwards: 70
{extra}{ctype}      Content-Length: [len]

{body}
    ]]>
  </send>
'''
CONTACT = "      Contact: <sip:[local_ip]:[local_port];transport=[transport]>\n"


def resp(code, reason, sdp=None, extra="", contact=CONTACT):
    ctype = "      Content-Type: application/sdp\n" if sdp else ""
    return f'''  <send>
    <![CDATA[

      SIP/2.0 {code} {reason}
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      [last_CSeq:]
{contact}{extra}{ctype}      Content-Length: [len]

{sdp or ""}
    ]]>
  </send>
'''
def sdp(media):
    s = '''      v=0
      o=user1 53655765 2353687637 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
'''
    for line in media:
        s += "      " + line + "\n"
    return s
AV = ["m=audio [media_port] RTP/AVP 0", "a=rtpmap:0 PCMU/8000",
      "m=video [media_port+2] RTP/AVP 96", "a=rtpmap:96 H264/90000"]
AUDIO2 = ["m=audio [media_port+4] RTP/AVP 8", "a=rtpmap:8 PCMA/8000", "m=video 0 RTP/AVP 96"]
def recv(what, optional=False, rrs=False):
    opt = ' optional="true"' if optional else ''
    attr = f'response="{what}"' if isinstance(what, int) else f'request="{what}"'
    r = ' rrs="true"' if rrs else ''
    return f'  <recv {attr}{opt}{r}/>\n'
def pause(ms): return f'  <pause milliseconds="{ms}"/>\n'
END = '''  <ResponseTimeRepartition value="10, 20, 30, 40, 50, 100, 150, 200"/>
  <CallLengthRepartition value="10, 50, 100, 500, 1000, 5000, 10000"/>
</scenario>
'''
def write(name, doc, body):
    open(name + ".xml", "w").write(HDR.format(doc=doc, name=name) + body + END)

write("uac-av", "UAC: INVITE with audio+video SDP, 200 with SDP, ACK; re-INVITE moving audio and dropping video; BYE",
      req("INVITE", 1, sdp(AV), to_tag=False) + recv(100, True) + recv(180, True) + recv(200, rrs=True)
      + req("ACK", 1, retrans=False) + pause(1500)
      + req("INVITE", 2, sdp(AUDIO2)) + recv(100, True) + recv(200) + req("ACK", 2, retrans=False) + pause(1500)
      + req("BYE", 3) + recv(200))
write("uas-av", "UAS for uac-av.xml",
      recv("INVITE") + resp(100, "Trying") + resp(180, "Ringing") + resp(200, "OK", sdp(AV)) + recv("ACK")
      + recv("INVITE") + resp(200, "OK", sdp(AUDIO2)) + recv("ACK") + recv("BYE") + resp(200, "OK"))
write("uac-cancel", "UAC: INVITE with audio SDP, 180 with SDP, CANCEL, 200 (CANCEL), 487, ACK",
      req("INVITE", 1, sdp(AV[:2]), to_tag=False) + recv(100, True) + recv(180) + pause(500)
      + req("CANCEL", 1, to_tag=False) + recv(200) + recv(487) + req("ACK", 1, retrans=False))
write("uas-cancel", "UAS for uac-cancel.xml (the 487 answers the INVITE: CSeq 1 INVITE; "
      "the CANCEL shares its Via branch)",
      recv("INVITE") + resp(100, "Trying") + resp(180, "Ringing", sdp(AV[:2])) + recv("CANCEL") + resp(200, "OK")
      + resp(487, "Request Terminated").replace("[last_CSeq:]", "CSeq: 1 INVITE") + recv("ACK"))
REG = "[remote_ip]:[remote_port]"
write("uac-register", "UAC: REGISTER (Expires 3600), 200 with the binding; REGISTER with Expires: 0, 200",
      req("REGISTER", 1, extra="      Expires: 3600\n", to_tag=False, uri=REG) + recv(200) + pause(1000)
      + req("REGISTER", 2, extra="      Expires: 0\n", to_tag=False, uri=REG) + recv(200))
write("uas-register", "registrar for uac-register.xml: grants what is asked (echoes Contact and Expires)",
      recv("REGISTER") + resp(200, "OK", extra="      [last_Expires:]\n", contact="      [last_Contact:]\n")
      + recv("REGISTER") + resp(200, "OK", extra="      [last_Expires:]\n", contact="      [last_Contact:]\n"))

# the kernel helper's known differences: a=rtcp (RFC 3605), an odd T.38 port, a port count
# (SIPp only expands [media_port] on m=audio/m=video lines: the others are literal, for -mp 16000)
DIFF = ["m=audio [media_port] RTP/AVP 0", "a=rtcp:16011", "m=video [media_port+30]/2 RTP/AVP 96",
        "m=image 16021 udptl t38"]
write("uac-diff", "UAC: INVITE whose SDP uses a=rtcp, a port count and an odd udptl port; 200; ACK; BYE",
      req("INVITE", 1, sdp(DIFF), to_tag=False) + recv(100, True) + recv(180, True) + recv(200, rrs=True)
      + req("ACK", 1, retrans=False) + pause(500) + req("BYE", 2) + recv(200))
write("uas-diff", "UAS for uac-diff.xml (plain audio answer)",
      recv("INVITE") + resp(100, "Trying") + resp(200, "OK", sdp(AV[:2])) + recv("ACK") + recv("BYE") + resp(200, "OK"))

# the lab scenarios: one audio call held for -d milliseconds (`<pause/>` without a value)
write("uac-lab", "UAC for the lab: INVITE with audio SDP, 200 with SDP, ACK, hold for -d ms, BYE",
      req("INVITE", 1, sdp(AV[:2]), to_tag=False) + recv(100, True) + recv(180, True) + recv(200, rrs=True)
      + req("ACK", 1, retrans=False) + '  <pause/>\n' + req("BYE", 2) + recv(200))
write("uas-lab", "UAS for uac-lab.xml",
      recv("INVITE") + resp(100, "Trying") + resp(180, "Ringing") + resp(200, "OK", sdp(AV[:2])) + recv("ACK")
      + recv("BYE") + resp(200, "OK"))

# the pressure scenario: many calls from one SIPp process (-t un: one socket, so one conntrack
# master, per call); each call's media port comes from the injection file (-inf, [field0])
FIELD = ["m=audio [field0] RTP/AVP 0", "a=rtpmap:0 PCMU/8000"]
write("uac-phone", "UAC for the pressure scenario: like uac-lab.xml, audio port from -inf [field0]",
      req("INVITE", 1, sdp(FIELD), to_tag=False) + recv(100, True) + recv(180, True) + recv(200, rrs=True)
      + req("ACK", 1, retrans=False) + '  <pause/>\n' + req("BYE", 2) + recv(200))
write("uas-phone", "UAS for uac-phone.xml, audio port from -inf [field0]",
      recv("INVITE") + resp(100, "Trying") + resp(180, "Ringing") + resp(200, "OK", sdp(FIELD)) + recv("ACK")
      + recv("BYE") + resp(200, "OK"))

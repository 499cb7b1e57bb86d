"""H.225.0 (H323-MESSAGES ASN.1) as far as the helper reads it, and the Q.931 framing around it.

Call signalling (Q.931 over TPKT, tcp/1720): the User-user information element of
a Q.931 message carries an H323-UserInformation; read from it, as the kernel's
process_q931: the h323-message-body's Setup, CallProceeding, Connect, Alerting,
Facility and Progress (their h245Address, fastStart, and Facility's reason and
alternativeAddress) and the h245Control tunnel (H.245 messages inside Q.931).
RAS (udp/1719): GatekeeperConfirm's rasAddress, RegistrationRequest's
callSignalAddress list, UnregistrationRequest (its index), AdmissionConfirm's
destCallSignalAddress, LocationConfirm's callSignalAddress.

Not walked, unlike the kernel: what only its NAT rewriting uses (GRQ/RRQ/LRQ/IRR
rasAddress, Setup's source/destCallSignalAddress, ARQ's addresses) and the
RAS timeToLive (RRQ/RCF: the kernel stretches the RAS conntrack and the Q.931
expectation to it; a sans-IO helper has no timers). Progress's fastStart is
read only when the message carries no tokens/cryptoTokens (H.235 tokens sit
before it; the kernel walks them).
"""

from __future__ import annotations

from .h245 import FAST_START, H245_CONTROL
from .per import (BOOL, BYTE, CONS, FIXD, NULL, OID, SEMI, UNREAD, WORD, BmpStr, Choice, Int, Malformed, NumStr,
                  OctStr, Seq, SeqOf, leaves)

U16 = Int(WORD)
H221 = Seq([("t35CountryCode", Int(BYTE)), ("t35Extension", Int(BYTE)), ("manufacturerCode", U16)])
NON_STANDARD = Seq([("nonStandardIdentifier", Choice([("object", OID), ("h221NonStandard", H221)])),
                    ("data", OctStr(SEMI))], ext=False)
TRANSPORT_ADDRESS = Choice([
    ("ipAddress", Seq([("ip", OctStr(FIXD, 4, keep=True)), ("port", U16)], ext=False)),
    ("ipSourceRoute", Seq([("ip", OctStr(FIXD, 4)), ("port", U16), ("route", SeqOf(OctStr(FIXD, 4))),
                           ("routing", Choice(leaves("strict", "loose")))])),
    ("ipxAddress", Seq([("node", OctStr(FIXD, 6)), ("netnum", OctStr(FIXD, 4)), ("port", OctStr(FIXD, 2))],
                       ext=False)),
    ("ip6Address", Seq([("ip", OctStr(FIXD, 16, keep=True)), ("port", U16)])),
    ("netBios", OctStr(FIXD, 16)),
    ("nsap", OctStr(5, 1)),
    ("nonStandardAddress", NON_STANDARD),
], ext=True)
ALIAS = Choice([("dialedDigits", NumStr(7)), ("h323-ID", BmpStr(BYTE))])  # the rest are extensions
ALIASES = SeqOf(ALIAS)
_NS_ONLY = Seq([("nonStandardData", NON_STANDARD, True)])
SUPPORTED_PROTOCOLS = Choice([("nonStandardData", NON_STANDARD),
                              *leaves("h310", "h320", "h321", "h322", "h323", "h324", "voice", "t120-only",
                                      node=_NS_ONLY)])
VENDOR = Seq([("vendor", H221), ("productId", OctStr(BYTE, 1), True), ("versionId", OctStr(BYTE, 1), True)])
ENDPOINT_TYPE = Seq([
    ("nonStandardData", NON_STANDARD, True),
    ("vendor", VENDOR, True),
    ("gatekeeper", _NS_ONLY, True),
    ("gateway", Seq([("protocol", SeqOf(SUPPORTED_PROTOCOLS), True), ("nonStandardData", NON_STANDARD, True)]),
     True),
    ("mcu", _NS_ONLY, True),
    ("terminal", _NS_ONLY, True),
    ("mc", BOOL),
    ("undefinedNode", BOOL),
])
CONFERENCE_ID = OctStr(FIXD, 16)
CALL_IDENTIFIER = Seq([("guid", CONFERENCE_ID)])
_CALL_TYPE = Choice(leaves("pointToPoint", "oneToN", "nToOne", "nToN"))
# extension additions before fastStart: callIdentifier, h245SecurityMode, tokens, cryptoTokens (skipped by length)
_TO_FAST_START = [(None, None)] * 4 + [("fastStart", FAST_START)]

SETUP = Seq([
    ("protocolIdentifier", OID),
    ("h245Address", TRANSPORT_ADDRESS, True),
    ("sourceAddress", ALIASES, True),
    ("sourceInfo", ENDPOINT_TYPE),
    ("destinationAddress", ALIASES, True),
    ("destCallSignalAddress", TRANSPORT_ADDRESS, True),
    ("destExtraCallInfo", ALIASES, True),
    ("destExtraCRV", SeqOf(U16), True),
    ("activeMC", BOOL),
    ("conferenceID", CONFERENCE_ID),
    ("conferenceGoal", Choice(leaves("create", "join", "invite"))),
    ("callServices", Seq([*((f"q9{i}", BOOL) for i in range(7)),
                          ("q954Info", Seq([("conferenceCalling", BOOL), ("threePartyService", BOOL)]))]), True),
    ("callType", _CALL_TYPE),
    # additions: sourceCallSignalAddress, remoteExtensionAddress, callIdentifier, h245SecurityCapability,
    # tokens, cryptoTokens, fastStart
], adds=[(None, None)] * 6 + [("fastStart", FAST_START)])
CALL_PROCEEDING = Seq([("protocolIdentifier", OID), ("destinationInfo", ENDPOINT_TYPE),
                       ("h245Address", TRANSPORT_ADDRESS, True)], adds=_TO_FAST_START)
CONNECT = Seq([("protocolIdentifier", OID), ("h245Address", TRANSPORT_ADDRESS, True),
               ("destinationInfo", ENDPOINT_TYPE), ("conferenceID", CONFERENCE_ID)], adds=_TO_FAST_START)
ALERTING = Seq([("protocolIdentifier", OID), ("destinationInfo", ENDPOINT_TYPE),
                ("h245Address", TRANSPORT_ADDRESS, True)], adds=_TO_FAST_START)
CALL_FORWARDED = "callForwarded"
FACILITY = Seq([
    ("protocolIdentifier", OID),
    ("alternativeAddress", TRANSPORT_ADDRESS, True),
    ("alternativeAliasAddress", ALIASES, True),
    ("conferenceID", CONFERENCE_ID, True),
    ("reason", Choice(leaves("routeCallToGatekeeper", CALL_FORWARDED, "routeCallToMC", "undefinedReason"),
                      adds=leaves("conferenceListChoice", "startH245", "noH245", "newTokens", "featureSetUpdate",
                                  "forwardedElements", "transportedInformation"))),
    # additions: callIdentifier, destExtraCallInfo, remoteExtensionAddress, tokens, cryptoTokens, conferences
], adds=[(None, None)] * 6 + [("h245Address", TRANSPORT_ADDRESS), ("fastStart", FAST_START)])
_SECURITY_MODE = Choice([("nonStandard", NON_STANDARD), ("none", NULL), ("default", NULL)])
_SECURITY_CAPABILITIES = Seq([("nonStandard", NON_STANDARD, True), ("encryption", _SECURITY_MODE),
                              ("authenticaton", _SECURITY_MODE), ("integrity", _SECURITY_MODE)])
PROGRESS = Seq([
    ("protocolIdentifier", OID),
    ("destinationInfo", ENDPOINT_TYPE),
    ("h245Address", TRANSPORT_ADDRESS, True),
    ("callIdentifier", CALL_IDENTIFIER),
    ("h245SecurityMode", Choice([("nonStandard", NON_STANDARD), ("noSecurity", NULL),
                                 ("tls", _SECURITY_CAPABILITIES), ("ipsec", _SECURITY_CAPABILITIES)]), True),
    ("tokens", UNREAD, True),  # H.235 tokens: the walk ends there (fastStart after them is not read)
    ("cryptoTokens", UNREAD, True),
    ("fastStart", FAST_START, True),
])

MESSAGE_BODY = Choice([
    ("setup", SETUP), ("callProceeding", CALL_PROCEEDING), ("connect", CONNECT), ("alerting", ALERTING),
    ("information", UNREAD), ("releaseComplete", UNREAD), ("facility", FACILITY),
], adds=[("progress", PROGRESS)])
# information and releaseComplete open nothing: their bodies are not walked, so an h245Control
# tunnelled in them is not read either (the kernel reads it; see the package docstring)
H323_UU_PDU = Seq([
    ("h323-message-body", MESSAGE_BODY),
    ("nonStandardData", NON_STANDARD, True),
], adds=[("h4501SupplementaryService", None), ("h245Tunneling", None), ("h245Control", H245_CONTROL)])
H323_USER_INFORMATION = Seq([("h323-uu-pdu", H323_UU_PDU), ("user-data", UNREAD, True)],
                            stop_after="h323-uu-pdu")

# RAS (H.225.0 §7): RasMessage root alternatives by number
GCF, RRQ, URQ, ACF, LCF = 1, 3, 6, 10, 19
RAS_ROOT = 25
_SEQ_NUM = Int(WORD, 1)
_GK_ID = BmpStr(7)
RAS_READ = {
    GCF: ("gatekeeperConfirm", Seq([
        ("requestSeqNum", _SEQ_NUM), ("protocolIdentifier", OID), ("nonStandardData", NON_STANDARD, True),
        ("gatekeeperIdentifier", _GK_ID, True), ("rasAddress", TRANSPORT_ADDRESS)])),
    RRQ: ("registrationRequest", Seq([
        ("requestSeqNum", _SEQ_NUM), ("protocolIdentifier", OID), ("nonStandardData", NON_STANDARD, True),
        ("discoveryComplete", BOOL), ("callSignalAddress", SeqOf(TRANSPORT_ADDRESS)),
        # walked to its end as the kernel does (an RRQ cut short after its addresses opens nothing)
        ("rasAddress", SeqOf(TRANSPORT_ADDRESS)), ("terminalType", ENDPOINT_TYPE), ("terminalAlias", ALIASES, True),
        ("gatekeeperIdentifier", _GK_ID, True), ("endpointVendor", VENDOR)])),
    URQ: ("unregistrationRequest", None),
    ACF: ("admissionConfirm", Seq([
        ("requestSeqNum", _SEQ_NUM), ("bandWidth", Int(CONS)),
        ("callModel", Choice(leaves("direct", "gatekeeperRouted"))),
        ("destCallSignalAddress", TRANSPORT_ADDRESS), ("irrFrequency", UNREAD, True),
        ("nonStandardData", UNREAD, True)], stop_after="destCallSignalAddress")),
    LCF: ("locationConfirm", Seq([
        ("requestSeqNum", _SEQ_NUM), ("callSignalAddress", TRANSPORT_ADDRESS), ("rasAddress", TRANSPORT_ADDRESS),
        ("nonStandardData", UNREAD, True)], stop_after="rasAddress")),
}
# the other messages (and URQ's body: its index is all that is used) are not walked
RAS_MESSAGE = Choice([(name, node or UNREAD) for name, node in (RAS_READ.get(i, (f"#{i}", None))
                                                              for i in range(RAS_ROOT))])

# Q.931 (ITU-T Q.931 §4): protocol discriminator, call reference, message type, information elements
Q931_DISCRIMINATOR = 0x08
USER_USER_IE = 0x7E  # H.225.0 §7.2.2.1: the H323-UserInformation travels in the User-user IE
USER_USER_X208 = 0x05  # its protocol discriminator: "X.208 and X.209 coded user information"
SINGLE_OCTET_IE = 0x80  # Q.931 §4.5.1: an IE identifier with bit 8 set is one octet, no length
MAX_CALL_REFERENCE = 15  # Q.931 §4.3: the length is 4 bits


def user_user(buf: bytes, start: int = 0) -> tuple[int, int] | None:
    """(start, end) in `buf` of the H323-UserInformation of the Q.931 message at buf[start:], or None
    when it has none."""
    end = len(buf)
    if end - start < 3 or buf[start] != Q931_DISCRIMINATOR:
        raise Malformed("not a Q.931 message (protocol discriminator)")
    at = start + 2 + (buf[start + 1] & 0x0F) + 1  # call reference value, message type
    if buf[start + 1] > MAX_CALL_REFERENCE or at > end:
        raise Malformed("Q.931 call reference past the end")
    while at < end:  # each step advances by at least one octet
        ie = buf[at]
        if ie & SINGLE_OCTET_IE:
            at += 1
            continue
        if ie == USER_USER_IE:  # two length octets (H.225.0 §7.2.2.1), then the discriminator
            if at + 4 > end:
                raise Malformed("User-user IE past the end")
            length = int.from_bytes(buf[at + 1:at + 3], "big")
            if length < 1 or at + 3 + length > end:
                raise Malformed(f"User-user IE of {length} octets past the end")
            return at + 4, at + 3 + length
        if at + 2 > end:
            raise Malformed("IE past the end")
        at += 2 + buf[at + 1]
    return None

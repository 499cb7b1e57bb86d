"""H.245 (ITU-T H.245 v7+ ASN.1, MULTIMEDIA-SYSTEM-CONTROL) as far as the helper reads it.

Read: a MultimediaSystemControlMessage that is a request openLogicalChannel or a
response openLogicalChannelAck (nf_conntrack_h323_main.c process_h245); in them
the H2250LogicalChannelParameters' mediaChannel and mediaControlChannel (forward,
and reverse), the H2250LogicalChannelAckParameters' ones, and a T.120
separateStack's localAreaAddress. Every other message is recognised by its
CHOICE index and not walked. DataType, which sits before the multiplex
parameters, is walked through its root alternatives (the capabilities below);
its extension alternatives are skipped by length. The H.2250 parameters end the
walk after mediaControlChannel, as the kernel's STOP does.
"""

from __future__ import annotations

from .per import (BOOL, BYTE, CONS, FIXD, NULL, OID, SEMI, UNREAD, WORD, Choice, Int, Node, NumStr, OctStr, Open,
                  Seq, SeqOf, leaves)

U16 = Int(WORD)
NON_STANDARD = Seq([
    ("nonStandardIdentifier", Choice([("object", OID),
                                      ("h221NonStandard", Seq([("t35CountryCode", Int(BYTE)),
                                                               ("t35Extension", Int(BYTE)),
                                                               ("manufacturerCode", U16)], ext=False))],
                                     ext=False)),
    ("data", OctStr(SEMI)),
], ext=False)

# TransportAddress (H.245): the unicast IPv4/IPv6 forms are kept (network + tsapIdentifier)
_IP4 = Seq([("network", OctStr(FIXD, 4, keep=True)), ("tsapIdentifier", U16)])
_IP6 = Seq([("network", OctStr(FIXD, 16, keep=True)), ("tsapIdentifier", U16)])
UNICAST = Choice([
    ("iPAddress", _IP4),
    ("iPXAddress", Seq([("node", OctStr(FIXD, 6)), ("netnum", OctStr(FIXD, 4)), ("tsapIdentifier", OctStr(FIXD, 2))])),
    ("iP6Address", _IP6),
    ("netBios", OctStr(FIXD, 16)),
    ("iPSourceRouteAddress", Seq([("routing", Choice(leaves("strict", "loose"), ext=False)),
                                  ("network", OctStr(FIXD, 4)), ("tsapIdentifier", U16),
                                  ("route", SeqOf(OctStr(FIXD, 4)))])),
])
MULTICAST = Choice([
    ("iPAddress", Seq([("network", OctStr(FIXD, 4)), ("tsapIdentifier", U16)])),
    ("iP6Address", Seq([("network", OctStr(FIXD, 16)), ("tsapIdentifier", U16)])),
])
TRANSPORT_ADDRESS = Choice([("unicastAddress", UNICAST), ("multicastAddress", MULTICAST)])

# DataType's root alternatives, walked to reach the multiplex parameters after them
_MPI = Int(2, 1)
VIDEO = Choice([
    ("nonStandard", NON_STANDARD),
    ("h261VideoCapability", Seq([("qcifMPI", _MPI, True), ("cifMPI", _MPI, True),
                                 ("temporalSpatialTradeOffCapability", BOOL), ("maxBitRate", U16),
                                 ("stillImageTransmission", BOOL)])),
    ("h262VideoCapability", Seq([*((f"profileAndLevel{i}", BOOL) for i in range(11)),
                                 ("videoBitRate", Int(CONS), True), ("vbvBufferSize", Int(CONS), True),
                                 ("samplesPerLine", U16, True), ("linesPerFrame", U16, True),
                                 ("framesPerSecond", Int(4), True), ("luminanceSampleRate", Int(CONS), True)])),
    ("h263VideoCapability", Seq([*((f"mpi{i}", Int(5, 1), True) for i in range(5)), ("maxBitRate", Int(CONS, 1)),
                                 *((f"option{i}", BOOL) for i in range(5)),
                                 ("hrd-B", Int(CONS), True), ("bppMaxKb", U16, True)])),
    ("is11172VideoCapability", Seq([("constrainedBitstream", BOOL), ("videoBitRate", Int(CONS), True),
                                    ("vbvBufferSize", Int(CONS), True), ("samplesPerLine", U16, True),
                                    ("linesPerFrame", U16, True), ("pictureRate", Int(4), True),
                                    ("luminanceSampleRate", Int(CONS), True)])),
])
_FRAMES = Int(BYTE, 1)
AUDIO = Choice([
    ("nonStandard", NON_STANDARD),
    *leaves("g711Alaw64k", "g711Alaw56k", "g711Ulaw64k", "g711Ulaw56k", "g722-64k", "g722-56k", "g722-48k",
            node=_FRAMES),
    ("g7231", Seq([("maxAl-sduAudioFrames", _FRAMES), ("silenceSuppression", BOOL)], ext=False)),
    *leaves("g728", "g729", "g729AnnexA", node=_FRAMES),
    ("is11172AudioCapability", Seq([*((f"flag{i}", BOOL) for i in range(8)), ("bitRate", Int(WORD, 1))])),
    ("is13818AudioCapability", Seq([*((f"flag{i}", BOOL) for i in range(20)), ("bitRate", Int(WORD, 1))])),
])
SEPARATE_LAN_STACK = "separateLANStack"
DATA_PROTOCOL = Choice([("nonStandard", NON_STANDARD),
                        *leaves("v14buffered", "v42lapm", "hdlcFrameTunnelling", "h310SeparateVCStack",
                                "h310SingleVCStack", "transparent")],
                       adds=leaves("segmentationAndReassembly", "hdlcFrameTunnelingwSAR", "v120", SEPARATE_LAN_STACK))
DATA_APPLICATION = Seq([
    ("application", Choice([
        ("nonStandard", NON_STANDARD), ("t120", DATA_PROTOCOL), ("dsm-cc", DATA_PROTOCOL),
        ("userData", DATA_PROTOCOL),
        ("t84", Seq([("t84Protocol", DATA_PROTOCOL),
                     ("t84Profile", Choice([("t84Unrestricted", NULL),
                                            ("t84Restricted", Seq([(f"f{i}", BOOL) for i in range(19)]))],
                                           ext=False))], ext=False)),
        ("t434", DATA_PROTOCOL), ("h224", DATA_PROTOCOL),
        ("nlpid", Seq([("nlpidProtocol", DATA_PROTOCOL), ("nlpidData", OctStr(SEMI))], ext=False)),
        ("dsvdControl", NULL), ("h222DataPartitioning", DATA_PROTOCOL),
    ])),
    ("maxBitRate", Int(CONS)),
])
DATA_TYPE = Choice([
    ("nonStandard", NON_STANDARD), ("nullData", NULL), ("videoData", VIDEO), ("audioData", AUDIO),
    ("data", DATA_APPLICATION),
    ("encryptionData", Choice([("nonStandard", NON_STANDARD), ("h233Encryption", NULL)])),
])

# multiplex parameters other than H.225.0's, walked only to be passed
_H222 = Seq([("resourceID", U16), ("subChannelID", U16), ("pcr-pid", U16, True),
             ("programDescriptors", OctStr(SEMI), True), ("streamDescriptors", OctStr(SEMI), True)])
_H223 = Seq([
    ("adaptationLayerType", Choice([
        ("nonStandard", NON_STANDARD),
        *leaves("al1Framed", "al1NotFramed", "al2WithoutSequenceNumbers", "al2WithSequenceNumbers"),
        ("al3", Seq([("controlFieldOctets", Int(2)), ("sendBufferSize", Int(CONS))], ext=False)),
    ])),
    ("segmentableFlag", BOOL),
])
_THREE = Choice(leaves("a", "b", "c"))
_V76 = Seq([
    ("hdlcParameters", Seq([("crcLength", _THREE), ("n401", Int(WORD, 1)), ("loopbackTestProcedure", BOOL)])),
    ("suspendResume", _THREE),
    ("uIH", BOOL),
    ("mode", Choice([("eRM", Seq([("windowSize", Int(7, 1)), ("recovery", _THREE)])), ("uNERM", NULL)])),
    ("v75Parameters", Seq([("audioHeaderPresent", BOOL)])),
])
H2250 = "h2250LogicalChannelParameters"
# the kernel stops after mediaControlChannel (STOP on mediaControlGuaranteedDelivery): nothing after it is used
H2250_PARAMETERS = Seq([
    ("nonStandard", SeqOf(NON_STANDARD), True),
    ("sessionID", Int(BYTE)),
    ("associatedSessionID", Int(8, 1), True),
    ("mediaChannel", TRANSPORT_ADDRESS, True),
    ("mediaGuaranteedDelivery", BOOL, True),
    ("mediaControlChannel", TRANSPORT_ADDRESS, True),
    # not walked, present for the count of optional fields (10 in the root)
    *((name, UNREAD, True) for name in ("mediaControlGuaranteedDelivery", "silenceSuppression", "destination",
                                        "dynamicRTPPayloadType", "mediaPacketization")),
], stop_after="mediaControlChannel")
H2250_ACK_PARAMETERS = Seq([
    ("nonStandard", SeqOf(NON_STANDARD), True),
    ("sessionID", Int(8, 1), True),
    ("mediaChannel", TRANSPORT_ADDRESS, True),
    ("mediaControlChannel", TRANSPORT_ADDRESS, True),
    ("dynamicRTPPayloadType", Int(5, 96), True),
], stop_after="mediaControlChannel")

LOCAL_AREA_ADDRESS = "localAreaAddress"
NETWORK_ACCESS = Seq([
    ("distribution", Choice(leaves("unicast", "multicast")), True),
    ("networkAddress", Choice([
        ("q2931Address", Seq([("address", Choice([("internationalNumber", NumStr(4)),
                                                  ("nsapAddress", OctStr(5, 1))])),
                              ("subaddress", OctStr(5, 1), True)])),
        ("e164Address", NumStr(7)),
        (LOCAL_AREA_ADDRESS, TRANSPORT_ADDRESS),
    ])),
    ("associateConference", UNREAD), ("externalReference", UNREAD, True),
], stop_after="networkAddress")

OPEN_LOGICAL_CHANNEL = Seq([
    ("forwardLogicalChannelNumber", Int(WORD, 1)),
    ("forwardLogicalChannelParameters", Seq([
        ("portNumber", U16, True),
        ("dataType", DATA_TYPE),
        ("multiplexParameters", Choice([("h222LogicalChannelParameters", _H222),
                                        ("h223LogicalChannelParameters", _H223),
                                        ("v76LogicalChannelParameters", _V76)],
                                       adds=[(H2250, H2250_PARAMETERS), ("none", NULL)])),
    ])),
    ("reverseLogicalChannelParameters", Seq([
        ("dataType", DATA_TYPE),
        ("multiplexParameters", Choice([("h223LogicalChannelParameters", _H223),
                                        ("v76LogicalChannelParameters", _V76)],
                                       adds=[(H2250, H2250_PARAMETERS)]), True),
    ]), True),
], adds=[("separateStack", NETWORK_ACCESS)])

OPEN_LOGICAL_CHANNEL_ACK = Seq([
    ("forwardLogicalChannelNumber", Int(WORD, 1)),
    ("reverseLogicalChannelParameters", Seq([
        ("reverseLogicalChannelNumber", Int(WORD, 1)),
        ("portNumber", U16, True),
        ("multiplexParameters", Choice([("h222LogicalChannelParameters", _H222)],
                                       adds=[(H2250, H2250_PARAMETERS)]), True),
    ]), True),
], adds=[("separateStack", NETWORK_ACCESS),
         ("forwardMultiplexAckParameters", Choice([("h2250LogicalChannelAckParameters", H2250_ACK_PARAMETERS)]))])

OLC, OLCA = "openLogicalChannel", "openLogicalChannelAck"
REQUEST_INDEX_OLC, RESPONSE_INDEX_OLCA = 3, 5  # RequestMessage / ResponseMessage root order (H.245 §B)
_REQUESTS, _RESPONSES = 11, 19  # root alternatives of RequestMessage, ResponseMessage


def _only(count: int, index: int, name: str, node: Node) -> Choice:
    """A CHOICE of `count` root alternatives of which only `index` is walked."""
    return Choice([(name, node) if i == index else (f"#{i}", UNREAD) for i in range(count)])


MULTIMEDIA_SYSTEM_CONTROL_MESSAGE = Choice([
    ("request", _only(_REQUESTS, REQUEST_INDEX_OLC, OLC, OPEN_LOGICAL_CHANNEL)),
    ("response", _only(_RESPONSES, RESPONSE_INDEX_OLCA, OLCA, OPEN_LOGICAL_CHANNEL_ACK)),
    ("command", UNREAD),
    ("indication", UNREAD),
])
FAST_START = SeqOf(Open(OPEN_LOGICAL_CHANNEL))
H245_CONTROL = SeqOf(Open(MULTIMEDIA_SYSTEM_CONTROL_MESSAGE))

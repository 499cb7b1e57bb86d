"""SIP/SDP helper: not written yet (registers nothing)."""

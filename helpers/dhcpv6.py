"""dhcpv6 helper: not written yet (registers nothing)."""

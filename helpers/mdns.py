"""mdns helper: not written yet (registers nothing)."""

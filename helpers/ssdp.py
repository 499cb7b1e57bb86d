"""ssdp helper: not written yet (registers nothing)."""

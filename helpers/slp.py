"""slp helper: not written yet (registers nothing)."""

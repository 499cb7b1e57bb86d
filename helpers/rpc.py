"""rpc helper: not written yet (registers nothing)."""

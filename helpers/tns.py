"""tns helper: not written yet (registers nothing)."""

"""The helpers that issue 14 made faster, as they were before (commit fd711bd): the oracles of
tests/test_helpers_fast.py, which checks that the rewrites changed no behaviour."""

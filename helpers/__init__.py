"""alg's built-in protocol helpers, installed as `alg_helpers` (one module per protocol).

Each module is a plugin registered through the `alg.helpers` entry-point
group, exactly as a third-party helper would be.
"""

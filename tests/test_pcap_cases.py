"""One runner for every pcap case under tests/pcaps/.

A case is a folder: the capture(s) (`*.pcap`, `*.pcapng`), `SOURCE.md` (who
made it, with what software, how), `expected.jsonl` (the golden output of
`alg replay --format json`) and optionally `case.toml`:

    helpers = ["ftp"]          # replay only these helpers (default: all)
    policy = "policy.toml"     # a policy file next to the case
    related_min = 2            # follow-up flows in the capture that must be
                               # matched by an expectation (RELATED)
    not_decoded = {}           # frames not decoded, by kind, exactly (encapsulation cases)
    [stats]                    # counters that must be reached, e.g.
    "sip.notices.hostname-in-sdp" = 1

Regenerate goldens after a deliberate change with ALG_REGEN=1 (or --alg-regen) and review the diff.
The format and the runner are alg.testing's (installed with alg): see its docstring.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from alg.testing import case_dirs

CASES = Path(__file__).parent / "pcaps"


@pytest.mark.parametrize("case", case_dirs(CASES), ids=lambda p: p.name)
def test_pcap_case(alg_case, case: Path) -> None:
    """Through the pytest plugin's fixture, as a plugin author's tests run their cases."""
    alg_case(case)

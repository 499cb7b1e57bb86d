"""helpers/_addr.ip_from_text is ipaddress.ip_address, faster for a dotted quad: the same
address of the same type, or the same error, for any text a peer may write."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alg_helpers import _addr


@settings(max_examples=500, deadline=None)
@given(st.one_of(
    st.lists(st.text("0123456789", max_size=4), min_size=1, max_size=5).map(".".join),
    st.text(" 0123456789.:abcdefx%\x00٣", max_size=20),
    st.text(max_size=12),
))
def test_ip_from_text_is_ip_address(text):
    try:
        want = ipaddress.ip_address(text)
    except ValueError as e:
        with pytest.raises(type(e)):
            _addr.ip_from_text(text)
        return
    got = _addr.ip_from_text(text)
    assert (type(got), got) == (type(want), want)

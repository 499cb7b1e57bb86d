"""Registration answers the kernel gives, read without a kernel (the adapter's own logic)."""

import errno

import pytest

from alg.errors import KernelError
from alg.kernel.cthelper import Cthelper
from alg.model import ExpectClass
from alg.policy import HelperPolicy


def _policy(name: str) -> HelperPolicy:
    return HelperPolicy(helper="ftp", name=name, enabled=True, queue=5, queue_len=64, protocols=("tcp",),
                        families=("ipv4",), ports=(21,), classes=(ExpectClass("ftp", 1, 300),), options={},
                        max_buffer=4096)


def test_a_name_the_kernels_own_helper_holds_is_reported_as_such():
    """Debian's 6.1 with nf_conntrack_ftp loaded: EBUSY to a userspace 'ftp', then EINVAL to the update
    without priv_data_len. The first answer is the one that says what is wrong."""
    sent = []

    def kernel(op, name, build, *args):
        sent.append(args[-1])
        raise KernelError(errno.EBUSY if args[-1] is not None else errno.EINVAL, op)

    c = Cthelper.__new__(Cthelper)
    c._do = kernel
    with pytest.raises(KernelError) as ei:
        c.register(_policy("ftp"), 64)
    assert sent == [64, None]  # the update without priv_data_len was tried
    assert ei.value.errno == errno.EBUSY


def test_the_update_without_priv_data_len_still_serves_an_older_registration():
    sent = []

    def kernel(op, name, build, *args):
        sent.append(args[-1])
        if args[-1] is not None:
            raise KernelError(errno.EBUSY, op)

    c = Cthelper.__new__(Cthelper)
    c._do = kernel
    c.register(_policy("alg-ftp"), 64)
    assert sent == [64, None]

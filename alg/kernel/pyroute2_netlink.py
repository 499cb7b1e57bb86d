"""pyroute2's netlink message classes (`nla`, `nfgen_msg`), without its package's start-up.

`import pyroute2.netlink` first runs pyroute2/__init__.py, which imports the whole
library (IPRoute, NDB, IPDB, conntrack: about 160 modules, 0.1 s on a quick machine
and tens of seconds in the emulated lab VM, where every module is a file read over
9p). The message classes need 3 of them. So the package is stood in for by a bare
module with the same search path while they load, and they are taken out of
sys.modules again afterwards (the classes live on here): a later `import pyroute2`
anywhere in the process loads the real package from the start, in its own order
(its modules import each other in cycles that only that order resolves)."""

from __future__ import annotations

import importlib.util
import sys
import types


def _load_netlink() -> dict[str, types.ModuleType]:
    if "pyroute2" in sys.modules:  # the whole package is (being) loaded already
        return {name: sys.modules[name] for name in ("pyroute2.netlink", "pyroute2.netlink.nfnetlink")}
    spec = importlib.util.find_spec("pyroute2")
    if spec is None or spec.submodule_search_locations is None:
        raise ImportError("pyroute2 is not installed (pip install pyroute2)")
    stand_in = types.ModuleType("pyroute2")
    stand_in.__path__ = list(spec.submodule_search_locations)
    stand_in.__spec__ = spec
    sys.modules["pyroute2"] = stand_in
    try:
        importlib.import_module("pyroute2.netlink.nfnetlink")
    finally:
        loaded = {name: sys.modules.pop(name) for name in list(sys.modules)
                  if name == "pyroute2" or name.startswith("pyroute2.")}
    return loaded


_modules = _load_netlink()
NLA_F_NESTED: int = _modules["pyroute2.netlink"].NLA_F_NESTED
nla = _modules["pyroute2.netlink"].nla
nfgen_msg = _modules["pyroute2.netlink.nfnetlink"].nfgen_msg

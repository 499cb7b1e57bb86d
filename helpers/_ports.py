"""What the helpers that open a port named by a peer share (TFTP, IRC DCC, SANE, Amanda).

The kernel's helpers refuse port 0 at most. A follow-up flow to a low port
(below 1024: where services listen, sshd, smbd, a database) is no data
connection these protocols make: their data ports are ephemeral. A peer that
names one is asking the firewall to open a service, so these helpers refuse
ports below `min_port` (default 1024), count it as `low-port`, and let the
policy lower the bound where a site's software really uses such ports.
"""

from __future__ import annotations

from typing import Any, Mapping

from alg import Notice, Option

MIN_PORT = 1024
PORT_MAX = 65535


def min_port_option(what: str) -> dict[str, Option]:
    return {"min_port": Option(MIN_PORT, f"lowest {what} port opened (below: refused as a service port)",
                               min=1, max=PORT_MAX)}


def port_refusal(port: int, options: Mapping[str, Any], what: str) -> Notice | None:
    """A Notice when `port` may not be opened (0, out of range, below `min_port`), else None."""
    if not 0 < port <= PORT_MAX:
        return Notice("bad-port", f"{what} port {port}")
    if port < options["min_port"]:
        return Notice("low-port", f"{what} port {port} (min_port {options['min_port']})")
    return None

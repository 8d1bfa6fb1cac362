"""Where a tenant may make this controller connect: replication targets,
webhooks, mail servers.

Each is an address a tenant typed, so the controller must not become a way
into its own host or network: loopback, link-local (a cloud's metadata
service) and unspecified addresses are refused unless the operator allows
them (``target_allow_local``, as on a development machine). The check is on
the addresses the name resolves to, and a caller that connects afterwards
connects to the address checked (``pinned``), so a name that resolves
differently a moment later (DNS rebinding) cannot slip past it.
"""

from __future__ import annotations

import ipaddress
import socket

from cbr import errors


def is_local(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    return ip.is_loopback or ip.is_link_local or ip.is_unspecified


def pinned(host: str, port: int, *, allow_local: bool, what: str) -> str:
    """The address to connect to for ``host``: its first address, once every
    address it resolves to is allowed. Raises ``TargetCloudUnavailable``
    when it does not resolve, ``InvalidParameter`` when it is local."""
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
    except OSError:
        raise errors.TargetCloudUnavailable(
            f"{what} {host}: unreachable (the name does not resolve).") from None
    addresses = [str(info[4][0]) for info in infos]
    if not allow_local:
        for address in addresses:
            if is_local(address):
                raise errors.InvalidParameter(
                    f"{what} {host} is a local address ({address}); this controller's "
                    "operator does not allow connections to loopback or link-local "
                    "addresses (setting target_allow_local).")
    return addresses[0]

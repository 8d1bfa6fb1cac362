"""TLS to a controller's public API: the pinned CA, the name, the first contact.

A controller's API certificate is issued by the controller's own CA (or an
operator supplies one). Clients trust exactly one CA, pinned: the CLI keeps
it in its profile, a replication credential keeps the target's, an agent
learns it from its enrollment token. The certificate names the controller
``cbr-controller``, so a client verifies that name whatever address it dials
(a load balancer, an IP, a NAT).

First contact knows only a fingerprint (an enrollment token, ``cbr configure
--ca-sha256``, a credential's ``target_ca_sha256``). The controller sends its
CA in the TLS chain, so :func:`fetch_ca` takes the chain without trusting it,
keeps the certificate whose SHA-256 is the pinned one, and from then on every
call verifies against that CA. Nothing is sent before the pin matches.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

_ENCODING_DER = 2  # _ssl.ENCODING_DER: how a chain's certificate gives its bytes
# The DNS name in every certificate a controller's CA issues for its endpoints.
SERVER_NAME = "cbr-controller"


class TlsError(Exception):
    """The endpoint's TLS is not the one pinned, or does not answer TLS;
    ``unreachable`` when nothing answered at all."""

    def __init__(self, message: str, *, unreachable: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable


def fingerprint(cert_pem: bytes | str) -> str:
    """Hex SHA-256 of a PEM certificate's DER encoding (the form pins take)."""
    data = cert_pem.encode() if isinstance(cert_pem, str) else cert_pem
    cert = x509.load_pem_x509_certificate(data)
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _split(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    return host.strip("[]"), int(port)


def fetch_ca(endpoint: str, sha256: str, *, timeout: float = 10.0) -> bytes:
    """The PEM of the CA in the endpoint's TLS chain whose fingerprint is
    ``sha256``; TlsError when there is none (another server, a man in the
    middle, or no TLS at all)."""
    want = sha256.strip().lower().replace(":", "")
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # verified below, by the pin, before any use
    context.set_alpn_protocols(["h2"])
    try:
        with socket.create_connection(_split(endpoint), timeout=timeout) as raw, \
                context.wrap_socket(raw, server_hostname=SERVER_NAME) as conn:
            chain: list[Any] = _unverified_chain(conn)
    except ssl.SSLError as exc:
        raise TlsError(f"{endpoint} did not complete a TLS handshake: {exc}") from None
    except (OSError, ValueError) as exc:
        raise TlsError(f"{endpoint} cannot be reached: {exc}", unreachable=True) from None
    seen = []
    for cert in chain:
        der = cert if isinstance(cert, bytes) else cert.public_bytes(_ENCODING_DER)
        pem = ssl.DER_cert_to_PEM_cert(der).encode()
        got = fingerprint(pem)
        if got == want:
            return pem
        seen.append(got)
    raise TlsError(f"{endpoint} presented no CA with SHA-256 {want} (its chain has "
                   f"{', '.join(seen) or 'nothing'}); it is another server, or something "
                   "between here and it is impersonating it")


def _unverified_chain(conn: ssl.SSLSocket) -> list[Any]:
    """The peer's chain as sent. Public from Python 3.13 (DER bytes); before
    that the same call exists on the socket's private ``_sslobj`` (since
    3.10, certificate objects)."""
    public = getattr(conn, "get_unverified_chain", None)
    if public is not None:
        return list(public())
    return list(conn._sslobj.get_unverified_chain())  # type: ignore[attr-defined]


def channel_options(server_name: str) -> list[tuple[str, str]]:
    """Verify the certificate by ``server_name`` rather than the dialed host."""
    return [("grpc.ssl_target_name_override", server_name)] if server_name else []


def credentials(ca_pem: bytes) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(root_certificates=ca_pem)

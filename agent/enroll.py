"""Enrollment: trade a one-time token and a CSR for this agent's certificate.

The key pair is made here and only the CSR leaves the host. The public API
port is plaintext, so the controller's CA is trusted only if its SHA-256
matches the one inside the token (which came over a channel the operator
trusts); the issued certificate must be signed by that CA and carry our key.
"""

from __future__ import annotations

import hashlib
import socket

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.config import AgentConfig
from agent.state import Credentials, Identity, StateDir
from cbr import __version__, enrollment, tls
from cbr.client import channel as cbr_channel
from cbr.client import describe
from cbr.clock import utc_now
from cbr.v1 import agent_pb2, agent_pb2_grpc

ROLE_TO_PB = {"host": agent_pb2.AGENT_ROLE_HOST, "importer": agent_pb2.AGENT_ROLE_IMPORTER}
ENROLL_TIMEOUT_S = 30.0


class EnrollError(Exception):
    """Enrollment failed; the message says why and what to do."""


def token_ca_sha256(token: str) -> str:
    """The CA fingerprint inside a token cbr1.<id>.<secret>.<ca sha256>."""
    try:
        return enrollment.parse(token).ca_sha256
    except ValueError as exc:
        raise EnrollError(str(exc)) from None


def _agent_endpoint(given: str, controller: str) -> str:
    """The endpoint to dial; a wildcard host means 'the controller's host'."""
    host, _, port = given.rpartition(":")
    if host in ("", "0.0.0.0", "::", "[::]"):
        host = controller.rpartition(":")[0]
    return f"{host}:{port}"


def enroll(config: AgentConfig, token: str, controller: str = "", *, force: bool = False,
           hostname: str | None = None) -> Identity:
    state = StateDir(config.state_dir)
    if state.enrolled() and not force:
        raise EnrollError(f"Already enrolled as agent {state.identity().agent_id} "
                          f"(state in {config.state_dir}); use --force to enroll again.")
    controller = controller or config.controller
    if not controller:
        raise EnrollError("No controller address: set [agent] controller in the config or pass "
                          "--controller HOST:PORT.")
    ca_sha256 = token_ca_sha256(token)
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, config.name)]))
        .sign(key, hashes.SHA256())
    )
    request = agent_pb2.EnrollRequest(
        token=token.strip(),
        csr_pem=csr.public_bytes(serialization.Encoding.PEM).decode(),
        name=config.name,
        hostname=hostname or socket.gethostname(),
        role=ROLE_TO_PB[config.role],
        version=__version__,
    )
    # The token pins the CA: take it from the TLS handshake only if it
    # matches, and send the token (a secret) only over TLS verified by it.
    try:
        api_ca = tls.fetch_ca(controller, ca_sha256, timeout=ENROLL_TIMEOUT_S)
    except tls.TlsError as exc:
        raise EnrollError(f"Cannot trust the controller at {controller}: {exc}. Is it the "
                          "API endpoint of the controller that made the token?") from None
    with cbr_channel(controller, root_certificates=api_ca) as channel:
        try:
            response = agent_pb2_grpc.AgentServiceStub(channel).Enroll(
                request, timeout=ENROLL_TIMEOUT_S)
        except grpc.RpcError as exc:
            raise EnrollError(f"The controller at {controller} refused the enrollment: "
                              f"{describe(exc)}") from None
    ca_pem = response.ca_certificate_pem.encode()
    ca = x509.load_pem_x509_certificate(ca_pem)
    got = hashlib.sha256(ca.public_bytes(serialization.Encoding.DER)).hexdigest()
    if got != ca_sha256:
        raise EnrollError(
            f"The controller at {controller} presented a CA whose SHA-256 is {got}, not the "
            f"{ca_sha256} in the token. Refusing to trust it: something between this host and "
            "the controller may be impersonating it."
        )
    cert_pem = response.certificate_pem.encode()
    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise EnrollError("The certificate the controller issued is not signed by its CA."
                          ) from None
    if cert.public_key() != key.public_key():
        raise EnrollError("The certificate the controller issued is not for this agent's key.")
    identity = Identity(
        agent_id=response.agent_id,
        agent_endpoint=_agent_endpoint(response.agent_endpoint, controller),
        server_name=response.server_name,
        controller=controller,
        name=config.name,
        enrolled_at=utc_now().isoformat(),
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    state.save(identity, Credentials(key_pem, cert_pem, ca_pem))
    return identity

"""The controller's own certificate authority for the TLS agent endpoint.

Owns ``<data-dir>/ca/``: the CA key (0600) and certificate, made once at
first start and kept for the controller's life, and the agent endpoint's
server certificate (DNS name ``cbr-controller``, re-issued when near expiry).
It issues each agent a client certificate at enrollment (CN = agent id) from
a CSR whose key never leaves the agent's host. Keys are EC P-256 with
ECDSA/SHA-256: gRPC's TLS stack does not take Ed25519 certificates.

It knows nothing of the database or gRPC servers; revocation is the agent
row's ``revoked`` flag, checked when a stream opens.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cbr import errors, tls
from cbr.clock import Clock, SystemClock

if TYPE_CHECKING:
    from controller.app import App

# The CA's directory in the controller's data dir.
CA_DIR = "ca"
# The name in the endpoints' certificate; clients verify the server by it
# (grpc.ssl_target_name_override), whatever address they dial.
SERVER_NAME = tls.SERVER_NAME
CA_VALIDITY = dt.timedelta(days=20 * 365)
SERVER_VALIDITY = dt.timedelta(days=2 * 365)
SERVER_RENEW_BEFORE = dt.timedelta(days=30)
CLIENT_VALIDITY = dt.timedelta(days=365)
# Tolerates small clock differences between controller and agents.
BACKDATE = dt.timedelta(minutes=5)
AGENT_URI_PREFIX = "urn:cbr:agent:"


def importer_server_name(agent_id: str) -> str:
    """The DNS name in an importer's certificate: source agents dial its
    address and verify this name, so no address needs to be in the certificate."""
    return f"{agent_id}.importer.cbr"


def fingerprint_der(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def certificate_fingerprint(cert_pem: bytes | str) -> str:
    """Hex SHA-256 of a PEM certificate's DER encoding."""
    data = cert_pem.encode() if isinstance(cert_pem, str) else cert_pem
    cert = x509.load_pem_x509_certificate(data)
    return fingerprint_der(cert.public_bytes(serialization.Encoding.DER))


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _write_public(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class ServerIdentity:
    key_pem: bytes
    certificate_pem: bytes


class CertificateAuthority:
    """The CA under ``<data-dir>/ca``; ``load_or_create`` is the only constructor."""

    def __init__(
        self,
        directory: Path,
        key: ec.EllipticCurvePrivateKey,
        certificate: x509.Certificate,
        clock: Clock,
    ) -> None:
        self.directory = directory
        self._key = key
        self.certificate = certificate
        self._clock = clock

    # -- loading -------------------------------------------------------------

    @classmethod
    def load_or_create(cls, directory: Path, clock: Clock | None = None) -> CertificateAuthority:
        clock = clock or SystemClock()
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        key_path, cert_path = directory / "ca.key", directory / "ca.crt"
        if key_path.exists() and cert_path.exists():
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise RuntimeError(f"{key_path} is not an EC private key")
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            return cls(directory, key, cert, clock)
        if key_path.exists() or cert_path.exists():
            raise RuntimeError(
                f"{directory} holds only half of the CA (ca.key and ca.crt go together); "
                "restore the missing file from a backup. A new CA would lock out every "
                "enrolled agent."
            )
        key = ec.generate_private_key(ec.SECP256R1())
        now = clock.now()
        name = x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "CBR"),
            x509.NameAttribute(NameOID.COMMON_NAME, "CBR controller CA"),
        ])
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + CA_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True,
                    crl_sign=True, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256())
        )
        _write_private(key_path, _key_pem(key))
        _write_public(cert_path, _pem(cert))
        return cls(directory, key, cert, clock)

    # -- facts ---------------------------------------------------------------

    @property
    def certificate_pem(self) -> bytes:
        return _pem(self.certificate)

    def ca_fingerprint(self) -> str:
        """Hex SHA-256 of the CA certificate's DER; enrollment tokens carry it."""
        return fingerprint_der(self.certificate.public_bytes(serialization.Encoding.DER))

    # -- issuing -------------------------------------------------------------

    def _builder(self, subject: x509.Name, public_key: ec.EllipticCurvePublicKey,
                 validity: dt.timedelta) -> x509.CertificateBuilder:
        now = self._clock.now()
        not_after = min(now + validity, self.certificate.not_valid_after_utc)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.certificate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=True, key_cert_sign=False,
                    crl_sign=False, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
        )

    def server_identity(self) -> ServerIdentity:
        """Key and certificate of the agent endpoint and the API, issued once and
        renewed near expiry."""
        key_path, cert_path = self.directory / "server.key", self.directory / "server.crt"
        if key_path.exists() and cert_path.exists():
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            fresh = cert.not_valid_after_utc - self._clock.now() > SERVER_RENEW_BEFORE
            if fresh and self.verify(cert):
                return ServerIdentity(key_path.read_bytes(), cert_path.read_bytes())
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            self._builder(
                x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SERVER_NAME)]),
                key.public_key(),
                SERVER_VALIDITY,
            )
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(SERVER_NAME)]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(self._key, hashes.SHA256())
        )
        _write_private(key_path, _key_pem(key))
        _write_public(cert_path, _pem(cert))
        return ServerIdentity(_key_pem(key), _pem(cert))

    def issue_client_certificate(self, csr_pem: bytes | str, agent_id: str, *,
                                 importer: bool = False) -> bytes:
        """A one-year client certificate for agent_id over the CSR's key.

        Refuses (InvalidParameter) a CSR that does not parse, whose signature
        does not verify (the requester does not hold the key) or whose key is
        not EC P-256. The subject the agent asked for is ignored: the
        certificate names the agent id the controller chose. An importer's
        certificate also serves its ImporterService to source agents, under
        the name :func:`importer_server_name` gives.
        """
        data = csr_pem.encode() if isinstance(csr_pem, str) else csr_pem
        try:
            csr = x509.load_pem_x509_csr(data)
        except ValueError:
            raise errors.InvalidParameter("csr_pem is not a PEM certificate signing "
                                          "request.") from None
        if not csr.is_signature_valid:
            raise errors.InvalidParameter("The CSR's signature does not verify.")
        public_key = csr.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(
            public_key.curve, ec.SECP256R1
        ):
            raise errors.InvalidParameter("The CSR's key must be EC P-256.")
        cert = (
            self._builder(
                x509.Name([
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "CBR agents"),
                    x509.NameAttribute(NameOID.COMMON_NAME, agent_id),
                ]),
                public_key,
                CLIENT_VALIDITY,
            )
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(AGENT_URI_PREFIX + agent_id)]
                    + ([x509.DNSName(importer_server_name(agent_id))] if importer else [])
                ),
                critical=False,
            )
            .add_extension(x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.CLIENT_AUTH]
                + ([ExtendedKeyUsageOID.SERVER_AUTH] if importer else [])), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        return _pem(cert)

    def verify(self, cert: x509.Certificate) -> bool:
        """True when cert was signed by this CA and is within its validity."""
        try:
            cert.verify_directly_issued_by(self.certificate)
        except (ValueError, TypeError, InvalidSignature):
            return False
        now = self._clock.now()
        return cert.not_valid_before_utc <= now <= cert.not_valid_after_utc


def agent_id_of(cert_pem: bytes) -> str:
    """The agent id a client certificate names: its URI SAN, else its CN."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        for uri in san.value.get_values_for_type(x509.UniformResourceIdentifier):
            if uri.startswith(AGENT_URI_PREFIX):
                return uri.removeprefix(AGENT_URI_PREFIX)
    except x509.ExtensionNotFound:
        pass
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = cns[0].value if cns else ""
    return value if isinstance(value, str) else value.decode()


_ca_lock = threading.Lock()


def certificate_authority(app: App) -> CertificateAuthority:
    """The controller CA under <data-dir>/ca, created at first use and cached on the app."""
    with _ca_lock:
        if app.ca is None:
            app.ca = CertificateAuthority.load_or_create(app.data_dir / CA_DIR, app.clock)
        return app.ca

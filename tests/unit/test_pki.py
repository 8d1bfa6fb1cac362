"""The controller CA: created once, issues agent certificates, refuses foreign ones."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cbr import errors
from cbr.clock import FakeClock
from controller import pki


def _csr(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, cn: str = "host-1") -> bytes:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def test_ca_is_created_once_with_a_private_key_file(tmp_path: Path) -> None:
    ca = pki.CertificateAuthority.load_or_create(tmp_path / "ca")
    mode = stat.S_IMODE((tmp_path / "ca" / "ca.key").stat().st_mode)
    assert mode == 0o600
    again = pki.CertificateAuthority.load_or_create(tmp_path / "ca")
    assert again.ca_fingerprint() == ca.ca_fingerprint()
    assert len(ca.ca_fingerprint()) == 64
    assert ca.certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_half_a_ca_is_refused_rather_than_replaced(tmp_path: Path) -> None:
    pki.CertificateAuthority.load_or_create(tmp_path / "ca")
    (tmp_path / "ca" / "ca.key").unlink()
    with pytest.raises(RuntimeError, match="half of the CA"):
        pki.CertificateAuthority.load_or_create(tmp_path / "ca")


def test_client_certificate_names_the_agent_and_verifies_against_the_ca(tmp_path: Path) -> None:
    ca = pki.CertificateAuthority.load_or_create(tmp_path / "ca")
    key = ec.generate_private_key(ec.SECP256R1())
    pem = ca.issue_client_certificate(_csr(key, cn="whatever-the-agent-asks"), "agent-123")
    cert = x509.load_pem_x509_certificate(pem)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "agent-123"
    assert pki.agent_id_of(pem) == "agent-123"
    assert cert.public_key() == key.public_key()
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in eku
    assert ca.verify(cert)
    days = (cert.not_valid_after_utc - cert.not_valid_before_utc).days
    assert 365 <= days <= 366


def test_certificate_of_another_ca_is_refused(tmp_path: Path) -> None:
    ours = pki.CertificateAuthority.load_or_create(tmp_path / "ours")
    theirs = pki.CertificateAuthority.load_or_create(tmp_path / "theirs")
    key = ec.generate_private_key(ec.SECP256R1())
    foreign = x509.load_pem_x509_certificate(theirs.issue_client_certificate(_csr(key), "a"))
    assert not ours.verify(foreign)
    assert theirs.verify(foreign)


def test_expired_certificate_does_not_verify(tmp_path: Path) -> None:
    clock = FakeClock()
    ca = pki.CertificateAuthority.load_or_create(tmp_path / "ca", clock)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = x509.load_pem_x509_certificate(ca.issue_client_certificate(_csr(key), "a"))
    clock.advance(366 * 24 * 3600)
    assert not ca.verify(cert)


def test_csr_with_a_forged_signature_is_refused(tmp_path: Path) -> None:
    ca = pki.CertificateAuthority.load_or_create(tmp_path / "ca")
    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.load_pem_x509_csr(_csr(key))
    der = bytearray(csr.public_bytes(serialization.Encoding.DER))
    der[-3] ^= 0xFF  # inside the signature
    forged = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(errors.InvalidParameter):
        ca.issue_client_certificate(forged, "a")


def test_csr_that_is_not_pem_or_not_p256_is_refused(tmp_path: Path) -> None:
    ca = pki.CertificateAuthority.load_or_create(tmp_path / "ca")
    with pytest.raises(errors.InvalidParameter, match="PEM"):
        ca.issue_client_certificate(b"not a csr", "a")
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(errors.InvalidParameter, match="P-256"):
        ca.issue_client_certificate(_csr(rsa_key), "a")


def test_server_certificate_names_cbr_controller_and_is_reused(tmp_path: Path) -> None:
    ca = pki.CertificateAuthority.load_or_create(tmp_path / "ca")
    first = ca.server_identity()
    cert = x509.load_pem_x509_certificate(first.certificate_pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [pki.SERVER_NAME]
    assert ca.verify(cert)
    assert stat.S_IMODE((tmp_path / "ca" / "server.key").stat().st_mode) == 0o600
    assert ca.server_identity().certificate_pem == first.certificate_pem


def test_server_certificate_is_renewed_near_expiry(tmp_path: Path) -> None:
    clock = FakeClock()
    ca = pki.CertificateAuthority.load_or_create(tmp_path / "ca", clock)
    first = ca.server_identity()
    clock.advance(2 * 365 * 24 * 3600 - 10 * 24 * 3600)
    assert ca.server_identity().certificate_pem != first.certificate_pem


def test_fingerprint_is_sha256_of_der(tmp_path: Path) -> None:
    import hashlib

    ca = pki.CertificateAuthority.load_or_create(tmp_path / "ca")
    der = ca.certificate.public_bytes(serialization.Encoding.DER)
    assert ca.ca_fingerprint() == hashlib.sha256(der).hexdigest()
    assert pki.certificate_fingerprint(ca.certificate_pem) == ca.ca_fingerprint()

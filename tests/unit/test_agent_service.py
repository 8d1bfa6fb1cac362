"""Agent domain rules on a real SQLite database: tokens, enrollment, inventory, revocation."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import select

from cbr import errors, limits
from cbr.clock import FakeClock
from controller import pki
from controller.persistence import migrate
from controller.persistence.db import Database
from controller.persistence.models import Account, EnrollmentToken, Protectable
from controller.services import agents as service


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path}/controller.db")
    migrate.upgrade(database.engine)
    with database.begin() as s:
        s.add(Account(id="p1", name="project-1", administrator=False,
                      created_at=dt.datetime(2030, 1, 1, tzinfo=dt.UTC)))
    yield database
    database.dispose()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def ca(tmp_path: Path, clock: FakeClock) -> pki.CertificateAuthority:
    return pki.CertificateAuthority.load_or_create(tmp_path / "ca", clock)


def _csr() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "h")]))
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def _token(db: Database, ca: pki.CertificateAuthority, clock: FakeClock, ttl: int = 0) -> str:
    with db.begin() as s:
        return service.create_token(s, project_id="p1", ca_fingerprint=ca.ca_fingerprint(),
                                    now=clock.now(), ttl_seconds=ttl).token


def _enroll(db: Database, ca: pki.CertificateAuthority, clock: FakeClock, token: str,
            name: str = "host-1") -> service.Enrollment:
    with db.begin() as s:
        return service.enroll(s, ca, token=token, csr_pem=_csr(), name=name, hostname="h",
                              role="host", version="0.1.0", now=clock.now())


def test_token_has_four_parts_and_only_the_secret_hash_is_stored(
        db: Database, ca: pki.CertificateAuthority, clock: FakeClock) -> None:
    token = _token(db, ca, clock)
    parsed = service.parse_token(token)
    assert token.startswith("cbr1.")
    assert parsed.ca_sha256 == ca.ca_fingerprint()
    with db.begin() as s:
        row = s.get(EnrollmentToken, parsed.token_id)
        assert row is not None
        assert parsed.secret not in row.secret_sha256
        assert row.expires_at == clock.now() + dt.timedelta(
            seconds=limits.ENROLLMENT_TOKEN_TTL_DEFAULT_S)


@pytest.mark.parametrize("bad", ["", "cbr1.a.b", "cbr2.a.b.c", "cbr1..b.c", "x"])
def test_malformed_token_is_refused(bad: str) -> None:
    with pytest.raises(errors.Unauthenticated, match="malformed"):
        service.parse_token(bad)


def test_token_ttl_above_seven_days_is_refused(
        db: Database, ca: pki.CertificateAuthority, clock: FakeClock) -> None:
    with pytest.raises(errors.InvalidParameter, match="ttl_seconds"):
        _token(db, ca, clock, ttl=limits.ENROLLMENT_TOKEN_TTL_MAX_S + 1)
    _token(db, ca, clock, ttl=limits.ENROLLMENT_TOKEN_TTL_MAX_S)


def test_enrollment_creates_the_agent_with_its_certificate_fingerprint(
        db: Database, ca: pki.CertificateAuthority, clock: FakeClock) -> None:
    enrollment = _enroll(db, ca, clock, _token(db, ca, clock))
    assert pki.agent_id_of(enrollment.certificate_pem) == enrollment.agent_id
    with db.begin() as s:
        agent = service.authenticate_stream(
            s, enrollment.agent_id, pki.certificate_fingerprint(enrollment.certificate_pem))
        assert agent.project_id == "p1"


def test_token_is_one_time(db: Database, ca: pki.CertificateAuthority,
                           clock: FakeClock) -> None:
    token = _token(db, ca, clock)
    _enroll(db, ca, clock, token)
    with pytest.raises(errors.Unauthenticated, match="already used"):
        _enroll(db, ca, clock, token, name="host-2")


def test_expired_token_is_refused(db: Database, ca: pki.CertificateAuthority,
                                  clock: FakeClock) -> None:
    token = _token(db, ca, clock, ttl=60)
    clock.advance(61)
    with pytest.raises(errors.Unauthenticated, match="expired"):
        _enroll(db, ca, clock, token)


def test_token_with_a_wrong_secret_or_unknown_id_is_refused(
        db: Database, ca: pki.CertificateAuthority, clock: FakeClock) -> None:
    parsed = service.parse_token(_token(db, ca, clock))
    wrong_secret = f"cbr1.{parsed.token_id}.nope.{parsed.ca_sha256}"
    unknown = f"cbr1.0000000000000000.{parsed.secret}.{parsed.ca_sha256}"
    for token in (wrong_secret, unknown):
        with pytest.raises(errors.Unauthenticated, match="unknown"):
            _enroll(db, ca, clock, token)


def test_token_of_another_controller_is_refused(
        db: Database, ca: pki.CertificateAuthority, clock: FakeClock, tmp_path: Path) -> None:
    other = pki.CertificateAuthority.load_or_create(tmp_path / "other", clock)
    parsed = service.parse_token(_token(db, ca, clock))
    with pytest.raises(errors.Unauthenticated, match="another controller"):
        _enroll(db, other, clock, f"cbr1.{parsed.token_id}.{parsed.secret}.{parsed.ca_sha256}")


def test_stream_with_another_certificate_or_a_revoked_agent_is_refused(
        db: Database, ca: pki.CertificateAuthority, clock: FakeClock) -> None:
    enrollment = _enroll(db, ca, clock, _token(db, ca, clock))
    with db.begin() as s, pytest.raises(errors.Unauthenticated, match="not the one"):
        service.authenticate_stream(s, enrollment.agent_id, "0" * 64)
    with db.begin() as s, pytest.raises(errors.Unauthenticated, match="Unknown agent"):
        service.authenticate_stream(s, "nope", "0" * 64)
    with db.begin() as s:
        service.delete_agent(s, "p1", enrollment.agent_id, clock.now())
    fingerprint = pki.certificate_fingerprint(enrollment.certificate_pem)
    with db.begin() as s, pytest.raises(errors.Unauthenticated, match="deleted"):
        service.authenticate_stream(s, enrollment.agent_id, fingerprint)
    with db.begin() as s, pytest.raises(errors.ResourceNotFound):
        service.get_agent(s, "p1", enrollment.agent_id, now=clock.now(), offline_after=15)


def _server(size: int, error: str = "") -> service.ReportedProtectable:
    return service.ReportedProtectable(
        local_id="server:web-1", name="web-1", object_type="server", size_bytes=size,
        disks=[{"id": "server:web-1/disk:system", "name": "system", "path": "/i/s.img",
                "size_bytes": size, "system_disk": True, "device_type": "file"}],
        tags=[{"key": "env", "value": "prod"}], error=error)


def test_inventory_upserts_and_marks_unreported_protectables_gone(
        db: Database, ca: pki.CertificateAuthority, clock: FakeClock) -> None:
    agent_id = _enroll(db, ca, clock, _token(db, ca, clock)).agent_id
    fs = service.ReportedProtectable(local_id="turbo:share", name="share",
                                     object_type="turbo", size_bytes=5, path="/srv/share")
    with db.begin() as s:
        first = service.record_inventory(s, agent_id, [_server(100), fs], clock.now())
    assert len(first.created) == 2
    clock.advance(10)
    with db.begin() as s:
        same = service.record_inventory(s, agent_id, [_server(100), fs], clock.now())
    assert (same.created, same.updated, same.gone) == ([], 0, 0)
    with db.begin() as s:
        changed = service.record_inventory(s, agent_id, [_server(200)], clock.now())
    assert (changed.created, changed.updated, changed.gone) == ([], 1, 1)
    with db.begin() as s:
        rows = {p.local_id: p for p in s.scalars(select(Protectable))}
        assert rows["server:web-1"].size_bytes == 200
        assert rows["server:web-1"].id == first.created[0]
        assert rows["turbo:share"].gone
    with db.begin() as s:
        back = service.record_inventory(s, agent_id, [_server(200), fs], clock.now())
    assert back.updated == 1 and back.created == []
    with db.begin() as s:
        assert not s.scalars(select(Protectable).where(
            Protectable.local_id == "turbo:share")).one().gone
        assert service.get_agent(s, "p1", agent_id, now=clock.now(),
                                 offline_after=15).protectable_count == 2


def test_online_needs_a_stream_and_a_recent_heartbeat(clock: FakeClock) -> None:
    now = clock.now()
    recent = now - dt.timedelta(seconds=5)
    old = now - dt.timedelta(seconds=20)
    assert service.is_online(True, recent, now, 15)
    assert not service.is_online(True, old, now, 15)
    assert not service.is_online(False, recent, now, 15)
    assert not service.is_online(True, None, now, 15)


def test_list_agents_pages_and_filters_by_live_status(
        db: Database, ca: pki.CertificateAuthority, clock: FakeClock) -> None:
    ids = []
    for i in range(5):
        ids.append(_enroll(db, ca, clock, _token(db, ca, clock), name=f"h{i}").agent_id)
        clock.advance(1)
    live = {ids[1]: service.LiveState(True, clock.now(), clock.now()),
            ids[3]: service.LiveState(True, clock.now(), clock.now())}
    kwargs = {"now": clock.now(), "offline_after": 15.0, "live": live.get}
    with db.begin() as s:
        first, token, total = service.list_agents(s, "p1", page_size=1, **kwargs)  # type: ignore[arg-type]
        assert total == 5 and [v.name for v in first] == ["h0"] and token
        page, _, _ = service.list_agents(s, "p1", page_size=2, page_token=token, **kwargs)  # type: ignore[arg-type]
        assert [v.name for v in page] == ["h1", "h2"]
        assert [v.online for v in page] == [True, False]
        online, end, n_online = service.list_agents(s, "p1", online=True, **kwargs)  # type: ignore[arg-type]
        assert n_online == 2 and [v.id for v in online] == [ids[1], ids[3]] and end == ""
        offline, token, n_offline = service.list_agents(s, "p1", online=False, page_size=2,
                                                        **kwargs)  # type: ignore[arg-type]
        assert n_offline == 3 and [v.id for v in offline] == [ids[0], ids[2]]
        offline, end, _ = service.list_agents(s, "p1", online=False, page_token=token,
                                              **kwargs)  # type: ignore[arg-type]
        assert [v.id for v in offline] == [ids[4]] and end == ""

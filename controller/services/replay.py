"""A signed call is admitted once by the cloud, and only while its key lives.

Signatures are accepted for a window (cbr.signing), so each nonce must be
remembered for as long: a second use is a replay. Several controllers of a
cloud share one PostgreSQL database, so there the nonces live in it (a
primary key makes the first insert win, whichever controller it reaches), and
a restart forgets nothing. A SQLite database belongs to one controller
process, whose memory is then the cloud's.

The key cache (services.iam.AccessKeyCache) spares each call the secret's
unsealing and the grants. A key deleted through this controller clears it at
once; one deleted through another controller of a shared database must be
refused at once too, so there ``admit`` reads the key's state each call, in
the transaction that records the nonce.
"""

from __future__ import annotations

import datetime as dt
import enum
import threading
import time

from sqlalchemy import bindparam, delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert

from controller.persistence.db import Database
from controller.persistence.models import AccessKey, UsedNonce

_KEY_ACTIVE = select(AccessKey.active).where(AccessKey.id == bindparam("key_id"))
# Expired nonces are swept at most this often, by whichever call comes next.
SWEEP_EVERY_S = 60.0


class Admission(enum.Enum):
    ADMITTED = "admitted"
    KEY_GONE = "key_gone"
    REPLAY = "replay"


class NonceCache:
    """Nonces seen inside the signature window, in this process's memory.

    A nonce is kept until its signature's timestamp has left the window.
    Entries are dropped from the oldest end as they expire (a dict keeps
    insertion order), a little work per call instead of a periodic sweep that
    would pause every call; memory is bounded by the call rate times the
    window.
    """

    def __init__(self, window: float) -> None:
        self._window = window
        self._seen: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def first_use(self, access_key: str, nonce: str, signed_at: float, now: float) -> bool:
        with self._lock:
            seen = self._seen
            while seen:
                oldest = next(iter(seen))
                if seen[oldest] > now:
                    break  # entries behind a later one wait: kept longer, never shorter
                del seen[oldest]
            key = (access_key, nonce)
            if key in seen:
                return False
            seen[key] = max(signed_at, now) + self._window + 1
            return True

    def __len__(self) -> int:
        return len(self._seen)


class ReplayGuard:
    def __init__(self, db: Database, window: float) -> None:
        self._db = db
        self._window = window
        self._shared = db.engine.dialect.name == "postgresql"
        self._memory = NonceCache(window)
        self._next_sweep = 0.0

    def admit(self, access_key: str, nonce: str, signed_at: float, now: float) -> Admission:
        """Whether a call whose signature verified may run."""
        if not self._shared:
            fresh = self._memory.first_use(access_key, nonce, signed_at, now)
            return Admission.ADMITTED if fresh else Admission.REPLAY
        expires = dt.datetime.fromtimestamp(max(signed_at, now) + self._window + 1, dt.UTC)
        at = dt.datetime.fromtimestamp(now, dt.UTC)
        with self._db.engine.begin() as conn:
            if not conn.scalar(_KEY_ACTIVE, {"key_id": access_key}):
                return Admission.KEY_GONE
            # A row whose time is over (not swept yet) is a new use.
            written = conn.scalar(
                pg_insert(UsedNonce)
                .values(access_key_id=access_key, nonce=nonce, expires_at=expires)
                .on_conflict_do_update(index_elements=["access_key_id", "nonce"],
                                       set_={"expires_at": expires},
                                       where=UsedNonce.expires_at < at)
                .returning(UsedNonce.nonce))
            if time.monotonic() >= self._next_sweep:
                self._next_sweep = time.monotonic() + SWEEP_EVERY_S
                conn.execute(delete(UsedNonce).where(UsedNonce.expires_at < at))
        return Admission.ADMITTED if written is not None else Admission.REPLAY

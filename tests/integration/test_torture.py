"""A bounded, fixed-seed run of the differential torture test
(``scripts/torture``): random real mutations of a tree and a disk image,
backups through a running agent, restores compared entry by entry with the
source. ``scripts/torture --rounds 2000`` runs the long version."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.dataplane.changes import TreeWatch, Unavailable
from tests.support.environment import unavailable
from tests.torture.run import RoundFailed, run

pytestmark = pytest.mark.integration

ROUNDS = 60
SEED = 20261206


def test_sixty_seeded_rounds_of_mutations_restore_exactly_what_was_there(
        tmp_path: Path) -> None:
    if os.geteuid() != 0:
        unavailable("the torture test needs root (owners, the change journal, XFS)")
    try:
        TreeWatch(tmp_path).close()
    except Unavailable as exc:
        unavailable(f"no change journal here: {exc}")
    lines: list[str] = []
    try:
        stats = run(ROUNDS, SEED, keep=tmp_path, log=lines.append)
    except RoundFailed:
        pytest.fail("\n".join(lines))
    assert stats.rounds == ROUNDS
    # The journal is what the rounds are about: most tree rounds use it.
    assert stats.tree_methods["journal"] > ROUNDS // 2, stats.tree_methods

"""Fixtures of the integration tests that start more than one cloud.

``clouds``: a source and a target cloud with a credential between them
(``tests.support.clouds``), stopped at teardown like every process here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.clouds import Clouds, _clouds
from tests.support.processes import AgentFactory, ControllerFactory


@pytest.fixture
def clouds(tmp_path: Path, controller_factory: ControllerFactory,
           agent_factory: AgentFactory) -> Clouds:
    return _clouds(tmp_path, controller_factory, agent_factory)

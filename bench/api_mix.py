"""The call mix of ``scripts/bench api``: which signed methods, how often, on what.

Apart from the load generator so that what is offered (a console's and a
poller's mostly-read mix, and the vaults and tasks it refers to) can change
without touching how it is timed.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import field_mask_pb2

from cbr.client import Client
from cbr.v1 import backup_pb2, common_pb2, protectable_pb2, task_pb2, vault_pb2

FIXTURE_VAULTS = 20
FIXTURE_TASKS = 10


@dataclass(frozen=True)
class Method:
    """One unary method: its full name and how to (de)serialize it."""

    name: str
    request_type: Any
    response_type: Any

    @property
    def short(self) -> str:
        return self.name.rpartition("/")[2]


LIST_VAULTS = Method("/cbr.v1.VaultService/ListVaults", vault_pb2.ListVaultsRequest,
                     vault_pb2.ListVaultsResponse)
GET_VAULT = Method("/cbr.v1.VaultService/GetVault", vault_pb2.GetVaultRequest,
                   vault_pb2.GetVaultResponse)
CREATE_VAULT = Method("/cbr.v1.VaultService/CreateVault", vault_pb2.CreateVaultRequest,
                      vault_pb2.CreateVaultResponse)
UPDATE_VAULT = Method("/cbr.v1.VaultService/UpdateVault", vault_pb2.UpdateVaultRequest,
                      vault_pb2.UpdateVaultResponse)
DELETE_VAULT = Method("/cbr.v1.VaultService/DeleteVault", vault_pb2.DeleteVaultRequest,
                      vault_pb2.DeleteVaultResponse)
LIST_PROTECTABLES = Method("/cbr.v1.ProtectableService/ListProtectables",
                           protectable_pb2.ListProtectablesRequest,
                           protectable_pb2.ListProtectablesResponse)
GET_TASK = Method("/cbr.v1.TaskService/GetTask", task_pb2.GetTaskRequest,
                  task_pb2.GetTaskResponse)

# Mostly reads, as a console and scripts polling state do: single-resource
# reads (task and vault polling) most, pages of a console list (20 rows) less,
# and one call in ten writes. --mix and --page-size change it.
MIX: tuple[tuple[Method, int], ...] = (
    (GET_VAULT, 30),
    (GET_TASK, 30),
    (LIST_VAULTS, 15),
    (LIST_PROTECTABLES, 15),
    (UPDATE_VAULT, 4),
    (CREATE_VAULT, 3),
    (DELETE_VAULT, 3),
)
PAGE_SIZE = 20


@dataclass
class World:
    """What the reads and writes refer to; writes during the run add to it."""

    run_id: str
    vault_ids: list[str]
    task_ids: list[str]
    created: deque[str] = field(default_factory=deque)
    serial: int = 0
    page_size: int = PAGE_SIZE

    def request(self, method: Method, rng: random.Random) -> tuple[Method, Any]:
        """The request for one due call; a delete with nothing to delete creates instead."""
        if method is LIST_VAULTS:
            return method, vault_pb2.ListVaultsRequest(page_size=self.page_size)
        if method is GET_VAULT:
            return method, vault_pb2.GetVaultRequest(vault_id=rng.choice(self.vault_ids))
        if method is LIST_PROTECTABLES:
            return method, protectable_pb2.ListProtectablesRequest(page_size=self.page_size)
        if method is GET_TASK:
            return method, task_pb2.GetTaskRequest(task_id=rng.choice(self.task_ids))
        if method is UPDATE_VAULT:
            self.serial += 1
            return method, vault_pb2.UpdateVaultRequest(
                vault_id=rng.choice(self.vault_ids),
                vault=vault_pb2.Vault(description=f"bench update {self.serial}"),
                update_mask=field_mask_pb2.FieldMask(paths=["description"]))
        if method is DELETE_VAULT and self.created:
            return method, vault_pb2.DeleteVaultRequest(vault_id=self.created.popleft())
        self.serial += 1
        return CREATE_VAULT, _create_vault_request(f"bench-{self.run_id}-w{self.serial}")

    def absorb(self, method: Method, response: Any) -> None:
        """Remembers what a write made, so later deletes and GetTasks can use it."""
        if method is CREATE_VAULT:
            self.created.append(response.vault.id)
        elif method is DELETE_VAULT and response.task_id:
            self.task_ids.append(response.task_id)


def _create_vault_request(name: str) -> Any:
    return vault_pb2.CreateVaultRequest(
        name=name, object_type=common_pb2.OBJECT_TYPE_DISK, size_gb=100,
        description="made by scripts/bench")


def make_world(client: Client, run_id: str) -> World:
    """Vaults for GetVault/UpdateVault and finished tasks for GetTask (from deletes)."""
    vault_ids = [client.vaults.CreateVault(
        _create_vault_request(f"bench-{run_id}-fixture-{i:02d}")).vault.id
        for i in range(FIXTURE_VAULTS)]
    task_ids = []
    for i in range(FIXTURE_TASKS):
        vid = client.vaults.CreateVault(_create_vault_request(f"bench-{run_id}-gone-{i:02d}")
                                        ).vault.id
        task_ids.append(client.vaults.DeleteVault(vault_pb2.DeleteVaultRequest(vault_id=vid)
                                                  ).task_id)
    return World(run_id, vault_ids, task_ids)


def never_ending_task(client: Client, run_id: str) -> str:
    """A backup task that stays running: simulated agents take commands and
    never answer them. Task watches on it stay open."""
    [disk] = client.protectables.ListProtectables(protectable_pb2.ListProtectablesRequest(
        type=common_pb2.OBJECT_TYPE_DISK, page_size=1)).protectables
    request = _create_vault_request(f"bench-{run_id}-watched")
    request.resources.add(id=disk.id)
    vault_id = client.vaults.CreateVault(request).vault.id
    checkpoint = client.backups.CreateCheckpoint(backup_pb2.CreateCheckpointRequest(
        vault_id=vault_id)).checkpoint
    return str(checkpoint.task_ids[0])


def parse_mix(text: str) -> tuple[tuple[Method, int], ...]:
    """``ListVaults=25,GetVault=20`` into a mix; empty means the default MIX.

    For finding out what one method costs: ``--mix GetVault=1`` loads only it.
    """
    if not text:
        return MIX
    by_name = {m.short: m for m, _ in MIX}
    out = []
    for item in text.split(","):
        name, _, weight = item.partition("=")
        if name.strip() not in by_name:
            raise SystemExit(f"bench: --mix: unknown method {name!r}; one of {sorted(by_name)}")
        out.append((by_name[name.strip()], int(weight or 1)))
    return tuple(out)


def plan(n: int, seed: int, mix: tuple[tuple[Method, int], ...] = MIX) -> list[Method]:
    """The methods of n calls, drawn by weight with a fixed seed (same plan every run)."""
    rng = random.Random(seed)
    methods = [m for m, _ in mix]
    weights = [w for _, w in mix]
    return rng.choices(methods, weights, k=n)

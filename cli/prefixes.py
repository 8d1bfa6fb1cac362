"""Ids typed short: a unique prefix of an id stands for the whole id, as git's
abbreviated hashes do, so a person can type `cbr backup show 27fa` after
reading a table.

The CLI resolves a prefix before the command runs, by listing the objects of
that kind the caller may see; a prefix that matches several is refused with
the candidates, and one that matches none is passed on unchanged, so the
controller answers NOT_FOUND in its usual words.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from typing import Any

from cbr import client as cbr_client
from cbr.v1 import (
    agent_pb2,
    backup_pb2,
    credential_pb2,
    policy_pb2,
    task_pb2,
    vault_pb2,
)
from cli._common import Context, UsageError

FULL_ID_LENGTH = 36
MIN_PREFIX = 4
"""Shorter prefixes would match too much to be worth a listing."""
_PREFIX = re.compile(r"[0-9a-f-]+")

# argument dest -> (the kind, said in a message; how to list every one of it)
Lister = Callable[[cbr_client.Client], tuple[Callable[..., Any], Any, str]]
_KINDS: dict[str, tuple[str, Lister]] = {
    "vault_id": ("vault", lambda c: (c.vaults.ListVaults, vault_pb2.ListVaultsRequest(),
                                     "vaults")),
    "backup_id": ("backup", lambda c: (c.backups.ListBackups, backup_pb2.ListBackupsRequest(
        show_children=True), "backups")),
    "image_id": ("image", lambda c: (c.backups.ListImages, backup_pb2.ListImagesRequest(),
                                     "images")),
    "task_id": ("task", lambda c: (c.tasks.ListTasks, task_pb2.ListTasksRequest(), "tasks")),
    "policy_id": ("policy", lambda c: (c.policies.ListPolicies,
                                       policy_pb2.ListPoliciesRequest(), "policies")),
    "agent_id": ("agent", lambda c: (c.agents.ListAgents, agent_pb2.ListAgentsRequest(),
                                     "agents")),
    "credential_id": ("credential", lambda c: (c.credentials.ListCredentials,
                                               credential_pb2.ListCredentialsRequest(),
                                               "credentials")),
}
_KINDS["other_backup_id"] = _KINDS["backup_id"]
_KINDS["task_ids"] = _KINDS["task_id"]


def is_prefix(value: object) -> bool:
    return (isinstance(value, str) and MIN_PREFIX <= len(value) < FULL_ID_LENGTH
            and bool(_PREFIX.fullmatch(value)))


def resolve(ctx: Context, args: argparse.Namespace) -> None:
    """Replaces each id argument given as a unique prefix by the whole id."""
    ids: dict[str, list[str]] = {}
    for dest, (kind, lister) in _KINDS.items():
        value = getattr(args, dest, None)
        values = value if isinstance(value, list) else [value]
        if not any(is_prefix(v) for v in values):
            continue
        if kind not in ids:
            call, request, field = lister(ctx.client)
            ids[kind] = [item.id for item in cbr_client.iterate_pages(
                lambda req, call=call: call(req, timeout=ctx.timeout), request, field)]
        whole = [_whole(kind, v, ids[kind]) if isinstance(v, str) and is_prefix(v) else v
                 for v in values]
        setattr(args, dest, whole if isinstance(value, list) else whole[0])


def _whole(kind: str, prefix: str, known: list[str]) -> str:
    matches = sorted({i for i in known if i.startswith(prefix)})
    if len(matches) > 1:
        shown = ", ".join(matches[:5]) + (", ..." if len(matches) > 5 else "")
        raise UsageError(f"{prefix} is the start of {len(matches)} {kind} ids ({shown}); "
                         "type more of it")
    return matches[0] if matches else prefix

"""Policies: the list, a policy's page (its next runs, its vaults, run now,
its runs), and the form that creates or edits one with a schedule builder.

The builder previews as the user types (``/policies/preview``, an htmx
fragment): the next runs come from the controller's own schedule code
(``controller.services.schedule``) and a refusal from the rules the API
applies on create (``controller.services.policy_rules``), with the API's own
words, so what the preview accepts the API accepts. Those are pure
functions, no database; the change itself is an API call like any other.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from google.protobuf import field_mask_pb2
from multidict import MultiMapping

from cbr import errors
from cbr.v1 import backup_pb2, credential_pb2, policy_pb2
from console import web as cw
from console.api import ApiError
from controller.services import policy_rules, validation
from controller.services.schedule import Schedule

OPERATIONS = {"backup": policy_pb2.POLICY_OPERATION_TYPE_BACKUP,
              "replication": policy_pb2.POLICY_OPERATION_TYPE_REPLICATION,
              "verify": policy_pb2.POLICY_OPERATION_TYPE_VERIFY,
              "prune": policy_pb2.POLICY_OPERATION_TYPE_PRUNE}
OPERATION_NAMES = {number: name for name, number in OPERATIONS.items()}
NEXT_RUNS_SHOWN = 5  # as many as the API's next_run_times
RUNS_SHOWN = 100
PAGE = 1000
BUILDER_KEYS = {"FREQ", "BYDAY", "BYHOUR", "BYMINUTE", "INTERVAL"}
NUMBERS = ("max_backups", "retention_duration_days", "day_backups", "week_backups",
           "month_backups", "year_backups", "full_backup_interval")
TEXTS = ("timezone", "destination_region", "destination_project_id", "credential_id",
         "read_data_subset")
CHECKS = ("include_manual_backups", "read_data")
UPDATABLE = ("name", "enabled", "operation_definition", "trigger", "start_window_minutes",
             "completion_window_minutes")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/policies", list_page)
    app.router.add_post("/policies", create)
    app.router.add_get("/policies/new", new_form)
    app.router.add_get("/policies/preview", preview)
    app.router.add_get("/policies/{policy_id}", detail)
    app.router.add_post("/policies/{policy_id}", update)
    app.router.add_get("/policies/{policy_id}/edit", edit_form)
    app.router.add_post("/policies/{policy_id}/run", run_now)


# -- the form -------------------------------------------------------------------


def _blank() -> dict[str, Any]:
    return {**{k: "" for k in (*NUMBERS, *TEXTS)}, **{k: False for k in CHECKS}}


@dataclass
class Draft:
    """A policy as the form holds it: the builder's fields as typed, and the
    API's request built from them."""

    name: str = ""
    operation: str = "backup"
    enabled: bool = True
    freq: str = "DAILY"
    interval: str = "1"
    days: list[str] = field(default_factory=list)
    hours: str = "2"
    minutes: str = "0"
    more_rules: str = ""
    definition: dict[str, Any] = field(default_factory=_blank)  # the form's text per field
    start_window: str = ""
    completion_window: str = ""
    anchor: dt.datetime | None = None  # the policy's created_at; INTERVAL counts from it

    @property
    def patterns(self) -> list[str]:
        """The RRULEs: the builder's one (when a frequency is chosen), then
        the extra rules, one a line."""
        out = []
        if self.freq:
            parts = [f"FREQ={self.freq}"]
            if self.freq == "WEEKLY" and self.days:
                parts.append("BYDAY=" + ",".join(self.days))
            if self.freq == "DAILY" and _squeeze(self.interval):
                parts.append(f"INTERVAL={_squeeze(self.interval)}")
            if _squeeze(self.hours):
                parts.append(f"BYHOUR={_squeeze(self.hours)}")
            if _squeeze(self.minutes):
                parts.append(f"BYMINUTE={_squeeze(self.minutes)}")
            out.append(";".join(parts))
        out += [line.strip() for line in self.more_rules.splitlines() if line.strip()]
        return out

    def operation_definition(self) -> policy_pb2.OperationDefinition:
        od = policy_pb2.OperationDefinition()
        for key in NUMBERS:
            setattr(od, key, _number(str(self.definition.get(key, "")), key))
        for key in TEXTS:
            setattr(od, key, str(self.definition.get(key, "")).strip())
        for key in CHECKS:
            setattr(od, key, bool(self.definition.get(key)))
        return od

    def windows(self) -> tuple[int, int]:
        return (_number(self.start_window, "start_window_minutes"),
                _number(self.completion_window, "completion_window_minutes"))


def _squeeze(text: str) -> str:
    return "".join(text.split()).upper()


def _number(text: str, name: str) -> int:
    """A whole number field; empty is 0 (the API's "unset")."""
    text = text.strip()
    if not text:
        return 0
    try:
        value = int(text)
    except ValueError:
        raise errors.InvalidParameter(f"{name} {text!r} is not a whole number.",
                                      field=name) from None
    if not -(2**31) <= value < 2**31:
        raise errors.InvalidParameter(f"{name} {value} is out of range.", field=name)
    return value


def draft_of(form: MultiMapping[Any]) -> Draft:
    def text(key: str, default: str = "") -> str:
        return str(form.get(key, default))[:4096]

    definition: dict[str, Any] = {k: text(k) for k in (*NUMBERS, *TEXTS)}
    definition.update({k: form.get(k) == "on" for k in CHECKS})
    anchor = None
    if text("anchor"):
        try:
            anchor = dt.datetime.fromtimestamp(int(text("anchor")), dt.UTC)
        except (ValueError, OverflowError, OSError):
            anchor = None
    return Draft(name=text("name").strip(), operation=text("operation_type", "backup"),
                 enabled=form.get("enabled") == "on", freq=text("freq").upper(),
                 interval=text("interval"), days=[str(d).upper() for d in form.getall("byday", [])
                                                  if str(d).upper() in policy_rules.DAYS],
                 hours=text("hours"), minutes=text("minutes"), more_rules=text("more_rules"),
                 definition=definition, start_window=text("start_window_minutes"),
                 completion_window=text("completion_window_minutes"), anchor=anchor)


def draft_from(policy: policy_pb2.Policy) -> Draft:
    """The edit form of a stored policy: its first rule in the builder when
    the builder can show it, the others as extra rules."""
    od = policy.operation_definition
    definition: dict[str, Any] = {k: str(getattr(od, k)) if getattr(od, k) else ""
                                  for k in NUMBERS}
    definition.update({k: getattr(od, k) for k in (*TEXTS, *CHECKS)})
    patterns = list(policy.trigger.pattern)
    draft = Draft(name=policy.name, operation=OPERATION_NAMES.get(policy.operation_type, ""),
                  enabled=policy.enabled, freq="", definition=definition,
                  start_window=str(policy.start_window_minutes or ""),
                  completion_window=str(policy.completion_window_minutes or ""),
                  anchor=policy.created_at.ToDatetime(tzinfo=dt.UTC))
    first = _builder_fields(patterns[0]) if patterns else None
    if first is not None:
        draft.freq = first.get("FREQ", "")
        draft.interval = first.get("INTERVAL", "")
        draft.days = [d for d in first.get("BYDAY", "").split(",") if d]
        draft.hours, draft.minutes = first.get("BYHOUR", ""), first.get("BYMINUTE", "")
        patterns = patterns[1:]
    draft.more_rules = "\n".join(patterns)
    return draft


def _builder_fields(rule: str) -> dict[str, str] | None:
    parts = dict(item.partition("=")[::2] for item in rule.upper().split(";"))
    if set(parts) - BUILDER_KEYS or parts.get("FREQ") not in ("DAILY", "WEEKLY"):
        return None
    return parts


@dataclass(frozen=True)
class Preview:
    patterns: list[str]
    runs: list[dt.datetime]
    error: ApiError | None
    enabled: bool


def _refusal(exc: errors.CbrError) -> ApiError:
    """A rule's refusal as the API would send it: status, code, message."""
    return ApiError(exc.status.name, exc.code, exc.message)


def check(draft: Draft, now: dt.datetime, *, creating: bool) -> Preview:
    """The API's rules in the API's order (name, operation type, definition,
    trigger, windows), then the next runs of the schedule they accepted."""
    patterns = draft.patterns
    try:
        if draft.name or not creating:
            validation.name(draft.name)
        if draft.operation not in OPERATIONS:
            raise errors.InvalidParameter(
                f"operation_type must be one of {', '.join(OPERATIONS)} "
                f"(got {draft.operation!r}).", field="operation_type")
        od = draft.operation_definition()
        policy_rules.validate_definition(draft.operation, {f.name: getattr(od, f.name)
                                                           for f in od.DESCRIPTOR.fields})
        policy_rules.validate_trigger(patterns, required=True)
        policy_rules.validate_windows(*draft.windows(), patterns)
        schedule = Schedule.of(patterns, od.timezone, draft.anchor or now)
    except errors.CbrError as exc:
        return Preview(patterns, [], _refusal(exc), draft.enabled)
    runs: list[dt.datetime] = []
    when: dt.datetime | None = now
    while len(runs) < NEXT_RUNS_SHOWN and when is not None:
        when = schedule.next_after(when)
        if when is not None:
            runs.append(when)
    return Preview(patterns, runs, None, draft.enabled)


def _now(request: web.Request) -> dt.datetime:
    return cw.console_of(request).app.clock.now()


async def _form_page(request: web.Request, draft: Draft, policy: policy_pb2.Policy | None,
                     status: int = 200, error: ApiError | None = None) -> web.Response:
    api = cw.api(request)
    credentials = await api.optional(api.stubs.credentials.ListCredentials,
                                  credential_pb2.ListCredentialsRequest(page_size=PAGE))
    return cw.render(
        request, "policy_form.html", status=status, draft=draft, policy=policy,
        preview=check(draft, _now(request), creating=policy is None), error=error,
        operations=OPERATIONS, days=policy_rules.DAYS,
        credentials=list(credentials.credentials) if credentials is not None else [])


# -- pages ----------------------------------------------------------------------


async def list_page(request: web.Request) -> web.Response:
    api = cw.api(request)
    listed = await api(api.stubs.policies.ListPolicies,
                       policy_pb2.ListPoliciesRequest(page_size=PAGE))
    return cw.render(request, "policies.html", policies=listed.policies)


async def new_form(request: web.Request) -> web.Response:
    return await _form_page(request, Draft(), None)


async def preview(request: web.Request) -> web.Response:
    """The builder's fragment: the rules built, and their next runs or the
    rule that refuses them."""
    draft = draft_of(request.query)
    result = check(draft, _now(request), creating=not request.query.get("policy_id"))
    return cw.render(request, "policy_preview.html", preview=result)


async def _get(request: web.Request, policy_id: str) -> policy_pb2.Policy:
    api = cw.api(request)
    got = await api(api.stubs.policies.GetPolicy,
                    policy_pb2.GetPolicyRequest(policy_id=policy_id))
    return got.policy


async def detail(request: web.Request) -> web.Response:
    api = cw.api(request)
    policy_id = request.match_info["policy_id"]
    policy, runs = await asyncio.gather(
        _get(request, policy_id),
        api.optional(api.stubs.policies.ListPolicyRuns, policy_pb2.ListPolicyRunsRequest(
            policy_id=policy_id, page_size=RUNS_SHOWN, newest_first=True)))
    shown = list(runs.runs) if runs is not None else []
    return cw.render(request, "policy.html", policy=policy, runs=shown,
                     runs_total=len(runs.runs) if runs is not None else 0)


async def edit_form(request: web.Request) -> web.Response:
    policy = await _get(request, request.match_info["policy_id"])
    return await _form_page(request, draft_from(policy), policy)


def _request_parts(draft: Draft) -> tuple[policy_pb2.OperationDefinition, tuple[int, int]]:
    try:
        return draft.operation_definition(), draft.windows()
    except errors.CbrError as exc:
        raise _refusal(exc) from None


async def create(request: web.Request) -> web.Response:
    api = cw.api(request)
    draft = draft_of(await request.post())
    od, (start, completion) = _request_parts(draft)
    made = await api(api.stubs.policies.CreatePolicy, policy_pb2.CreatePolicyRequest(
        name=draft.name, operation_type=OPERATIONS.get(draft.operation,
                                                  policy_pb2.POLICY_OPERATION_TYPE_UNSPECIFIED),
        enabled=draft.enabled, operation_definition=od,
        trigger=policy_pb2.Trigger(pattern=draft.patterns), start_window_minutes=start,
        completion_window_minutes=completion))
    return cw.redirect(request, f"/policies/{made.policy.id}")


async def update(request: web.Request) -> web.Response:
    api = cw.api(request)
    policy_id = request.match_info["policy_id"]
    draft = draft_of(await request.post())
    od, (start, completion) = _request_parts(draft)
    changed = policy_pb2.Policy(
        name=draft.name, enabled=draft.enabled, operation_definition=od,
        trigger=policy_pb2.Trigger(pattern=draft.patterns), start_window_minutes=start,
        completion_window_minutes=completion)
    await api(api.stubs.policies.UpdatePolicy, policy_pb2.UpdatePolicyRequest(
        policy_id=policy_id, policy=changed,
        update_mask=field_mask_pb2.FieldMask(paths=UPDATABLE)))
    return cw.redirect(request, f"/policies/{policy_id}")


async def run_now(request: web.Request) -> web.Response:
    """Runs the policy on its vaults now; then the one task it started when
    there is one (a backup policy's: its checkpoint's), else its page, whose
    runs list the new ones."""
    api = cw.api(request)
    policy_id = request.match_info["policy_id"]
    started = await api(api.stubs.policies.RunPolicyNow,
                        policy_pb2.RunPolicyNowRequest(policy_id=policy_id))
    tasks = list(started.task_ids)
    if len(started.checkpoint_ids) == 1:  # a backup policy on one vault: its checkpoint's
        got = await api(api.stubs.backups.GetCheckpoint, backup_pb2.GetCheckpointRequest(
            checkpoint_id=started.checkpoint_ids[0]))
        tasks = list(got.checkpoint.task_ids)
    if len(tasks) == 1:
        return cw.redirect(request, f"/tasks/{tasks[0]}")
    return cw.redirect(request, f"/policies/{policy_id}")

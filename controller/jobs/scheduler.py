"""The policy loop: APScheduler 3 with its jobs in the controller's database.

One job per enabled policy (of any type) that has vaults, with a trigger built from
the policy's RRULEs in its timezone (``controller.services.schedule``),
coalescing, and a misfire grace time of the policy's start window. The jobs live in
the ``policy_jobs`` table (APScheduler's ``SQLAlchemyJobStore``), so a
restarted controller knows which run was due while it was down.

Only one controller runs the loop: it holds the ``policy-loop`` lease row,
renewed every third of ``scheduler_lease``; when it dies another takes the
lease once it expires (so within ``scheduler_lease`` plus a third). A job
reconciles with the policies table every ``RECONCILE_S`` seconds, so a
policy changed through any controller sharing the database takes effect
within that; one changed through the leader takes effect at once.

Exactly once does not depend on any of that: each run inserts its
``policy_runs`` row in its own transaction (``services.policy_runs``).

The leader also sweeps the scheduled backup runs whose windows are open
every ``RECONCILE_S`` (``services.policy_windows``): retries, late starts
once an agent is back, missed runs, backups stopped at their completion
window. Verify and prune policies run as maintenance tasks on the
controller (``_maintain``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import secrets
import threading
from typing import Any

from apscheduler.events import EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from cbr import errors
from controller.app import App
from controller.persistence.models import (
    Agent,
    Policy,
    PolicyRun,
    SchedulerLease,
    VaultPolicy,
)
from controller.persistence.vocabulary import PolicyOperationType, PolicyRunStatus
from controller.services import policy_runs, policy_windows
from controller.services.schedule import Schedule, runs_between

log = logging.getLogger("cbr.controller.scheduler")

LEASE_NAME = "policy-loop"
RECONCILE_S = 5.0
ONLINE_CACHE_S = 1.0
MAX_MISSED_RECORDED = 100
"""Missed runs recorded per vault in one catch-up (a long outage of a policy
that runs hourly would otherwise write thousands of rows)."""


class TickSchedule:
    """Tests only (``scheduler_tick``): a run every ``seconds``, at multiples
    of it since the epoch, so every controller agrees on the run times."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def _at(self, n: int) -> dt.datetime:
        return dt.datetime.fromtimestamp(n * self.seconds, dt.UTC)

    def next_after(self, when: dt.datetime) -> dt.datetime:
        return self._at(int(when.timestamp() // self.seconds) + 1)

    def latest_at_or_before(self, when: dt.datetime) -> dt.datetime:
        return self._at(int(when.timestamp() // self.seconds))

    def runs_between(self, start: dt.datetime, end: dt.datetime) -> list[dt.datetime]:
        return runs_between(self, start, end)


AnySchedule = Schedule | TickSchedule


class PolicyTrigger(BaseTrigger):
    """An APScheduler trigger over a policy's schedule (pickled into the job store)."""

    def __init__(self, patterns: list[str], timezone: str, anchor: dt.datetime,
                 tick: float = 0.0) -> None:
        self.patterns = list(patterns)
        self.timezone = timezone
        self.anchor = anchor
        self.tick = tick

    @property
    def schedule(self) -> AnySchedule:
        if self.tick > 0:
            return TickSchedule(self.tick)
        return Schedule.of(self.patterns, self.timezone, self.anchor)

    def get_next_fire_time(self, previous_fire_time: dt.datetime | None,
                           now: dt.datetime) -> dt.datetime | None:
        if previous_fire_time is not None:
            return self.schedule.next_after(previous_fire_time)
        return self.schedule.next_after(now - dt.timedelta(microseconds=1))

    def __getstate__(self) -> dict[str, Any]:
        return {"version": 1, "patterns": self.patterns, "timezone": self.timezone,
                "anchor": self.anchor.isoformat(), "tick": self.tick}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.patterns = list(state["patterns"])
        self.timezone = state["timezone"]
        self.anchor = dt.datetime.fromisoformat(state["anchor"])
        self.tick = float(state.get("tick", 0.0))

    def __str__(self) -> str:
        return f"policy[{'; '.join(self.patterns)} {self.timezone or 'UTC'}]"


def _signature(policy: Policy, tick: float) -> str:
    od = policy.operation_definition or {}
    text = json.dumps([policy.trigger_patterns, od.get("timezone", ""),
                       policy.created_at.isoformat(), tick, policy.start_window_minutes],
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# The scheduler of this process, for the module-level job function that
# APScheduler stores by reference (one controller per process).
_ACTIVE: PolicyScheduler | None = None


def fire(policy_id: str, signature: str) -> None:
    """The job APScheduler runs when a policy is due."""
    active = _ACTIVE
    if active is None:
        log.warning("policy %s fired with no scheduler running in this process", policy_id)
        return
    active.run_due(policy_id)


class PolicyScheduler:
    def __init__(self, app: App, *, holder: str = "") -> None:
        self.app = app
        self.holder = holder or f"controller-{secrets.token_hex(6)}"
        self.lease_s = app.config.scheduler_lease
        self.tick = app.config.scheduler_tick
        self._stop = threading.Event()
        self._lock = threading.RLock()
        self._thread: threading.Thread | None = None
        self._scheduler: BackgroundScheduler | None = None
        self._online_cache: tuple[dt.datetime, set[str]] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        global _ACTIVE
        _ACTIVE = self
        self._thread = threading.Thread(target=self._loop, name="policy-lease", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        global _ACTIVE
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self._stand_down()
        self._release()
        if _ACTIVE is self:
            _ACTIVE = None

    @property
    def leading(self) -> bool:
        return self._scheduler is not None

    def _loop(self) -> None:
        interval = max(0.2, self.lease_s / 3)
        next_reconcile = 0.0
        while not self._stop.is_set():
            try:
                if self._take_lease():
                    if self._scheduler is None:
                        self._lead()
                    now = self.app.clock.time()
                    if now >= next_reconcile:
                        self.reconcile()
                        self.sweep()
                        next_reconcile = now + RECONCILE_S
                elif self._scheduler is not None:
                    log.warning("lost the policy-loop lease; %s stops scheduling", self.holder)
                    self._stand_down()
            except Exception:
                log.exception("policy loop step failed; retrying")
            self._stop.wait(interval)

    # -- the lease ----------------------------------------------------------------------------

    def _take_lease(self) -> bool:
        now = self.app.clock.now()
        expires = now + dt.timedelta(seconds=self.lease_s)
        with self.app.db.begin() as s:
            result = s.execute(update(SchedulerLease).where(
                SchedulerLease.name == LEASE_NAME,
                (SchedulerLease.holder == self.holder) | (SchedulerLease.expires_at < now),
            ).values(holder=self.holder, expires_at=expires))
            if getattr(result, "rowcount", 0):
                return True
            if s.get(SchedulerLease, LEASE_NAME) is not None:
                return False
        try:
            with self.app.db.begin() as s:
                s.add(SchedulerLease(name=LEASE_NAME, holder=self.holder, expires_at=expires))
            return True
        except IntegrityError:
            return False  # another controller made the row first

    def _release(self) -> None:
        try:
            with self.app.db.begin() as s:
                s.execute(update(SchedulerLease).where(
                    SchedulerLease.name == LEASE_NAME, SchedulerLease.holder == self.holder,
                ).values(expires_at=self.app.clock.now()))
        except Exception:
            log.debug("could not release the policy-loop lease", exc_info=True)

    # -- leading ------------------------------------------------------------------------------

    def _lead(self) -> None:
        log.info("%s leads the policy loop", self.holder)
        store = SQLAlchemyJobStore(engine=self.app.db.engine, tablename="policy_jobs")
        scheduler = BackgroundScheduler(
            jobstores={"default": store}, timezone=dt.UTC,
            job_defaults={"coalesce": True, "max_instances": 1})
        scheduler.add_listener(self._on_missed, EVENT_JOB_MISSED)
        scheduler.start()
        with self._lock:
            self._scheduler = scheduler
        self.reconcile()

    def _stand_down(self) -> None:
        with self._lock:
            scheduler, self._scheduler = self._scheduler, None
        if scheduler is not None:
            scheduler.shutdown(wait=False)

    def reconcile(self, policy_id: str | None = None) -> None:
        """Makes the jobs match the policies: one per enabled backup policy
        with trigger rules and vaults, rebuilt when its rules change. With
        ``policy_id``, only that policy's job (what an API change needs: a
        full pass per call would make creating N policies cost N squared)."""
        with self._lock:
            scheduler = self._scheduler
            if scheduler is None:
                return
            with self.app.db.begin() as s:
                query = select(Policy).where(Policy.enabled.is_(True))
                bound_query = select(VaultPolicy.policy_id).distinct()
                if policy_id is not None:
                    query = query.where(Policy.id == policy_id)
                    bound_query = bound_query.where(VaultPolicy.policy_id == policy_id)
                policies = list(s.scalars(query))
                bound = set(s.scalars(bound_query))
                wanted = {p.id: p for p in policies if p.id in bound and p.trigger_patterns}
                s.expunge_all()
            if policy_id is None:
                jobs = scheduler.get_jobs()
            else:
                one = scheduler.get_job(policy_id)
                jobs = [one] if one is not None else []
            current: set[str] = set()
            for job in jobs:
                policy = wanted.get(job.id)
                if policy is None or tuple(job.args[1:]) != (_signature(policy, self.tick),):
                    scheduler.remove_job(job.id)  # gone, disabled, unbound or changed
                else:
                    current.add(job.id)
            for policy_id, policy in wanted.items():
                if policy_id in current:
                    continue
                od = policy.operation_definition or {}
                trigger = PolicyTrigger(list(policy.trigger_patterns),
                                        str(od.get("timezone", "")), policy.created_at,
                                        self.tick)
                grace = policy_windows.windows_of(policy, self.tick).start
                scheduler.add_job(fire, trigger, args=(policy_id, _signature(policy, self.tick)),
                                  id=policy_id, name=policy.name, replace_existing=True,
                                  misfire_grace_time=max(1, int(grace.total_seconds())))
            scheduler.wakeup()

    # -- runs ---------------------------------------------------------------------------------

    def _online(self) -> set[str]:
        """Agents heard from recently: on this controller's streams, or through
        the database on another controller sharing it (whose hub then sends
        them their waiting tasks). Read at most once a second, so a thousand
        policies due together share one query."""
        now = self.app.clock.now()
        with self._lock:
            cached = self._online_cache
        if cached is not None and (now - cached[0]).total_seconds() < ONLINE_CACHE_S:
            return cached[1]
        hub = self.app.hub
        online = set(hub.online_agent_ids()) if hub is not None else set()
        since = now - dt.timedelta(seconds=self.app.config.agent_offline_after)
        with self.app.db.begin() as s:
            online |= set(s.scalars(select(Agent.id).where(
                Agent.revoked.is_(False), Agent.last_seen_at >= since)))
        with self._lock:
            self._online_cache = (now, online)
        return online

    def _replicate(self, policy_id: str, vault_id: str, scheduled: dt.datetime, *,
                   manual: bool) -> list[str]:
        """One run of a replication policy on one vault: every backup of it
        not yet sent to the destination region (rule 6), each a task."""
        with self.app.db.begin() as s:
            policy = s.get(Policy, policy_id)
            if policy is None:
                return []
            run = policy_runs.claim_run(s, policy, vault_id, scheduled,
                                        now=self.app.clock.now(), manual=manual)
            if run is None:
                return []
            run_id, project_id = run.id, policy.project_id
            where = policy_runs.replication_target(s, policy, vault_id)
        detail = ""
        task_ids: list[str] = []
        skipped = False
        try:
            if self.app.replicator is None:
                raise errors.NotImplementedYet("this controller runs without replication")
            done = self.app.replicator.replicate_vault(
                project_id, vault_id, where["credential_id"], where["region"],
                where["destination_vault_id"], where["destination_project_id"],
                auto_trigger=True, policy_id=policy_id)
            task_ids = done.task_ids
            detail = (f"skipped (task {task_ids[0]}): {done.skipped}" if done.skipped else
                      f"{len(task_ids)} backups replicating to {where['region']}")
            skipped = bool(done.skipped)
        except errors.CbrError as exc:
            detail = f"{exc.code}: {exc.message}"
            log.warning("replication policy %s on vault %s at %s: %s", policy_id, vault_id,
                        scheduled.isoformat(), detail)
        with self.app.db.begin() as s:
            row = s.get(PolicyRun, run_id)
            if row is not None:
                row.detail = detail[:2000]
                if skipped or (not task_ids and detail.startswith("BackupService")):
                    row.status = PolicyRunStatus.SKIPPED
        return task_ids

    def _maintain(self, policy_id: str, vault_id: str, scheduled: dt.datetime, *,
                  manual: bool) -> list[str]:
        """One run of a verify or prune policy on one vault: a maintenance
        task, as ``cbr vault verify`` / ``prune`` makes, run by the
        controller's maintenance worker with the same locks."""
        with self.app.db.begin() as s:
            policy = s.get(Policy, policy_id)
            if policy is None:
                return []
            now = self.app.clock.now()
            run = policy_runs.claim_run(s, policy, vault_id, scheduled, now=now, manual=manual)
            if run is None:
                return []
            try:
                task_id = policy_runs.start_maintenance(s, policy, vault_id, run, now)
            except errors.CbrError as exc:
                run.status = PolicyRunStatus.SKIPPED
                run.detail = f"{exc.code}: {exc.message}"[:2000]
                log.warning("%s policy %s on vault %s at %s skipped: %s", policy.operation_type,
                            policy_id, vault_id, scheduled.isoformat(), run.detail)
                return []
        if self.app.maintenance is not None:
            self.app.maintenance.submit(task_id)
        log.info("%s policy %s run at %s on vault %s: task %s", policy.operation_type,
                 policy_id, scheduled.isoformat(), vault_id, task_id)
        return [task_id]

    def sweep(self) -> None:
        """Retries, late starts, missed runs and stopped backups of the
        scheduled backup runs whose windows are open (``policy_windows``)."""
        online = self._online()
        with self.app.db.begin() as s:
            result = policy_windows.sweep(s, self.app.clock.now(), online, self.tick)
        if self.app.hub is not None:
            for d in result.dispatches:
                self.app.hub.dispatch(d.agent_id, d.task_id)
            # Past its completion window: the agent stops at its next chunk
            # or file (an agent connected elsewhere finishes, and its result
            # is ignored).
            for agent_id, task_id in result.running:
                self.app.hub.cancel_running(agent_id, task_id)

    def _schedule(self, policy: Policy) -> AnySchedule:
        if self.tick > 0:
            return TickSchedule(self.tick)
        return policy_runs.schedule_of(policy)

    def _on_missed(self, event: JobExecutionEvent) -> None:
        try:
            self._catch_up(str(event.job_id), None)
        except Exception:
            log.exception("recording missed runs of policy %s failed", event.job_id)

    def _catch_up(self, policy_id: str, running: dt.datetime | None) -> None:
        """Records as missed every due run of each bound vault since its last
        recorded run (or its binding), except ``running``."""
        now = self.app.clock.now()
        with self.app.db.begin() as s:
            policy = s.get(Policy, policy_id)
            if policy is None:
                return
            schedule = self._schedule(policy)
            for binding in s.scalars(select(VaultPolicy).where(
                    VaultPolicy.policy_id == policy_id)):
                last = s.scalar(select(func.max(PolicyRun.scheduled_at)).where(
                    PolicyRun.policy_id == policy_id, PolicyRun.vault_id == binding.vault_id,
                    PolicyRun.manual.is_(False)))
                since = max(filter(None, [last, binding.created_at]))
                due = [t for t in schedule.runs_between(since, now)
                       if running is None or t < running]
                for t in due[-MAX_MISSED_RECORDED:]:
                    if policy_runs.record_missed(s, policy_id, t, now, [binding.vault_id]):
                        log.warning("policy %s run at %s on vault %s missed", policy_id,
                                    t.isoformat(), binding.vault_id)

    def run_due(self, policy_id: str) -> None:
        """The job body: the latest due run of the policy, on every bound vault."""
        now = self.app.clock.now()
        with self.app.db.begin() as s:
            policy = s.get(Policy, policy_id)
            if policy is None or not policy.enabled:
                return
            scheduled = self._schedule(policy).latest_at_or_before(now)
            window = policy_windows.windows_of(policy, self.tick).start
        if scheduled is None or now - scheduled > window:
            return  # past its start window: _on_missed or the next run records it
        self._catch_up(policy_id, scheduled)
        self.run(policy_id, scheduled, manual=False)

    def run(self, policy_id: str, scheduled: dt.datetime, *, manual: bool) -> list[str]:
        """Runs the policy once for ``scheduled`` on each bound vault, each in
        its own transaction; returns the checkpoint ids (backup policies) or
        replication task ids (replication policies) started."""
        started: list[str] = []
        with self.app.db.begin() as s:
            vault_ids = policy_runs.bound_vaults(s, policy_id)
        online = self._online()
        for vault_id in vault_ids:
            with self.app.db.begin() as s:
                policy = s.get(Policy, policy_id)
                if policy is None:
                    return started
                kind = policy.operation_type
            if kind == PolicyOperationType.REPLICATION:
                started.extend(self._replicate(policy_id, vault_id, scheduled, manual=manual))
                continue
            if kind in (PolicyOperationType.VERIFY, PolicyOperationType.PRUNE):
                started.extend(self._maintain(policy_id, vault_id, scheduled, manual=manual))
                continue
            with self.app.db.begin() as s:
                policy = s.get(Policy, policy_id)
                if policy is None:
                    return started
                outcome = policy_runs.run_on_vault(s, policy, vault_id, scheduled,
                                                   now=self.app.clock.now(), online=online,
                                                   manual=manual)
            if outcome is None:
                continue  # this run already happened
            if outcome.checkpoint_id:
                started.append(outcome.checkpoint_id)
            if self.app.hub is not None:
                for d in outcome.dispatches:
                    self.app.hub.dispatch(d.agent_id, d.task_id)
            log.info("policy %s run at %s on vault %s: checkpoint %s%s", policy_id,
                     scheduled.isoformat(), vault_id, outcome.checkpoint_id or "-",
                     " (full)" if outcome.full else "")
        return started

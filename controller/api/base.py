"""What every servicer needs: the app, the caller's project, now."""

from __future__ import annotations

import datetime as dt

from controller.api.caller import Caller, current_caller
from controller.app import App


class Servicer:
    def __init__(self, app: App) -> None:
        self.app = app

    @property
    def caller(self) -> Caller:
        return current_caller()

    @property
    def project_id(self) -> str:
        return current_caller().account_id

    def policy_changed(self, policy_id: str) -> None:
        """The policy loop follows a changed policy or association at once
        (in the leading controller; others follow within its reconcile
        interval)."""
        if self.app.scheduler is not None:
            self.app.scheduler.reconcile(policy_id)

    def now(self) -> dt.datetime:
        return self.app.clock.now()

"""The console's pages, one module per group; each route is as thin as a
servicer: read the form, call the API, render."""

from __future__ import annotations

from aiohttp import web

from console.views import (
    agents,
    audit,
    auth,
    backups,
    iam,
    keys,
    overview,
    policies,
    replication,
    tasks,
    vaults,
)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/sign-in", auth.sign_in_form)
    app.router.add_post("/sign-in", auth.sign_in)
    app.router.add_post("/sign-out", auth.sign_out)
    app.router.add_get("/", overview.page)
    for group in (vaults, backups, replication, policies, tasks, agents, keys, iam, audit):
        group.add_routes(app)

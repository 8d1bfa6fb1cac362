"""The console's pages, one module per group; each route is as thin as a
servicer: read the form, call the API, render."""

from __future__ import annotations

from aiohttp import web

from console.views import (
    audit,
    auth,
    backups,
    iam,
    keys,
    overview,
    policies,
    replication,
    vaults,
)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/sign-in", auth.sign_in_form)
    app.router.add_post("/sign-in", auth.sign_in)
    app.router.add_post("/sign-out", auth.sign_out)
    app.router.add_get("/", overview.page)
    vaults.add_routes(app)
    backups.add_routes(app)
    replication.add_routes(app)
    keys.add_routes(app)
    iam.add_routes(app)
    audit.add_routes(app)
    policies.add_routes(app)

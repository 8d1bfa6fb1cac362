"""The console's pages, one module per group; each route is as thin as a
servicer: read the form, call the API, render."""

from __future__ import annotations

from aiohttp import web

from console.views import agents, auth, overview, tasks, vaults


def add_routes(app: web.Application) -> None:
    app.router.add_get("/sign-in", auth.sign_in_form)
    app.router.add_post("/sign-in", auth.sign_in)
    app.router.add_post("/sign-out", auth.sign_out)
    app.router.add_get("/", overview.page)
    vaults.add_routes(app)
    tasks.add_routes(app)
    agents.add_routes(app)

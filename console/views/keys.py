"""Keys: the key service's customer master keys of the account, their states,
and the changes ``cbr key`` makes (create, disable, enable, schedule or cancel
deletion, share). Key material never reaches the console: the API returns
none."""

from __future__ import annotations

from aiohttp import web

from cbr import limits
from cbr.v1 import key_pb2
from console import web as cw

# The state filter's choices, as ``cbr key list --state`` names them.
STATES = {"enabled": key_pb2.KEY_STATE_ENABLED, "disabled": key_pb2.KEY_STATE_DISABLED,
          "pending_deletion": key_pb2.KEY_STATE_PENDING_DELETION,
          "deleted": key_pb2.KEY_STATE_DELETED}
# ScheduleKeyDeletionRequest.pending_days: 7 to 30; the form offers the API's range.
PENDING_DAYS_MIN, PENDING_DAYS_MAX = 7, 30


def add_routes(app: web.Application) -> None:
    app.router.add_get("/keys", list_page)
    app.router.add_post("/keys", create)
    app.router.add_post("/keys/{key_id}/disable", disable)
    app.router.add_post("/keys/{key_id}/enable", enable)
    app.router.add_post("/keys/{key_id}/schedule-deletion", schedule_deletion)
    app.router.add_post("/keys/{key_id}/cancel-deletion", cancel_deletion)
    app.router.add_post("/keys/{key_id}/share", share)
    app.router.add_post("/keys/{key_id}/unshare", unshare)


async def list_page(request: web.Request) -> web.Response:
    api = cw.api(request)
    state = request.query.get("state", "")
    listed = await api(api.stubs.keys.ListKeys, key_pb2.ListKeysRequest(
        page_size=limits.PAGE_SIZE_MAX, page_token=request.query.get("page_token", ""),
        state=STATES.get(state, key_pb2.KEY_STATE_UNSPECIFIED)))
    return cw.render(request, "keys.html", keys=listed.keys, total=listed.total_count,
                     next_page_token=listed.next_page_token, states=STATES,
                     state=state if state in STATES else "",
                     pending_min=PENDING_DAYS_MIN, pending_max=PENDING_DAYS_MAX)


async def create(request: web.Request) -> web.Response:
    api = cw.api(request)
    form = await request.post()
    await api(api.stubs.keys.CreateKey, key_pb2.CreateKeyRequest(
        alias=str(form.get("alias", "")), description=str(form.get("description", ""))))
    return cw.redirect(request, "/keys")


async def disable(request: web.Request) -> web.Response:
    api = cw.api(request)
    await api(api.stubs.keys.DisableKey, key_pb2.DisableKeyRequest(key_id=_key_id(request)))
    return cw.redirect(request, "/keys")


async def enable(request: web.Request) -> web.Response:
    api = cw.api(request)
    await api(api.stubs.keys.EnableKey, key_pb2.EnableKeyRequest(key_id=_key_id(request)))
    return cw.redirect(request, "/keys")


async def schedule_deletion(request: web.Request) -> web.Response:
    api = cw.api(request)
    form = await request.post()
    days = cw.form_number(form, "pending_days")
    await api(api.stubs.keys.ScheduleKeyDeletion, key_pb2.ScheduleKeyDeletionRequest(
        key_id=_key_id(request), pending_days=days))
    return cw.redirect(request, "/keys")


async def cancel_deletion(request: web.Request) -> web.Response:
    api = cw.api(request)
    await api(api.stubs.keys.CancelKeyDeletion,
              key_pb2.CancelKeyDeletionRequest(key_id=_key_id(request)))
    return cw.redirect(request, "/keys")


async def share(request: web.Request) -> web.Response:
    api = cw.api(request)
    form = await request.post()
    await api(api.stubs.keys.ShareKey, key_pb2.ShareKeyRequest(
        key_id=_key_id(request), account_id=str(form.get("account_id", "")).strip()))
    return cw.redirect(request, "/keys")


async def unshare(request: web.Request) -> web.Response:
    api = cw.api(request)
    form = await request.post()
    await api(api.stubs.keys.UnshareKey, key_pb2.UnshareKeyRequest(
        key_id=_key_id(request), account_id=str(form.get("account_id", "")).strip()))
    return cw.redirect(request, "/keys")


def _key_id(request: web.Request) -> str:
    return request.match_info["key_id"]

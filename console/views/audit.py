"""The audit trail: ListAuditRecords with every filter the API has, a page at
a time (oldest first, the API's order). Times in the form are UTC, as the
page shows them."""

from __future__ import annotations

import datetime as dt
from urllib.parse import urlencode

from aiohttp import web

from cbr import limits
from cbr.v1 import audit_pb2, iam_pb2
from console import web as cw
from console.api import ApiError
from controller.services import actions

RESULTS = {"success": audit_pb2.AUDIT_RESULT_SUCCESS,
           "refused": audit_pb2.AUDIT_RESULT_REFUSED,
           "failed": audit_pb2.AUDIT_RESULT_FAILED}
# The filters the page keeps from one page to the next, by query parameter.
TEXT_FILTERS = ("action", "user_id", "access_key_id", "resource_id")
TIME_FILTERS = ("since", "until")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/audit", page)


def _utc(name: str, value: str) -> dt.datetime | None:
    """A ``datetime-local`` input's value ("2026-12-07T05:30"), read as UTC."""
    if not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise ApiError("INVALID_ARGUMENT", "", f"{name} must be a date and time such as "
                                               f"2026-01-31T13:45 (UTC), not {value!r}.") from None
    return parsed.replace(tzinfo=dt.UTC) if parsed.tzinfo is None else parsed


async def page(request: web.Request) -> web.Response:
    api = cw.api(request)
    query = request.query
    filters = {name: query.get(name, "").strip() for name in (*TEXT_FILTERS, *TIME_FILTERS)}
    result = query.get("result", "")
    filters["result"] = result if result in RESULTS else ""
    listed_request = audit_pb2.ListAuditRecordsRequest(
        page_size=limits.PAGE_SIZE_DEFAULT, page_token=query.get("page_token", ""),
        result=RESULTS.get(result, audit_pb2.AUDIT_RESULT_UNSPECIFIED),
        action=filters["action"], user_id=filters["user_id"],
        access_key_id=filters["access_key_id"], resource_id=filters["resource_id"],
        newest_first=True)
    for name in TIME_FILTERS:
        when = _utc(name, filters[name])
        if when is not None:
            getattr(listed_request, name).FromDatetime(when.astimezone(dt.UTC).replace(
                tzinfo=None))
    listed = await api(api.stubs.audit.ListAuditRecords, listed_request)
    user_names: dict[str, str] = {}
    if not cw.missing(request, "IamService/ListUsers"):
        users = await api(api.stubs.iam.ListUsers,
                          iam_pb2.ListUsersRequest(page_size=limits.PAGE_SIZE_MAX))
        user_names = {u.id: u.name for u in users.users}
    kept = {name: value for name, value in filters.items() if value}
    next_href = ("/audit?" + urlencode({**kept, "page_token": listed.next_page_token})
                 if listed.next_page_token else "")
    return cw.render(request, "audit.html", records=listed.records, total=listed.total_count,
                     filters=filters, results=RESULTS, next_href=next_href,
                     first_href="/audit?" + urlencode(kept) if query.get("page_token") else "",
                     user_names=user_names, known_actions=sorted(actions.known_actions()))

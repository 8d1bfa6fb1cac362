"""Checks of request values shared by the services; each refusal is 9900 with
the field named and what it accepts."""

from __future__ import annotations

import re
from typing import Any

from cbr import errors, limits

_NAME = re.compile(r"^[\w.-]+$")


def name(value: str, field: str = "name") -> str:
    if not value:
        raise errors.InvalidParameter(f"{field} is required.", field=field)
    if len(value) > limits.NAME_MAX_LENGTH:
        raise errors.InvalidParameter(
            f"{field} is {len(value)} characters; at most {limits.NAME_MAX_LENGTH} are allowed.",
            field=field)
    if not _NAME.match(value):
        raise errors.InvalidParameter(
            f"{field} {value!r} may hold only letters, digits, '_', '-' and '.'.", field=field)
    return value


def description(value: str, field: str = "description") -> str:
    if len(value) > limits.DESCRIPTION_MAX_LENGTH:
        raise errors.InvalidParameter(
            f"{field} is {len(value)} characters; at most {limits.DESCRIPTION_MAX_LENGTH} "
            "are allowed.", field=field)
    if any(c in value for c in "<>"):
        raise errors.InvalidParameter(f"{field} may not contain '<' or '>'.", field=field)
    return value


def tags(values: list[dict[str, str]], field: str = "tags") -> list[dict[str, str]]:
    if len(values) > limits.TAGS_MAX:
        raise errors.InvalidParameter(f"{field}: at most {limits.TAGS_MAX} tags.", field=field)
    seen: set[str] = set()
    for tag in values:
        key, value = tag["key"], tag.get("value", "")
        if not key or len(key) > limits.TAG_KEY_MAX_LENGTH:
            raise errors.InvalidParameter(
                f"{field}: a tag key must be 1 to {limits.TAG_KEY_MAX_LENGTH} characters.",
                field=field)
        if len(value) > limits.TAG_VALUE_MAX_LENGTH:
            raise errors.InvalidParameter(
                f"{field}: tag {key!r} has a value over {limits.TAG_VALUE_MAX_LENGTH} "
                "characters.", field=field)
        if key in seen:
            raise errors.InvalidParameter(f"{field}: tag key {key!r} appears twice.",
                                          field=field)
        seen.add(key)
    return values


def int_range(value: int, low: int, high: int, field: str, *, also: tuple[int, ...] = ()) -> int:
    if value in also or low <= value <= high:
        return value
    extra = "".join(f" or {a}" for a in also)
    raise errors.InvalidParameter(f"{field} must be {low} to {high}{extra} (got {value}).",
                                  field=field)


def ident(value: str, field: str) -> str:
    if not value:
        raise errors.InvalidParameter(f"{field} is required.", field=field)
    if len(value) > 64:
        raise errors.InvalidParameter(f"{field} is not a valid id.", field=field)
    return value


def unique(values: list[Any], field: str, error: type[errors.CbrError]) -> None:
    seen: set[Any] = set()
    for v in values:
        if v in seen:
            raise error(f"{field} lists {v!r} twice.", field=field)
        seen.add(v)

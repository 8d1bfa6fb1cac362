"""The web console (docs/console.md): pages served by the controller that
call its own ``cbr.v1`` API for the signed-in user.

Floors: ``console.server`` (the listener) and ``console.web`` (sessions,
CSRF, rendering) under ``console.views`` (one module per page group), which
reach the controller only through ``console.api``.
"""

"""The sign-in throttle: five failures in a minute for a name or an address
refuse further tries until the minute has passed."""

from __future__ import annotations

from console.throttle import FAILURES, WINDOW, Throttle


def test_five_failures_refuse_the_name_and_the_address_until_the_minute_passes() -> None:
    throttle = Throttle()
    keys = ["user:acme/ops", "address:10.0.0.9"]
    for i in range(FAILURES - 1):
        throttle.failed(keys, now=100.0 + i)
    assert throttle.wait(keys, now=105.0) == 0
    throttle.failed(keys, now=105.0)
    assert throttle.wait(["user:acme/ops"], now=106.0) == WINDOW - 6.0
    assert throttle.wait(["user:other/x", "address:10.0.0.9"], now=106.0) > 0
    assert throttle.wait(["user:other/x", "address:10.0.0.8"], now=106.0) == 0
    assert throttle.wait(keys, now=100.0 + WINDOW + 5) == 0


def test_a_success_clears_the_name_but_not_the_address() -> None:
    throttle = Throttle()
    keys = ["user:acme/ops", "address:10.0.0.9"]
    for _ in range(FAILURES):
        throttle.failed(keys, now=10.0)
    throttle.succeeded(["user:acme/ops"])
    assert throttle.wait(["user:acme/ops"], now=11.0) == 0
    assert throttle.wait(["address:10.0.0.9"], now=11.0) > 0

"""cbr-agent: the data plane on a protected host.

It enrolls once with a one-time token (``enroll``), then keeps one outbound,
mutually authenticated TLS stream to its controller (``connection``): it
reports what its TOML config says it protects (``config``, ``inventory``),
heartbeats, and runs the commands it is sent, each task id at most once
(``journal``, ``commands``). It never imports ``controller``.
"""

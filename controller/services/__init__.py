"""Rules of the domain as plain functions over a session; no gRPC here.

Each function takes a SQLAlchemy session (one transaction, opened by the
caller) and raises ``cbr.errors`` classes. The API, the scheduler and the
tests call the same functions.
"""

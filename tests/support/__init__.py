"""Helpers shared by the test suites: real processes and real databases, no mocks."""

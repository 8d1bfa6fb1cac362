"""Every RPC has an authorization decision, and every CBR code is unique."""

from __future__ import annotations

from cbr import errors
from controller.api.server import SERVICE_MODULES
from controller.services import actions


def test_every_rpc_needs_an_action_or_is_explicitly_unsigned() -> None:
    for module in SERVICE_MODULES:
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                path = f"/{service.full_name}/{method.name}"
                assert path in actions.METHOD_ACTIONS or path in actions.UNSIGNED_METHODS, path


def test_cbr_codes_are_unique_and_named_after_the_service() -> None:
    codes = errors.all_codes()
    assert all(code.startswith("BackupService.") for code in codes)
    for code in ("BackupService.6102", "BackupService.6103", "BackupService.6104",
                 "BackupService.6105", "BackupService.6106", "BackupService.6112",
                 "BackupService.0403", "BackupService.9900"):
        assert code in codes

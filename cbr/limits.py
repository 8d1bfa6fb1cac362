"""Limits, defaults and names of the API, each defined once, for every process."""

from __future__ import annotations

NAME_MAX_LENGTH = 64
DESCRIPTION_MAX_LENGTH = 255
VAULT_SIZE_GB_MIN = 1
VAULT_SIZE_GB_MAX = 10_485_760
VAULT_THRESHOLD_DEFAULT = 80
TAGS_MAX = 10
TAG_KEY_MAX_LENGTH = 36
TAG_VALUE_MAX_LENGTH = 43
RESOURCES_PER_REQUEST_MAX = 256
PAGE_SIZE_DEFAULT = 100
PAGE_SIZE_MAX = 1000
# Largest request message the controller accepts (bytes).
MAX_REQUEST_BYTES = 4 * 1024 * 1024
ENROLLMENT_TOKEN_TTL_DEFAULT_S = 3600
ENROLLMENT_TOKEN_TTL_MAX_S = 7 * 24 * 3600
HEARTBEAT_INTERVAL_S = 5
# An agent without a heartbeat for this long shows as offline.
AGENT_OFFLINE_AFTER_S = 15
# Restore roots an agent may report, and the longest path kept of each.
RESTORE_ROOTS_MAX = 64
PATH_MAX_LENGTH = 4096
# Largest message an agent sends on its stream (an inventory of many protectables).
AGENT_MESSAGE_BYTES = 16 * 1024 * 1024
# Largest step of a replication stream an importer accepts: a put holds up to
# cbr.repo.replicate.PUT_BYTES plus one maximal chunk, with room to spare.
IMPORT_MESSAGE_BYTES = 16 * 1024 * 1024
# The reference model's resource type of each kind of protected object.
RESOURCE_TYPES = {"server": "OS::Nova::Server", "disk": "OS::Cinder::Volume",
                  "turbo": "OS::Sfs::Turbo"}

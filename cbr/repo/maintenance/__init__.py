"""The maintenance floor of the vault format: what runs over a whole vault
rather than one backup (``docs/storage-format.md`` sections 12 and 13), as
kopia's ``repo/maintenance``.

- ``locks``: writer and prune locks (12).
- ``walk``: every chunk a backup reaches (8-10), for prune, verify and
  replication.
- ``prune``: deleting backups and freeing their space (12).
- ``verify``, ``repair``: integrity checks and putting right what they find (13).

Nothing below imports this floor, so a backup never loads it; the controller
imports these modules where it runs maintenance.
"""

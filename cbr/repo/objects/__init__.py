"""The objects floor of the vault format: what chunks make up
(``docs/storage-format.md`` sections 8 to 10), as kopia's ``repo/object``
and ``snapshot`` over its content layer.

- ``manifest``: backup manifests (10).
- ``disk_map``: a disk's blocks as segments of chunk ids (8).
- ``tree``: a file tree, one meta blob per directory (9).
- ``chunker``: FastCDC cut points of file content (9).
- ``diff``: what changed between two trees.

These are encodings and the rules about them; storing and reading the chunks
is ``cbr.repo.content``'s, walking disks and directories the agent's. This
floor must not import ``cbr.repo.maintenance``, which walks these objects to
find what a backup reaches (``tests/unit/test_lint.py``).
"""

"""The content floor of the vault format: chunks stored, found and read back
(``docs/storage-format.md`` sections 4 to 7 and 11), as kopia's
``repo/content`` under its objects and maintenance.

- ``ids``: keyed BLAKE3 chunk ids, SHA-256 object ids, key ids (section 4).
- ``crypto``: AES-256-GCM sealing, key wrapping through the key service (4.3, 5).
- ``blob``: one chunk's stored form and its verification (5).
- ``pack``: pack layout, writer and header reader (6).
- ``envelope``, ``index``: index files and the in-memory index (7).
- ``files``, ``reader``, ``store``: the content store, three layers of one
  object: index files and packs in storage; the in-memory index and the
  verified reads; the pack writer, its uploads and the write order (11).

Everything here is about chunks, never about what they make up: this floor
must not import ``cbr.repo.objects`` (manifests, trees, disk maps) nor
``cbr.repo.maintenance``, both of which use it (``tests/unit/test_lint.py``).
Of the modules beside it, it uses only ``errors``, ``config`` and ``layout``.
"""

"""Blob encoding: round trips, compression decision, verification on read."""

from __future__ import annotations

import os
import threading

import pytest

from cbr.repo.content.blob import (
    FLAG_COMPRESSED,
    FLAG_ENCRYPTED,
    BlobType,
    decode_blob,
    encode_blob,
)
from cbr.repo.content.crypto import (
    _NONCES,
    NONCE_SIZE,
    AesKeyWrapper,
    DataKey,
    key_context,
    new_data_key,
    unwrap_key,
    wrap_key,
)
from cbr.repo.content.ids import ChunkHasher, new_chunk_key, new_key_id
from cbr.repo.errors import FormatError, IntegrityError, KeyUnavailable

HASHER = ChunkHasher(new_key_id(), new_chunk_key())
COMPRESSIBLE = b"all work and no play makes jack a dull boy\n" * 20000
RANDOM = os.urandom(1 << 20)


def _key() -> DataKey:
    return DataKey(new_key_id(), new_data_key())


@pytest.mark.parametrize("blob_type", list(BlobType))
@pytest.mark.parametrize("payload", [COMPRESSIBLE, RANDOM, b"", b"x"], ids=["text", "random",
                                                                           "empty", "one"])
@pytest.mark.parametrize("encrypted", [False, True])
def test_blob_round_trips_every_type_payload_and_mode(
    blob_type: BlobType, payload: bytes, encrypted: bool
) -> None:
    key = _key() if encrypted else None
    blob = encode_blob(payload, blob_type=blob_type, hasher=HASHER, data_key=key)
    assert blob.chunk_id == HASHER.chunk_id(payload)
    assert bool(blob.flags & FLAG_ENCRYPTED) == encrypted
    out = decode_blob(
        blob.stored, blob_type=blob_type, flags=blob.flags, raw_length=blob.raw_length,
        chunk_id=blob.chunk_id, hasher=HASHER, data_key=key,
    )
    assert out == payload


def test_compressible_data_is_stored_compressed_and_random_data_is_not() -> None:
    text = encode_blob(COMPRESSIBLE, blob_type=BlobType.DATA, hasher=HASHER, data_key=None)
    rand = encode_blob(RANDOM, blob_type=BlobType.DATA, hasher=HASHER, data_key=None)
    assert text.flags & FLAG_COMPRESSED and len(text.stored) < len(COMPRESSIBLE) // 10
    assert not rand.flags & FLAG_COMPRESSED and rand.stored == RANDOM


def test_chunk_ids_differ_between_namespaces() -> None:
    other = ChunkHasher(new_key_id(), new_chunk_key())
    assert HASHER.chunk_id(b"same") != other.chunk_id(b"same")
    assert HASHER.chunker_seed() != other.chunker_seed()


@pytest.mark.parametrize("encrypted", [False, True])
def test_a_flipped_byte_is_refused_naming_the_chunk_and_pack(encrypted: bool) -> None:
    key = _key() if encrypted else None
    blob = encode_blob(COMPRESSIBLE, blob_type=BlobType.DATA, hasher=HASHER, data_key=key)
    damaged = bytearray(blob.stored)
    damaged[len(damaged) // 2] ^= 0x40
    with pytest.raises(IntegrityError) as err:
        decode_blob(
            bytes(damaged), blob_type=BlobType.DATA, flags=blob.flags,
            raw_length=blob.raw_length, chunk_id=blob.chunk_id, hasher=HASHER, data_key=key,
            pack_id=b"\xaa" * 32,
        )
    assert err.value.chunk_id == blob.chunk_id.hex()
    assert err.value.pack_id == "aa" * 32
    assert blob.chunk_id.hex() in str(err.value)


def test_an_encrypted_blob_cannot_answer_for_another_chunk_or_type() -> None:
    key = _key()
    a = encode_blob(b"a" * 100, blob_type=BlobType.DATA, hasher=HASHER, data_key=key)
    b_id = HASHER.chunk_id(b"b" * 100)
    with pytest.raises(IntegrityError):
        decode_blob(a.stored, blob_type=BlobType.DATA, flags=a.flags, raw_length=100,
                    chunk_id=b_id, hasher=HASHER, data_key=key)
    with pytest.raises(IntegrityError):
        decode_blob(a.stored, blob_type=BlobType.META, flags=a.flags, raw_length=100,
                    chunk_id=a.chunk_id, hasher=HASHER, data_key=key)


def test_unencrypted_blob_is_refused_in_an_encrypted_vault() -> None:
    plain = encode_blob(b"p" * 10, blob_type=BlobType.DATA, hasher=HASHER, data_key=None)
    with pytest.raises(IntegrityError):
        decode_blob(plain.stored, blob_type=BlobType.DATA, flags=plain.flags, raw_length=10,
                    chunk_id=plain.chunk_id, hasher=HASHER, data_key=_key())


def test_unknown_flag_bits_are_refused() -> None:
    blob = encode_blob(b"z", blob_type=BlobType.DATA, hasher=HASHER, data_key=None)
    with pytest.raises(FormatError):
        decode_blob(blob.stored, blob_type=BlobType.DATA, flags=0x80, raw_length=1,
                    chunk_id=blob.chunk_id, hasher=HASHER, data_key=None)


def test_wrapped_key_unwraps_only_in_its_own_context() -> None:
    wrapper = AesKeyWrapper("kek-1", new_data_key())
    clear = new_data_key()
    key_id = new_key_id()
    wrapped = wrap_key(clear, key_id=key_id, purpose="data", vault_id="v1", wrapper=wrapper)
    assert wrapped.key != clear and wrapped.kek_id == "kek-1"
    assert unwrap_key(wrapped, wrapper.unwrap) == clear
    with pytest.raises(KeyUnavailable):
        unwrap_key(wrapped, None)
    moved = type(wrapped)(key_id, "data", "another-vault", wrapped.kek_id, wrapped.key)
    with pytest.raises(KeyUnavailable):
        unwrap_key(moved, wrapper.unwrap)
    assert key_context("v1", key_id, "data") != key_context("v1", key_id, "chunk-id")


def test_a_data_key_is_never_stored_unwrapped() -> None:
    with pytest.raises(KeyUnavailable):
        wrap_key(new_data_key(), key_id=new_key_id(), purpose="data", vault_id="v", wrapper=None)


def test_nonces_are_never_repeated_across_threads_or_a_fork() -> None:
    """Nonces are drawn in bulk; each must still be handed out once, and a
    forked child must not hand out the ones its parent had drawn."""
    seen: list[bytes] = []
    lock = threading.Lock()

    def draw() -> None:
        mine = [_NONCES.take() for _ in range(3000)]
        with lock:
            seen.extend(mine)

    threads = [threading.Thread(target=draw) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(seen)) == len(seen) == 12000
    assert all(len(n) == NONCE_SIZE for n in seen)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its first nonces go back to the parent
        os.close(read)
        os.write(write, b"".join(_NONCES.take() for _ in range(10)))
        os._exit(0)
    os.close(write)
    child = os.read(read, 10 * NONCE_SIZE)
    os.close(read)
    os.waitpid(pid, 0)
    parents_next = [_NONCES.take() for _ in range(10)]
    child_nonces = {child[i:i + NONCE_SIZE] for i in range(0, len(child), NONCE_SIZE)}
    assert len(child_nonces) == 10 and not child_nonces & set(parents_next)

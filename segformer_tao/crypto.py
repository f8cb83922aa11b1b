"""At-rest encryption of files that hold weights: a passphrase-keyed streaming AEAD with a versioned header.

Format 2 (written): ``MAGIC2 | kdf(1) log2_n(1) r(1) p(1) chunk(4, big-endian) | kdf_salt(16) | file_salt(16) |
nonce_prefix(7) | key_check(16)`` then chunks, each ``AES-256-GCM(chunk plaintext)`` with its 16-byte tag. The header
(79 bytes) is the associated data of every chunk, so its KDF parameters cannot be changed unnoticed.

* master key = scrypt(passphrase, kdf_salt, N=2**log2_n, r, p); file key = HKDF-SHA256(master, file_salt);
* key_check = HMAC-SHA256(master, the header before it)[:16]: a wrong key is told apart from a damaged file;
* chunk ``i`` has nonce ``nonce_prefix | i (4 bytes) | last (1 byte)``: chunks cannot be reordered, dropped or
  moved between files, and a file cut at a chunk boundary is told apart from a wrong key (its last chunk is not
  marked last);
* any size: data is sealed chunk by chunk (no one-shot AES-GCM limit).

A process derives the scrypt master key once per passphrase (it reuses its kdf_salt for every file it writes; each
file still gets a fresh file key), so a stronger cost does not slow checkpointing down.

Format 1 (read only): ``MAGIC1 | salt(16) | nonce(12) | AES-256-GCM(all data)`` with scrypt N=2**14, r=8, p=1.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import os
import struct
import threading
from typing import BinaryIO

from segformer_tao.errors import UserError

MAGIC1 = b"SEGTAO-AESGCM-1\n"
MAGIC2 = b"SEGTAO-AESGCM-2\n"
KDF_SCRYPT = 1
LOG2_N = 17  # scrypt cost: 128 MiB, about 0.3-0.5 s on a server CPU, once per process and key
R, P = 8, 1
CHUNK = 1 << 20  # plaintext bytes per chunk
TAG = 16
_PARAMS = struct.Struct(">BBBBI")
HEADER_LEN = len(MAGIC2) + _PARAMS.size + 16 + 16 + 7 + 16
# What a header may ask for: the costs we write (N=2^10..2^17 with r=8, p=1) and no more, so that a crafted file
# cannot make us allocate gigabytes or run scrypt for minutes before its key check fails.
_KDF_ACCEPTED = {"log2_n": (10, LOG2_N), "r": (R, R), "p": (P, P)}
MAX_KDF_MIB = 128 * R * 2**LOG2_N >> 20  # scrypt's memory is 128 * r * N bytes: 128 MiB at our cost
_CHUNK_LIMITS = (1 << 10, 1 << 26)
_MASTER: dict[tuple, bytes] = {}  # (passphrase, kdf_salt, log2_n, r, p) -> scrypt output
_WRITE_SALT: dict[str, bytes] = {}
_LOCK = threading.Lock()


def is_encrypted(head: bytes) -> bool:
    """True when ``head`` (a file's first bytes) starts with one of our encryption headers."""
    return head[: len(MAGIC1)] in (MAGIC1, MAGIC2)


def check_passphrase(passphrase: str | None) -> str:
    if not isinstance(passphrase, str) or passphrase == "":
        raise UserError("encryption_key is empty: give the key (recommended: encryption_key='${oc.env:SEGFORMER_KEY}' "
                        "with the key in the SEGFORMER_KEY environment variable), or leave encryption_key unset "
                        "(null) to write unencrypted files.")
    return passphrase


def _master(passphrase: str, salt: bytes, log2_n: int, r: int, p: int) -> bytes:
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    cache_key = (passphrase, salt, log2_n, r, p)
    with _LOCK:
        if cache_key not in _MASTER:
            _MASTER[cache_key] = Scrypt(salt=salt, length=32, n=2**log2_n, r=r, p=p).derive(passphrase.encode())
        return _MASTER[cache_key]


def _file_key(master: bytes, file_salt: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=32, salt=file_salt, info=b"segformer_tao file key 2").derive(master)


def _key_check(master: bytes, head: bytes) -> bytes:
    return hmac.new(master, head, hashlib.sha256).digest()[:16]


def _nonce(prefix: bytes, index: int, last: bool) -> bytes:
    return prefix + struct.pack(">I", index) + (b"\x01" if last else b"\x00")


def encrypt_stream(src: BinaryIO | bytes, dst: BinaryIO, passphrase: str, log2_n: int = LOG2_N,
                   chunk: int = CHUNK) -> None:
    """Seal ``src`` (bytes or a readable binary file) into ``dst`` in format 2, chunk by chunk."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    passphrase = check_passphrase(passphrase)
    if log2_n == LOG2_N:
        with _LOCK:
            kdf_salt = _WRITE_SALT.setdefault(passphrase, os.urandom(16))
    else:
        kdf_salt = os.urandom(16)
    file_salt, prefix = os.urandom(16), os.urandom(7)
    head = MAGIC2 + _PARAMS.pack(KDF_SCRYPT, log2_n, R, P, chunk) + kdf_salt + file_salt + prefix
    master = _master(passphrase, kdf_salt, log2_n, R, P)
    header = head + _key_check(master, head)
    aead = AESGCM(_file_key(master, file_salt))
    read = _reader(src)
    dst.write(header)
    block, index = read(chunk), 0
    while True:
        following = read(chunk)
        last = not following
        dst.write(aead.encrypt(_nonce(prefix, index, last), block, header))
        if last:
            return
        block, index = following, index + 1


def _reader(src: BinaryIO | bytes):
    """``read(n)`` over a file or, without copying it, over bytes (a checkpoint can be gigabytes)."""
    if not isinstance(src, bytes | bytearray | memoryview):
        return src.read
    view, pos = memoryview(src), 0

    def read(n: int) -> memoryview:
        nonlocal pos
        part, pos = view[pos:pos + n], min(pos + n, len(view))
        return part

    return read


def encrypt_bytes(data: bytes, passphrase: str, log2_n: int = LOG2_N) -> bytes:
    out = io.BytesIO()
    encrypt_stream(data, out, passphrase, log2_n)
    return out.getvalue()


def _truncated(path: str, or_modified: bool = False) -> UserError:
    what = "is truncated or was modified (its last part fails authentication" if or_modified else (
        "is truncated (its data ends early")
    return UserError(f"Encrypted file '{path}' {what}: an interrupted copy or download?). Copy it again from the "
                     "results dir that wrote it.")


def _wrong_key(path: str) -> UserError:
    return UserError(f"Cannot decrypt '{path}': the encryption_key is wrong (or the file was modified). Pass the same "
                     "encryption_key=... that was set when the file was written.")


def decrypt_stream(src: BinaryIO, dst: BinaryIO, passphrase: str, path: str = "<bytes>") -> None:
    """Open a file written by :func:`encrypt_stream` (or format 1) from ``src`` into ``dst``.

    UserError for an empty key, a wrong key or modified data, a truncated file, or a header this version refuses.
    """
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    passphrase = check_passphrase(passphrase)
    magic = src.read(len(MAGIC1))
    if magic == MAGIC1:
        return _decrypt_v1(src.read(), dst, passphrase, path)
    if magic != MAGIC2:
        raise UserError(f"'{path}' is not a file encrypted by segformer_tao (unknown header).")
    rest = src.read(HEADER_LEN - len(MAGIC2))
    if len(rest) < HEADER_LEN - len(MAGIC2):
        raise _truncated(path)
    header = magic + rest
    kdf, log2_n, r, p, chunk = _PARAMS.unpack_from(rest)
    _check_kdf_cost(path, kdf, log2_n, r, p, chunk)
    offset = _PARAMS.size
    kdf_salt, file_salt, prefix = rest[offset:offset + 16], rest[offset + 16:offset + 32], rest[offset + 32:offset + 39]
    master = _master(passphrase, kdf_salt, log2_n, r, p)
    if not hmac.compare_digest(_key_check(master, header[:-16]), header[-16:]):
        raise _wrong_key(path)
    aead = AESGCM(_file_key(master, file_salt))
    block, index = src.read(chunk + TAG), 0
    while True:
        following = src.read(chunk + TAG)
        last = not following
        try:
            if len(block) < TAG:
                raise InvalidTag
            dst.write(aead.decrypt(_nonce(prefix, index, last), block, header))
        except InvalidTag:
            if last:  # the key is right (key_check): a whole chunk not marked final means the rest is missing
                raise _truncated(path, or_modified=not _opens(aead, prefix, index, block, header)) from None
            raise UserError(f"Encrypted file '{path}' was modified (its part {index} fails authentication): do not "
                            "use it; copy it again from the results dir that wrote it.") from None
        if last:
            return
        block, index = following, index + 1


def _check_kdf_cost(path: str, kdf: int, log2_n: int, r: int, p: int, chunk: int) -> None:
    """Refuse, before deriving anything, a header whose key derivation costs more than what we write."""
    values = {"log2_n": log2_n, "r": r, "p": p}
    mib = 128 * r * 2**log2_n / 2**20
    if kdf == KDF_SCRYPT and all(lo <= values[k] <= hi for k, (lo, hi) in _KDF_ACCEPTED.items()) and (
            _CHUNK_LIMITS[0] <= chunk <= _CHUNK_LIMITS[1]):
        return
    what = f"scrypt N=2^{log2_n}, r={r}, p={p}: {mib:g} MiB of memory, {p} pass(es)" if kdf == KDF_SCRYPT else (
        f"key derivation {kdf}")
    raise UserError(f"'{path}' asks for encryption parameters this version does not accept ({what}, chunks of "
                    f"{chunk} bytes; segformer_tao writes scrypt N=2^{LOG2_N}, r={R}, p={P}, at most {MAX_KDF_MIB} "
                    "MiB, and reads N=2^10..2^17 with r=8, p=1): it was not written by segformer_tao (or its header "
                    "was crafted), so it is not opened. Use a checkpoint written by `segformer train` or `export`.")


def _opens(aead, prefix: bytes, index: int, block: bytes, header: bytes) -> bool:
    from cryptography.exceptions import InvalidTag

    try:
        aead.decrypt(_nonce(prefix, index, False), block, header)
    except InvalidTag:
        return False
    return True


def _decrypt_v1(body: bytes, dst: BinaryIO, passphrase: str, path: str) -> None:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if len(body) < 16 + 12 + TAG:
        raise _truncated(path)
    salt, nonce, sealed = body[:16], body[16:28], body[28:]
    try:
        dst.write(AESGCM(_master(passphrase, salt, 14, 8, 1)).decrypt(nonce, sealed, MAGIC1))
    except InvalidTag:
        raise _wrong_key(path) from None  # format 1 cannot tell a truncated file from a wrong key


def decrypt_bytes(blob: bytes, passphrase: str, path: str = "<bytes>") -> bytes:
    out = io.BytesIO()
    decrypt_stream(io.BytesIO(blob), out, passphrase, path)
    return out.getvalue()

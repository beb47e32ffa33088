"""Encryption keys: the key file, key ids, and the per-object AES-256-GCM cipher.

A key file holds 32 random bytes in one of three forms, told apart by size: exactly 32
raw bytes (`head -c 32 /dev/urandom`), 64 hex characters (`openssl rand -hex 32`) or 44
base64 characters (`openssl rand -base64 32`); surrounding whitespace is ignored in the
text forms. Its permissions follow PostgreSQL's rule for `ssl_key_file`, and a looser
file is refused, not warned about: owned by the user pgwarden runs as, no access for group
or others (0600 or 0400); or owned by root, readable by the group at most (0640).

A key's id is the first 16 hex characters of the SHA-256 of its 32 bytes: recorded in each
object's header to say which key decodes it, without revealing the key.
"""

from __future__ import annotations

import binascii
import hashlib
import os
import stat

from pgwarden.codec.format import CodecError

TYPE_CHECKING = False  # typing costs milliseconds to import; the codec must load fast
if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_SIZE = 32
_MAX_KEY_FILE_SIZE = 4096
_HKDF_INFO = b"pgwarden codec v1 aes-256-gcm object key"


class Key:
    """A 32-byte AES-256 master key and its id; its repr never shows the secret."""

    __slots__ = ("_secret", "key_id")

    def __init__(self, secret: bytes) -> None:
        if len(secret) != KEY_SIZE:
            raise ValueError(f"an encryption key is {KEY_SIZE} bytes, not {len(secret)}")
        self._secret = bytes(secret)
        self.key_id = hashlib.sha256(self._secret).hexdigest()[:16]

    @classmethod
    def generate(cls) -> Key:
        """A new random key."""
        return cls(os.urandom(KEY_SIZE))

    @property
    def secret(self) -> bytes:
        """The 32 key bytes."""
        return self._secret

    def __repr__(self) -> str:
        return f"Key(key_id={self.key_id!r})"


def parse_key(data: bytes, *, source: str = "key") -> Key:
    """A key from the contents of a key file (raw, hex or base64; see the module docstring)."""
    if len(data) == KEY_SIZE:
        return Key(data)
    text = data.strip()
    try:
        if len(text) == 2 * KEY_SIZE:
            return Key(bytes.fromhex(text.decode("ascii")))
        if len(text) == 44:
            return Key(binascii.a2b_base64(text, strict_mode=True))
    except (ValueError, binascii.Error):
        pass  # reported below, without echoing any of the secret
    raise CodecError(
        f"{source} holds {len(data)} bytes that are neither 32 raw bytes, "
        "64 hex characters nor 44 base64 characters"
    )


def load_key(path: str | os.PathLike[str]) -> Key:
    """Read a key file, refusing one that group or others could read or change."""
    name = os.fspath(path)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO must not hang the agent
    except FileNotFoundError:
        raise CodecError(f"key file {name} does not exist") from None
    except OSError as exc:
        raise CodecError(f"key file {name} cannot be opened: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise CodecError(f"key file {name} is not a regular file")
        _check_permissions(name, info)
        data = os.read(fd, _MAX_KEY_FILE_SIZE + 1)
    finally:
        os.close(fd)
    if len(data) > _MAX_KEY_FILE_SIZE:
        raise CodecError(f"key file {name} is larger than {_MAX_KEY_FILE_SIZE} bytes")
    return parse_key(data, source=f"key file {name}")


def _check_permissions(name: str, info: os.stat_result) -> None:
    mode = stat.S_IMODE(info.st_mode)
    if info.st_uid == os.geteuid():
        if mode & 0o077:
            raise CodecError(
                f"key file {name} is accessible by group or others (mode {mode:04o}); "
                f"run chmod 600 {name}"
            )
    elif info.st_uid == 0:
        if mode & 0o037:
            raise CodecError(
                f"key file {name} is owned by root with mode {mode:04o}, more than 0640; "
                f"run chmod 640 {name}"
            )
    else:
        raise CodecError(
            f"key file {name} is owned by uid {info.st_uid}; it must be owned by the user "
            f"pgwarden runs as (uid {os.geteuid()}) or by root"
        )


def object_cipher(key: Key, salt: bytes) -> AESGCM:
    """The AES-256-GCM cipher for one object: HKDF-SHA256 of the master key and the object's
    salt, so nonces (record counters) are never reused under one key across objects."""
    from cryptography.hazmat.primitives import hashes  # noqa: PLC0415 - heavy, only when encrypting
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: PLC0415
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF  # noqa: PLC0415

    hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=salt, info=_HKDF_INFO)
    return AESGCM(hkdf.derive(key.secret))

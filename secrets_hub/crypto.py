"""All cryptography of secrets-hub: key derivation, AES-256-GCM at rest, the seed's legacy format, API tokens.

Composed from `cryptography` primitives the way MultiFernet composes Fernet: the primary key
encrypts, any configured key decrypts (chosen by the key id stored beside each ciphertext).
"""

from __future__ import annotations

import functools
import hashlib
import os
import secrets
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from secrets_hub.errors import DecryptionError

# Our own fixed salt: the master secret is the only input that varies, so the root is stable across restarts.
ROOT_SALT = b"secrets-hub/root/v1"
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
ENCRYPTION_LABEL = b"secrets-hub/encryption/v1"
SESSION_LABEL = b"secrets-hub/session/v1"
BACKUP_LABEL = b"secrets-hub/backup/v1"
NONCE_BYTES = 12

LEGACY_SALT = b"second-brain-secrets-salt"
TOKEN_PREFIX = "shub_"  # noqa: S105 - a public prefix, not a secret


@dataclass(frozen=True)
class Sealed:
    """One ciphertext as stored: `encrypted_value` is hex(ciphertext):hex(tag), like the seed's column."""

    encrypted_value: str
    iv: str
    key_id: str


@functools.lru_cache(maxsize=8)
def _root_key(master_secret: str) -> bytes:
    # scrypt is deliberately slow: cache it so it runs once per process and master secret, never per request.
    return hashlib.scrypt(
        master_secret.encode(), salt=ROOT_SALT, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, maxmem=64 * 1024 * 1024, dklen=32
    )


def derive_key(master_secret: str, label: bytes) -> bytes:
    """Derive the 32-byte key for one purpose (`label`), so no two purposes ever share bytes."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=label).derive(_root_key(master_secret))


def key_id_of(key: bytes) -> str:
    """A short public fingerprint naming a key in rows and in the UI; it reveals nothing of the key."""
    return hashlib.sha256(b"secrets-hub/key-id/v1" + key).hexdigest()[:16]


class Keyring:
    """AES-256-GCM under a primary key, with former keys accepted for reading during rotation."""

    def __init__(self, primary: bytes, former: tuple[bytes, ...] = ()):
        if len(primary) != 32 or any(len(k) != 32 for k in former):
            raise ValueError("AES-256 keys must be 32 bytes")
        self.key_id = key_id_of(primary)
        self._primary = AESGCM(primary)
        self._by_id = {key_id_of(k): AESGCM(k) for k in former}
        self._by_id[self.key_id] = self._primary

    @classmethod
    def from_master(cls, master_secret: str, former_secrets: tuple[str, ...] = ()) -> "Keyring":
        return cls(
            derive_key(master_secret, ENCRYPTION_LABEL),
            tuple(derive_key(s, ENCRYPTION_LABEL) for s in former_secrets),
        )

    @property
    def key_ids(self) -> frozenset[str]:
        return frozenset(self._by_id)

    def encrypt(self, plaintext: str, associated: str) -> Sealed:
        """Encrypt under the primary key with a fresh nonce, bound to `associated` (the secret's key name)."""
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._primary.encrypt(nonce, plaintext.encode(), associated.encode())
        return Sealed(f"{sealed[:-16].hex()}:{sealed[-16:].hex()}", nonce.hex(), self.key_id)

    def decrypt(self, encrypted_value: str, iv: str, key_id: str, associated: str) -> str:
        """Decrypt and check the tag; any failure (unknown key, tampering, another row's data) is DecryptionError."""
        cipher = self._by_id.get(key_id)
        if cipher is None:
            raise DecryptionError("unknown key id")
        try:
            ciphertext, tag = encrypted_value.split(":")
            return cipher.decrypt(bytes.fromhex(iv), bytes.fromhex(ciphertext + tag), associated.encode()).decode()
        except (InvalidTag, ValueError, UnicodeDecodeError):
            raise DecryptionError("integrity check failed") from None


def legacy_key(legacy_secret: str) -> bytes:
    """The seed app's key: scrypt(secret, 'second-brain-secrets-salt', N=16384, r=8, p=1), 32 bytes."""
    return hashlib.scrypt(legacy_secret.encode(), salt=LEGACY_SALT, n=16384, r=8, p=1, dklen=32)


def decrypt_legacy(encrypted_value: str, iv: str, key: bytes) -> str:
    """Decrypt one row of the seed's format: hex(ciphertext):hex(tag), a 16-byte hex IV, no associated data."""
    try:
        ciphertext, tag = encrypted_value.split(":")
        return AESGCM(key).decrypt(bytes.fromhex(iv), bytes.fromhex(ciphertext + tag), None).decode()
    except (InvalidTag, ValueError, UnicodeDecodeError):
        raise DecryptionError("legacy value failed to decrypt") from None


def new_api_token() -> str:
    """A fresh API token: the `shub_` prefix and 32 bytes of randomness."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(raw_token: str) -> str:
    """The only form in which a token is stored. SHA-256 suffices: tokens carry 256 bits of entropy."""
    return hashlib.sha256(raw_token.encode()).hexdigest()

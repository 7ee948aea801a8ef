"""Unit tests of secrets_hub/crypto.py: AES-256-GCM at rest, key derivation, the legacy format, API tokens."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from secrets_hub import crypto
from secrets_hub.crypto import Keyring
from secrets_hub.errors import DecryptionError

LEGACY_DIR = Path(__file__).resolve().parent / "fixtures" / "legacy"
VECTOR = json.loads((LEGACY_DIR / "vector.json").read_text())


def flip_hex(text: str, index: int) -> str:
    """Change one hex digit at `index` to another valid hex digit."""
    digit = text[index]
    return text[:index] + ("1" if digit == "0" else "0") + text[index + 1:]


@pytest.fixture(scope="module")
def keyring() -> Keyring:
    return Keyring.from_master("crypto-unit-test-master")


# ---- AES-256-GCM round trip, nonces, associated data ----------------------------------------------


@pytest.mark.parametrize("plaintext", ["v", "hunter2", "pässwörd-✓-密码", "line1\nline2 \"q\" 'q'", "x" * 70000])
def test_round_trip(keyring: Keyring, plaintext: str):
    sealed = keyring.encrypt(plaintext, "MY_API_KEY")
    assert keyring.decrypt(sealed.encrypted_value, sealed.iv, sealed.key_id, "MY_API_KEY") == plaintext


def test_sealed_format_is_hex_ciphertext_colon_hex_tag(keyring: Keyring):
    sealed = keyring.encrypt("pässwörd", "K")
    ciphertext, tag = sealed.encrypted_value.split(":")
    assert re.fullmatch(r"[0-9a-f]+", ciphertext)
    assert len(ciphertext) == 2 * len("pässwörd".encode())  # GCM: ciphertext as long as the plaintext
    assert re.fullmatch(r"[0-9a-f]{32}", tag)  # 16-byte tag
    assert sealed.key_id == keyring.key_id
    assert "pässwörd".encode().hex() not in sealed.encrypted_value


def test_fresh_12_byte_nonce_each_time(keyring: Keyring):
    first = keyring.encrypt("same plaintext", "K")
    second = keyring.encrypt("same plaintext", "K")
    assert len(bytes.fromhex(first.iv)) == 12
    assert len(bytes.fromhex(second.iv)) == 12
    assert first.iv != second.iv
    assert first.encrypted_value != second.encrypted_value
    ivs = {keyring.encrypt("same plaintext", "K").iv for _ in range(200)}
    assert len(ivs) == 200


def test_associated_data_binds_the_key_name(keyring: Keyring):
    sealed = keyring.encrypt("value", "KEY_A")
    with pytest.raises(DecryptionError):
        keyring.decrypt(sealed.encrypted_value, sealed.iv, sealed.key_id, "KEY_B")
    with pytest.raises(DecryptionError):
        keyring.decrypt(sealed.encrypted_value, sealed.iv, sealed.key_id, "KEY_A ")
    assert keyring.decrypt(sealed.encrypted_value, sealed.iv, sealed.key_id, "KEY_A") == "value"


def test_unknown_key_id_is_a_decryption_error(keyring: Keyring):
    sealed = keyring.encrypt("value", "K")
    with pytest.raises(DecryptionError):
        keyring.decrypt(sealed.encrypted_value, sealed.iv, "0123456789abcdef", "K")
    other = Keyring.from_master("a-different-master")
    with pytest.raises(DecryptionError):
        other.decrypt(sealed.encrypted_value, sealed.iv, sealed.key_id, "K")
    # Claiming the other keyring's own id does not help: the tag does not verify under its key.
    with pytest.raises(DecryptionError):
        other.decrypt(sealed.encrypted_value, sealed.iv, other.key_id, "K")


def test_tampered_ciphertext_tag_or_iv_is_a_decryption_error(keyring: Keyring):
    sealed = keyring.encrypt("a value worth protecting", "K")
    ciphertext, tag = sealed.encrypted_value.split(":")
    tampered = [
        (f"{flip_hex(ciphertext, 0)}:{tag}", sealed.iv),
        (f"{flip_hex(ciphertext, len(ciphertext) - 1)}:{tag}", sealed.iv),
        (f"{ciphertext}:{flip_hex(tag, 5)}", sealed.iv),
        (f"{ciphertext}:{tag[:-2]}", sealed.iv),  # truncated tag
        (f"{ciphertext[:-2]}:{tag}", sealed.iv),  # truncated ciphertext
        (sealed.encrypted_value, flip_hex(sealed.iv, 3)),
        (ciphertext + tag, sealed.iv),  # no separator
        (f"{ciphertext}:{tag}:00", sealed.iv),  # malformed
        (f"zz{ciphertext[2:]}:{tag}", sealed.iv),  # not hex
    ]
    for encrypted_value, iv in tampered:
        with pytest.raises(DecryptionError):
            keyring.decrypt(encrypted_value, iv, sealed.key_id, "K")
    assert keyring.decrypt(sealed.encrypted_value, sealed.iv, sealed.key_id, "K") == "a value worth protecting"


def test_keyring_with_former_keys_reads_old_and_writes_under_primary():
    old = Keyring.from_master("old-master")
    old_sealed = old.encrypt("from before the rotation", "K")

    rotated = Keyring.from_master("new-master", ("old-master",))
    assert rotated.key_id == Keyring.from_master("new-master").key_id
    assert rotated.key_ids == frozenset({old.key_id, rotated.key_id})
    assert rotated.decrypt(old_sealed.encrypted_value, old_sealed.iv, old_sealed.key_id, "K") == "from before the rotation"

    new_sealed = rotated.encrypt("after", "K")
    assert new_sealed.key_id == rotated.key_id != old.key_id
    with pytest.raises(DecryptionError):  # the old key alone cannot read what the new primary wrote
        old.decrypt(new_sealed.encrypted_value, new_sealed.iv, new_sealed.key_id, "K")
    with pytest.raises(DecryptionError):  # without the former key, old rows are unreadable
        Keyring.from_master("new-master").decrypt(old_sealed.encrypted_value, old_sealed.iv, old_sealed.key_id, "K")


def test_keyring_refuses_keys_of_the_wrong_length():
    with pytest.raises(ValueError):
        Keyring(b"\x00" * 16)
    with pytest.raises(ValueError):
        Keyring(b"\x00" * 32, (b"\x00" * 31,))


# ---- key derivation --------------------------------------------------------------------------------


def test_key_id_is_a_16_hex_fingerprint_that_does_not_reveal_the_key():
    key_a = crypto.derive_key("master-a", crypto.ENCRYPTION_LABEL)
    key_b = crypto.derive_key("master-b", crypto.ENCRYPTION_LABEL)
    id_a, id_b = crypto.key_id_of(key_a), crypto.key_id_of(key_b)
    assert re.fullmatch(r"[0-9a-f]{16}", id_a)
    assert re.fullmatch(r"[0-9a-f]{16}", id_b)
    assert id_a != id_b
    assert id_a == crypto.key_id_of(crypto.derive_key("master-a", crypto.ENCRYPTION_LABEL))  # stable
    assert Keyring.from_master("master-a").key_id == id_a
    assert id_a not in key_a.hex()
    assert id_a.encode() not in key_a
    assert id_a != key_a.hex()[:16]


def test_hkdf_labels_give_three_different_keys():
    assert crypto.ENCRYPTION_LABEL == b"secrets-hub/encryption/v1"
    assert crypto.SESSION_LABEL == b"secrets-hub/session/v1"
    assert crypto.BACKUP_LABEL == b"secrets-hub/backup/v1"
    master = "hkdf-label-test-master"
    keys = [crypto.derive_key(master, label) for label in (crypto.ENCRYPTION_LABEL, crypto.SESSION_LABEL,
                                                            crypto.BACKUP_LABEL)]
    assert all(len(key) == 32 for key in keys)
    assert len(set(keys)) == 3
    root = crypto._root_key(master)
    assert root not in keys
    # Each key is HKDF-SHA256 of the scrypt root with its label as info.
    for label, key in zip((crypto.ENCRYPTION_LABEL, crypto.SESSION_LABEL, crypto.BACKUP_LABEL), keys, strict=True):
        assert key == HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=label).derive(root)


def test_root_key_is_scrypt_of_the_master_secret():
    master = "scrypt-root-test-master"
    expected = hashlib.scrypt(master.encode(), salt=crypto.ROOT_SALT, n=2**14, r=8, p=1,
                              maxmem=64 * 1024 * 1024, dklen=32)
    assert crypto._root_key(master) == expected
    assert crypto.ROOT_SALT != crypto.LEGACY_SALT


def test_scrypt_runs_once_per_process_per_master_secret(monkeypatch):
    real_scrypt = hashlib.scrypt
    calls: list[bytes] = []

    def counting_scrypt(password, **kwargs):
        calls.append(password)
        return real_scrypt(password, **kwargs)

    crypto._root_key.cache_clear()
    monkeypatch.setattr(crypto.hashlib, "scrypt", counting_scrypt)
    try:
        master = "scrypt-count-test-master"
        encryption = crypto.derive_key(master, crypto.ENCRYPTION_LABEL)
        crypto.derive_key(master, crypto.SESSION_LABEL)
        crypto.derive_key(master, crypto.BACKUP_LABEL)
        for _ in range(5):
            keyring = Keyring.from_master(master)
            sealed = keyring.encrypt("value", "K")
            assert keyring.decrypt(sealed.encrypted_value, sealed.iv, sealed.key_id, "K") == "value"
        assert crypto.derive_key(master, crypto.ENCRYPTION_LABEL) == encryption
        assert calls == [master.encode()]

        # Another master secret costs one more scrypt, once.
        Keyring.from_master("another-scrypt-count-master")
        Keyring.from_master("another-scrypt-count-master")
        assert len(calls) == 2
    finally:
        crypto._root_key.cache_clear()


# ---- the seed's legacy format ----------------------------------------------------------------------


def test_legacy_vector_decrypts_every_row():
    assert VECTOR["salt"] == crypto.LEGACY_SALT.decode()
    key = crypto.legacy_key(VECTOR["secret"])
    assert len(key) == 32
    assert len(VECTOR["rows"]) == 5
    for row in VECTOR["rows"]:
        assert len(bytes.fromhex(row["iv"])) == 16
        assert crypto.decrypt_legacy(row["encrypted_value"], row["iv"], key) == row["plaintext"], row["key"]


def test_legacy_key_is_the_seeds_scrypt():
    expected = hashlib.scrypt(b"some-secret", salt=b"second-brain-secrets-salt", n=16384, r=8, p=1, dklen=32)
    assert crypto.legacy_key("some-secret") == expected


def test_legacy_wrong_secret_is_a_decryption_error():
    key = crypto.legacy_key(VECTOR["secret"] + "-wrong")
    for row in VECTOR["rows"]:
        with pytest.raises(DecryptionError):
            crypto.decrypt_legacy(row["encrypted_value"], row["iv"], key)


def test_legacy_modified_tag_ciphertext_or_iv_is_a_decryption_error():
    key = crypto.legacy_key(VECTOR["secret"])
    row = VECTOR["rows"][0]
    ciphertext, tag = row["encrypted_value"].split(":")
    for encrypted_value, iv in [
        (f"{ciphertext}:{flip_hex(tag, 0)}", row["iv"]),
        (f"{ciphertext}:{flip_hex(tag, 31)}", row["iv"]),
        (f"{flip_hex(ciphertext, 4)}:{tag}", row["iv"]),
        (row["encrypted_value"], flip_hex(row["iv"], 0)),
        (ciphertext, row["iv"]),  # tag missing
    ]:
        with pytest.raises(DecryptionError):
            crypto.decrypt_legacy(encrypted_value, iv, key)


def test_legacy_format_is_not_readable_by_the_current_keyring():
    """Legacy rows have no associated data and a 16-byte IV: the current format must not accept them silently."""
    row = VECTOR["rows"][0]
    keyring = Keyring(crypto.legacy_key(VECTOR["secret"]))
    with pytest.raises(DecryptionError):
        keyring.decrypt(row["encrypted_value"], row["iv"], keyring.key_id, row["key"])


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_fresh_vector_from_the_seeds_node_code_decrypts():
    """Regenerate with the seed's own Node code (random IVs: new ciphertexts) and decrypt every row."""
    result = subprocess.run(["node", str(LEGACY_DIR / "make_vector.js")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    fresh = json.loads(result.stdout)
    key = crypto.legacy_key(fresh["secret"])
    assert [row["iv"] for row in fresh["rows"]] != [row["iv"] for row in VECTOR["rows"]]
    for row in fresh["rows"]:
        assert crypto.decrypt_legacy(row["encrypted_value"], row["iv"], key) == row["plaintext"]


# ---- API tokens ------------------------------------------------------------------------------------


def test_new_api_token_has_prefix_and_32_random_bytes():
    tokens = [crypto.new_api_token() for _ in range(100)]
    for token in tokens:
        assert token.startswith("shub_")
        random_part = token[len("shub_"):]
        assert len(random_part) >= 43  # base64url of 32 bytes
        assert re.fullmatch(r"[A-Za-z0-9_-]+", random_part)
    assert len(set(tokens)) == 100


def test_hash_token_is_deterministic_sha256_hex_and_never_the_token():
    token = crypto.new_api_token()
    digest = crypto.hash_token(token)
    assert digest == crypto.hash_token(token)
    assert digest == hashlib.sha256(token.encode()).hexdigest()
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert digest != token
    assert token not in digest
    assert crypto.hash_token(crypto.new_api_token()) != digest

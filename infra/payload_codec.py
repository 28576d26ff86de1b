"""AES-256-GCM encryption of every payload keel hands to Temporal, and the keys it uses.

Temporal stores workflow and activity inputs and results, update and signal arguments, memos and
(with keel's failure converter) error messages as *payloads* in its history. Every keel client and
worker encodes them with :class:`EncryptionCodec`, so the server, its database and anyone who can
read its history see ciphertext; only holders of the key (keel's processes, ``keel
codec-server``) see prompts and answers.

An encrypted payload is ``nonce (12 random bytes) || AES-GCM(key, nonce, serialized payload,
associated data = "keel/payload/v1:" + key id)`` with metadata ``encoding: binary/encrypted`` and
``encryption-key-id: <id>``. The key id is bound into the associated data, so relabelling a
payload with another key's id fails authentication instead of decrypting under the wrong key.

Keys are a newest-first list of ``id:base64key`` entries: the first encrypts, every one decrypts
(rotation = put a new key first; retiring = removing an old one, which makes whatever it encrypted
unreadable for good). They come from ``KEEL_ENCRYPTION_KEYS`` when set, else from the key file
(``KEEL_ENCRYPTION_KEYS_FILE``, default ``<home>/encryption-keys``, mode 0600).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.api.failure.v1 import Failure
from temporalio.contrib.pydantic import PydanticPayloadConverter
from temporalio.converter import (
    DefaultFailureConverter,
    DefaultFailureConverterWithEncodedAttributes,
    EncodingPayloadConverter,
    PayloadCodec,
    PayloadConverter,
)
from temporalio.exceptions import ApplicationError

from infra.settings import KeelSettings

ENCRYPTED_ENCODING = b"binary/encrypted"
KEY_ID_METADATA = "encryption-key-id"
KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12  # the 96-bit nonce GCM is designed for
TAG_BYTES = 16
_ASSOCIATED_DATA_PREFIX = b"keel/payload/v1:"
KEY_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
KEYS_VARIABLE = "KEEL_ENCRYPTION_KEYS"
KEYS_FILE_VARIABLE = "KEEL_ENCRYPTION_KEYS_FILE"
# A payload this process could not decrypt, between decode and conversion: never stored.
UNDECRYPTABLE_ENCODING = "binary/undecryptable"
DECRYPTION_ERROR_METADATA = "keel-decryption-error"


class EncryptionKeysError(ValueError):
    """The configured keys are unusable (malformed, missing, wrong length). Never holds key
    material: messages name the entry by position and key id only."""


class PayloadDecryptionError(ApplicationError, ValueError):
    """An encrypted payload could not be decrypted (unknown key id, altered data, wrong key).

    A non-retryable :class:`ApplicationError`, because no retry gives a process the key it lacks.
    Raised where a keel process converts the payload (see ``defer_failures`` of
    :class:`EncryptionCodec`), the SDK treats it as a failure, not a bug: a workflow whose input
    or activity result cannot be read fails with this message instead of retrying its workflow
    task forever, an update is rejected with it, and an activity whose input cannot be read fails
    for good (:class:`KeelFailureConverter`). The message names key ids and where keys are
    configured, never key material or payload content.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, type=type(self).__name__, non_retryable=True)

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class EncryptionKey:
    key_id: str
    secret: bytes = field(repr=False)

    def entry(self) -> str:
        """The ``id:base64key`` form used in KEEL_ENCRYPTION_KEYS and the key file."""
        return f"{self.key_id}:{base64.b64encode(self.secret).decode()}"


@dataclass(frozen=True)
class KeyRing:
    """The configured keys, newest first, and where they came from (for error messages)."""

    keys: tuple[EncryptionKey, ...]
    source: str
    file: Path | None = None

    @property
    def key_ids(self) -> list[str]:
        return [key.key_id for key in self.keys]


def new_key(key_id: str | None = None) -> EncryptionKey:
    """A fresh random key. The default id carries the creation date, so a person can tell which
    key is old: ``key-20250611-3f9a2c``."""
    key_id = key_id or f"key-{datetime.now(UTC):%Y%m%d}-{secrets.token_hex(3)}"
    if not KEY_ID_PATTERN.match(key_id):
        raise EncryptionKeysError(
            f"invalid key id {key_id!r}: use 1-64 letters, digits, '.', '_' or '-', starting "
            "with a letter or digit"
        )
    return EncryptionKey(key_id, os.urandom(KEY_BYTES))


def _decode_key(text: str) -> bytes:
    text = text.strip().replace("-", "+").replace("_", "/")  # urlsafe base64 too
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def parse_keys(text: str, source: str) -> tuple[EncryptionKey, ...]:
    """``id:base64key`` entries separated by commas or newlines; ``#`` starts a comment line.

    ``source`` names where the text came from in every error (never the key material itself).
    """
    keys: list[EncryptionKey] = []
    entries = [
        entry.strip()
        for line in text.splitlines()
        if not line.strip().startswith("#")
        for entry in line.split(",")
    ]
    for position, entry in enumerate((e for e in entries if e), start=1):
        key_id, separator, encoded = entry.partition(":")
        key_id = key_id.strip()
        if not separator or not KEY_ID_PATTERN.match(key_id):
            raise EncryptionKeysError(
                f"entry {position} in {source} is not `id:base64key` (ids are 1-64 letters, "
                "digits, '.', '_' or '-'); generate a valid entry with "
                "`keel encryption-keys generate`"
            )
        try:
            secret = _decode_key(encoded)
        except (binascii.Error, ValueError):
            raise EncryptionKeysError(
                f"key {key_id!r} (entry {position}) in {source} is not valid base64; generate "
                "one with `keel encryption-keys generate`"
            ) from None
        if len(secret) != KEY_BYTES:
            raise EncryptionKeysError(
                f"key {key_id!r} (entry {position}) in {source} is {len(secret)} bytes; AES-256 "
                f"needs exactly {KEY_BYTES} (44 base64 characters), e.g. from "
                "`keel encryption-keys generate`"
            )
        if any(key.key_id == key_id for key in keys):
            raise EncryptionKeysError(
                f"key id {key_id!r} appears twice in {source}; every key needs its own id"
            )
        keys.append(EncryptionKey(key_id, secret))
    return tuple(keys)


def configured_keys(settings: KeelSettings) -> KeyRing:
    """The keys the settings name: KEEL_ENCRYPTION_KEYS when set, else the key file (if any)."""
    if settings.encryption_keys is not None:
        return KeyRing(
            parse_keys(settings.encryption_keys.get_secret_value(), KEYS_VARIABLE), KEYS_VARIABLE
        )
    path = settings.effective_encryption_keys_file
    source = f"the key file {path} ({KEYS_FILE_VARIABLE})"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return KeyRing((), source, path)
    except OSError as error:
        raise EncryptionKeysError(
            f"cannot read {source}: {error.strerror}; check its owner and permissions"
        ) from None
    return KeyRing(parse_keys(text, source), source, path)


def write_key_file(path: Path, keys: Sequence[EncryptionKey]) -> None:
    """Replace the key file atomically, readable by its owner only (0600), newest key first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = (
        "# keel payload encryption keys, newest first: the first encrypts, every one decrypts.\n"
        "# Removing a key makes everything it encrypted unreadable for good. Keep a backup.\n"
        + "".join(f"{key.entry()}\n" for key in keys)
    )
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(descriptor, 0o600)  # O_CREAT's mode is masked by umask and skipped if it exists
        os.write(descriptor, text.encode())
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    os.replace(temporary, path)


def ensure_key_file(settings: KeelSettings) -> EncryptionKey | None:
    """Create the key file with one new key when encryption is on and no key is configured
    (the dev stack's first ``up``). Returns the new key, or None when nothing was needed."""
    if not settings.encryption or configured_keys(settings).keys:
        return None
    if settings.effective_encryption_keys_file.exists():
        return None  # exists but holds no keys: the person's file, not ours to fill
    key = new_key()
    write_key_file(settings.effective_encryption_keys_file, [key])
    return key


def _associated_data(key_id: bytes) -> bytes:
    return _ASSOCIATED_DATA_PREFIX + key_id


class EncryptionCodec(PayloadCodec):
    """Encrypts with the first key of ``keys`` (when ``encrypt``), decrypts with any of them.

    Payloads not marked ``binary/encrypted`` decode unchanged, so histories written before
    encryption was turned on (and tests' recorded histories) still replay.

    ``defer_failures`` (keel's clients and workers, :func:`infra.temporal_client.
    keel_data_converter`): ``decode`` turns a payload it cannot decrypt into a marker that
    :class:`KeelPayloadConverter` refuses to convert, raising :class:`PayloadDecryptionError`
    there. The SDK decodes a whole workflow activation before the workflow sees any of it, and a
    failure at that stage fails the workflow task, which Temporal retries forever (the workflow
    hangs; one undecodable update wedges it). Raised at conversion, the SDK handles it per
    payload: a workflow's input or an activity result fails the workflow, an update is rejected,
    a query fails, a signal is dropped (logged), an activity's input fails the activity. Without
    it (the codec server), ``decode`` raises.
    """

    def __init__(
        self,
        keys: Sequence[EncryptionKey],
        *,
        source: str,
        encrypt: bool = True,
        defer_failures: bool = False,
    ) -> None:
        if encrypt and not keys:
            raise EncryptionKeysError(f"no encryption key in {source}")
        self._keys = tuple(keys)
        self._source = source
        self._ciphers = {key.key_id.encode(): AESGCM(key.secret) for key in keys}
        self._encrypting = keys[0] if encrypt else None
        self._defer_failures = defer_failures

    @property
    def encrypting_key_id(self) -> str | None:
        """The id new payloads are encrypted with; None when encryption is off."""
        return self._encrypting.key_id if self._encrypting is not None else None

    @property
    def key_ids(self) -> list[str]:
        return [key.key_id for key in self._keys]

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.encrypt(payload) for payload in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self._decode_one(payload) for payload in payloads]

    def _decode_one(self, payload: Payload) -> Payload:
        if not self._defer_failures:
            return self.decrypt(payload)
        try:
            return self.decrypt(payload)
        except PayloadDecryptionError as error:
            return _undecryptable(error)

    def encrypt(self, payload: Payload) -> Payload:
        if self._encrypting is None:
            return payload
        key_id = self._encrypting.key_id.encode()
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._ciphers[key_id].encrypt(
            nonce, payload.SerializeToString(), _associated_data(key_id)
        )
        return Payload(
            metadata={"encoding": ENCRYPTED_ENCODING, KEY_ID_METADATA: key_id},
            data=nonce + sealed,
        )

    def decrypt(self, payload: Payload) -> Payload:
        if payload.metadata.get("encoding") != ENCRYPTED_ENCODING:
            return payload
        raw_id = payload.metadata.get(KEY_ID_METADATA, b"")
        shown_id = raw_id.decode("utf-8", errors="replace")
        cipher = self._ciphers.get(raw_id)
        if cipher is None:
            known = ", ".join(repr(k) for k in self.key_ids) or "none"
            raise PayloadDecryptionError(
                f"payload is encrypted with key id {shown_id!r}, which the process reading it "
                f"does not hold (its keys: {known}, from {self._source}); add the key with that "
                f"id to {self._source} (old keys go after the newest: the first encrypts, all "
                "decrypt), or run the processes that share work with the same keys"
            )
        if len(payload.data) < NONCE_BYTES + TAG_BYTES:
            raise PayloadDecryptionError(
                f"encrypted payload (key id {shown_id!r}) is truncated: {len(payload.data)} bytes"
            )
        nonce, sealed = payload.data[:NONCE_BYTES], payload.data[NONCE_BYTES:]
        try:
            plain = cipher.decrypt(nonce, sealed, _associated_data(raw_id))
        except InvalidTag:
            raise PayloadDecryptionError(
                f"encrypted payload (key id {shown_id!r}) failed authentication: it was altered, "
                f"or the key stored as {shown_id!r} in {self._source} is not the key that "
                "encrypted it"
            ) from None
        return Payload.FromString(plain)


def _undecryptable(error: PayloadDecryptionError) -> Payload:
    """The marker standing for a payload this process cannot decrypt: the reason, no data (the
    ciphertext is not carried along, so nothing can re-encode it under another key)."""
    return Payload(
        metadata={
            "encoding": UNDECRYPTABLE_ENCODING.encode(),
            DECRYPTION_ERROR_METADATA: error.message.encode(),
        }
    )


class _UndecryptablePayloadConverter(EncodingPayloadConverter):
    """Raises the decryption error a marker stands for, where the SDK converts the payload."""

    @property
    def encoding(self) -> str:
        return UNDECRYPTABLE_ENCODING

    def to_payload(self, value: Any) -> Payload | None:
        return None  # never chosen to encode a value

    def from_payload(self, payload: Payload, type_hint: type | None = None) -> Any:
        reason = payload.metadata.get(DECRYPTION_ERROR_METADATA, b"").decode(errors="replace")
        raise PayloadDecryptionError(reason or "an encrypted payload could not be decrypted")


class KeelPayloadConverter(PydanticPayloadConverter):
    """Pydantic's payload converter, plus the marker of an undecryptable payload
    (see :class:`EncryptionCodec`'s ``defer_failures``)."""

    def __init__(self) -> None:  # nullary: the SDK re-creates it per serialization context
        super().__init__()
        self._set_converters(*self.converters.values(), _UndecryptablePayloadConverter())


class KeelFailureConverter(DefaultFailureConverterWithEncodedAttributes):
    """Failure messages and stack traces move into an encoded (so encrypted) payload, since they
    can quote prompt text; except the failure to *decrypt* a payload.

    That one must stay readable to the holder of the other key: the client whose payload the
    worker could not read cannot decrypt what the worker would encrypt. Its message names key ids
    only. Where the SDK wraps it (an activity's "Failed decoding arguments", retryable as
    raised), the failure is made non-retryable: retrying cannot give the worker the key.
    """

    _plain = DefaultFailureConverter()

    def to_failure(
        self, exception: BaseException, payload_converter: PayloadConverter, failure: Failure
    ) -> None:
        if not _is_decryption_failure(exception):
            super().to_failure(exception, payload_converter, failure)
            return
        self._plain.to_failure(exception, payload_converter, failure)
        if failure.HasField("application_failure_info"):
            failure.application_failure_info.non_retryable = True


def _is_decryption_failure(exception: BaseException) -> bool:
    """A PayloadDecryptionError, or the SDK's own wrapper of one (its message is fixed text)."""
    if isinstance(exception, PayloadDecryptionError):
        return True
    return (
        isinstance(exception, ApplicationError)
        and exception.message.startswith("Failed decoding")
        and isinstance(exception.__cause__, PayloadDecryptionError)
    )


def codec_from_settings(settings: KeelSettings, *, defer_failures: bool = False) -> EncryptionCodec:
    """The codec every keel client, worker and the codec server use.

    With encryption on (the default) a missing key is an error, never a silent fallback to
    plaintext; with ``KEEL_ENCRYPTION=off`` nothing new is encrypted, but configured keys still
    decrypt what was written while it was on.
    """
    ring = configured_keys(settings)
    if settings.encryption and not ring.keys:
        if ring.file is None:
            where = f"{KEYS_VARIABLE} holds no keys"
        elif ring.file.exists():
            where = f"{KEYS_VARIABLE} is unset and {ring.source} holds no keys"
        else:
            where = f"{KEYS_VARIABLE} is unset and {ring.source} does not exist"
        create = (
            "`keel dev up` (the dev stack creates it) or `keel encryption-keys rotate`"
            if settings.uses_dev_temporal and settings.encryption_keys_file is None
            else "`keel encryption-keys rotate`"
        )
        raise EncryptionKeysError(
            f"payload encryption is on but no key is configured: {where}. Set "
            f"{KEYS_VARIABLE}=id:base64key (from `keel encryption-keys generate`; in "
            f"production, from your secret store), or create the key file with {create}; "
            "or set KEEL_ENCRYPTION=off to leave prompts and answers readable in Temporal's "
            "history"
        )
    return EncryptionCodec(
        ring.keys, source=ring.source, encrypt=settings.encryption, defer_failures=defer_failures
    )

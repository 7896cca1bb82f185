"""Identifiers: UUIDv7 message ids and the deterministic ids derived from them."""

from __future__ import annotations

import hashlib
import os
import time
import uuid

# Namespaces for uuid5-derived aggregate ids. Changing one orphans every stored stream.
COMMAND_NAMESPACE = uuid.UUID("6f0a4e1c-2f0b-5d8e-9a51-0c3e7b1d2a40")
DOCUMENT_NAMESPACE = uuid.UUID("b2f1c1e4-8f5a-5b7d-8c2e-4d9a6e3f1b07")
EMAIL_NAMESPACE = uuid.UUID("0d3c9a57-41e2-5c8b-b6f0-7a2e91c4d853")
MODEL_NAMESPACE = uuid.UUID("4c6b2f0e-93d1-5a7e-b2c4-8e1f0a9d3b65")
RUN_NAMESPACE = uuid.UUID("9e3a71c2-5b08-5f4d-a6e9-1d2c8b7f4a30")
NO_USER = uuid.UUID(int=0)
"""The subject of an audit record about nobody known (a failed login for an unknown email)."""

_last_ms = 0
_counter = 0
_random = b""  # os.urandom read 4 KiB at a time: one system call per 400 ids, not per id
_used = 0


def _random_bits(nbytes: int) -> int:
    global _random, _used
    if _used + nbytes > len(_random):
        _random, _used = os.urandom(4096), 0
    value = int.from_bytes(_random[_used : _used + nbytes], "big")
    _used += nbytes
    return value


def _forget_random() -> None:
    global _random, _used
    _random, _used = b"", 0


# A forked child must not hand out its parent's unused random bytes again.
os.register_at_fork(after_in_child=_forget_random)


def uuid7() -> uuid.UUID:
    """A time-ordered UUID (RFC 9562 version 7), monotonic within this process.

    Python 3.11 has no ``uuid.uuid7``; the layout is 48 bits of Unix milliseconds, 12 bits of
    a counter that keeps ids ordered within one millisecond, and 62 random bits.
    """
    global _last_ms, _counter
    ms = time.time_ns() // 1_000_000
    if ms <= _last_ms:
        ms = _last_ms
        _counter += 1
        if _counter > 0xFFF:  # counter exhausted: borrow the next millisecond
            ms += 1
            _counter = 0
    else:
        _counter = _random_bits(2) & 0x3FF  # leave room to count up
    _last_ms = ms
    rand = _random_bits(8) & ((1 << 62) - 1)
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | _counter << 64 | 0b10 << 62 | rand
    return uuid.UUID(int=value)


_KEEP = ((1 << 128) - 1) & ~(0xF000 << 64) & ~(0xC000 << 48)
_VERSION_5 = 5 << 76 | 0x8000 << 48  # the version nibble, and the RFC 4122 variant bits
_set = object.__setattr__


def uuid5(namespace: uuid.UUID, name: str) -> uuid.UUID:
    """``uuid.uuid5(namespace, name)``, the same value, in a third of the time: the workers
    derive several per command. (``uuid.UUID(...)`` validates and converts its arguments; this
    sets the two slots that constructor would set.)"""
    digest = hashlib.sha1(namespace.bytes + name.encode(), usedforsecurity=False).digest()
    value = uuid.UUID.__new__(uuid.UUID)
    _set(value, "int", int.from_bytes(digest[:16], "big") & _KEEP | _VERSION_5)
    _set(value, "is_safe", uuid.SafeUUID.unknown)
    return value


def command_aggregate_id(message_id: uuid.UUID) -> uuid.UUID:
    """The id of the per-command aggregate that records a command's one outcome."""
    return uuid5(COMMAND_NAMESPACE, str(message_id))


def document_aggregate_id(document_id: str) -> uuid.UUID:
    return uuid5(DOCUMENT_NAMESPACE, document_id)


def email_reservation_id(email_hmac: str) -> uuid.UUID:
    """The stream that says who owns an email (by its keyed hash, never the email itself)."""
    return uuid5(EMAIL_NAMESPACE, email_hmac)


def model_aggregate_id(name: str) -> uuid.UUID:
    """The stream of one model of the registry, by its name."""
    return uuid5(MODEL_NAMESPACE, name)


def run_aggregate_id(request_id: str) -> uuid.UUID:
    """The stream of one long-running command (a completion, an agent run, a fine-tune), by the
    request id its command carries."""
    return uuid5(RUN_NAMESPACE, request_id)

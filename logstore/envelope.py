"""The message envelope: Ax's ``ax.Envelope`` in Python form.

On disk an envelope is one msgpack array of seven items, in field order::

    [message_id: str, causation_id: str, correlation_id: str,
     created_at: Timestamp, send_at: Timestamp, type: str, message: any]

Datetimes use msgpack's Timestamp extension (type -1), which msgpack decodes
in C, and read back as timezone-aware UTC datetimes. ``message`` is any
msgpack value whose types survive the round trip exactly (``dict``, ``list``,
``str``, ``bytes``, ``int``, ``float``, ``bool``, ``None``, aware ``datetime``
whose instant lies within years 1-9999 in UTC); ``bytearray`` and
``memoryview`` are stored as ``bytes`` and read back as ``bytes`` (equal), and a
``msgpack.Timestamp`` reads back as a ``datetime``.
Types that would come back as something else (a ``tuple`` would read as a
``list``, a ``str`` subclass as ``str``) are refused at append time with
``TypeError``, so that a read envelope is always ``==`` to the one appended.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

import msgpack

from logstore.errors import MessageTooLargeError


class Envelope(NamedTuple):
    """A message with its identity and causality.

    >>> root = Envelope.new("OrderPlaced", {"sku": "A1"})
    >>> root.causation_id == root.correlation_id == root.message_id
    True
    >>> child = root.new_child("OrderShipped", {"sku": "A1"})
    >>> (child.causation_id, child.correlation_id) == (root.message_id, root.message_id)
    True
    """

    message_id: str
    """A UUID string, unique to this message."""
    causation_id: str
    """The ``message_id`` of the message that caused this one (its own id for a root)."""
    correlation_id: str
    """The ``message_id`` of the root of the causal chain (its own id for a root)."""
    created_at: datetime
    """When the envelope was made (timezone-aware, UTC)."""
    send_at: datetime
    """When the message is meant to be handled (timezone-aware, UTC); ``created_at`` unless delayed."""
    type: str
    """The message type name, such as ``"OrderPlaced"``."""
    message: Any
    """The message itself: any msgpack-serializable value; ``bytes`` pass through untouched."""

    @classmethod
    def new(cls, type: str, message: Any, *, send_at: datetime | None = None) -> Envelope:
        """A root envelope: causation and correlation ids equal its own new id."""
        mid = str(uuid.uuid4())
        now = datetime.now(UTC)
        return cls(mid, mid, mid, now, now if send_at is None else send_at, type, message)

    def new_child(self, type: str, message: Any, *, send_at: datetime | None = None) -> Envelope:
        """An envelope caused by this one, in the same correlation chain."""
        now = datetime.now(UTC)
        return Envelope(
            str(uuid.uuid4()),
            self.message_id,
            self.correlation_id,
            now,
            now if send_at is None else send_at,
            type,
            message,
        )


_packer = msgpack.Packer(use_bin_type=True, datetime=True, strict_types=True, autoreset=True)
_tuple_new = tuple.__new__


_TIMESTAMP96 = b"\xc7\x0c\xff"  # msgpack's 96-bit Timestamp: instants before 1970 or after 2514


def _pack(env: Envelope) -> bytes:
    payload: bytes = _packer.pack(list(env))
    if _TIMESTAMP96 in payload:
        # A rare, wide-range datetime: make sure it reads back (an aware datetime
        # early in year 1 or late in year 9999 may have no UTC datetime at all).
        try:
            decode(payload)
        except ValueError:
            raise ValueError("holds a datetime whose UTC instant is outside years 1-9999") from None
    return payload


def check_envelopes(envs: object) -> None:
    """Raise ``TypeError``/``ValueError`` unless ``envs`` is a non-empty sequence (not one envelope).

    An :class:`Envelope` is a ``NamedTuple``, so a sequence itself: it is
    refused by name, as are ``str``, ``bytes`` and mappings. The elements are
    checked as they are encoded (:func:`encode_many`).
    """
    if type(envs) is list:  # the common case
        if envs:
            return
    elif isinstance(envs, Envelope):
        raise TypeError("envs must be a sequence of Envelope (a list), got one Envelope: wrap it in a list")
    elif isinstance(envs, str | bytes | bytearray | Mapping) or not isinstance(envs, Sequence):
        raise TypeError(f"envs must be a sequence of Envelope (a list), got {type(envs).__name__}")
    if not envs:
        raise ValueError("envs must hold at least one envelope")


def check_envelope(env: object, where: str) -> Envelope:
    """Return ``env`` if it is a well-formed :class:`Envelope`, else raise ``TypeError``/``ValueError``."""
    if type(env) is not Envelope:
        raise TypeError(f"{where}: must be an Envelope, got {type(env).__name__}")
    for name in ("message_id", "causation_id", "correlation_id", "type"):
        if type(getattr(env, name)) is not str:
            raise TypeError(f"{where}: {name} must be a str, got {type(getattr(env, name)).__name__}")
    for name in ("created_at", "send_at"):
        value = getattr(env, name)
        if type(value) is not datetime:
            raise TypeError(f"{where}: {name} must be a datetime, got {type(value).__name__}")
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"{where}: {name} must be timezone-aware")
    return env


def encode(env: Envelope, where: str) -> bytes:
    """Encode a checked envelope; ``where`` names it in error messages."""
    try:
        return _pack(env)
    except ValueError as exc:
        raise ValueError(f"{where}: envelope {exc}") from None
    except (TypeError, OverflowError) as exc:
        raise TypeError(f"{where}: message is not storable as msgpack without changing type: {exc}") from None


def encode_many(envs: Sequence[object], stream: str, offset: int | None, limit: int) -> list[bytes]:
    """Check and encode the envelopes of one append (the caller's hot path).

    The common case runs a single type test per field; any failure is re-run
    through :func:`check_envelope` and :func:`encode` for a precise message,
    which names the envelope's index in ``envs`` and its stream offset
    (``offset`` None: an append at ``logstore.ANY``, whose offsets are not known yet).
    """
    payloads: list[bytes] = []
    for env in envs:
        if type(env) is Envelope:
            mid, cid, corr, created, send, name, _message = env
            if (
                type(mid) is str
                and type(cid) is str
                and type(corr) is str
                and type(name) is str
                and type(created) is datetime
                and type(send) is datetime
                and created.tzinfo is not None
                and send.tzinfo is not None
            ):
                try:
                    payload = _pack(env)
                except (TypeError, ValueError, OverflowError):
                    pass  # the slow path below says precisely what is wrong
                else:
                    if len(payload) > limit:
                        k = len(payloads)
                        raise MessageTooLargeError(stream, None if offset is None else offset + k, len(payload), limit)
                    payloads.append(payload)
                    continue
        k = len(payloads)
        at = "at logstore.ANY" if offset is None else f"offset {offset + k}"
        where = f"stream {stream!r} {at}, envs[{k}]"
        encode(check_envelope(env, where), where)  # raises, saying precisely what is wrong
        raise AssertionError(f"{where}: envelope failed the fast check but passed the full one")  # pragma: no cover
    return payloads


def decode(payload: bytes | memoryview) -> Envelope:
    """Decode an envelope. Raises ``ValueError`` or ``TypeError`` if the bytes are not one."""
    try:
        fields = msgpack.unpackb(payload, raw=False, timestamp=3, strict_map_key=False)
    except OverflowError:  # a Timestamp outside datetime's range
        raise ValueError("envelope holds a timestamp outside the datetime range") from None
    if type(fields) is not list or len(fields) != 7:
        raise ValueError("payload is not a 7-item envelope array")
    env: Envelope = _tuple_new(Envelope, fields)
    return env


# The type filter's peek (readers' ``types=``): the msgpack bytes of an envelope's type field, found by
# stepping over the five fields before it (three strings, two timestamps) by their headers alone.
_STR_WIDTH = {0xD9: 1, 0xDA: 2, 0xDB: 4}  # str 8/16/32: bytes of the length after the marker
_EXT_SIZE = {0xD6: 6, 0xD7: 10}  # fixext 4/8 (a 32- or 64-bit Timestamp), marker included


def type_key(type_name: str) -> bytes:
    """The msgpack bytes of ``type_name`` as an envelope's type field holds them (what :func:`peek_type` returns).

    >>> type_key("OrderPlaced")
    b'\\xabOrderPlaced'
    """
    packed: bytes = _packer.pack(type_name)
    return packed


def _str_end(buf: Any, p: int) -> int:
    """The byte after the msgpack string at ``p``; -1 if what is there is no string."""
    b: int = buf[p]
    if 0xA0 <= b <= 0xBF:
        return p + 1 + (b & 0x1F)
    width = _STR_WIDTH.get(b)
    if width is None:
        return -1
    length = int.from_bytes(buf[p + 1 : p + 1 + width], "big")
    return p + 1 + width + length


def peek_type(buf: Any, start: int, end: int) -> bytes | None:
    """The msgpack bytes of the type field of the envelope at ``buf[start:end]``, without decoding it.

    ``None`` when the bytes are not laid out as :func:`encode` lays them out (the caller then decodes
    the envelope and reads its ``type``): a reader's type filter never drops a message it cannot tell.
    """
    if end - start < 8 or buf[start] != 0x97:
        return None
    p = start + 1
    for _ in range(3):  # message_id, causation_id, correlation_id
        p = _str_end(buf, p)
        if p < 0 or p >= end:
            return None
    for _ in range(2):  # created_at, send_at
        b = buf[p]
        size = _EXT_SIZE.get(b)
        if size is None:
            if b != 0xC7 or buf[p + 1] != 12:  # ext 8 of 12 bytes: a 96-bit Timestamp
                return None
            size = 15
        p += size
        if p >= end:
            return None
    q = _str_end(buf, p)
    if q < 0 or q > end:
        return None
    return bytes(buf[p:q])


def type_of(payload: bytes) -> str:
    """The type name of an encoded envelope, read from its type field alone when its layout allows."""
    key = peek_type(payload, 0, len(payload))
    if key is None:
        return decode(payload).type
    name = msgpack.unpackb(key, raw=False)
    assert type(name) is str
    return name

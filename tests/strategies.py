"""Shared hypothesis strategies: stream names, messages, envelopes and transaction plans.

Every value drawn here is storable and reads back ``==`` to itself: messages are
msgpack values whose types survive the round trip (no tuples, no NaN, no
integers outside the int64/uint64 range), envelope datetimes are aware.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Collection, Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import strategies as st

import logstore
from logstore import Envelope

INT64_MIN = -(2**63)
UINT64_MAX = 2**64 - 1

# -- stream names --------------------------------------------------------------------

_name_chars = st.characters(codec="utf-8", exclude_characters="\x00")


def _fit_utf8(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes, never splitting a character."""
    return text.encode("utf-8")[:limit].decode("utf-8", errors="ignore")


@st.composite
def _long_names(draw: st.DrawFn) -> str:
    """Names of several hundred bytes up to exactly ``MAX_STREAM_NAME`` bytes, some multi-byte."""
    prefix = draw(st.text(_name_chars, min_size=1, max_size=8))
    fill = draw(st.sampled_from(["x", "é", "€", "😀"]))
    size = draw(st.sampled_from([logstore.MAX_STREAM_NAME, logstore.MAX_STREAM_NAME - 1, 300]))
    name = _fit_utf8(prefix + fill * size, size)
    assert 0 < len(name.encode("utf-8")) <= logstore.MAX_STREAM_NAME
    return name


def unique_name(name: str, taken: Collection[str]) -> str:
    """``name``, or if it is taken, ``name`` with the first ``~k`` suffix that is not (within the byte limit)."""
    candidate, k = name, 0
    while candidate in taken:
        k += 1
        suffix = f"~{k}"
        candidate = _fit_utf8(name, logstore.MAX_STREAM_NAME - len(suffix)) + suffix
    return candidate


stream_names: st.SearchStrategy[str] = st.one_of(
    st.from_regex(r"\A[a-z]{1,8}-[0-9]{1,4}\Z"),  # the ordinary "order-42" kind
    st.text(_name_chars, min_size=1, max_size=12),  # any unicode (no NUL, no surrogates)
    _long_names(),
)
"""Valid stream names: short ASCII ids, arbitrary unicode, and long names up to the byte limit."""

# -- messages ------------------------------------------------------------------------


def _padding() -> st.SearchStrategy[bytes]:
    """A cheap-to-draw block of up to 3 KiB, so that small-segment stores roll within a run."""
    return st.builds(lambda n, b: bytes([b]) * n, st.integers(256, 3072), st.integers(0, 255))


_scalars: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(INT64_MIN, UINT64_MAX),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.binary(max_size=40),
)

messages: st.SearchStrategy[Any] = st.one_of(
    st.recursive(
        _scalars,
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.dictionaries(st.text(max_size=8), children, max_size=4),
        ),
        max_leaves=8,
    ),
    _padding(),
    st.fixed_dictionaries({"blob": _padding(), "n": st.integers(INT64_MIN, UINT64_MAX)}),
)
"""Message values that msgpack stores and reads back exactly (some of them kilobytes long)."""

# -- envelopes ------------------------------------------------------------------------

message_types: st.SearchStrategy[str] = st.one_of(
    st.sampled_from(["OrderPlaced", "OrderShipped", "PaymentReceived"]),
    st.text(max_size=16),
)

aware_datetimes: st.SearchStrategy[datetime] = st.builds(
    lambda dt, minutes: dt.replace(tzinfo=UTC).astimezone(timezone(timedelta(minutes=minutes))),
    st.datetimes(min_value=datetime(1900, 1, 2), max_value=datetime(2200, 12, 30)),
    st.integers(-23 * 60 - 59, 23 * 60 + 59),
)
"""Timezone-aware datetimes in various fixed offsets (they read back as the same instant in UTC)."""


_uuid_strings = st.uuids().map(str)
_message_numbers = itertools.count()


@st.composite
def _built_envelopes(draw: st.DrawFn) -> Envelope:
    kind = draw(st.sampled_from(["new", "child", "delayed", "full"]))
    type_ = draw(message_types)
    message = draw(messages)
    if kind == "new":
        return Envelope.new(type_, message)
    if kind == "child":
        parent = Envelope.new(draw(message_types), None)
        return parent.new_child(type_, message)
    if kind == "delayed":
        return Envelope.new(type_, message, send_at=draw(aware_datetimes))
    mid, causation, correlation = (draw(_uuid_strings) for _ in range(3))
    # A message id is unique (a stream holds one id at one offset only), however hypothesis draws:
    # the drawn uuid's last group becomes a counter.
    mid = f"{mid[:24]}{next(_message_numbers):012x}"
    return Envelope(mid, causation, correlation, draw(aware_datetimes), draw(aware_datetimes), type_, message)


envelopes: st.SearchStrategy[Envelope] = _built_envelopes()
"""Envelopes made by ``Envelope.new``/``new_child`` or constructed field by field."""

envelope_batches: st.SearchStrategy[list[Envelope]] = st.lists(envelopes, min_size=1, max_size=5)
"""What one ``append_messages`` call appends: 1 to 5 envelopes."""

# -- transaction plans ----------------------------------------------------------------

Plan = list[tuple[str, list[Envelope]]]
"""One transaction: its appends in order, each (stream name, envelopes)."""


@st.composite
def transaction_plans(draw: st.DrawFn, existing: Sequence[str] = ()) -> Plan:
    """A transaction over 1 to 3 distinct streams, each either one of ``existing`` or a new name.

    Every stream gets at least one append; some get several (up to 5 appends
    in all), in any order. Each append holds 1 to 5 envelopes. The caller
    turns the plan into ``append_messages`` calls at the right offsets.
    """
    count = draw(st.integers(1, 3))
    chosen: list[str] = []
    existing = sorted(set(existing))
    for _ in range(count):
        fresh = [s for s in existing if s not in chosen]
        if fresh and draw(st.booleans()):
            chosen.append(draw(st.sampled_from(fresh)))
        else:
            chosen.append(unique_name(draw(stream_names), {*chosen, *existing}))
    extra = draw(st.lists(st.sampled_from(chosen), max_size=5 - count))
    order = draw(st.permutations(chosen + extra))
    return [(name, draw(envelope_batches)) for name in order]


def append_plan(
    store: logstore.Store, tx: logstore.Tx, plan: Plan, head: Callable[[str], int]
) -> list[tuple[str, int, Envelope]]:
    """Append ``plan`` to ``tx`` at each stream's next offset (``head(name)`` before this transaction).

    Returns the appended messages as ``(stream, offset, envelope)`` in global order.
    """
    heads: dict[str, int] = {}
    messages = []
    for name, envs in plan:
        offset = heads.get(name, head(name))
        store.append_messages(tx, name, offset, envs)
        heads[name] = offset + len(envs)
        messages += [(name, offset + i, env) for i, env in enumerate(envs)]
    return messages

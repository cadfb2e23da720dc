"""Property: whatever arrives, ``decode_client_frame`` answers with a typed
frame or a :class:`ClientError` -- never another exception -- and a frame it
returns is well-formed."""

from __future__ import annotations

import json
import uuid
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sanic_chat.core.errors import ClientError
from sanic_chat.core.events import (
    ConversationSubscribe,
    GenerationCancel,
    GenerationResume,
    MessageCreate,
    Ping,
    decode_client_frame,
)

from .support import CLIENT_FRAME_TYPES

MAX_CONTENT = 200
FIELDS = ["type", "client_id", "content", "conversation_id", "generation_id", "offset", "model"]

#: every code point, lone surrogates included
any_text = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=80)
odd_text = st.sampled_from(
    [
        "\u202e",
        "\u200f",
        "\ufeff",
        "\x00",
        "\u0301",
        "\uffff",
        "\U0010ffff",
        "\ud800",
        "\udfff",
        "\ud83d\ude00",
        "\u0660",  # ARABIC-INDIC DIGIT ZERO
        "\U0001d7d8",  # MATHEMATICAL DOUBLE-STRUCK DIGIT ZERO
        " ",
        "\n",
        "{",
        "urn:uuid:",
        "0x",
    ]
)
uuidish = st.one_of(
    st.uuids().map(str),
    st.uuids().map(lambda u: "{" + str(u) + "}"),
    st.uuids().map(lambda u: f"urn:uuid:{u}"),
    st.uuids().map(lambda u: u.hex.upper()),
    st.just("0x" + "0" * 30),
    st.just("\u0660" * 32),  # Arabic-Indic digits: int() takes them
    st.just("1_" * 15 + "11"),
)
numbers = st.one_of(
    st.integers(),
    st.integers(min_value=2**53 - 2, max_value=2**70),
    st.integers(max_value=-1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.just(10**400),
)
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), numbers, any_text, odd_text, uuidish),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.sampled_from(FIELDS) | any_text, children, max_size=4),
    ),
    max_leaves=12,
)
frame_like = st.fixed_dictionaries(
    {"type": st.sampled_from(CLIENT_FRAME_TYPES) | json_values},
    optional={field: json_values for field in FIELDS[1:]},
)


def _encode(value: Any, how: str) -> str | bytes:
    """Serialise with a JSON encoder that can emit lone surrogates as escapes."""
    if how == "ascii":
        return json.dumps(value, ensure_ascii=True, allow_nan=True, default=str)
    try:
        return orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError):
        return json.dumps(value, ensure_ascii=True, default=str)


def check(raw: str | bytes) -> None:
    try:
        frame = decode_client_frame(raw, max_content_chars=MAX_CONTENT)
    except ClientError as exc:
        assert exc.code and isinstance(exc.message, str)
        assert exc.ref is None or (isinstance(exc.ref, str) and len(exc.ref) <= 64)
        return
    assert isinstance(
        frame, MessageCreate | GenerationCancel | ConversationSubscribe | GenerationResume | Ping
    )
    for name in ("client_id", "conversation_id", "generation_id"):
        value = getattr(frame, name, None)
        assert value is None or str(uuid.UUID(value)) == value  # canonical
    if isinstance(frame, MessageCreate):
        assert isinstance(frame.content, str) and 0 < len(frame.content) <= MAX_CONTENT
        assert frame.content.strip()
        assert frame.model is None or (isinstance(frame.model, str) and frame.model)
    offset = getattr(frame, "offset", None)
    assert offset is None or (type(offset) is int and 0 <= offset <= 2**53)


FAST = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(st.binary(max_size=300))
def test_any_bytes(raw: bytes) -> None:
    check(raw)


@FAST
@given(any_text)
def test_any_text_including_lone_surrogates(raw: str) -> None:
    check(raw)


@FAST
@given(json_values, st.sampled_from(["ascii", "utf8"]))
def test_any_json_value(value: Any, how: str) -> None:
    check(_encode(value, how))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frame_like, st.sampled_from(["ascii", "utf8"]))
def test_anything_shaped_like_a_frame(value: dict[str, Any], how: str) -> None:
    check(_encode(value, how))


@FAST
@given(
    st.sampled_from(["[", '{"a":', '[{"type":']),
    st.integers(1, 5000),
    st.sampled_from(["", "]", "}"]),
)
def test_deep_nesting(opening: str, depth: int, closing: str) -> None:
    check(opening * depth + closing * depth)

"""The message hot path's shortcuts give the same results as the general code they skip."""

from __future__ import annotations

import gc

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.core.ratelimit import RateLimiter, TokenBucket
from relay.errors import FrameError
from relay.protocol import Limits, MessageFrame, parse_client_frame, validate_message
from relay.store.base import NewMessage, direct_conversation
from relay.store.memory import MemoryStore

LIMITS = Limits(max_text_chars=10, max_meta_bytes=64)


def _new(sender: str, peer: str, mid: str, **extra: object) -> NewMessage:
    return NewMessage(
        conversation=direct_conversation(sender, peer),
        id=mid,
        sender_id=sender,
        text="hi",
        server_timestamp="2026-02-05T10:30:15.000Z",
        recipient_id=peer,
        sender_name=extra.get("name"),  # type: ignore[arg-type]
        sender_avatar="A",
        client_timestamp="2026-02-05T10:30:14Z",
        meta=extra.get("meta"),  # type: ignore[arg-type]
    )


async def test_memory_store_appends_every_field_with_and_without_meta() -> None:
    store = MemoryStore()
    plain = _new("a", "b", "m1", name="Ann")
    with_meta = _new("a", "b", "m2", meta={"k": [1]})
    first, second = await store.append_many([plain, with_meta])
    assert first.message == plain.stored(1) and not first.duplicate
    assert second.message == with_meta.stored(2) and not second.duplicate
    assert second.message.meta is not with_meta.meta  # the store keeps its own copy
    [again] = await store.append_many([plain])
    assert again.duplicate and again.message == plain.stored(1)
    page, more = await store.history(plain.conversation)
    assert page == [plain.stored(1), with_meta.stored(2)] and not more


def _frame(**fields: object) -> bytes:
    return orjson.dumps({"type": "message", "id": "m", **fields})


@pytest.mark.parametrize(
    "fields",
    [
        {"recipientId": "b", "text": "hello"},
        {"groupId": "g", "text": "x", "senderId": "a", "senderName": "", "senderAvatar": "A"},
        {"recipientId": "b", "text": "x", "timestamp": "t", "ref": "r1"},
        {"recipientId": "b", "text": "x", "meta": {"k": 1}},
        {"recipientId": "b", "text": "x", "status": "pending", "unknown": [1]},
    ],
)
def test_parsed_message_equals_the_general_validation(fields: dict[str, object]) -> None:
    parsed = parse_client_frame(_frame(**fields), LIMITS)
    ref = str(fields.get("ref", "m"))
    assert isinstance(parsed, MessageFrame)
    assert parsed == validate_message({"type": "message", "id": "m", **fields}, LIMITS,
                                      message_id="m", ref=ref)  # fmt: skip


@pytest.mark.parametrize(
    ("fields", "code", "field"),
    [
        ({"recipientId": "b", "text": ""}, "invalid", "text"),
        ({"recipientId": "b", "text": "x" * 11}, "too_long", "text"),
        ({"recipientId": "b", "groupId": "g", "text": "x"}, "invalid", "recipientId"),
        ({"text": "x"}, "invalid", "recipientId"),
        ({"recipientId": 5, "text": "x"}, "invalid", "recipientId"),
        ({"recipientId": "b", "text": "x", "senderName": "n" * 257}, "invalid", "senderName"),
        ({"recipientId": "b", "text": "x", "meta": {"k": "v" * 80}}, "too_long", "meta"),
        ({"recipientId": "b", "text": 3}, "invalid", "text"),
    ],
)
def test_refused_message_keeps_its_code_and_field(
    fields: dict[str, object], code: str, field: str
) -> None:
    with pytest.raises(FrameError) as info:
        parse_client_frame(_frame(**fields), LIMITS)
    assert (info.value.code, info.value.field, info.value.ref) == (code, field, "m")


def test_inlined_rate_limiter_matches_the_token_bucket() -> None:
    limiter = RateLimiter(rate=2.0, burst=3.0)
    bucket = TokenBucket(rate=2.0, burst=3.0, tokens=3.0, updated=0.0)
    times = [0.0, 0.0, 0.0, 0.0, 0.1, 0.5, 0.5, 0.5, 3.0, 3.0, 3.0, 3.0, 2.0, 10.0]
    assert [limiter.allow("u", t) for t in times] == [bucket.take(t) for t in times]


_USES = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c"]),
        st.floats(min_value=0.0, max_value=20.0, allow_nan=False),
        st.sampled_from([0.5, 1.0, 2.0, 4.0]),  # 4: more than the burst, never allowed
        st.booleans(),  # prune at this time instead of using the key
    ),
    max_size=60,
)


@given(uses=_USES)
def test_the_rate_limiter_is_the_token_bucket_per_key_pruned_when_full(
    uses: list[tuple[str, float, float, bool]],
) -> None:
    """Any order of uses (clocks going back too), costs and prunes: the same answers as a
    TokenBucket per key, and a prune forgets exactly the keys whose bucket is full again."""
    limiter = RateLimiter(rate=2.0, burst=3.0)
    models: dict[str, TokenBucket] = {}
    for key, now, cost, prune in uses:
        if prune:
            full = set()
            for name, model in models.items():
                model.refill(now)
                if model.tokens >= model.burst:
                    full.add(name)
            assert limiter.prune(now) == len(full)  # the default slice holds all three
            for name in full:
                del models[name]
            assert len(limiter) == len(models)
            continue
        model = models.get(key)
        if model is None:
            model = models[key] = TokenBucket(rate=2.0, burst=3.0, tokens=3.0, updated=now)
        assert limiter.allow(key, now, cost) == model.take(now, cost)


def test_the_rate_limiters_buckets_are_out_of_the_collectors_sight() -> None:
    """A bucket is two floats, which the collector never walks (see relay.core.ratelimit)."""
    limiter = RateLimiter(rate=2.0, burst=3.0)
    limiter.allow("u", 0.0)
    limiter.allow("v", 0.0)
    limiter.allow("u", 1.0)
    values = [*limiter._tokens.values(), *limiter._updated.values()]
    assert values and not any(gc.is_tracked(value) for value in values)

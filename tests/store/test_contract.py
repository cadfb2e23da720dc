"""The MessageStore contract, proved on every backend (memory, SQLite, PostgreSQL)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, timedelta

import pytest

from sanic_chat.core.errors import Conflict, NotFound, Unavailable
from sanic_chat.core.ports import MessageStore, new_conversation_id
from sanic_chat.core.records import ErrorInfo, Message, Usage, utcnow

from .support import post, soon

# --------------------------------------------------------------------------- conversations


async def test_create_then_get_returns_the_same_conversation(store: MessageStore) -> None:
    created = await store.create_conversation("alice", title="Plans", model="demo")
    assert created.owner == "alice" and created.title == "Plans" and created.model == "demo"
    assert created.created_at.tzinfo is not None and created.updated_at == created.created_at
    assert await store.get_conversation("alice", created.id) == created


async def test_another_owners_conversation_is_invisible(store: MessageStore) -> None:
    theirs = await store.create_conversation("bob")
    assert await store.get_conversation("alice", theirs.id) is None
    assert await store.get_conversation("alice", str(uuid.uuid4())) is None
    assert await store.list_conversations("alice") == []
    assert await store.delete_conversation("alice", theirs.id) is False
    assert await store.get_conversation("bob", theirs.id) == theirs
    assert await store.list_messages("alice", theirs.id) is None
    with pytest.raises(NotFound):
        await post(store, owner="alice", conversation_id=theirs.id)
    with pytest.raises(NotFound):
        await post(store, owner="alice", conversation_id=str(uuid.uuid4()))


async def test_a_malformed_id_is_simply_not_found(store: MessageStore) -> None:
    assert await store.get_conversation("alice", "not-a-uuid") is None
    assert await store.get_message("alice", "not-a-uuid") is None
    with pytest.raises(NotFound):
        await post(store, conversation_id="not-a-uuid")


async def test_list_is_newest_first_by_update_and_pages_with_before(store: MessageStore) -> None:
    first = await store.create_conversation("alice", title="first")
    await asyncio.sleep(0.002)
    second = await store.create_conversation("alice", title="second")
    await asyncio.sleep(0.002)
    await store.create_conversation("bob", title="not alice's")
    assert [c.id for c in await store.list_conversations("alice")] == [second.id, first.id]

    # posting bumps updated_at, which moves the conversation to the front
    await asyncio.sleep(0.002)
    posted = await post(store, conversation_id=first.id)
    assert posted.conversation.updated_at > first.updated_at
    listed = await store.list_conversations("alice")
    assert [c.id for c in listed] == [first.id, second.id]
    assert listed[0].updated_at == posted.conversation.updated_at

    page = await store.list_conversations("alice", limit=1)
    assert [c.id for c in page] == [first.id]
    rest = await store.list_conversations("alice", limit=1, before=page[-1].updated_at)
    assert [c.id for c in rest] == [second.id]
    assert await store.list_conversations("alice", before=rest[-1].updated_at) == []


async def test_delete_removes_the_conversation_and_its_messages(store: MessageStore) -> None:
    posted = await post(store)
    cid = posted.conversation.id
    assert await store.delete_conversation("alice", cid) is True
    assert await store.get_conversation("alice", cid) is None
    assert await store.get_message("alice", posted.user.id) is None
    assert await store.get_message("alice", posted.reply.id if posted.reply else "") is None
    assert await store.list_messages("alice", cid) is None
    assert await store.delete_conversation("alice", cid) is False
    with pytest.raises(NotFound):
        await post(store, conversation_id=cid)


# --------------------------------------------------------------------------- posting


async def test_post_stores_the_user_message_and_a_streaming_reply(store: MessageStore) -> None:
    conversation = await store.create_conversation("alice")
    posted = await post(
        store, conversation_id=conversation.id, content="Hi there", model="gpt", node_id="n1"
    )
    assert posted.created is True
    user, reply = posted.user, posted.reply
    assert reply is not None
    assert (user.role, user.status, user.content, user.model) == (
        "user",
        "complete",
        "Hi there",
        "gpt",
    )
    assert user.conversation_id == conversation.id and user.client_id is not None
    assert (reply.role, reply.status, reply.content) == ("assistant", "streaming", "")
    assert reply.reply_to == user.id and reply.model == "gpt" and reply.completed_at is None
    for moment in (user.created_at, reply.created_at, posted.conversation.updated_at):
        assert moment.tzinfo is not None and moment.utcoffset() == timedelta(0)
    # what was returned is exactly what is stored
    assert await store.list_messages("alice", conversation.id) == [user, reply]
    assert await store.get_message("alice", reply.id) == reply
    assert await store.get_message("bob", reply.id) is None


async def test_same_client_id_again_returns_the_first_post_and_stores_nothing(
    store: MessageStore,
) -> None:
    conversation = await store.create_conversation("alice")
    first = await post(store, conversation_id=conversation.id, client_id="c-1")
    again = await post(store, conversation_id=conversation.id, client_id="c-1", content="other")
    assert again.created is False
    assert (again.user, again.reply) == (first.user, first.reply)
    assert again.conversation == first.conversation  # updated_at not bumped by a retry
    assert len(await store.list_messages("alice", conversation.id) or []) == 2


async def test_retry_after_the_reply_finished_returns_the_finished_reply(
    store: MessageStore,
) -> None:
    first = await post(store, client_id="c-1")
    assert first.reply is not None
    done = await store.finish(first.reply.id, content="Hello!", status="complete")
    again = await post(store, client_id="c-1")
    assert again.created is False and again.user == first.user and again.reply == done


async def test_a_new_conversations_id_is_derived_so_a_retry_finds_it(store: MessageStore) -> None:
    first = await post(store, owner="alice", client_id="c-1")
    assert first.conversation.id == new_conversation_id("alice", "c-1")
    assert first.conversation.owner == "alice" and first.conversation.model == "demo"
    retry = await post(store, owner="alice", client_id="c-1")
    assert retry.created is False
    assert retry.conversation.id == first.conversation.id and retry.user == first.user
    assert [c.id for c in await store.list_conversations("alice")] == [first.conversation.id]
    # the same client_id from another owner is another conversation
    theirs = await post(store, owner="bob", client_id="c-1")
    assert theirs.created is True and theirs.conversation.id != first.conversation.id


async def test_post_while_a_reply_streams_is_a_conflict_that_stores_nothing(
    store: MessageStore,
) -> None:
    first = await post(store)
    cid = first.conversation.id
    with pytest.raises(Conflict):
        await post(store, conversation_id=cid, client_id="c-2")
    assert await store.list_messages("alice", cid) == [first.user, first.reply]
    # ...and the refused client_id was not remembered: after the reply ends it works
    assert first.reply is not None
    await store.finish(first.reply.id, content="done", status="complete")
    later = await post(store, conversation_id=cid, client_id="c-2")
    assert later.created is True
    assert len(await store.list_messages("alice", cid) or []) == 4


@pytest.mark.parametrize("status", ["cancelled", "failed", "interrupted"])
async def test_any_final_status_frees_the_conversation(store: MessageStore, status: str) -> None:
    first = await post(store)
    assert first.reply is not None
    await store.finish(first.reply.id, content="", status=status)  # type: ignore[arg-type]
    assert (await post(store, conversation_id=first.conversation.id)).created is True


async def test_twenty_concurrent_identical_posts_store_one_message(store: MessageStore) -> None:
    results = await asyncio.gather(*(post(store, client_id="same") for _ in range(20)))
    assert sum(r.created for r in results) == 1
    assert len({r.user.id for r in results}) == 1
    assert len({r.reply.id for r in results if r.reply}) == 1
    assert len({r.conversation.id for r in results}) == 1
    assert len(await store.list_messages("alice", results[0].conversation.id) or []) == 2


async def test_twenty_concurrent_identical_posts_to_an_existing_conversation(
    store: MessageStore,
) -> None:
    conversation = await store.create_conversation("alice")
    results = await asyncio.gather(
        *(post(store, conversation_id=conversation.id, client_id="same") for _ in range(20))
    )
    assert sum(r.created for r in results) == 1
    assert len({(r.user.id, r.reply.id if r.reply else None) for r in results}) == 1
    assert len(await store.list_messages("alice", conversation.id) or []) == 2


async def test_concurrent_different_posts_to_one_conversation_start_one_reply(
    store: MessageStore,
) -> None:
    conversation = await store.create_conversation("alice")
    results = await asyncio.gather(
        *(post(store, conversation_id=conversation.id) for _ in range(10)),
        return_exceptions=True,
    )
    winners = [r for r in results if not isinstance(r, BaseException)]
    assert len(winners) == 1 and winners[0].created
    assert all(isinstance(r, Conflict) for r in results if r is not winners[0])
    assert len(await store.list_messages("alice", conversation.id) or []) == 2


async def test_fifty_concurrent_posts_to_different_conversations_all_commit(
    store: MessageStore,
) -> None:
    results = await asyncio.gather(*(post(store, content=f"m{i}") for i in range(50)))
    assert all(r.created for r in results)
    assert len({r.conversation.id for r in results}) == 50
    listed = await store.list_conversations("alice", limit=100)
    assert len(listed) == 50
    for result in results[:5]:
        assert await store.list_messages("alice", result.conversation.id) == [
            result.user,
            result.reply,
        ]


# --------------------------------------------------------------------------- replies


async def test_checkpoint_then_finish_stores_everything(store: MessageStore) -> None:
    posted = await post(store)
    assert posted.reply is not None
    rid = posted.reply.id
    await store.checkpoint(rid, "Hel")
    partial = await store.get_message("alice", rid)
    assert partial is not None and (partial.content, partial.status) == ("Hel", "streaming")

    done = await store.finish(
        rid, content="Hello!", status="complete", usage=Usage(12, 3), finish_reason="stop"
    )
    assert (done.content, done.status, done.finish_reason) == ("Hello!", "complete", "stop")
    assert done.usage == Usage(12, 3) and done.error is None
    assert done.completed_at is not None and done.completed_at >= done.created_at
    assert done.completed_at.tzinfo is not None
    assert await store.get_message("alice", rid) == done


async def test_a_failed_reply_keeps_its_partial_content_and_error(store: MessageStore) -> None:
    posted = await post(store)
    assert posted.reply is not None
    failed = await store.finish(
        posted.reply.id,
        content="Par",
        status="failed",
        error=ErrorInfo("provider_timeout", "no byte for 30 s"),
    )
    assert (failed.status, failed.content) == ("failed", "Par")
    assert failed.error == ErrorInfo("provider_timeout", "no byte for 30 s")
    assert failed.usage is None and failed.finish_reason is None
    assert await store.get_message("alice", posted.reply.id) == failed


async def test_finish_on_a_final_row_returns_it_unchanged(store: MessageStore) -> None:
    posted = await post(store)
    assert posted.reply is not None
    cancelled = await store.finish(posted.reply.id, content="Hi", status="cancelled")
    again = await store.finish(
        posted.reply.id, content="Hi there", status="complete", usage=Usage(1, 1)
    )
    assert again == cancelled
    await store.checkpoint(posted.reply.id, "overwritten?")
    assert await store.get_message("alice", posted.reply.id) == cancelled


async def test_finish_of_an_unknown_message_is_not_found(store: MessageStore) -> None:
    with pytest.raises(NotFound):
        await store.finish(str(uuid.uuid4()), content="", status="complete")


async def test_checkpoint_of_an_unknown_message_does_nothing(store: MessageStore) -> None:
    await store.checkpoint(str(uuid.uuid4()), "text")
    assert await store.list_conversations("alice") == []


# --------------------------------------------------------------------------- reading


async def _exchanges(store: MessageStore, n: int, *, reply: str = "answer") -> list[Message]:
    """``n`` finished user/assistant pairs in one conversation, oldest first."""
    messages: list[Message] = []
    conversation_id = None
    for i in range(n):
        posted = await post(store, conversation_id=conversation_id, content=f"question {i}")
        conversation_id = posted.conversation.id
        assert posted.reply is not None
        done = await store.finish(posted.reply.id, content=f"{reply} {i}", status="complete")
        messages += [posted.user, done]
    return messages


async def test_list_messages_pages_backwards_oldest_first_within_a_page(
    store: MessageStore,
) -> None:
    messages = await _exchanges(store, 5)
    cid = messages[0].conversation_id
    assert await store.list_messages("alice", cid) == messages
    page = await store.list_messages("alice", cid, limit=4)
    assert page == messages[6:]
    page2 = await store.list_messages("alice", cid, limit=4, before=messages[6].id)
    assert page2 == messages[2:6]
    page3 = await store.list_messages("alice", cid, limit=4, before=messages[2].id)
    assert page3 == messages[:2]
    assert await store.list_messages("alice", cid, limit=4, before=messages[0].id) == []


async def test_history_keeps_the_newest_messages_that_fit(store: MessageStore) -> None:
    messages = await _exchanges(store, 3)  # "question i" = 10 chars, "answer i" = 8
    cid = messages[0].conversation_id
    posted = await post(store, conversation_id=cid, content="question 3")
    everything = await store.history(cid, before=posted.user, max_chars=10_000)
    # oldest first, the new message last, the empty streaming reply skipped
    assert everything == [*messages, posted.user]
    assert await store.history(cid, before=posted.user, max_chars=28) == [
        messages[-2],
        messages[-1],
        posted.user,
    ]
    # the new message is always there, even when it alone exceeds the budget
    assert await store.history(cid, before=posted.user, max_chars=3) == [posted.user]


async def test_a_post_can_return_its_history_as_history_would(store: MessageStore) -> None:
    messages = await _exchanges(store, 3)
    cid = messages[0].conversation_id
    same = {"conversation_id": cid, "client_id": "c-h", "content": "question 3"}
    posted = await post(store, **same, history_max_chars=28)
    assert posted.created and posted.history == [messages[-2], messages[-1], posted.user]
    assert posted.history == await store.history(cid, before=posted.user, max_chars=28)
    fresh = await post(store)
    assert fresh.history is None  # not asked for
    again = await post(store, **same, history_max_chars=28)
    assert again.created is False and again.history is None  # nothing new: no context


async def test_history_ends_at_before_and_skips_empty_replies(store: MessageStore) -> None:
    first = await post(store, content="one")
    cid = first.conversation.id
    assert first.reply is not None
    await store.finish(first.reply.id, content="", status="failed")  # no text: skipped
    second = await post(store, conversation_id=cid, content="two")
    assert second.reply is not None
    await store.finish(second.reply.id, content="reply two", status="complete")
    third = await post(store, conversation_id=cid, content="three")
    assert await store.history(cid, before=second.user, max_chars=1000) == [
        first.user,
        second.user,
    ]
    assert [m.content for m in await store.history(cid, before=third.user, max_chars=1000)] == [
        "one",
        "two",
        "reply two",
        "three",
    ]


# --------------------------------------------------------------------------- leases


async def test_expired_leases_are_interrupted_keeping_their_content(store: MessageStore) -> None:
    expired = await post(store, lease_until=utcnow() - timedelta(seconds=1))
    alive = await post(store, lease_until=soon(60))
    assert expired.reply is not None and alive.reply is not None
    await store.checkpoint(expired.reply.id, "half a rep")

    orphans = await store.interrupt_orphans(now=utcnow())
    assert [o.id for o in orphans] == [expired.reply.id]
    orphan = orphans[0]
    assert (orphan.status, orphan.content) == ("interrupted", "half a rep")
    assert orphan.completed_at is not None and orphan.error is not None
    assert orphan.error.code == "interrupted"
    assert await store.get_message("alice", orphan.id) == orphan
    assert (await store.get_message("alice", alive.reply.id)).status == "streaming"  # type: ignore[union-attr]
    assert await store.interrupt_orphans(now=utcnow()) == []
    # the conversation takes a new message again
    assert (await post(store, conversation_id=expired.conversation.id)).created


async def test_renewed_leases_survive_and_only_their_node_can_renew(store: MessageStore) -> None:
    mine = await post(store, node_id="n1", lease_until=utcnow() + timedelta(milliseconds=1))
    theirs = await post(store, node_id="n2", lease_until=utcnow() + timedelta(milliseconds=1))
    assert mine.reply is not None and theirs.reply is not None
    await store.renew_leases("n1", [mine.reply.id, theirs.reply.id], soon(60))
    await store.renew_leases("n1", [], soon(60))
    await asyncio.sleep(0.01)
    orphans = await store.interrupt_orphans(now=utcnow())
    assert [o.id for o in orphans] == [theirs.reply.id]


async def test_interrupting_a_node_takes_all_its_streaming_rows(store: MessageStore) -> None:
    a = await post(store, node_id="dead", lease_until=soon(60))
    b = await post(store, node_id="dead", lease_until=soon(60))
    other = await post(store, node_id="alive", lease_until=utcnow() - timedelta(seconds=5))
    finished = await post(store, node_id="dead")
    assert a.reply and b.reply and other.reply and finished.reply
    done = await store.finish(finished.reply.id, content="ok", status="complete")

    orphans = await store.interrupt_orphans(now=utcnow(), node_id="dead")
    assert sorted(o.id for o in orphans) == sorted([a.reply.id, b.reply.id])
    assert all(o.status == "interrupted" for o in orphans)
    assert await store.get_message("alice", finished.reply.id) == done
    assert (await store.get_message("alice", other.reply.id)).status == "streaming"  # type: ignore[union-attr]


# --------------------------------------------------------------------------- lifecycle


async def test_ping_answers_and_a_closed_store_is_unavailable(store: MessageStore) -> None:
    await store.ping()
    await store.close()
    with pytest.raises(Unavailable):
        await store.ping()
    with pytest.raises(Unavailable):
        await post(store)


async def test_timestamps_are_aware_utc_everywhere(store: MessageStore) -> None:
    posted = await post(store)
    assert posted.reply is not None
    done = await store.finish(posted.reply.id, content="x", status="complete")
    conversation = await store.get_conversation("alice", posted.conversation.id)
    assert conversation is not None
    for moment in (
        conversation.created_at,
        conversation.updated_at,
        done.created_at,
        done.completed_at,
    ):
        assert moment is not None and moment.tzinfo is not None
        assert moment.astimezone(UTC) == moment and moment.utcoffset() == timedelta(0)


async def test_a_conversation_started_by_a_message_is_titled_by_it(store) -> None:
    posted = await post(
        store,
        owner="titled",
        content="  How do   rivers\nform deltas over centuries, and why do some of them split into many channels?",
        model="demo",
        node_id="n",
        lease_until=utcnow(),
    )
    assert posted.conversation.title is not None
    assert posted.conversation.title.startswith("How do rivers form deltas")
    assert len(posted.conversation.title) <= 80 and posted.conversation.title.endswith("…")
    again = await store.get_conversation("titled", posted.conversation.id)
    assert again is not None and again.title == posted.conversation.title

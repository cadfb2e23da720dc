// state.js: what the client knows (replies, the outbox, sizes, backoff), with no I/O.
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import {
  ChatError,
  Outbox,
  Replies,
  backoffDelay,
  bodyTooLong,
  contentTooLong,
  frameTooLong,
} from "../../sanic_chat/web/state.js";
import { pageWithRunningReply } from "./fakes.mjs";

const C = "c-1";
const G = "g-1";

function delta(offset, text, id = G) {
  return { type: "generation.delta", generation_id: id, offset, text };
}

describe("replies", () => {
  test("deltas append in order; a duplicate changes nothing", () => {
    const replies = new Replies();
    assert.equal(replies.announce(G, C).length, 0);
    const first = replies.delta(delta(0, "Hello"));
    assert.equal(first.kind, "append");
    assert.deepEqual(first.detail, {
      generationId: G,
      conversationId: C,
      offset: 0,
      text: "Hello",
      content: "Hello",
      length: 5,
    });
    assert.equal(replies.delta(delta(5, " 🙂")).detail.length, 7);
    assert.equal(replies.delta(delta(0, "Hello")), null);
    assert.equal(replies.delta(delta(3, "lo 🙂!")).detail.text, "!");
    assert.deepEqual(replies.view(G), { id: G, conversationId: C, content: "Hello 🙂!", length: 8, done: false });
  });

  test("a gap is reported with the reply and nothing is applied", () => {
    const replies = new Replies();
    replies.delta(delta(0, "Hello"));
    const step = replies.delta(delta(9, "xyz"));
    assert.equal(step.kind, "gap");
    assert.equal(step.reply.id, G);
    assert.equal(step.reply.length, 5); // where the rest is asked from
    assert.equal(replies.get(G).content, "Hello");
  });

  test("a reply ends once; late events for it change nothing", () => {
    const replies = new Replies();
    replies.delta(delta(0, "Hi"));
    const end = replies.end({
      type: "generation.completed",
      generation_id: G,
      message: { conversation_id: C, content: "Hi there" },
      finish_reason: "stop",
    });
    assert.equal(end.type, "completed");
    assert.equal(end.content, "Hi there");
    assert.equal(end.conversationId, C);
    assert.equal(replies.end({ type: "generation.failed", generation_id: G }), null);
    assert.equal(replies.delta(delta(2, "!")), null);
    assert.equal(replies.start({ generation_id: G, conversation_id: C }), null);
    assert.equal(replies.announce(G, C), null);
    assert.equal(replies.view(G), null);
  });

  test("started is reported once, with what is held", () => {
    const replies = new Replies();
    replies.delta(delta(0, "So"));
    const started = replies.start({ generation_id: G, conversation_id: C, model: "demo", reply_to: "u-1" });
    assert.equal(started.content, "So");
    assert.equal(started.conversationId, C); // learnt from the started event
    assert.equal(replies.start({ generation_id: G, conversation_id: C }), null);
  });

  test("a history page's running reply is taken up; each side ends with the longest text", () => {
    const replies = new Replies();
    const page = pageWithRunningReply(C, G, "Hello");
    replies.adopt(C, page);
    assert.deepEqual(replies.view(G), { id: G, conversationId: C, content: "Hello", length: 5, done: false });
    assert.equal(replies.seeMessage("u-1"), true); // seen in the page
    // more held than an older page shows: the page's item gets it
    replies.delta(delta(5, " world"));
    const older = pageWithRunningReply(C, G, "Hello");
    replies.adopt(C, older);
    assert.equal(older.items[1].content, "Hello world");
    // more in the page than held: the reply takes it
    replies.adopt(C, pageWithRunningReply(C, G, "Hello world, again"));
    assert.equal(replies.get(G).length, 18);
  });

  test("a reply the page shows ended, ended while not followed", () => {
    const replies = new Replies();
    replies.announce(G, C);
    const page = pageWithRunningReply(C, G, "done");
    page.items[1].status = "complete";
    replies.adopt(C, page);
    assert.equal(replies.view(G), null);
    assert.equal(replies.delta(delta(0, "late")), null);
  });

  test("after reconnecting: the open conversation and every one with a reply running", () => {
    const replies = new Replies();
    replies.announce("g-a", "c-a");
    replies.announce("g-b", null);
    assert.deepEqual([...replies.conversationsToFollow("c-open")], ["c-open", "c-a"]);
    assert.deepEqual(replies.orphans().map((g) => g.id), ["g-b"]);
    assert.deepEqual(replies.runningIn("c-a").map((g) => g.id), ["g-a"]);
  });
});

describe("outbox", () => {
  test("a message stays, with its client_id, until acknowledged", () => {
    const outbox = new Outbox();
    const a = outbox.add("first", { conversationId: C });
    const b = outbox.add("second");
    assert.match(a.clientId, /^[0-9a-f-]{36}$/);
    assert.notEqual(a.clientId, b.clientId);
    assert.deepEqual(
      outbox.list().map((p) => p.content),
      ["first", "second"]
    );
    assert.equal(outbox.accept(a.clientId), a);
    assert.equal(outbox.accept(a.clientId), null); // a second acknowledgement: not ours any more
    assert.deepEqual([...outbox.values()], [b]);
  });

  test("a transient failure keeps it, to be re-sent with the same client_id", async () => {
    const outbox = new Outbox();
    const p = outbox.add("hello");
    for (const code of ["network", "unavailable", "internal"]) {
      assert.equal(outbox.fail(p, new ChatError(code, "try again")), "kept");
    }
    assert.deepEqual([...outbox.values()], [p]);
  });

  test("a refusal (too large) fails it for good: it leaves and its promise rejects", async () => {
    const outbox = new Outbox();
    const p = outbox.add("x".repeat(100));
    assert.equal(outbox.fail(p, new ChatError("too_large", "too big")), "failed");
    assert.deepEqual(outbox.list(), []);
    await assert.rejects(p.accepted, (error) => error.code === "too_large" && error.ref === p.clientId);
    assert.equal(outbox.fail(p, new ChatError("too_large", "again")), "gone");
  });

  test("the frame a 1009 close refused: the largest sent on that connection", () => {
    const outbox = new Outbox();
    const small = outbox.add("small");
    const big = outbox.add("b".repeat(500));
    const bigger = outbox.add("c".repeat(900));
    small.sentOn = big.sentOn = 7;
    bigger.sentOn = 6; // went out on an earlier connection
    const culprit = outbox.largestSentOn(7);
    assert.equal(culprit.pending, big);
    assert.ok(culprit.bytes > 500);
    assert.equal(outbox.largestSentOn(8), null);
  });

  test("a conversation made for a message is kept while another message is pending in it", () => {
    const outbox = new Outbox();
    const a = outbox.add("a", { conversationId: C });
    assert.equal(outbox.othersIn(C, a), false);
    outbox.add("b", { conversationId: C });
    assert.equal(outbox.othersIn(C, a), true);
  });

  test("closing rejects every pending message", async () => {
    const outbox = new Outbox();
    const a = outbox.add("a");
    const b = outbox.add("b");
    outbox.rejectAll("closed", "closed");
    await assert.rejects(a.accepted, { code: "closed" });
    await assert.rejects(b.accepted, { code: "closed" });
    assert.deepEqual(outbox.list(), []);
  });
});

describe("sizes", () => {
  const limits = { max_content_chars: 10, max_frame_bytes: 300, max_body_bytes: 250 };

  test("content is counted in code points", () => {
    assert.equal(contentTooLong("🙂".repeat(10), limits), null);
    assert.deepEqual(contentTooLong("🙂".repeat(11), limits).limit, { name: "content_chars", max: 10, size: 11 });
  });

  test("a frame counts its UTF-8 bytes, with room for a conversation id", () => {
    const withRoom = frameTooLong("x".repeat(170), null, undefined, limits);
    const known = frameTooLong("x".repeat(170), "c", undefined, limits);
    assert.equal(known, null);
    assert.equal(withRoom.limit.name, "frame_bytes"); // a new conversation's id is not known yet
    assert.equal(frameTooLong("é".repeat(150), "c", undefined, limits).limit.max, 300);
  });

  test("a POST body counts its UTF-8 bytes", () => {
    assert.equal(bodyTooLong("x".repeat(150), undefined, limits), null);
    const problem = bodyTooLong("é".repeat(150), undefined, limits);
    assert.equal(problem.limit.name, "body_bytes");
    assert.ok(problem.limit.size > 250);
  });
});

describe("reconnect delays", () => {
  const policy = { initialMs: 500, maxMs: 15_000 };

  test("double from the first, up to the longest, with jitter of half to all", () => {
    const most = (attempt) => backoffDelay(attempt, { ...policy, random: () => 1 });
    const least = (attempt) => backoffDelay(attempt, { ...policy, random: () => 0 });
    assert.deepEqual([0, 1, 2, 3, 4, 5, 6].map(most), [500, 1000, 2000, 4000, 8000, 15000, 15000]);
    assert.deepEqual([0, 1, 2].map(least), [250, 500, 1000]);
    assert.equal(most(1000), 15000);
  });

  test("an immediate reconnect waits nothing the first time only", () => {
    assert.equal(backoffDelay(0, { ...policy, immediate: true }), 0);
    assert.equal(backoffDelay(1, { ...policy, immediate: true, random: () => 1 }), 1000);
  });
});

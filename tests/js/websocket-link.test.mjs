// links/websocket.js, through the public ChatClient, against a stand-in
// WebSocket and fetch handed to its constructor.
import assert from "node:assert/strict";
import { afterEach, describe, test } from "node:test";

import { ChatClient } from "../../sanic_chat/web/sanic-chat.js";
import { fakeApi, fakeWebSockets, pageWithRunningReply, until } from "./fakes.mjs";

const C = "c-1";
const G = "g-1";

/** @type {ChatClient[]} */
const clients = [];
afterEach(() => {
  for (const chat of clients.splice(0)) chat.close();
});

/** A client on the WebSocket link, connected over its first socket. */
async function connected(routes = {}, options = {}) {
  const api = fakeApi(routes);
  const { FakeWebSocket, sockets } = fakeWebSockets();
  const chat = new ChatClient({
    baseUrl: "http://chat.test",
    fetch: api.fetch,
    WebSocket: FakeWebSocket,
    backoffInitialMs: 1,
    backoffMaxMs: 2,
    ...options,
  });
  clients.push(chat);
  const events = [];
  for (const type of ["status", "delta", "error", "message", "generation"]) {
    chat.addEventListener(type, (e) => events.push({ event: type, ...e.detail }));
  }
  chat.connect();
  await until(() => sockets.length === 1, "the first socket");
  assert.equal(sockets[0].url.href, "ws://chat.test/ws");
  sockets[0].answer();
  assert.equal(chat.state, "open");
  assert.equal(chat.transport, "websocket");
  return { chat, api, sockets, events };
}

/** The next socket the client opens after a drop, answered. */
async function reconnected(sockets, n) {
  await until(() => sockets.length === n, `socket ${n}`);
  sockets[n - 1].answer();
}

function accepted(p, clientId, generationId = G, conversationId = C) {
  return {
    type: "message.accepted",
    client_id: clientId,
    conversation_id: conversationId,
    message: { id: `m-${clientId}`, conversation_id: conversationId, role: "user", content: p },
    generation_id: generationId,
  };
}

// a client that never settles a promise fails here rather than hanging the run
describe("WebSocket link", { timeout: 10_000 }, () => {
  test("an unacknowledged message is re-sent with the same client_id after a reconnect", async () => {
    const { chat, sockets } = await connected();
    const { clientId, accepted: ack } = chat.send("hello", { conversationId: C });
    await until(() => sockets[0].frames("message.create").length === 1, "the first send");
    assert.deepEqual(sockets[0].frames("message.create")[0], {
      type: "message.create",
      client_id: clientId,
      content: "hello",
      conversation_id: C,
    });
    sockets[0].drop(1006); // lost before the acknowledgement
    assert.equal(chat.state, "reconnecting");
    await reconnected(sockets, 2);
    await until(() => sockets[1].frames("message.create").length === 1, "the re-send");
    assert.equal(sockets[1].frames("message.create")[0].client_id, clientId);
    sockets[1].push(accepted("hello", clientId));
    const detail = await ack;
    assert.equal(detail.generationId, G);
    // the reply may have begun on the first connection: replayed from the start
    const replay = sockets[1].frames("conversation.subscribe").find((f) => f.generation_id === G);
    assert.deepEqual(replay, { type: "conversation.subscribe", conversation_id: C, generation_id: G, offset: 0 });
    assert.deepEqual(chat.pending, []);
    // acknowledged: never sent again
    sockets[1].drop(1001);
    await reconnected(sockets, 3);
    await until(() => sockets[2].frames("conversation.subscribe").length > 0, "the resubscribe");
    assert.deepEqual(sockets[2].frames("message.create"), []);
  });

  test("a message the server closed the connection for (1009) fails and is never re-sent", async () => {
    const { chat, sockets, events } = await connected();
    const big = chat.send("b".repeat(5000), { conversationId: C });
    const small = chat.send("small", { conversationId: C });
    await until(() => sockets[0].frames("message.create").length === 2, "both sends");
    sockets[0].drop(1009, "message too big");
    await assert.rejects(big.accepted, (error) => {
      assert.equal(error.code, "too_large");
      assert.equal(error.limit.name, "frame_bytes");
      assert.ok(error.limit.size > 5000);
      return true;
    });
    assert.ok(events.some((e) => e.event === "error" && e.clientId === big.clientId));
    await reconnected(sockets, 2);
    await until(() => sockets[1].frames("message.create").length === 1, "the re-send");
    // only the message that fits is re-sent; the refused one never again
    assert.equal(sockets[1].frames("message.create")[0].client_id, small.clientId);
    assert.deepEqual(
      chat.pending.map((p) => p.clientId),
      [small.clientId]
    );
  });

  test("a large message whose connection dies abnormally twice fails; a small one is re-sent", async () => {
    const { chat, sockets } = await connected();
    const big = chat.send("b".repeat(100 * 1024), { conversationId: C });
    const small = chat.send("small", { conversationId: C });
    await until(() => sockets[0].frames("message.create").length === 2, "both sends");
    sockets[0].drop(1006); // the server's 1009 lost to a reset: nothing said about size
    await reconnected(sockets, 2);
    await until(() => sockets[1].frames("message.create").length === 2, "one blind re-send of each");
    sockets[1].drop(1006);
    await assert.rejects(big.accepted, { code: "too_large" });
    await reconnected(sockets, 3);
    await until(() => sockets[2].frames("message.create").length === 1, "the small one again");
    // the big one was sent twice, never a third time; the small one keeps its place
    assert.equal(sockets[2].frames("message.create")[0].client_id, small.clientId);
    assert.deepEqual(
      chat.pending.map((p) => p.clientId),
      [small.clientId]
    );
  });

  test("an error frame too_large fails the message; a reconnect does not re-send it", async () => {
    const { chat, sockets } = await connected();
    const sent = chat.send("too long for the server", { conversationId: C });
    await until(() => sockets[0].frames("message.create").length === 1, "the send");
    sockets[0].push({ type: "error", code: "too_large", message: "content too long", ref: sent.clientId });
    await assert.rejects(sent.accepted, { code: "too_large" });
    sockets[0].drop(1006);
    await reconnected(sockets, 2);
    await until(() => sockets[1].frames("conversation.subscribe").length > 0, "the resubscribe");
    assert.deepEqual(sockets[1].frames("message.create"), []);
  });

  test("a gap is filled by generation.resume from what is held; a reconnect resumes by offset", async () => {
    const { chat, sockets, events } = await connected({
      [`GET /api/v1/conversations/${C}/messages`]: () => ({ body: pageWithRunningReply(C, G, "Hello") }),
    });
    const page = await chat.openConversation(C);
    assert.equal(page.items[1].content, "Hello");
    // following the conversation resumes the running reply from the 5 code points held
    assert.deepEqual(sockets[0].frames("conversation.subscribe"), [
      { type: "conversation.subscribe", conversation_id: C, generation_id: G, offset: 5 },
    ]);
    sockets[0].push({ type: "generation.delta", generation_id: G, offset: 5, text: " wor" });
    assert.equal(chat.generation(G).content, "Hello wor");
    // text 9..12 never came
    sockets[0].push({ type: "generation.delta", generation_id: G, offset: 12, text: "xyz" });
    sockets[0].push({ type: "generation.delta", generation_id: G, offset: 15, text: "!" });
    assert.deepEqual(sockets[0].frames("generation.resume"), [
      { type: "generation.resume", generation_id: G, offset: 9 }, // asked once, from what is held
    ]);
    assert.equal(chat.generation(G).content, "Hello wor");
    sockets[0].push({ type: "generation.delta", generation_id: G, offset: 9, text: "ld!xyz!" });
    assert.equal(chat.generation(G).content, "Hello world!xyz!");
    assert.deepEqual(
      events.filter((e) => e.event === "delta").map((e) => [e.offset, e.text]),
      [
        [5, " wor"],
        [9, "ld!xyz!"],
      ]
    );
    // the connection drops: the new one resumes from the 16 code points held
    sockets[0].drop(1006);
    await reconnected(sockets, 2);
    await until(() => sockets[1].frames("conversation.subscribe").length === 1, "the resubscribe");
    assert.deepEqual(sockets[1].frames("conversation.subscribe")[0], {
      type: "conversation.subscribe",
      conversation_id: C,
      generation_id: G,
      offset: 16,
    });
    sockets[1].push({
      type: "generation.completed",
      generation_id: G,
      message: { conversation_id: C, content: "Hello world!xyz!" },
    });
    assert.equal(chat.generation(G), null);
    const ended = events.find((e) => e.event === "generation" && e.type === "completed");
    assert.equal(ended.generationId, G);
    assert.equal(ended.content, "Hello world!xyz!");
  });

  test("a socket that never answers falls back to SSE when HTTP works", async () => {
    const api = fakeApi();
    const { FakeWebSocket, sockets } = fakeWebSockets();
    const chat = new ChatClient({
      baseUrl: "http://chat.test",
      fetch: api.fetch,
      WebSocket: FakeWebSocket,
      EventSource: class {},
      backoffInitialMs: 1,
    });
    clients.push(chat);
    const fallbacks = [];
    chat.addEventListener("fallback", (e) => fallbacks.push(e.detail));
    chat.connect();
    await until(() => sockets.length === 1, "the first socket");
    sockets[0].drop(1006); // the upgrade failed
    await until(() => sockets.length === 2, "the second try, at once");
    sockets[1].drop(1006);
    await until(() => chat.state === "open", "open over SSE");
    assert.equal(chat.transport, "sse");
    assert.deepEqual(fallbacks, [{ from: "websocket", to: "sse" }]);
    assert.equal(api.made("GET /healthz").length, 1);
  });
});

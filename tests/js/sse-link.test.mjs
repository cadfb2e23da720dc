// links/sse.js, through the public ChatClient, against a stand-in
// EventSource and fetch handed to its constructor.
import assert from "node:assert/strict";
import { afterEach, describe, test } from "node:test";

import { ChatClient } from "../../sanic_chat/web/sanic-chat.js";
import { fakeApi, fakeEventSources, pageWithRunningReply, until } from "./fakes.mjs";

const C = "c-1";
const G = "g-1";
const EVENTS = `/api/v1/conversations/${C}/events`;
const MESSAGES = `/api/v1/conversations/${C}/messages`;

/** @type {ChatClient[]} */
const clients = [];
afterEach(() => {
  for (const chat of clients.splice(0)) chat.close();
});

/** A client on the SSE link (`transport: "sse"`), open with nothing followed yet. */
async function connected(routes = {}) {
  const api = fakeApi({
    [`GET /api/v1/conversations/${C}`]: () => ({ body: { id: C, title: null } }),
    ...routes,
  });
  const { FakeEventSource, sources } = fakeEventSources();
  const chat = new ChatClient({
    baseUrl: "http://chat.test",
    transport: "sse",
    fetch: api.fetch,
    EventSource: FakeEventSource,
    backoffInitialMs: 1,
    backoffMaxMs: 2,
    openTimeoutMs: 2000,
  });
  clients.push(chat);
  chat.connect();
  await until(() => chat.state === "open", "open");
  assert.equal(chat.transport, "sse");
  return { chat, api, sources };
}

// a client that never settles a promise fails here rather than hanging the run
describe("SSE link", { timeout: 10_000 }, () => {
  test("the stream opens from the offset held, and reopens from the offset held after a failure", async () => {
    const { chat, sources } = await connected({
      [`GET ${MESSAGES}`]: () => ({ body: pageWithRunningReply(C, G, "Hello") }),
    });
    await chat.openConversation(C);
    await until(() => sources.length === 1, "the stream");
    assert.equal(sources[0].url.pathname, EVENTS);
    assert.equal(sources[0].lastEventId, `${G}:5`);
    sources[0].open();
    sources[0].emit({ type: "generation.delta", generation_id: G, offset: 5, text: " world 🙂" });
    assert.equal(chat.generation(G).length, 13);
    sources[0].fail(); // the stream dropped
    assert.equal(sources[0].closed, true);
    await until(() => sources.length === 2, "the stream reopened");
    assert.equal(sources[1].lastEventId, `${G}:13`);
    sources[1].open();
    sources[1].emit({ type: "generation.delta", generation_id: G, offset: 0, text: "Hello world 🙂!" });
    assert.equal(chat.generation(G).content, "Hello world 🙂!");
  });

  test("a gap reopens the stream at once from what is held (an EventSource cannot ask)", async () => {
    const { chat, sources } = await connected({
      [`GET ${MESSAGES}`]: () => ({ body: pageWithRunningReply(C, G, "Hello") }),
    });
    await chat.openConversation(C);
    await until(() => sources.length === 1, "the stream");
    sources[0].open();
    sources[0].emit({ type: "generation.delta", generation_id: G, offset: 9, text: "later" });
    assert.equal(sources[0].closed, true);
    assert.equal(chat.generation(G).content, "Hello");
    await until(() => sources.length === 2, "the stream reopened");
    assert.equal(sources[1].lastEventId, `${G}:5`);
  });

  test("a POST that did not get through is kept and re-sent with the same client_id", async () => {
    let posts = 0;
    const { chat, api, sources } = await connected({
      [`GET ${MESSAGES}`]: () => ({ body: { items: [], next_before: null } }),
      [`POST ${MESSAGES}`]: ({ body }) => {
        posts++;
        if (posts === 1) return new TypeError("Failed to fetch"); // the network failed
        return {
          status: 201,
          body: {
            conversation_id: C,
            generation_id: G,
            message: { id: "m-1", conversation_id: C, role: "user", content: body.content },
          },
        };
      },
    });
    await chat.openConversation(C);
    await until(() => sources.length === 1, "the stream");
    sources[0].open();
    const { clientId, accepted } = chat.send("hello");
    await until(() => posts === 1, "the first POST");
    assert.deepEqual(
      chat.pending.map((p) => p.clientId),
      [clientId]
    );
    // kept, and re-sent soon (1 to 2 s) on the same stream
    const detail = await accepted;
    assert.equal(detail.generationId, G);
    const bodies = api.made(`POST ${MESSAGES}`).map((call) => call.body);
    assert.deepEqual(bodies, [
      { client_id: clientId, content: "hello" },
      { client_id: clientId, content: "hello" },
    ]);
  });

  test("a message refused for size (413) fails, is never re-sent, and its new conversation is deleted", async () => {
    const { chat, api, sources } = await connected({
      "POST /api/v1/conversations": () => ({ status: 201, body: { id: C, title: null } }),
      [`GET ${MESSAGES}`]: () => ({ body: { items: [], next_before: null } }),
      [`POST ${MESSAGES}`]: () => ({ status: 413, body: { error: { code: "too_large", message: "too big" } } }),
      [`DELETE /api/v1/conversations/${C}`]: () => ({ status: 204 }),
    });
    const discarded = [];
    chat.addEventListener("discarded", (e) => discarded.push(e.detail));
    const sent = chat.send("x".repeat(2000)); // a new conversation: created first over SSE
    await until(() => sources.length === 1, "the stream of the new conversation");
    sources[0].open();
    await assert.rejects(sent.accepted, (error) => error.code === "too_large" && error.status === 413);
    assert.deepEqual(discarded, [{ conversationId: C, clientId: sent.clientId }]);
    await until(() => api.made(`DELETE /api/v1/conversations/${C}`).length === 1, "the delete");
    assert.equal(chat.conversationId, null);
    // a reconnect sends what waits: nothing
    chat.reconnectNow();
    await until(() => chat.state === "open", "open again");
    assert.equal(api.made(`POST ${MESSAGES}`).length, 1);
    assert.deepEqual(chat.pending, []);
  });
});

// Minimal stand-ins for what the browser client talks to, handed to
// `new ChatClient({fetch, WebSocket, EventSource})` (its constructor takes
// them; no global is replaced):
// - `fakeWebSockets()`: a WebSocket class whose sockets a test drives from the
//   server's side (accept, push a frame, drop with a close code);
// - `fakeEventSources()`: an EventSource class, driven the same way;
// - `fakeApi(routes)`: a `fetch` answering "METHOD /path" from a table.
// `until(predicate)` waits for the client's asynchronous steps.

/** Wait until `predicate()` holds (the client's steps are promises and timers). */
export async function until(predicate, what = "the condition", limitMs = 3000) {
  const start = Date.now();
  while (!predicate()) {
    if (Date.now() - start > limitMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 1));
  }
}

export function fakeWebSockets() {
  /** @type {FakeWebSocket[]} every socket the client opened, in order */
  const sockets = [];

  class FakeWebSocket {
    constructor(url) {
      this.url = new URL(url);
      this.readyState = 0;
      /** frames the client sent, decoded */
      this.sent = [];
      /** the client's close(code, reason), if it closed it */
      this.closedWith = null;
      this.onopen = this.onmessage = this.onclose = this.onerror = null;
      sockets.push(this);
    }

    send(data) {
      if (this.readyState !== 1) throw new Error("InvalidStateError: not open");
      this.sent.push(JSON.parse(data));
    }

    close(code = 1000, reason = "") {
      if (this.readyState >= 2) return;
      this.readyState = 3;
      this.closedWith = { code, reason };
      const onclose = this.onclose;
      // a browser reports the close later; the client must ignore it by then
      queueMicrotask(() => onclose?.({ code, reason }));
    }

    /** The server's side: the upgrade succeeds (the client then pings). */
    accept() {
      this.readyState = 1;
      this.onopen?.({});
    }

    /** Accept and answer the client's first ping: the connection counts as open. */
    answer() {
      this.accept();
      this.push({ type: "pong" });
    }

    /** The server sends a frame. */
    push(frame) {
      this.onmessage?.({ data: JSON.stringify(frame) });
    }

    /** The connection ends with `code` (1006: dropped without a close frame). */
    drop(code = 1006, reason = "") {
      this.readyState = 3;
      this.onclose?.({ code, reason });
    }

    /** Frames of one type the client sent. */
    frames(type) {
      return this.sent.filter((frame) => frame.type === type);
    }
  }

  return { FakeWebSocket, sockets };
}

export function fakeEventSources() {
  /** @type {FakeEventSource[]} every stream the client opened, in order */
  const sources = [];

  class FakeEventSource {
    constructor(url) {
      this.url = new URL(url);
      this.closed = false;
      this.onopen = null;
      this.listeners = new Map();
      sources.push(this);
    }

    addEventListener(type, listener) {
      if (!this.listeners.has(type)) this.listeners.set(type, []);
      this.listeners.get(type).push(listener);
    }

    close() {
      this.closed = true;
    }

    /** The server's side: the stream is open. */
    open() {
      this.onopen?.({});
    }

    /** The server sends an event named after its type, the frame as data. */
    emit(frame) {
      for (const listener of this.listeners.get(frame.type) || []) listener({ data: JSON.stringify(frame) });
    }

    /** The stream itself fails: an `error` event with no data. */
    fail() {
      for (const listener of this.listeners.get("error") || []) listener({});
    }

    /** The resume point it was opened with (`last_event_id`), or null. */
    get lastEventId() {
      return this.url.searchParams.get("last_event_id");
    }
  }

  return { FakeEventSource, sources };
}

/**
 * A `fetch` answering from `routes`: "METHOD /path" -> a function of
 * `{body, query}` returning `{status, body}`, or an Error to throw (the
 * network failed). `GET /api/v1/models` (no limits) and `GET /healthz` answer
 * by default; anything else is 404.
 */
export function fakeApi(routes = {}) {
  const calls = [];
  const table = {
    "GET /api/v1/models": () => ({ body: { default: "demo", items: [] } }),
    "GET /healthz": () => ({ body: { status: "ok" } }),
    ...routes,
  };
  async function fetch(url, init = {}) {
    const u = new URL(url);
    const method = init.method || "GET";
    const body = init.body === undefined ? undefined : JSON.parse(init.body);
    calls.push({ method, path: u.pathname, body });
    const route = table[`${method} ${u.pathname}`];
    const answer = route
      ? await route({ body, query: u.searchParams })
      : { status: 404, body: { error: { code: "not_found", message: "not found" } } };
    if (answer instanceof Error) throw answer;
    const status = answer.status ?? 200;
    return new Response(status === 204 ? null : JSON.stringify(answer.body ?? {}), {
      status,
      headers: { "Content-Type": "application/json" },
    });
  }
  /** The calls made to "METHOD /path". */
  const made = (key) => calls.filter((call) => `${call.method} ${call.path}` === key);
  return { fetch, calls, made };
}

/** A history page holding one reply still being written. */
export function pageWithRunningReply(conversationId, generationId, content) {
  return {
    items: [
      { id: "u-1", conversation_id: conversationId, role: "user", content: "hi", status: "complete" },
      {
        id: generationId,
        conversation_id: conversationId,
        role: "assistant",
        content,
        status: "streaming",
        reply_to: "u-1",
      },
    ],
    next_before: null,
  };
}

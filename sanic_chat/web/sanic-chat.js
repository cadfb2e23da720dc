/**
 * sanic-chat.js: the browser client for the sanic-chat wire protocol v1.
 *
 * One ES module, no dependencies, no build step. `ChatClient` is an
 * EventTarget; see docs/client.md for the whole API. In short:
 *
 *   import { ChatClient } from "/static/sanic-chat.js";
 *   const chat = new ChatClient();
 *   chat.addEventListener("delta", (e) => render(e.detail.generationId, e.detail.content));
 *   chat.connect();
 *   const page = await chat.openConversation(id);          // history + live tail
 *   const { accepted } = chat.send("Hello", { conversationId: id });
 *
 * Invariants this module keeps:
 * - Offsets count Unicode code points (Python `len(str)`), never UTF-16 units,
 *   so that the server and this client agree on where a piece of text starts.
 * - A reply's text is kept per generation as one string that only ever grows
 *   by appending exactly the code points after what it has: replays, resumes
 *   and duplicate deliveries can never show text twice, and a gap is repaired
 *   by reconnecting and resuming from what it has.
 * - A message is sent with a client-made `client_id` and re-sent with the same
 *   id until the server acknowledges it (`message.accepted`): the server never
 *   stores it twice.
 * - A dropped connection never loses a reply: after reconnecting, every reply
 *   still running is resumed from the offset the client already has.
 */

import { applyDelta, codePointLength, dropCodePoints } from "./offsets.js";

export const PROTOCOL_VERSION = 1;

const TERMINAL_TYPES = new Set([
  "generation.completed",
  "generation.cancelled",
  "generation.failed",
]);

/** Server event types; SSE names its events after them. */
const SERVER_TYPES = [
  "message.accepted",
  "generation.started",
  "generation.delta",
  ...TERMINAL_TYPES,
  "error",
  "pong",
];

/** Error codes after which re-sending the same message may succeed. */
const TRANSIENT_CODES = new Set(["network", "unavailable", "internal"]);

/** Close code this client uses to drop a connection it no longer trusts. */
const CLOSE_RESYNC = 4001;

// ------------------------------------------------------------------ code points

export { codePointLength, dropCodePoints };

/** A v4 UUID; `crypto.randomUUID` only exists in secure contexts. */
export function uuid4() {
  if (globalThis.crypto?.randomUUID) {
    try {
      return crypto.randomUUID();
    } catch {
      /* not a secure context: fall through */
    }
  }
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

// ------------------------------------------------------------------ errors

/** Every failure this client reports: a stable `code` (the protocol's error
 * codes, plus `network`), a human `message`, and the HTTP `status` or the
 * `ref` (client_id / generation_id) when there is one. */
export class ChatError extends Error {
  /**
   * @param {string} code
   * @param {string} message
   * @param {{status?: number|null, ref?: string|null, cause?: unknown, limit?: SizeLimit|null}} [details]
   */
  constructor(code, message, { status = null, ref = null, cause, limit = null } = {}) {
    super(message, cause ? { cause } : undefined);
    this.name = "ChatError";
    this.code = code;
    this.status = status;
    this.ref = ref;
    /** for `too_large`: which limit, how much is allowed, how much was tried */
    this.limit = limit;
  }
}

/**
 * @typedef {object} SizeLimit
 * @property {"content_chars"|"frame_bytes"|"body_bytes"} name
 * @property {number|null} max what the server accepts (null: not known)
 * @property {number} size what the message has (code points or bytes)
 */

/**
 * @typedef {object} Limits the server's size limits (`GET /api/v1/models`)
 * @property {number} max_content_chars code points in one message
 * @property {number} max_frame_bytes bytes in one WebSocket frame
 * @property {number} max_body_bytes bytes in one HTTP request body
 */

/** WebSocket close code of a frame larger than the server accepts. */
const CLOSE_TOO_BIG = 1009;

/** A UUID's length: what a `conversation_id` adds to a frame at most. */
const UUID_CHARS = 36;

/** UTF-8 length of `text` in bytes. */
function utf8Bytes(text) {
  return new TextEncoder().encode(text).length;
}

/** `n` with thousands separators, the same in every locale ("32,000"). */
function count(n) {
  return n.toLocaleString("en-US");
}

const HTTP_CODES = {
  400: "bad_request",
  401: "unauthorized",
  403: "unauthorized",
  404: "not_found",
  409: "conflict",
  413: "too_large",
  422: "validation_error",
  429: "rate_limited",
  503: "unavailable",
};

// ------------------------------------------------------------------ client

/**
 * Connection states (the `status` event's `state`):
 * - `idle`: not connected yet (`connect()` not called)
 * - `connecting`: the first connection is being opened
 * - `open`: connected; `transport` says over what (`websocket` or `sse`)
 * - `reconnecting`: the connection dropped; `retryInMs` says when it retries
 * - `offline`: the browser is offline; it reconnects when it comes back
 * - `unauthorized`: the server refused the token; call `setToken()`
 * - `closed`: `close()` was called
 */
export class ChatClient extends EventTarget {
  /**
   * @param {object} [options]
   * @param {string} [options.baseUrl] server origin (default: this page's)
   * @param {string|null} [options.token] a JWT for `SANIC_CHAT_AUTH=jwt`
   * @param {"auto"|"websocket"|"sse"} [options.transport] `auto`: WebSocket,
   *   falling back to SSE when WebSocket fails or is blocked
   * @param {number} [options.pingIntervalMs] application ping period (25 s)
   * @param {number} [options.pongTimeoutMs] drop a WebSocket silent this long after a ping
   * @param {number} [options.openTimeoutMs] a WebSocket not answering within this fails
   * @param {number} [options.wsFailuresBeforeSse] failed WebSocket opens before falling back
   * @param {number} [options.backoffInitialMs] first reconnect delay
   * @param {number} [options.backoffMaxMs] longest reconnect delay
   * @param {number} [options.historyPageSize] page size `openConversation` reads
   * @param {typeof globalThis.fetch} [options.fetch] for tests: a stand-in `fetch`
   * @param {typeof globalThis.WebSocket} [options.WebSocket] for tests: a stand-in `WebSocket`
   * @param {typeof globalThis.EventSource} [options.EventSource] for tests: a stand-in `EventSource`
   */
  constructor(options = {}) {
    super();
    this.options = {
      baseUrl: "",
      transport: "auto",
      pingIntervalMs: 25_000,
      pongTimeoutMs: 10_000,
      openTimeoutMs: 5_000,
      wsFailuresBeforeSse: 2,
      backoffInitialMs: 500,
      backoffMaxMs: 15_000,
      historyPageSize: 50,
      ...options,
    };
    this._token = options.token ?? null;
    this._fetch = options.fetch ?? globalThis.fetch.bind(globalThis);
    this._WebSocket = options.WebSocket ?? globalThis.WebSocket;
    this._EventSource = options.EventSource ?? globalThis.EventSource;

    /** @type {string} see the states above */
    this.state = "idle";
    /** @type {"websocket"|"sse"|null} */
    this.transport = null;
    /** @type {string|null} the conversation this client follows live */
    this.conversationId = null;

    this._mode = this.options.transport === "sse" ? "sse" : "websocket";
    this._wsFailures = 0;
    this._attempt = 0;
    this._everOpen = false;
    this._wasDown = false; // set when a connection is lost; the next open is a reconnect
    this._started = false;
    this._seq = 0; // bumps on every (re)connect: late callbacks of an old connection are ignored
    this._ws = null;
    this._es = null;
    this._esConversation = null;
    this._sseReady = null;
    this._timers = { retry: null, ping: null, open: null, unavailable: null };
    this._pingSentAt = 0;
    this._ticketsMissing = false;
    this._opening = new Map(); // conversation id -> in-flight openConversation

    /** generation id -> {id, conversationId, content, length, started} */
    this._gens = new Map();
    this._finished = new BoundedSet(1000);
    this._seenMessages = new BoundedSet(2000);
    /** client_id -> pending send, in sending order */
    this._pending = new Map();
    /** @type {Limits|null} the server's size limits, once known (see `listModels`) */
    this.limits = null;
    this._limitsAsked = false;
    /** @type {Promise<any>|null} a models request in flight (shared by callers) */
    this._modelsRequest = null;

    this._onOnline = () => (this.state === "open" ? this._probe() : this.reconnectNow());
    this._onOffline = () => this._goOffline();
    // a tab back from the background may hold a socket that died meanwhile
    this._onVisible = () => {
      if (document.visibilityState === "visible") this._probe();
    };
  }

  // ---------------------------------------------------------------- public API

  /** Open the connection (and keep it open, reconnecting as needed). */
  connect() {
    if (this._started) return;
    this._started = true;
    addEventListener("online", this._onOnline);
    addEventListener("offline", this._onOffline);
    globalThis.document?.addEventListener("visibilitychange", this._onVisible);
    this._open();
  }

  /** Close for good: no reconnect. Unacknowledged sends are rejected. */
  close() {
    this._started = false;
    removeEventListener("online", this._onOnline);
    removeEventListener("offline", this._onOffline);
    globalThis.document?.removeEventListener("visibilitychange", this._onVisible);
    this._dropTransport();
    for (const p of this._pending.values()) {
      p.reject(new ChatError("closed", "the client was closed before the server acknowledged"));
    }
    this._pending.clear();
    this._setState("closed", null);
  }

  /** Reconnect at once (e.g. a "Retry now" button), skipping the backoff wait. */
  reconnectNow() {
    if (!this._started) return;
    if (this.state === "open" && (this._ws || this._mode === "sse")) return;
    this._attempt = 0;
    this._dropTransport();
    this._open();
  }

  /** Set (or clear, with null) the JWT sent as `Authorization: Bearer`. */
  setToken(token) {
    this._token = token || null;
    this._ticketsMissing = false;
    if (this._started) {
      this._attempt = 0;
      this._dropTransport();
      this._open();
    }
  }

  get token() {
    return this._token;
  }

  /**
   * Make `conversationId` the one followed live, and return its newest page of
   * history (`{items, next_before}`, oldest first). A reply still running
   * (an assistant message with status `streaming`) is resumed from the code
   * points the page already holds; its item's content is the longest text
   * known. Pass `null` to follow none (a new, empty chat).
   * @param {string|null} conversationId
   * @param {{limit?: number}} [options]
   */
  async openConversation(conversationId, { limit } = {}) {
    const previous = this.conversationId;
    if (previous && previous !== conversationId && this._mode === "websocket" && this.state === "open") {
      // stop the previous conversation's events on this connection; its replies
      // keep running and are resumed by offset when it is opened again
      this._sendFrame({ type: "conversation.unsubscribe", conversation_id: previous });
    }
    this.conversationId = conversationId || null;
    if (this._mode === "sse" && this.state === "open" && this._esConversation !== this.conversationId) {
      // one stream follows one conversation; the new one opens once its
      // history says where a running reply stands
      this._seq++;
      this._closeEventSource();
    }
    if (!conversationId) return { items: [], next_before: null };
    const opening = this._loadAndFollow(conversationId, limit);
    this._opening.set(conversationId, opening);
    try {
      return await opening;
    } finally {
      if (this._opening.get(conversationId) === opening) this._opening.delete(conversationId);
    }
  }

  /**
   * Send a user message. Returns `{clientId, accepted}` at once; `accepted`
   * resolves with `{clientId, conversationId, message, generationId}` once the
   * server has committed it, or rejects with a ChatError. While disconnected
   * the message waits and is sent (and re-sent, with the same client_id) when
   * the connection is back.
   *
   * Without `conversationId` it starts a new conversation; with `title` that
   * conversation is created first (`POST /api/v1/conversations`) so it gets
   * the title. Over SSE a new conversation is always created that way.
   * @param {string} content
   * @param {{conversationId?: string|null, model?: string, title?: string}} [options]
   */
  send(content, { conversationId = this.conversationId, model, title } = {}) {
    if (typeof content !== "string" || !content.trim()) {
      throw new ChatError("validation_error", "a message needs some text");
    }
    const tooLarge = this.sizeProblem(content, { conversationId, model });
    if (tooLarge) throw tooLarge;
    const p = {
      clientId: uuid4(),
      content,
      conversationId: conversationId || null,
      model: model || undefined,
      title: title || undefined,
      sends: 0,
      busy: false,
      sentOn: null, // the connection (seq) it last went out on
      createdConversation: null, // the id of a conversation made for it
    };
    p.accepted = new Promise((resolve, reject) => {
      p.resolve = resolve;
      p.reject = reject;
    });
    p.accepted.catch(() => {}); // an unobserved rejection is not an error here
    this._pending.set(p.clientId, p);
    if (!this.conversationId && p.conversationId) this.conversationId = p.conversationId;
    this._dispatch(p);
    return { clientId: p.clientId, accepted: p.accepted };
  }

  /**
   * Why the server would refuse `content` for its size: a `too_large`
   * ChatError whose `limit` names the limit, or null. The limits are the
   * server's (`limits`, learnt from `GET /api/v1/models`); while they are not
   * known this says null and the server decides: a message it refuses for
   * size (`error` too_large, or a 1009 close) fails and is never re-sent.
   * @param {string} content
   * @param {{conversationId?: string|null, model?: string}} [options]
   * @returns {ChatError|null}
   */
  sizeProblem(content, { conversationId = this.conversationId, model } = {}) {
    const limits = this.limits;
    if (!limits) return null;
    const chars = codePointLength(content);
    const maxChars = limits.max_content_chars;
    if (maxChars && chars > maxChars) {
      return new ChatError(
        "too_large",
        `the message is ${count(chars)} characters long; the server accepts at most ${count(maxChars)}`,
        { limit: { name: "content_chars", max: maxChars, size: chars } }
      );
    }
    // as it would go out; the id of a conversation not made yet is as long as any
    const clientId = uuid4();
    if (this._mode === "websocket") {
      const frame = messageFrame(clientId, content, conversationId || "0".repeat(UUID_CHARS), model);
      const bytes = utf8Bytes(JSON.stringify(frame));
      const max = limits.max_frame_bytes;
      if (max && bytes > max) return frameTooLarge(bytes, max);
    } else {
      const bytes = utf8Bytes(JSON.stringify(clean({ client_id: clientId, content, model })));
      const max = limits.max_body_bytes;
      if (max && bytes > max) {
        return new ChatError(
          "too_large",
          `the message is too large to send: ${count(bytes)} bytes, the server accepts at most ${count(max)}`,
          { limit: { name: "body_bytes", max, size: bytes } }
        );
      }
    }
    return null;
  }

  /** Messages sent but not acknowledged yet (oldest first). */
  get pending() {
    return [...this._pending.values()].map(({ clientId, content, conversationId }) => ({
      clientId,
      content,
      conversationId,
    }));
  }

  /** Stop a running reply. Over WebSocket a frame, otherwise `POST .../cancel`. */
  async cancel(generationId) {
    if (this._ws && this.transport === "websocket" && this.state === "open") {
      this._sendFrame({ type: "generation.cancel", generation_id: generationId });
      return;
    }
    await this.request("POST", `/api/v1/generations/${encodeURIComponent(generationId)}/cancel`);
  }

  /** What this client holds of a reply: `{id, conversationId, content, length, done}`, or null. */
  generation(generationId) {
    const g = this._gens.get(generationId);
    if (!g) return null;
    return { id: g.id, conversationId: g.conversationId, content: g.content, length: g.length, done: false };
  }

  /** Replies this client follows that have not ended. */
  runningGenerations(conversationId = null) {
    return [...this._gens.values()]
      .filter((g) => !conversationId || g.conversationId === conversationId)
      .map((g) => this.generation(g.id));
  }

  // ---------------------------------------------------------------- REST

  /** One JSON request with the token; resolves with the body (null on 204). */
  async request(method, path, body) {
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (this._token) headers.Authorization = `Bearer ${this._token}`;
    let res;
    try {
      res = await this._fetch(this._url(path), {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: "no-store",
      });
    } catch (cause) {
      throw new ChatError("network", "the server could not be reached", { cause });
    }
    if (res.status === 204) return null;
    let data = null;
    try {
      data = await res.json();
    } catch {
      /* not JSON: described by the status below */
    }
    if (!res.ok) {
      const err = (data && data.error) || {};
      const code = err.code || HTTP_CODES[res.status] || (res.status >= 500 ? "internal" : "bad_request");
      const error = new ChatError(code, err.message || `HTTP ${res.status}`, { status: res.status });
      if (res.status === 401) this._unauthorized(error);
      throw error;
    }
    return data;
  }

  /** The configured models, `{default, items, limits}`; the server's size
   * limits are kept as `limits`. Callers at the same time share one request. */
  listModels() {
    if (!this._modelsRequest) {
      this._modelsRequest = this.request("GET", "/api/v1/models").then(
        (answer) => {
          this._modelsRequest = null;
          this._limitsAsked = true;
          if (answer && answer.limits) this.limits = answer.limits;
          return answer;
        },
        (error) => {
          this._modelsRequest = null;
          throw error;
        }
      );
    }
    return this._modelsRequest;
  }

  /** @param {{limit?: number, before?: string}} [page] */
  listConversations({ limit, before } = {}) {
    return this.request("GET", `/api/v1/conversations${query({ limit, before })}`);
  }

  /** @param {{title?: string, model?: string}} [fields] */
  createConversation({ title, model } = {}) {
    return this.request("POST", "/api/v1/conversations", clean({ title, model }));
  }

  getConversation(conversationId) {
    return this.request("GET", `/api/v1/conversations/${encodeURIComponent(conversationId)}`);
  }

  deleteConversation(conversationId) {
    if (this.conversationId === conversationId) this.openConversation(null);
    return this.request("DELETE", `/api/v1/conversations/${encodeURIComponent(conversationId)}`);
  }

  /** A page of history, oldest first: `{items, next_before}`; pass `before` to page back.
   * @param {string} conversationId
   * @param {{limit?: number, before?: string}} [page] */
  listMessages(conversationId, { limit, before } = {}) {
    const id = encodeURIComponent(conversationId);
    return this.request("GET", `/api/v1/conversations/${id}/messages${query({ limit, before })}`);
  }

  // ---------------------------------------------------------------- events out

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  _setState(state, transport, extra = {}) {
    const changed = state !== this.state || transport !== this.transport || extra.retryInMs !== undefined;
    this.state = state;
    this.transport = transport;
    if (changed) this._emit("status", { state, transport, attempt: this._attempt, ...extra });
  }

  _reportError(code, message, extra = {}) {
    this._emit("error", { code, message, ...extra });
  }

  // ---------------------------------------------------------------- connection

  _url(path) {
    return new URL(path, this.options.baseUrl || location.href).href;
  }

  async _open() {
    const seq = ++this._seq;
    this._clearTimer("retry");
    if (!this._started) return;
    if (globalThis.navigator && navigator.onLine === false) {
      this._goOffline();
      return;
    }
    this._setState(this._everOpen ? "reconnecting" : "connecting", null);
    if (this._mode === "websocket") await this._openWebSocket(seq);
    else await this._openSse(seq, { refresh: this._wasDown });
  }

  /** A one-time ticket for `/ws` and SSE (browsers cannot send headers there). */
  async _ticket() {
    if (!this._token || this._ticketsMissing) return null;
    try {
      const answer = await this.request("POST", "/api/v1/tickets");
      return (answer && answer.ticket) || null;
    } catch (error) {
      if (error.status === 404 || error.status === 405) {
        this._ticketsMissing = true; // an older server: try without one
        return null;
      }
      throw error;
    }
  }

  async _openWebSocket(seq) {
    let ticket;
    try {
      ticket = await this._ticket();
    } catch (error) {
      if (seq === this._seq) this._failed(seq, error);
      return;
    }
    if (seq !== this._seq) return;
    const url = new URL("/ws", this._url("/"));
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    if (ticket) url.searchParams.set("ticket", ticket);
    let ws;
    try {
      ws = new this._WebSocket(url.href);
    } catch (error) {
      this._wsFailed(seq);
      return;
    }
    this._ws = ws;
    let verified = false;
    // open is not enough: a proxy may accept the upgrade and pass nothing.
    // The connection counts once the server has answered the first ping.
    this._timers.open = setTimeout(() => {
      if (seq !== this._seq || verified) return;
      detach(ws, "no answer");
      this._wsFailed(seq);
    }, this.options.openTimeoutMs);
    ws.onopen = () => {
      if (seq === this._seq) ws.send(JSON.stringify({ type: "ping" }));
    };
    ws.onmessage = (event) => {
      if (seq !== this._seq) return;
      this._pingSentAt = 0;
      if (!verified) {
        verified = true;
        this._clearTimer("open");
        this._wsFailures = 0;
        this._connected(seq, "websocket");
      }
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch {
        return;
      }
      this._onFrame(frame);
    };
    ws.onerror = () => {}; // a close event always follows
    ws.onclose = (event) => {
      if (seq !== this._seq) return;
      this._clearTimer("open");
      this._clearTimer("ping");
      this._ws = null;
      if (!verified) {
        this._wsFailed(seq);
        return;
      }
      // a frame too big: the message in it fails (it would be refused again)
      if (event.code === CLOSE_TOO_BIG) this._frameRefused(seq);
      // 1000 only when we closed it; 1001 server going away; 4008 too slow: all resume by offset
      this._scheduleReconnect({ code: event.code, reason: event.reason });
    };
  }

  async _wsFailed(seq) {
    if (seq !== this._seq) return;
    this._ws = null;
    this._wsFailures++;
    if (this.options.transport !== "auto") {
      this._scheduleReconnect({});
      return;
    }
    if (this._wsFailures < this.options.wsFailuresBeforeSse) {
      if (!this._everOpen) this._open(); // the second try comes at once: fall back quickly
      else this._scheduleReconnect({});
      return;
    }
    // WebSocket keeps failing. If plain HTTP works, something on the path
    // blocks WebSocket: SSE from now on. If not, the server is down: wait.
    if (!(await this._httpWorks()) || seq !== this._seq) {
      if (seq === this._seq) this._scheduleReconnect({});
      return;
    }
    this._mode = "sse";
    this._attempt = 0;
    this._emit("fallback", { from: "websocket", to: "sse" });
    this._open();
  }

  async _httpWorks() {
    try {
      const res = await this._fetch(this._url("/healthz"), { cache: "no-store" });
      return res.ok;
    } catch {
      return false;
    }
  }

  /** Open the event stream of the followed conversation (SSE mode). */
  async _openSse(seq, { refresh = false } = {}) {
    if (seq !== this._seq) return;
    const conversationId = this.conversationId;
    if (!conversationId) {
      // nothing to follow yet: SSE is "open" as long as HTTP works
      if (!refresh || (await this._httpWorks())) {
        if (seq === this._seq) this._connected(seq, "sse");
      } else if (seq === this._seq) {
        this._scheduleReconnect({});
      }
      return;
    }
    // known at once, so a send waits for this stream rather than opening another
    this._esConversation = conversationId;
    /** @type {(ready: boolean) => void} */
    let resolveReady = () => {};
    this._sseReady = new Promise((resolve) => (resolveReady = resolve));
    const stale = () => {
      if (seq === this._seq && this.conversationId === conversationId) return false;
      resolveReady(false);
      // the app switched conversations while this one was opening: open that one
      if (seq === this._seq) this._openSse(seq);
      return true;
    };
    if (refresh && !this._opening.has(conversationId) && !this._runningIn(conversationId).length) {
      // a reconnect with no reply known running: one may have started meanwhile
      await this._refresh(conversationId, seq, { follow: false });
      if (stale()) return;
    }
    let ticket;
    try {
      ticket = await this._ticket();
    } catch (error) {
      resolveReady(false);
      this._failed(seq, error);
      return;
    }
    if (stale()) return;
    const url = new URL(
      `/api/v1/conversations/${encodeURIComponent(conversationId)}/events`,
      this._url("/")
    );
    if (ticket) url.searchParams.set("ticket", ticket);
    const [running] = this._runningIn(conversationId);
    if (running) url.searchParams.set("last_event_id", `${running.id}:${running.length}`);
    const es = new this._EventSource(url.href);
    this._es = es;
    es.onopen = () => {
      if (seq !== this._seq) return;
      resolveReady(true);
      this._connected(seq, "sse");
    };
    for (const type of SERVER_TYPES) {
      es.addEventListener(type, (event) => {
        if (seq !== this._seq) return;
        if (type === "error" && !(typeof event.data === "string" && event.data)) {
          // not the server's `error` frame: the stream itself failed
          es.close();
          if (this._es === es) this._closeEventSource();
          resolveReady(false);
          this._sseFailed(seq, conversationId);
          return;
        }
        let frame;
        try {
          frame = JSON.parse(event.data);
        } catch {
          return;
        }
        this._onFrame(frame);
      });
    }
  }

  async _sseFailed(seq, conversationId) {
    // An EventSource error says nothing about why: ask the API.
    try {
      await this.getConversation(conversationId);
    } catch (error) {
      if (seq !== this._seq) return;
      if (error.code === "not_found") {
        this._reportError("not_found", "this conversation no longer exists", { conversationId });
        if (this.conversationId === conversationId) this.conversationId = null;
        this._connected(seq, "sse");
        return;
      }
      if (error.code === "unauthorized") return; // _unauthorized set the state
      this._scheduleReconnect({});
      return;
    }
    if (seq !== this._seq) return;
    if (this._token && this._ticketsMissing) {
      this._reportError(
        "tickets_unavailable",
        "this server needs a ticket to stream (POST /api/v1/tickets) but offers none"
      );
    }
    this._scheduleReconnect({});
  }

  _failed(seq, error) {
    if (seq !== this._seq) return;
    if (error && error.code === "unauthorized") return;
    this._scheduleReconnect({ error });
  }

  _connected(seq, transport) {
    const reconnect = this._wasDown;
    this._wasDown = false;
    this._everOpen = true;
    this._attempt = 0;
    this._setState("open", transport);
    if (transport === "websocket") this._startPing();
    // the size limits, so that a message too large is refused before it is sent
    if (!this.limits && !this._limitsAsked) this.listModels().catch(() => {});
    this._resubscribe(seq, reconnect);
    for (const p of this._pending.values()) this._dispatch(p);
  }

  /** @param {{code?: number, reason?: string, error?: unknown}} [why] */
  _scheduleReconnect({ code } = {}) {
    if (!this._started || this.state === "unauthorized") return;
    this._dropTransport();
    this._wasDown = true;
    if (globalThis.navigator && navigator.onLine === false) {
      this._goOffline();
      return;
    }
    const immediate = code === 4008 || code === CLOSE_RESYNC;
    const base = Math.min(
      this.options.backoffMaxMs,
      this.options.backoffInitialMs * 2 ** Math.min(this._attempt, 10)
    );
    const delay = immediate && this._attempt === 0 ? 0 : Math.round(base * (0.5 + Math.random() / 2));
    this._attempt++;
    this._setState("reconnecting", null, { retryInMs: delay });
    this._timers.retry = setTimeout(() => this._open(), delay);
  }

  _goOffline() {
    if (!this._started) return;
    this._dropTransport();
    this._wasDown = true;
    this._setState("offline", null);
  }

  _unauthorized(error) {
    if (!this._started) return;
    this._dropTransport();
    this._wasDown = true;
    this._setState("unauthorized", null, { message: error.message });
  }

  _dropTransport() {
    this._seq++;
    for (const name of Object.keys(this._timers)) this._clearTimer(name);
    if (this._ws) {
      const ws = this._ws;
      this._ws = null;
      try {
        ws.close(1000, "client reconnecting");
      } catch {
        /* already closed */
      }
    }
    this._closeEventSource();
  }

  _closeEventSource() {
    if (this._es) {
      this._es.close();
      this._es = null;
    }
    this._esConversation = null;
    this._sseReady = null;
  }

  _clearTimer(name) {
    if (this._timers[name]) {
      clearTimeout(this._timers[name]);
      clearInterval(this._timers[name]);
      this._timers[name] = null;
    }
  }

  _startPing() {
    this._clearTimer("ping");
    this._pingSentAt = 0;
    this._timers.ping = setInterval(() => this._probe(), this.options.pingIntervalMs);
  }

  /** Application ping: keeps proxies from closing an idle socket, and finds a
   * half-open one (no answer within pongTimeoutMs: reconnect and resume). Any
   * frame from the server counts as the answer. */
  _probe() {
    if (!this._ws || this.transport !== "websocket" || this._pingSentAt) return;
    const seq = this._seq;
    this._pingSentAt = performance.now();
    this._sendFrame({ type: "ping" });
    setTimeout(() => {
      if (seq === this._seq && this._pingSentAt && this._ws) this._abandonWebSocket("no pong");
    }, this.options.pongTimeoutMs);
  }

  /** Give up on the socket now (a dead one may take long to report its close)
   * and reconnect at once, resuming by offset. */
  _abandonWebSocket(reason) {
    detach(this._ws, reason);
    this._ws = null;
    this._scheduleReconnect({ code: CLOSE_RESYNC });
  }

  _sendFrame(frame) {
    if (!this._ws || this._ws.readyState !== 1) return false;
    this._ws.send(JSON.stringify(frame));
    return true;
  }

  // ---------------------------------------------------------------- following

  _runningIn(conversationId) {
    return [...this._gens.values()].filter((g) => g.conversationId === conversationId);
  }

  /** After (re)connecting: follow again every conversation with a reply running. */
  _resubscribe(seq, reconnect) {
    if (this._mode === "sse") {
      // the EventSource URL carried the resume point; refresh history only
      if (reconnect && this.conversationId && this._runningIn(this.conversationId).length) {
        this._refresh(this.conversationId, seq, { follow: false });
      }
      return;
    }
    const conversations = new Set();
    if (this.conversationId) conversations.add(this.conversationId);
    for (const g of this._gens.values()) if (g.conversationId) conversations.add(g.conversationId);
    for (const g of this._gens.values()) {
      if (!g.conversationId) {
        this._sendFrame({ type: "generation.resume", generation_id: g.id, offset: g.length });
      }
    }
    for (const conversationId of conversations) {
      if (this._opening.has(conversationId)) continue; // openConversation will follow it
      const running = this._runningIn(conversationId);
      if (running.length) {
        this._follow(conversationId, running);
        if (reconnect && conversationId === this.conversationId) {
          this._refresh(conversationId, seq, { follow: false });
        }
      } else if (reconnect && conversationId === this.conversationId) {
        this._refresh(conversationId, seq);
      } else {
        this._sendFrame({ type: "conversation.subscribe", conversation_id: conversationId });
      }
    }
  }

  /** Subscribe to a conversation, resuming each running reply from what we have. */
  _follow(conversationId, running = this._runningIn(conversationId)) {
    if (this.transport !== "websocket") return;
    const [first, ...rest] = running;
    const frame = { type: "conversation.subscribe", conversation_id: conversationId };
    if (first) Object.assign(frame, { generation_id: first.id, offset: first.length });
    this._sendFrame(frame);
    for (const g of rest) {
      this._sendFrame({ type: "generation.resume", generation_id: g.id, offset: g.length });
    }
  }

  /** Fetch the newest history page, take up any reply running in it, and tell
   * the app (`resync`) so it can show what happened while disconnected. */
  async _refresh(conversationId, seq, { follow = true } = {}) {
    let page;
    try {
      page = await this.listMessages(conversationId, { limit: this.options.historyPageSize });
    } catch (error) {
      if (error.code === "not_found" && this.conversationId === conversationId) {
        this.conversationId = null;
        this._reportError("not_found", "this conversation no longer exists", { conversationId });
      }
      if (follow && seq === this._seq) this._sendFrame({ type: "conversation.subscribe", conversation_id: conversationId });
      return;
    }
    this._adoptRunning(conversationId, page);
    if (follow && seq === this._seq) this._follow(conversationId);
    this._emit("resync", { conversationId, page });
  }

  async _loadAndFollow(conversationId, limit) {
    const page = await this.listMessages(conversationId, {
      limit: limit || this.options.historyPageSize,
    });
    this._adoptRunning(conversationId, page);
    if (this.conversationId === conversationId && this.state === "open") {
      if (this._mode === "sse") {
        if (this._esConversation !== conversationId) {
          this._closeEventSource();
          this._openSse(++this._seq);
        }
      } else {
        this._follow(conversationId);
      }
    }
    return page;
  }

  /** Track the replies a history page shows running; each item ends up with
   * the longest text known (the page or what this client already has). */
  _adoptRunning(conversationId, page) {
    for (const m of page.items || []) {
      this._seenMessages.add(m.id);
      if (m.role !== "assistant" || this._finished.has(m.id)) continue;
      const g = this._gens.get(m.id);
      if (m.status !== "streaming") {
        if (g) {
          // it ended while this client was not following it
          this._gens.delete(m.id);
          this._finished.add(m.id);
        }
        continue;
      }
      const length = codePointLength(m.content);
      if (g) g.conversationId = conversationId;
      if (!g) {
        this._gens.set(m.id, newGeneration(m.id, conversationId, m.content, length, true));
      } else if (length > g.length) {
        g.content = m.content;
        g.length = length;
      } else {
        m.content = g.content;
      }
    }
  }

  // ---------------------------------------------------------------- sending

  async _dispatch(p) {
    if (this.state !== "open" || p.busy || !this._pending.has(p.clientId)) return;
    // the limits may have come (or the transport changed) since send()
    const tooLarge = this.sizeProblem(p.content, { conversationId: p.conversationId, model: p.model });
    if (tooLarge) {
      this._sendFailed(p, tooLarge);
      return;
    }
    p.busy = true;
    try {
      if (!p.conversationId && (p.title || this._mode === "sse")) {
        const conversation = await this.createConversation({ title: p.title, model: p.model });
        p.conversationId = conversation.id;
        p.createdConversation = conversation.id;
        if (!this.conversationId) this.conversationId = conversation.id;
        this._emit("conversation", { conversation, clientId: p.clientId });
      }
      if (this._mode === "websocket") {
        const frame = messageFrame(p.clientId, p.content, p.conversationId, p.model);
        if (this._sendFrame(frame)) {
          p.sends++;
          p.sentOn = this._seq; // the connection it went out on (see _frameRefused)
        }
      } else {
        await this._postSse(p);
      }
    } catch (error) {
      this._sendFailed(p, error);
    } finally {
      p.busy = false;
    }
  }

  async _postSse(p) {
    const conversationId = p.conversationId;
    if (this.conversationId !== conversationId) {
      // an SSE stream follows one conversation: the one being written to
      await this.openConversation(conversationId);
    } else if (this._esConversation !== conversationId) {
      this._openSse(++this._seq);
    }
    // subscribe before posting, so no event of the reply is missed
    const ready = await Promise.race([
      this._sseReady || Promise.resolve(false),
      new Promise((resolve) => setTimeout(() => resolve(false), this.options.openTimeoutMs)),
    ]);
    if (!ready) throw new ChatError("network", "the event stream is not open");
    p.sends++;
    const answer = await this.request(
      "POST",
      `/api/v1/conversations/${encodeURIComponent(conversationId)}/messages`,
      clean({ client_id: p.clientId, content: p.content, model: p.model })
    );
    this._onAccepted({
      client_id: p.clientId,
      conversation_id: answer.conversation_id || conversationId,
      message: answer.message,
      generation_id: answer.generation_id,
    });
  }

  _sendFailed(p, error) {
    if (!this._pending.has(p.clientId)) return;
    if (TRANSIENT_CODES.has(error.code)) {
      // kept: re-sent with the same client_id (soon, or when the connection is back)
      this._retryPendingSoon();
      return;
    }
    this._pending.delete(p.clientId);
    error.ref = p.clientId;
    if (p.createdConversation) this._discardConversation(p);
    p.reject(error);
    this._reportError(error.code, error.message, { ref: p.clientId, clientId: p.clientId });
  }

  /** The server closed connection `seq` for a frame larger than it accepts
   * (1009). Only a message is ever that large: the largest one sent on that
   * connection and not acknowledged fails, since a re-send would be refused
   * again, on every reconnect, without end. The others are re-sent as after
   * any dropped connection. */
  _frameRefused(seq) {
    let culprit = null;
    let bytes = 0;
    for (const p of this._pending.values()) {
      if (p.sentOn !== seq) continue;
      const frame = messageFrame(p.clientId, p.content, p.conversationId, p.model);
      const size = utf8Bytes(JSON.stringify(frame));
      if (size > bytes) {
        culprit = p;
        bytes = size;
      }
    }
    if (culprit) this._sendFailed(culprit, frameTooLarge(bytes, this.limits ? this.limits.max_frame_bytes : null));
  }

  /** A conversation this client made for a message the server then refused
   * holds nothing: it is deleted (`discarded`), so that no empty conversation
   * is left behind; unless another message or reply of this client is in it. */
  _discardConversation(p) {
    const conversationId = p.createdConversation;
    p.createdConversation = null;
    for (const other of this._pending.values()) {
      if (other !== p && other.conversationId === conversationId) return;
    }
    if (this._runningIn(conversationId).length) return;
    if (this.conversationId === conversationId) this.openConversation(null);
    this._emit("discarded", { conversationId, clientId: p.clientId });
    const path = `/api/v1/conversations/${encodeURIComponent(conversationId)}`;
    this.request("DELETE", path).catch(() => {}); // if it fails, an empty conversation stays
  }

  _retryPendingSoon() {
    if (this._timers.unavailable) return;
    this._timers.unavailable = setTimeout(() => {
      this._timers.unavailable = null;
      for (const p of this._pending.values()) this._dispatch(p);
    }, 1000 + Math.random() * 1000);
  }

  // ---------------------------------------------------------------- frames in

  _onFrame(frame) {
    switch (frame.type) {
      case "message.accepted":
        this._onAccepted(frame);
        break;
      case "generation.started":
        this._onStarted(frame);
        break;
      case "generation.delta":
        this._onDelta(frame);
        break;
      case "generation.completed":
      case "generation.cancelled":
      case "generation.failed":
        this._onTerminal(frame);
        break;
      case "error":
        this._onErrorFrame(frame);
        break;
      default:
        break; // pong, and frame types added after v1
    }
  }

  _onAccepted(frame) {
    const p = this._pending.get(frame.client_id);
    const conversationId = frame.conversation_id;
    const generationId = frame.generation_id || null;
    if (p) {
      this._pending.delete(p.clientId);
      p.conversationId = conversationId;
      if (!this.conversationId) this.conversationId = conversationId;
    }
    if (generationId && !this._gens.has(generationId) && !this._finished.has(generationId)) {
      const g = newGeneration(generationId, conversationId);
      this._gens.set(generationId, g);
      // a re-sent message may have started its reply on an earlier connection
      if (p && p.sends > 1 && this._mode === "websocket") {
        const asked = this._sendFrame({
          type: "conversation.subscribe",
          conversation_id: conversationId,
          generation_id: generationId,
          offset: 0,
        });
        // live deltas ahead of this replay need no second request
        if (asked) g.restAsked = `${this._seq}:0`;
      }
    }
    const detail = { clientId: frame.client_id, conversationId, message: frame.message, generationId, own: !!p };
    if (p) p.resolve(detail);
    const seen = this._seenMessages.has(frame.message.id);
    this._seenMessages.add(frame.message.id);
    // once per message; one's own always (the app may hold it as "sending")
    if (p || !seen) this._emit("message", detail);
  }

  _gen(generationId, conversationId = null) {
    let g = this._gens.get(generationId);
    if (!g) {
      g = newGeneration(generationId, conversationId);
      this._gens.set(generationId, g);
    } else if (!g.conversationId && conversationId) {
      g.conversationId = conversationId;
    }
    return g;
  }

  _onStarted(frame) {
    if (this._finished.has(frame.generation_id)) return;
    const g = this._gen(frame.generation_id, frame.conversation_id);
    if (g.started) return;
    g.started = true;
    this._emit("generation", {
      type: "started",
      generationId: g.id,
      conversationId: g.conversationId,
      replyTo: frame.reply_to,
      model: frame.model,
      content: g.content,
    });
  }

  _onDelta(frame) {
    const id = frame.generation_id;
    if (this._finished.has(id) || typeof frame.text !== "string") return;
    const g = this._gen(id);
    const step = applyDelta(g.length, frame.offset, frame.text);
    if (step.kind === "gap") {
      // Text between what we have and this delta did not come here: a reply
      // this connection joined mid-way (a resent message whose first answer
      // was lost, a subscription) or a lost frame. Over WebSocket, ask for
      // the rest on this connection: the answer is one delta at exactly
      // g.length with everything written since, so deltas ahead of it are
      // dropped, and it is asked once per connection and offset. An
      // EventSource cannot ask: it starts over from what we have.
      if (this.transport === "websocket" && this._ws) {
        const key = `${this._seq}:${g.length}`;
        if (g.restAsked === key) return;
        if (this._sendFrame({ type: "generation.resume", generation_id: id, offset: g.length })) {
          g.restAsked = key;
          return;
        }
      }
      this._resyncConnection();
      return;
    }
    if (step.kind === "duplicate") return; // already have all of it
    g.content += step.text;
    g.length = step.length;
    this._emit("delta", {
      generationId: id,
      conversationId: g.conversationId,
      offset: step.offset,
      text: step.text,
      content: g.content,
      length: g.length,
    });
  }

  _onTerminal(frame) {
    const id = frame.generation_id;
    if (this._finished.has(id)) return;
    const g = this._gens.get(id);
    this._gens.delete(id);
    this._finished.add(id);
    const message = frame.message || {};
    const content = typeof message.content === "string" ? message.content : g ? g.content : "";
    this._emit("generation", {
      type: frame.type.slice("generation.".length), // completed | cancelled | failed
      generationId: id,
      conversationId: message.conversation_id || (g && g.conversationId) || null,
      message,
      content,
      usage: frame.usage || null,
      finishReason: frame.finish_reason || null,
      error: frame.error || null,
    });
  }

  _onErrorFrame(frame) {
    const p = frame.ref ? this._pending.get(frame.ref) : null;
    if (p) {
      this._sendFailed(p, new ChatError(frame.code, frame.message, { ref: frame.ref }));
      return;
    }
    if (frame.ref && this._gens.has(frame.ref) && frame.code === "not_found") {
      this._gens.delete(frame.ref); // nothing left to follow
    }
    this._reportError(frame.code, frame.message, { ref: frame.ref || null });
  }

  _resyncConnection() {
    if (this._ws) this._abandonWebSocket("offset gap");
    else if (this._es) {
      this._closeEventSource();
      this._scheduleReconnect({ code: CLOSE_RESYNC });
    }
  }
}

// ------------------------------------------------------------------ helpers

class BoundedSet {
  constructor(limit) {
    this.limit = limit;
    this.items = new Set();
  }
  add(value) {
    this.items.add(value);
    if (this.items.size > this.limit) this.items.delete(this.items.values().next().value);
  }
  has(value) {
    return this.items.has(value);
  }
}

/** What the client keeps of one reply it follows. `restAsked` is
 * "connection seq:offset" of the resume asked for after a gap (see _onDelta). */
function newGeneration(id, conversationId, content = "", length = 0, started = false) {
  return { id, conversationId, content, length, started, restAsked: null };
}

/** Close a socket and ignore whatever it still reports. */
function detach(ws, reason) {
  if (!ws) return;
  ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
  try {
    ws.close(CLOSE_RESYNC, reason);
  } catch {
    /* already closed */
  }
}

/** A `message.create` frame, exactly as it is sent. */
function messageFrame(clientId, content, conversationId, model) {
  /** @type {Record<string, string>} */
  const frame = { type: "message.create", client_id: clientId, content };
  if (conversationId) frame.conversation_id = conversationId;
  if (model) frame.model = model;
  return frame;
}

/** @param {number} bytes @param {number|null} max */
function frameTooLarge(bytes, max) {
  const limit = max ? `, the server accepts at most ${count(max)} in one frame` : ", more than the server accepts in one frame";
  return new ChatError("too_large", `the message is too large to send: ${count(bytes)} bytes${limit}`, {
    limit: { name: "frame_bytes", max, size: bytes },
  });
}

function clean(object) {
  return Object.fromEntries(Object.entries(object).filter(([, v]) => v !== undefined && v !== null));
}

function query(params) {
  const entries = Object.entries(params).filter(([, v]) => v !== undefined && v !== null && v !== "");
  return entries.length ? `?${new URLSearchParams(entries)}` : "";
}

/**
 * sanic-chat.js: the browser client for the sanic-chat wire protocol v1.
 *
 * ES modules, no dependencies, no build step. `ChatClient` is an EventTarget;
 * see docs/client.md for the whole API. In short:
 *
 *   import { ChatClient } from "/static/sanic-chat.js";
 *   const chat = new ChatClient();
 *   chat.addEventListener("delta", (e) => render(e.detail.generationId, e.detail.content));
 *   chat.connect();
 *   const page = await chat.openConversation(id);          // history + live tail
 *   const { accepted } = chat.send("Hello", { conversationId: id });
 *
 * This module is the facade: the public API, the REST calls, the events, and
 * the connection's lifecycle (states, reconnect timer, the fallback from
 * WebSocket to SSE). The rest mirrors the server's parts:
 * - links/websocket.js and links/sse.js: one link per server transport
 *   (transports/websocket.py, transports/sse.py), with the same methods: open,
 *   close, follow, deliver a message, fill a gap, cancel. One link is in use.
 * - state.js: what the client knows (replies, the outbox, size checks), no I/O.
 * - offsets.js: code-point offsets.
 *
 * Invariants this client keeps:
 * - Offsets count Unicode code points (Python `len(str)`), never UTF-16 units,
 *   so that the server and this client agree on where a piece of text starts.
 * - A reply's text is kept per generation as one string that only ever grows
 *   by appending exactly the code points after what it has: replays, resumes
 *   and duplicate deliveries can never show text twice, and a gap is repaired
 *   by asking for (or reconnecting and resuming from) what it has.
 * - A message is sent with a client-made `client_id` and re-sent with the same
 *   id until the server acknowledges it (`message.accepted`): the server never
 *   stores it twice. One the server refuses for size is never re-sent.
 * - A dropped connection never loses a reply: after reconnecting, every reply
 *   still running is resumed from the offset the client already has.
 * - Every connection has a number (`_seq`, bumped on every (re)connect and
 *   drop); callbacks of an older connection change nothing.
 */

import { codePointLength, dropCodePoints } from "./offsets.js";
import { ChatError, Outbox, Replies, backoffDelay, clean, contentTooLong, uuid4 } from "./state.js";
import { SseLink } from "./links/sse.js";
import { WebSocketLink } from "./links/websocket.js";

export const PROTOCOL_VERSION = 1;

export { ChatError, codePointLength, dropCodePoints, uuid4 };

/** @typedef {import("./state.js").Limits} Limits */
/** @typedef {import("./state.js").SizeLimit} SizeLimit */
/** @typedef {import("./state.js").Pending} Pending */
/** @typedef {import("./state.js").Reply} Reply */

/**
 * One transport to the server (links/websocket.js, links/sse.js). A link owns
 * its socket or stream and its timers, and tells the client (its host) what
 * happened; the client decides what a connection's life means.
 * @typedef {object} Link
 * @property {"websocket"|"sse"} name
 * @property {boolean} needsConversation a message must name an existing conversation
 * @property {boolean} up whether it holds its connection (else `reconnectNow` reconnects)
 * @property {(seq: number, reconnect?: boolean) => Promise<void>} open open connection `seq`;
 *   calls the host's `_connected`, or `_failed` / `_cannotOpen` / `_scheduleReconnect`
 * @property {() => void} close drop the connection and its timers
 * @property {(previous: string|null, next: string|null) => void} switchConversation
 * @property {(conversationId: string, running?: Reply[]) => void} follow follow live, resuming
 *   `running` (default: the replies held running in it) from what is held
 * @property {(seq: number, reconnect: boolean) => void} resubscribe after (re)connecting
 * @property {(p: Pending) => Promise<void>} deliver send a message (a frame, or a POST)
 * @property {(g: Reply) => void} joinReply a re-sent message's reply may have begun on an earlier connection
 * @property {(g: Reply) => void} gap text before a delta never came: get it
 * @property {(generationId: string) => boolean} cancel stop a reply; false: use REST
 * @property {() => void} probe check the connection is alive
 * @property {() => void} resync drop a connection no longer trusted; reconnect at once
 * @property {(content: string, conversationId: string|null, model: string|undefined, limits: Limits) => ChatError|null} tooLarge
 */

/**
 * What a link may use of the client: tsc checks that a link touches nothing else.
 * @typedef {Pick<ChatClient, "options" | "state" | "transport" | "conversationId" | "limits"
 *   | "request" | "getConversation" | "openConversation"
 *   | "_seq" | "_token" | "_ticketsMissing" | "_replies" | "_outbox" | "_opening"
 *   | "_url" | "_ticket" | "_httpWorks" | "_refresh" | "_onFrame" | "_onAccepted" | "_sendFailed"
 *   | "_reportError" | "_connected" | "_failed" | "_cannotOpen" | "_scheduleReconnect">} LinkHost
 */

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

    /** @type {string} see the states above */
    this.state = "idle";
    /** @type {"websocket"|"sse"|null} */
    this.transport = null;
    /** @type {string|null} the conversation this client follows live */
    this.conversationId = null;
    /** @type {Limits|null} the server's size limits, once known (see `listModels`) */
    this.limits = null;

    this._links = {
      websocket: new WebSocketLink(this, options.WebSocket ?? globalThis.WebSocket),
      sse: new SseLink(this, options.EventSource ?? globalThis.EventSource),
    };
    /** @type {Link} the link in use: WebSocket, or SSE after a fallback */
    this._link = this.options.transport === "sse" ? this._links.sse : this._links.websocket;
    this._attempt = 0;
    this._everOpen = false;
    this._wasDown = false; // set when a connection is lost; the next open is a reconnect
    this._started = false;
    this._seq = 0; // bumps on every (re)connect: late callbacks of an old connection are ignored
    this._timers = { retry: null, unavailable: null };
    this._ticketsMissing = false;
    /** @type {Map<string, Promise<any>>} conversation id -> in-flight openConversation */
    this._opening = new Map();

    this._replies = new Replies();
    this._outbox = new Outbox();
    this._limitsAsked = false;
    /** @type {Promise<any>|null} a models request in flight (shared by callers) */
    this._modelsRequest = null;

    this._onOnline = () => (this.state === "open" ? this._link.probe() : this.reconnectNow());
    this._onOffline = () => this._goOffline();
    // a tab back from the background may hold a socket that died meanwhile
    this._onVisible = () => {
      if (document.visibilityState === "visible") this._link.probe();
    };
  }

  // ---------------------------------------------------------------- public API

  /** Open the connection (and keep it open, reconnecting as needed). */
  connect() {
    if (this._started) return;
    this._started = true;
    globalThis.addEventListener?.("online", this._onOnline);
    globalThis.addEventListener?.("offline", this._onOffline);
    globalThis.document?.addEventListener("visibilitychange", this._onVisible);
    this._open();
  }

  /** Close for good: no reconnect. Unacknowledged sends are rejected. */
  close() {
    this._started = false;
    globalThis.removeEventListener?.("online", this._onOnline);
    globalThis.removeEventListener?.("offline", this._onOffline);
    globalThis.document?.removeEventListener("visibilitychange", this._onVisible);
    this._dropTransport();
    this._outbox.rejectAll("closed", "the client was closed before the server acknowledged");
    this._setState("closed", null);
  }

  /** Reconnect at once (e.g. a "Retry now" button), skipping the backoff wait. */
  reconnectNow() {
    if (!this._started) return;
    if (this.state === "open" && this._link.up) return;
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
    this.conversationId = conversationId || null;
    this._link.switchConversation(previous, this.conversationId);
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
    const p = this._outbox.add(content, { conversationId, model, title });
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
    return contentTooLong(content, limits) || this._link.tooLarge(content, conversationId, model, limits);
  }

  /** Messages sent but not acknowledged yet (oldest first). */
  get pending() {
    return this._outbox.list();
  }

  /** Stop a running reply. Over WebSocket a frame, otherwise `POST .../cancel`. */
  async cancel(generationId) {
    if (this.state === "open" && this._link.cancel(generationId)) return;
    await this.request("POST", `/api/v1/generations/${encodeURIComponent(generationId)}/cancel`);
  }

  /** What this client holds of a reply: `{id, conversationId, content, length, done}`, or null. */
  generation(generationId) {
    return this._replies.view(generationId);
  }

  /** Replies this client follows that have not ended. */
  runningGenerations(conversationId = null) {
    return this._replies.runningIn(conversationId).map((g) => this._replies.view(g.id));
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
    await this._link.open(seq, this._wasDown);
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

  /** The WebSocket link could not open connection `seq`, `failures` times in
   * a row. After `wsFailuresBeforeSse` of them (with `transport: "auto"`): if
   * plain HTTP works, something on the path blocks WebSocket, so SSE from now
   * on; if not, the server is down: wait and retry. */
  async _cannotOpen(seq, failures) {
    if (seq !== this._seq) return;
    if (this.options.transport !== "auto") {
      this._scheduleReconnect({});
      return;
    }
    if (failures < this.options.wsFailuresBeforeSse) {
      if (!this._everOpen) this._open(); // the second try comes at once: fall back quickly
      else this._scheduleReconnect({});
      return;
    }
    if (!(await this._httpWorks()) || seq !== this._seq) {
      if (seq === this._seq) this._scheduleReconnect({});
      return;
    }
    this._link = this._links.sse;
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

  _failed(seq, error) {
    if (seq !== this._seq) return;
    if (error && error.code === "unauthorized") return;
    this._scheduleReconnect({ error });
  }

  /** Connection `seq` is open over `transport`: follow again, send what waits. */
  _connected(seq, transport) {
    const reconnect = this._wasDown;
    this._wasDown = false;
    this._everOpen = true;
    this._attempt = 0;
    this._setState("open", transport);
    // the size limits, so that a message too large is refused before it is sent
    if (!this.limits && !this._limitsAsked) this.listModels().catch(() => {});
    this._link.resubscribe(seq, reconnect);
    for (const p of this._outbox.values()) this._dispatch(p);
  }

  /** The connection is lost: retry after the backoff delay (at once when
   * `immediate` and it is the first attempt), unless offline or unauthorized.
   * @param {{immediate?: boolean, error?: unknown}} [why] */
  _scheduleReconnect({ immediate = false } = {}) {
    if (!this._started || this.state === "unauthorized") return;
    this._dropTransport();
    this._wasDown = true;
    if (globalThis.navigator && navigator.onLine === false) {
      this._goOffline();
      return;
    }
    const delay = backoffDelay(this._attempt, {
      initialMs: this.options.backoffInitialMs,
      maxMs: this.options.backoffMaxMs,
      immediate,
    });
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
    for (const link of Object.values(this._links)) link.close();
  }

  _clearTimer(name) {
    if (this._timers[name]) {
      clearTimeout(this._timers[name]);
      this._timers[name] = null;
    }
  }

  // ---------------------------------------------------------------- following

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
      if (follow && seq === this._seq) this._link.follow(conversationId, []);
      return;
    }
    this._replies.adopt(conversationId, page);
    if (follow && seq === this._seq) this._link.follow(conversationId);
    this._emit("resync", { conversationId, page });
  }

  async _loadAndFollow(conversationId, limit) {
    const page = await this.listMessages(conversationId, {
      limit: limit || this.options.historyPageSize,
    });
    this._replies.adopt(conversationId, page);
    if (this.conversationId === conversationId && this.state === "open") this._link.follow(conversationId);
    return page;
  }

  // ---------------------------------------------------------------- sending

  /** Send (or re-send) a pending message if connected and not already going out. */
  async _dispatch(p) {
    if (this.state !== "open" || p.busy || !this._outbox.holds(p)) return;
    // the limits may have come (or the transport changed) since send()
    const tooLarge = this.sizeProblem(p.content, { conversationId: p.conversationId, model: p.model });
    if (tooLarge) {
      this._sendFailed(p, tooLarge);
      return;
    }
    p.busy = true;
    try {
      if (!p.conversationId && (p.title || this._link.needsConversation)) {
        const conversation = await this.createConversation({ title: p.title, model: p.model });
        p.conversationId = conversation.id;
        p.createdConversation = conversation.id;
        if (!this.conversationId) this.conversationId = conversation.id;
        this._emit("conversation", { conversation, clientId: p.clientId });
      }
      await this._link.deliver(p);
    } catch (error) {
      this._sendFailed(p, error);
    } finally {
      p.busy = false;
    }
  }

  /** Sending `p` failed: a transient failure is retried soon (same client_id);
   * any other fails the message for good and is reported. */
  _sendFailed(p, error) {
    const outcome = this._outbox.fail(p, error);
    if (outcome === "kept") this._retryPendingSoon();
    if (outcome !== "failed") return;
    if (p.createdConversation) this._discardConversation(p);
    this._reportError(error.code, error.message, { ref: p.clientId, clientId: p.clientId });
  }

  /** A conversation this client made for a message the server then refused
   * holds nothing: it is deleted (`discarded`), so that no empty conversation
   * is left behind; unless another message or reply of this client is in it. */
  _discardConversation(p) {
    const conversationId = p.createdConversation;
    p.createdConversation = null;
    if (this._outbox.othersIn(conversationId, p)) return;
    if (this._replies.runningIn(conversationId).length) return;
    if (this.conversationId === conversationId) this.openConversation(null);
    this._emit("discarded", { conversationId, clientId: p.clientId });
    const path = `/api/v1/conversations/${encodeURIComponent(conversationId)}`;
    this.request("DELETE", path).catch(() => {}); // if it fails, an empty conversation stays
  }

  _retryPendingSoon() {
    if (this._timers.unavailable) return;
    this._timers.unavailable = setTimeout(() => {
      this._timers.unavailable = null;
      for (const p of this._outbox.values()) this._dispatch(p);
    }, 1000 + Math.random() * 1000);
  }

  // ---------------------------------------------------------------- frames in

  /** One server event, from either link (the same JSON object on both). */
  _onFrame(frame) {
    switch (frame.type) {
      case "message.accepted":
        this._onAccepted(frame);
        break;
      case "generation.started":
        this._emitIf("generation", this._replies.start(frame));
        break;
      case "generation.delta": {
        const step = this._replies.delta(frame);
        if (step?.kind === "gap") this._link.gap(step.reply);
        else if (step?.kind === "append") this._emit("delta", step.detail);
        break;
      }
      case "generation.completed":
      case "generation.cancelled":
      case "generation.failed":
        this._emitIf("generation", this._replies.end(frame));
        break;
      case "error":
        this._onErrorFrame(frame);
        break;
      default:
        break; // pong, and frame types added after v1
    }
  }

  _emitIf(type, detail) {
    if (detail) this._emit(type, detail);
  }

  _onAccepted(frame) {
    const p = this._outbox.accept(frame.client_id);
    const conversationId = frame.conversation_id;
    const generationId = frame.generation_id || null;
    if (p) {
      p.conversationId = conversationId;
      if (!this.conversationId) this.conversationId = conversationId;
    }
    const g = generationId ? this._replies.announce(generationId, conversationId) : null;
    // a re-sent message may have started its reply on an earlier connection
    if (g && p && p.sends > 1) this._link.joinReply(g);
    const detail = { clientId: frame.client_id, conversationId, message: frame.message, generationId, own: !!p };
    if (p) p.resolve(detail);
    const seen = this._replies.seeMessage(frame.message.id);
    // once per message; one's own always (the app may hold it as "sending")
    if (p || !seen) this._emit("message", detail);
  }

  _onErrorFrame(frame) {
    const p = frame.ref ? this._outbox.get(frame.ref) : null;
    if (p) {
      this._sendFailed(p, new ChatError(frame.code, frame.message, { ref: frame.ref }));
      return;
    }
    if (frame.ref && frame.code === "not_found") this._replies.forget(frame.ref); // nothing left to follow
    this._reportError(frame.code, frame.message, { ref: frame.ref || null });
  }
}

// ------------------------------------------------------------------ helpers

function query(params) {
  const entries = Object.entries(params).filter(([, v]) => v !== undefined && v !== null && v !== "");
  return entries.length ? `?${new URLSearchParams(entries)}` : "";
}

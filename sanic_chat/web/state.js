/**
 * state.js: what the browser client knows, with no I/O.
 *
 * The replies it follows (`Replies`), the messages it has sent and the server
 * has not acknowledged yet (`Outbox`), the size checks, the reconnect delay and
 * the client's error type. Nothing here touches a socket, `fetch`, a timer or
 * the DOM: sanic-chat.js and the links (links/websocket.js, links/sse.js) do
 * the I/O and ask this module what it means, and the Node unit tests in
 * tests/js/ check it directly.
 *
 * Invariants kept here:
 * - A reply's text only ever grows by appending exactly the code points after
 *   what is held (offsets.js `applyDelta`): replays, resumes and duplicate
 *   deliveries never show text twice; a gap is reported, never papered over.
 * - A reply that ended stays ended: late deltas or a second terminal event for
 *   it change nothing.
 * - A message stays in the outbox, under its `client_id`, until the server
 *   acknowledges it or refuses it for good; a transient failure keeps it (it
 *   is re-sent with the same id, so the server never stores it twice).
 */

import { applyDelta, codePointLength } from "./offsets.js";

// ------------------------------------------------------------------ errors

/** Every failure the client reports: a stable `code` (the protocol's error
 * codes, plus `network` and `closed`), a human `message`, and the HTTP
 * `status` or the `ref` (client_id / generation_id) when there is one. */
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

/** Error codes after which re-sending the same message may succeed. */
export const TRANSIENT_CODES = new Set(["network", "unavailable", "internal"]);

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

/** One frame or event as the server sends it (the same JSON object on both
 * transports), or null when `data` is not a JSON object. */
export function decodeFrame(data) {
  try {
    const frame = JSON.parse(data);
    return frame && typeof frame === "object" ? frame : null;
  } catch {
    return null;
  }
}

// ------------------------------------------------------------------ sizes

/** A UUID's length: what a `conversation_id` adds to a frame at most. */
const UUID_CHARS = 36;

/** UTF-8 length of `text` in bytes. */
export function utf8Bytes(text) {
  return new TextEncoder().encode(text).length;
}

/** `n` with thousands separators, the same in every locale ("32,000"). */
function count(n) {
  return n.toLocaleString("en-US");
}

/** A `message.create` frame, exactly as it is sent. */
export function messageFrame(clientId, content, conversationId, model) {
  /** @type {Record<string, string>} */
  const frame = { type: "message.create", client_id: clientId, content };
  if (conversationId) frame.conversation_id = conversationId;
  if (model) frame.model = model;
  return frame;
}

/** The body of `POST /api/v1/conversations/{id}/messages`, as it is sent. */
export function messageBody(clientId, content, model) {
  return clean({ client_id: clientId, content, model });
}

/** `object` without its undefined and null fields. */
export function clean(object) {
  return Object.fromEntries(Object.entries(object).filter(([, v]) => v !== undefined && v !== null));
}

/** Content longer than the server's `max_content_chars` (code points). */
export function contentTooLong(content, limits) {
  const chars = codePointLength(content);
  const max = limits.max_content_chars;
  if (!max || chars <= max) return null;
  return new ChatError(
    "too_large",
    `the message is ${count(chars)} characters long; the server accepts at most ${count(max)}`,
    { limit: { name: "content_chars", max, size: chars } }
  );
}

/** A `message.create` frame over `max_frame_bytes`. A conversation not made
 * yet counts as long as any id (it is in the frame once it exists). */
export function frameTooLong(content, conversationId, model, limits) {
  const frame = messageFrame(uuid4(), content, conversationId || "0".repeat(UUID_CHARS), model);
  const bytes = utf8Bytes(JSON.stringify(frame));
  const max = limits.max_frame_bytes;
  return max && bytes > max ? frameTooLarge(bytes, max) : null;
}

/** A POST body over `max_body_bytes`. */
export function bodyTooLong(content, model, limits) {
  const bytes = utf8Bytes(JSON.stringify(messageBody(uuid4(), content, model)));
  const max = limits.max_body_bytes;
  if (!max || bytes <= max) return null;
  return new ChatError(
    "too_large",
    `the message is too large to send: ${count(bytes)} bytes, the server accepts at most ${count(max)}`,
    { limit: { name: "body_bytes", max, size: bytes } }
  );
}

/** @param {number} bytes @param {number|null} max */
export function frameTooLarge(bytes, max) {
  const limit = max ? `, the server accepts at most ${count(max)} in one frame` : ", more than the server accepts in one frame";
  return new ChatError("too_large", `the message is too large to send: ${count(bytes)} bytes${limit}`, {
    limit: { name: "frame_bytes", max, size: bytes },
  });
}

// ------------------------------------------------------------------ reconnecting

/**
 * How long to wait before reconnect attempt number `attempt` (0 first):
 * exponential from `initialMs`, capped at `maxMs`, with jitter (half to all of
 * it) so that many clients dropped together do not come back together. An
 * `immediate` first attempt (the connection was dropped on purpose, to resync,
 * or by a server shedding a slow reader) waits nothing.
 * @param {number} attempt
 * @param {{initialMs: number, maxMs: number, immediate?: boolean, random?: () => number}} policy
 */
export function backoffDelay(attempt, { initialMs, maxMs, immediate = false, random = Math.random }) {
  if (immediate && attempt === 0) return 0;
  const base = Math.min(maxMs, initialMs * 2 ** Math.min(attempt, 10));
  return Math.round(base * (0.5 + random() / 2));
}

// ------------------------------------------------------------------ replies

/** A set that forgets its oldest entries beyond `limit`. */
export class BoundedSet {
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

/**
 * What the client keeps of one reply it follows. `restAsked` is
 * "connection seq:offset" of the resume a WebSocket link asked for after a gap
 * (once per connection and offset).
 * @typedef {object} Reply
 * @property {string} id the generation id (= the assistant message's id)
 * @property {string|null} conversationId
 * @property {string} content the text held
 * @property {number} length its length in code points
 * @property {boolean} started whether `generation.started` was reported
 * @property {string|null} restAsked
 */

/** @returns {Reply} */
function newReply(id, conversationId, content = "", length = 0, started = false) {
  return { id, conversationId, content, length, started, restAsked: null };
}

/**
 * The replies this client follows, the ones that ended, and the messages it
 * has seen. Each method takes one server event (or a history page) and says
 * what the client should report, or null when the event changes nothing.
 */
export class Replies {
  constructor() {
    /** @type {Map<string, Reply>} generation id -> the reply, while it runs */
    this.running = new Map();
    this.finished = new BoundedSet(1000);
    this.seenMessages = new BoundedSet(2000);
  }

  /** @param {string} id */
  get(id) {
    return this.running.get(id) || null;
  }

  /** The public view of a running reply, or null. */
  view(id) {
    const g = this.running.get(id);
    if (!g) return null;
    return { id: g.id, conversationId: g.conversationId, content: g.content, length: g.length, done: false };
  }

  /** Running replies, of one conversation or (null) of all. @returns {Reply[]} */
  runningIn(conversationId = null) {
    return [...this.running.values()].filter((g) => !conversationId || g.conversationId === conversationId);
  }

  /** Running replies whose conversation is not known. */
  orphans() {
    return [...this.running.values()].filter((g) => !g.conversationId);
  }

  /** The conversations to follow after (re)connecting: the open one, then every
   * one with a reply running. */
  conversationsToFollow(current) {
    const conversations = new Set();
    if (current) conversations.add(current);
    for (const g of this.running.values()) if (g.conversationId) conversations.add(g.conversationId);
    return conversations;
  }

  /** Mark a message seen; whether it had been seen before. */
  seeMessage(id) {
    const seen = this.seenMessages.has(id);
    this.seenMessages.add(id);
    return seen;
  }

  /** A reply a `message.accepted` announces: tracked from offset 0, unless it
   * is known already (or ended). Returns the new reply, or null. */
  announce(generationId, conversationId) {
    if (this.running.has(generationId) || this.finished.has(generationId)) return null;
    const g = newReply(generationId, conversationId);
    this.running.set(generationId, g);
    return g;
  }

  _reply(generationId, conversationId = null) {
    let g = this.running.get(generationId);
    if (!g) {
      g = newReply(generationId, conversationId);
      this.running.set(generationId, g);
    } else if (!g.conversationId && conversationId) {
      g.conversationId = conversationId;
    }
    return g;
  }

  /** `generation.started`: the `generation` event's detail, once per reply. */
  start(frame) {
    if (this.finished.has(frame.generation_id)) return null;
    const g = this._reply(frame.generation_id, frame.conversation_id);
    if (g.started) return null;
    g.started = true;
    return {
      type: "started",
      generationId: g.id,
      conversationId: g.conversationId,
      replyTo: frame.reply_to,
      model: frame.model,
      content: g.content,
    };
  }

  /**
   * `generation.delta`: `{kind: "append", detail}` (the `delta` event's detail),
   * `{kind: "gap", reply}` when text between what is held and the delta never
   * came (nothing applied: the link gets the rest from `reply.length`), or null
   * (already held, or the reply ended).
   * @returns {{kind: "append", detail: object} | {kind: "gap", reply: Reply} | null}
   */
  delta(frame) {
    const id = frame.generation_id;
    if (this.finished.has(id) || typeof frame.text !== "string") return null;
    const g = this._reply(id);
    const step = applyDelta(g.length, frame.offset, frame.text);
    if (step.kind === "gap") return { kind: "gap", reply: g };
    if (step.kind === "duplicate") return null;
    g.content += step.text;
    g.length = step.length;
    return {
      kind: "append",
      detail: {
        generationId: id,
        conversationId: g.conversationId,
        offset: step.offset,
        text: step.text,
        content: g.content,
        length: g.length,
      },
    };
  }

  /** A terminal event (`generation.completed|cancelled|failed`): the
   * `generation` event's detail, once per reply. */
  end(frame) {
    const id = frame.generation_id;
    if (this.finished.has(id)) return null;
    const g = this.running.get(id);
    this.running.delete(id);
    this.finished.add(id);
    const message = frame.message || {};
    const content = typeof message.content === "string" ? message.content : g ? g.content : "";
    return {
      type: frame.type.slice("generation.".length), // completed | cancelled | failed
      generationId: id,
      conversationId: message.conversation_id || (g && g.conversationId) || null,
      message,
      content,
      usage: frame.usage || null,
      finishReason: frame.finish_reason || null,
      error: frame.error || null,
    };
  }

  /** Stop following a reply the server says does not exist (any more). */
  forget(id) {
    this.running.delete(id);
  }

  /** Take up the replies a history page shows running; each item ends up with
   * the longest text known (the page or what is held). A reply held as running
   * that the page shows ended, ended while nobody was following it. */
  adopt(conversationId, page) {
    for (const m of page.items || []) {
      this.seenMessages.add(m.id);
      if (m.role !== "assistant" || this.finished.has(m.id)) continue;
      const g = this.running.get(m.id);
      if (m.status !== "streaming") {
        if (g) {
          this.running.delete(m.id);
          this.finished.add(m.id);
        }
        continue;
      }
      const length = codePointLength(m.content);
      if (!g) {
        this.running.set(m.id, newReply(m.id, conversationId, m.content, length, true));
        continue;
      }
      g.conversationId = conversationId;
      if (length > g.length) {
        g.content = m.content;
        g.length = length;
      } else {
        m.content = g.content;
      }
    }
  }
}

// ------------------------------------------------------------------ outbox

/**
 * A message sent and not acknowledged yet.
 * @typedef {object} Pending
 * @property {string} clientId its idempotency key, the same on every send
 * @property {string} content
 * @property {string|null} conversationId
 * @property {string|undefined} model
 * @property {string|undefined} title
 * @property {number} sends how many times it went out
 * @property {boolean} busy being sent now
 * @property {number|null} sentOn the connection (seq) it last went out on
 * @property {string|null} createdConversation a conversation made for it
 * @property {Promise<any>} accepted
 * @property {(value: any) => void} resolve
 * @property {(error: Error) => void} reject
 */

/** The messages sent and not acknowledged yet, in sending order. */
export class Outbox {
  constructor() {
    /** @type {Map<string, Pending>} client_id -> pending send */
    this.items = new Map();
  }

  /**
   * Queue a message under a new client_id.
   * @param {string} content
   * @param {{conversationId?: string|null, model?: string, title?: string}} [fields]
   * @returns {Pending}
   */
  add(content, { conversationId = null, model, title } = {}) {
    /** @type {Pending} */
    const p = {
      clientId: uuid4(),
      content,
      conversationId: conversationId || null,
      model: model || undefined,
      title: title || undefined,
      sends: 0,
      busy: false,
      sentOn: null,
      createdConversation: null,
      accepted: null,
      resolve: null,
      reject: null,
    };
    p.accepted = new Promise((resolve, reject) => {
      p.resolve = resolve;
      p.reject = reject;
    });
    p.accepted.catch(() => {}); // an unobserved rejection is not an error here
    this.items.set(p.clientId, p);
    return p;
  }

  /** @param {string} clientId */
  get(clientId) {
    return this.items.get(clientId) || null;
  }

  /** @param {Pending} p */
  holds(p) {
    return this.items.has(p.clientId);
  }

  /** The pending messages, oldest first. */
  values() {
    return this.items.values();
  }

  /** The public view: `{clientId, content, conversationId}`, oldest first. */
  list() {
    return [...this.items.values()].map(({ clientId, content, conversationId }) => ({
      clientId,
      content,
      conversationId,
    }));
  }

  /** The server acknowledged `clientId`: no longer pending. Returns the
   * message if it was this client's. */
  accept(clientId) {
    const p = this.items.get(clientId);
    if (!p) return null;
    this.items.delete(clientId);
    return p;
  }

  /**
   * Sending `p` failed with `error`. `kept`: a transient failure, it stays and
   * is re-sent with the same client_id; `failed`: it left the outbox and its
   * `accepted` rejects (it is never re-sent); `gone`: it was no longer pending.
   * @param {Pending} p
   * @param {ChatError} error
   * @returns {"kept"|"failed"|"gone"}
   */
  fail(p, error) {
    if (!this.items.has(p.clientId)) return "gone";
    if (TRANSIENT_CODES.has(error.code)) return "kept";
    this.items.delete(p.clientId);
    error.ref = p.clientId;
    p.reject(error);
    return "failed";
  }

  /** Reject every pending message with a ChatError `code` (the client closed). */
  rejectAll(code, message) {
    for (const p of this.items.values()) p.reject(new ChatError(code, message));
    this.items.clear();
  }

  /** The largest message that went out on connection `seq` and was not
   * acknowledged, with its frame's size in bytes: the one a server closing
   * that connection for a frame too big (1009) refused. */
  largestSentOn(seq) {
    let culprit = null;
    let bytes = 0;
    for (const p of this.items.values()) {
      if (p.sentOn !== seq) continue;
      const size = utf8Bytes(JSON.stringify(messageFrame(p.clientId, p.content, p.conversationId, p.model)));
      if (size > bytes) {
        culprit = p;
        bytes = size;
      }
    }
    return culprit ? { pending: culprit, bytes } : null;
  }

  /** Whether a message other than `p` is pending for `conversationId`. */
  othersIn(conversationId, p) {
    for (const other of this.items.values()) {
      if (other !== p && other.conversationId === conversationId) return true;
    }
    return false;
  }
}

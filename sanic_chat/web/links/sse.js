/**
 * links/sse.js: the client's Server-Sent Events link, the browser side of the
 * server's transports/sse.py (docs/protocol.md, "Server-Sent Events").
 *
 * Events come on an `EventSource` for one conversation,
 * `/api/v1/conversations/{id}/events`, opened with
 * `last_event_id={generation_id}:{offset}` for a reply running in it;
 * messages go out as `POST .../messages`, cancel as `POST .../cancel`. The
 * link owns the EventSource; the client (sanic-chat.js, the `host`) owns the
 * connection's lifecycle, the state (state.js) and the events. It has the same
 * methods as links/websocket.js.
 *
 * Invariants:
 * - One stream follows one conversation: the open one, or the one written to.
 *   Switching opens the new one once its history says where a running reply
 *   stands, so the stream starts from the offset the client holds.
 * - A message is posted only once its conversation's stream is open, so that
 *   no event of its reply is missed.
 * - An EventSource cannot ask for missing text: after a gap (or any failure)
 *   the stream is reopened from what the client holds.
 */

import { ChatError, bodyTooLong, decodeFrame, messageBody } from "../state.js";

/** Server event types; SSE names its events after them. */
const SERVER_TYPES = [
  "message.accepted",
  "generation.started",
  "generation.delta",
  "generation.completed",
  "generation.cancelled",
  "generation.failed",
  "error",
  "pong",
];

/** @typedef {import("../sanic-chat.js").LinkHost} LinkHost */
/** @typedef {import("../sanic-chat.js").Link} Link */
/** @typedef {import("../state.js").Reply} Reply */
/** @typedef {import("../state.js").Pending} Pending */

/** @implements {Link} */
export class SseLink {
  /**
   * @param {LinkHost} host
   * @param {typeof globalThis.EventSource} EventSourceClass the browser's, or a stand-in
   */
  constructor(host, EventSourceClass) {
    this.host = host;
    this.EventSource = EventSourceClass;
    /** @type {"sse"} */
    this.name = "sse";
    /** a message is posted to a conversation: a new one is created first */
    this.needsConversation = true;
    /** @type {EventSource|null} */
    this.es = null;
    /** @type {string|null} the conversation the stream follows (set as it opens) */
    this.conversation = null;
    /** @type {Promise<boolean>|null} resolves true once the stream is open */
    this.ready = null;
  }

  /** An SSE link that reached `open` stays up until it is closed: a stream
   * that fails reports itself. */
  get up() {
    return true;
  }

  /** Open connection `seq`: the stream of the followed conversation. With
   * none to follow the link is open as long as plain HTTP works. */
  async open(seq, reconnect = false) {
    const host = this.host;
    if (seq !== host._seq) return;
    const conversationId = host.conversationId;
    if (!conversationId) {
      if (!reconnect || (await host._httpWorks())) {
        if (seq === host._seq) host._connected(seq, "sse");
      } else if (seq === host._seq) {
        host._scheduleReconnect({});
      }
      return;
    }
    // known at once, so a send waits for this stream rather than opening another
    this.conversation = conversationId;
    /** @type {(ready: boolean) => void} */
    let resolveReady = () => {};
    this.ready = new Promise((resolve) => (resolveReady = resolve));
    const stale = () => {
      if (seq === host._seq && host.conversationId === conversationId) return false;
      resolveReady(false);
      // the app switched conversations while this one was opening: open that one
      if (seq === host._seq) this.open(seq);
      return true;
    };
    if (reconnect && !host._opening.has(conversationId) && !host._replies.runningIn(conversationId).length) {
      // a reconnect with no reply known running: one may have started meanwhile
      await host._refresh(conversationId, seq, { follow: false });
      if (stale()) return;
    }
    let ticket;
    try {
      ticket = await host._ticket();
    } catch (error) {
      resolveReady(false);
      host._failed(seq, error);
      return;
    }
    if (stale()) return;
    const url = new URL(`/api/v1/conversations/${encodeURIComponent(conversationId)}/events`, host._url("/"));
    if (ticket) url.searchParams.set("ticket", ticket);
    const [running] = host._replies.runningIn(conversationId);
    if (running) url.searchParams.set("last_event_id", `${running.id}:${running.length}`);
    const es = new this.EventSource(url.href);
    this.es = es;
    es.onopen = () => {
      if (seq !== host._seq) return;
      resolveReady(true);
      host._connected(seq, "sse");
    };
    for (const type of SERVER_TYPES) {
      es.addEventListener(type, (event) => {
        if (seq !== host._seq) return;
        const data = /** @type {MessageEvent} */ (event).data;
        if (type === "error" && !(typeof data === "string" && data)) {
          // not the server's `error` frame: the stream itself failed
          es.close();
          if (this.es === es) this.close();
          resolveReady(false);
          this._failed(seq, conversationId);
          return;
        }
        const frame = decodeFrame(data);
        if (frame) host._onFrame(frame);
      });
    }
  }

  /** Close the stream; nothing it still reports counts. */
  close() {
    if (this.es) {
      this.es.close();
      this.es = null;
    }
    this.conversation = null;
    this.ready = null;
  }

  /** The client switches from `previous` to `next`: the stream of `previous`
   * is closed; `next`'s opens once its history is read (`follow`). */
  switchConversation(previous, next) {
    const host = this.host;
    if (host.state === "open" && this.conversation !== next) {
      host._seq++;
      this.close();
    }
  }

  /** Follow `conversationId` live: open its stream unless it is open. */
  follow(conversationId) {
    if (this.conversation === conversationId) return;
    this.close();
    this.open(++this.host._seq);
  }

  /** After (re)connecting: the stream's URL carried the resume point; after a
   * reconnect with a reply running, read the history again (`resync`). */
  resubscribe(seq, reconnect) {
    const host = this.host;
    if (reconnect && host.conversationId && host._replies.runningIn(host.conversationId).length) {
      host._refresh(host.conversationId, seq, { follow: false });
    }
  }

  /** Post a message, once the stream of its conversation is open. */
  async deliver(p) {
    const host = this.host;
    const conversationId = p.conversationId;
    if (host.conversationId !== conversationId) {
      // a stream follows one conversation: the one being written to
      await host.openConversation(conversationId);
    } else if (this.conversation !== conversationId) {
      this.open(++host._seq);
    }
    // subscribe before posting, so no event of the reply is missed
    const ready = await Promise.race([
      this.ready || Promise.resolve(false),
      new Promise((resolve) => setTimeout(() => resolve(false), host.options.openTimeoutMs)),
    ]);
    if (!ready) throw new ChatError("network", "the event stream is not open");
    p.sends++;
    const answer = await host.request(
      "POST",
      `/api/v1/conversations/${encodeURIComponent(conversationId)}/messages`,
      messageBody(p.clientId, p.content, p.model)
    );
    host._onAccepted({
      client_id: p.clientId,
      conversation_id: answer.conversation_id || conversationId,
      message: answer.message,
      generation_id: answer.generation_id,
    });
  }

  /** A re-sent message's reply: the stream replays it (nothing to ask). */
  joinReply() {}

  /** An EventSource cannot ask for missing text: reopen from what is held. */
  gap() {
    this.resync();
  }

  /** No frame to send: the client cancels with `POST .../cancel`. */
  cancel() {
    return false;
  }

  /** Nothing to probe: the browser reports a dead stream itself. */
  probe() {}

  /** Reopen the stream at once, from the offset held. */
  resync() {
    if (!this.es) return;
    this.close();
    this.host._scheduleReconnect({ immediate: true });
  }

  /** Why the server would refuse this message's POST body for its size, or null. */
  tooLarge(content, conversationId, model, limits) {
    return bodyTooLong(content, model, limits);
  }

  // ---------------------------------------------------------------- inside

  /** The stream failed. An EventSource error says nothing about why: ask the API. */
  async _failed(seq, conversationId) {
    const host = this.host;
    try {
      await host.getConversation(conversationId);
    } catch (error) {
      if (seq !== host._seq) return;
      if (error.code === "not_found") {
        host._reportError("not_found", "this conversation no longer exists", { conversationId });
        if (host.conversationId === conversationId) host.conversationId = null;
        host._connected(seq, "sse");
        return;
      }
      if (error.code === "unauthorized") return; // the client set the state
      host._scheduleReconnect({});
      return;
    }
    if (seq !== host._seq) return;
    if (host._token && host._ticketsMissing) {
      host._reportError(
        "tickets_unavailable",
        "this server needs a ticket to stream (POST /api/v1/tickets) but offers none"
      );
    }
    host._scheduleReconnect({});
  }
}

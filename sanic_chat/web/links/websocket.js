/**
 * links/websocket.js: the client's WebSocket link, the browser side of the
 * server's transports/websocket.py (`/ws`, docs/protocol.md).
 *
 * One socket carries everything: `message.create` frames out, every
 * conversation this client follows in, `generation.resume` to fill a gap,
 * `generation.cancel`. The link owns the socket and its timers; the client
 * (sanic-chat.js, the `host`) owns the connection's lifecycle, the state
 * (state.js) and the events. It has the same methods as links/sse.js.
 *
 * Invariants:
 * - A socket counts as open only once the server has answered its first ping:
 *   a proxy may accept the upgrade and pass nothing.
 * - Every callback of a socket checks that its connection (`seq`) is still the
 *   client's: late events of an old socket change nothing.
 * - A frame the server closes the connection for (1009) fails the largest
 *   message sent on that connection: it would be refused again on every
 *   reconnect, without end.
 * - The server's 1009 can reach the page as an abnormal close (1006: its TCP
 *   reset while the big frame was still being written), which says nothing
 *   about size. A large message (over SUSPECT_BYTES) sent on two connections
 *   that both died that way before acknowledging it fails too, as too large:
 *   at most one blind re-send, never a loop.
 */

import { frameTooLong, frameTooLarge, messageFrame, decodeFrame } from "../state.js";

/** Close code this client uses to drop a connection it no longer trusts. */
const CLOSE_RESYNC = 4001;
/** The server's close for a reader too slow to keep up: resume at once. */
const CLOSE_SLOW = 4008;
/** WebSocket close code of a frame larger than the server accepts. */
const CLOSE_TOO_BIG = 1009;
const CLOSE_ABNORMAL = 1006;
/** Frames up to this size are re-sent after any number of abnormal closes. */
const SUSPECT_BYTES = 64 * 1024;

/** @typedef {import("../sanic-chat.js").LinkHost} LinkHost */
/** @typedef {import("../sanic-chat.js").Link} Link */
/** @typedef {import("../state.js").Reply} Reply */
/** @typedef {import("../state.js").Pending} Pending */

/** @implements {Link} */
export class WebSocketLink {
  /**
   * @param {LinkHost} host
   * @param {typeof globalThis.WebSocket} WebSocketClass the browser's, or a stand-in
   */
  constructor(host, WebSocketClass) {
    this.host = host;
    this.WebSocket = WebSocketClass;
    /** @type {"websocket"} */
    this.name = "websocket";
    /** a new conversation is made by its first `message.create` */
    this.needsConversation = false;
    /** @type {WebSocket|null} */
    this.ws = null;
    /** sockets that failed to open in a row (see the client's fallback) */
    this.failures = 0;
    this.pingSentAt = 0;
    this.timers = { open: null, ping: null };
  }

  /** Whether the link holds a socket (an open client with none reconnects). */
  get up() {
    return this.ws !== null;
  }

  /** Open connection `seq`: `/ws` with a ticket when there is a token. */
  async open(seq) {
    const host = this.host;
    let ticket;
    try {
      ticket = await host._ticket();
    } catch (error) {
      if (seq === host._seq) host._failed(seq, error);
      return;
    }
    if (seq !== host._seq) return;
    const url = new URL("/ws", host._url("/"));
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    if (ticket) url.searchParams.set("ticket", ticket);
    let ws;
    try {
      ws = new this.WebSocket(url.href);
    } catch {
      this._failedToOpen(seq);
      return;
    }
    this.ws = ws;
    let verified = false;
    // open is not enough: a proxy may accept the upgrade and pass nothing.
    // The connection counts once the server has answered the first ping.
    this.timers.open = setTimeout(() => {
      if (seq !== host._seq || verified) return;
      detach(ws, "no answer");
      this._failedToOpen(seq);
    }, host.options.openTimeoutMs);
    ws.onopen = () => {
      if (seq === host._seq) ws.send(JSON.stringify({ type: "ping" }));
    };
    ws.onmessage = (event) => {
      if (seq !== host._seq) return;
      this.pingSentAt = 0;
      if (!verified) {
        verified = true;
        this._clearTimer("open");
        this.failures = 0;
        this._startPing();
        host._connected(seq, "websocket");
      }
      const frame = decodeFrame(event.data);
      if (frame) host._onFrame(frame);
    };
    ws.onerror = () => {}; // a close event always follows
    ws.onclose = (event) => {
      if (seq !== host._seq) return;
      this._clearTimer("open");
      this._clearTimer("ping");
      this.ws = null;
      if (!verified) {
        this._failedToOpen(seq);
        return;
      }
      // a frame too big: the message in it fails (it would be refused again)
      if (event.code === CLOSE_TOO_BIG) this._frameRefused(seq);
      else if (event.code === CLOSE_ABNORMAL) this._diedWhileSending(seq);
      // 1000 only when we closed it; 1001 server going away; 4008 too slow: all resume by offset
      host._scheduleReconnect({ immediate: event.code === CLOSE_SLOW || event.code === CLOSE_RESYNC });
    };
  }

  /** Drop the socket and its timers; nothing it still reports counts. */
  close() {
    for (const name of Object.keys(this.timers)) this._clearTimer(name);
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      try {
        ws.close(1000, "client reconnecting");
      } catch {
        /* already closed */
      }
    }
  }

  /** The client switches from `previous` to `next`: stop the previous
   * conversation's events on this connection; its replies keep running and
   * are resumed by offset when it is opened again. */
  switchConversation(previous, next) {
    if (previous && previous !== next && this.host.state === "open") {
      this._send({ type: "conversation.unsubscribe", conversation_id: previous });
    }
  }

  /** Subscribe to a conversation, resuming each running reply from what is held. */
  follow(conversationId, running = this.host._replies.runningIn(conversationId)) {
    if (this.host.transport !== "websocket") return;
    const [first, ...rest] = running;
    const frame = { type: "conversation.subscribe", conversation_id: conversationId };
    if (first) Object.assign(frame, { generation_id: first.id, offset: first.length });
    this._send(frame);
    for (const g of rest) this._resume(g);
  }

  /** After (re)connecting: follow again the open conversation and every one
   * with a reply running, each from what is held. After a reconnect, the open
   * conversation's history is read again (`resync`): it shows what happened
   * meanwhile, and a reply that started then. */
  resubscribe(seq, reconnect) {
    const host = this.host;
    const replies = host._replies;
    const conversations = replies.conversationsToFollow(host.conversationId);
    for (const g of replies.orphans()) this._resume(g);
    for (const conversationId of conversations) {
      if (host._opening.has(conversationId)) continue; // openConversation will follow it
      const running = replies.runningIn(conversationId);
      const open = reconnect && conversationId === host.conversationId;
      if (running.length) {
        this.follow(conversationId, running);
        if (open) host._refresh(conversationId, seq, { follow: false });
      } else if (open) {
        host._refresh(conversationId, seq);
      } else {
        this._send({ type: "conversation.subscribe", conversation_id: conversationId });
      }
    }
  }

  /** Send a message as a `message.create` frame (a new conversation is made
   * by the server when it has none). Not connected: it waits in the outbox. */
  async deliver(p) {
    const frame = messageFrame(p.clientId, p.content, p.conversationId, p.model);
    if (this._send(frame)) {
      p.sends++;
      p.sentOn = this.host._seq; // the connection it went out on (see _frameRefused)
    }
  }

  /** A re-sent message was acknowledged with a reply that may have started on
   * an earlier connection: replay it from the start. */
  joinReply(g) {
    const asked = this._send({
      type: "conversation.subscribe",
      conversation_id: g.conversationId,
      generation_id: g.id,
      offset: 0,
    });
    // live deltas ahead of this replay need no second request
    if (asked) g.restAsked = `${this.host._seq}:0`;
  }

  /**
   * Text between what is held of `g` and a delta did not come here: a reply
   * this connection joined mid-way (a resent message whose first answer was
   * lost, a subscription) or a lost frame. Ask for the rest on this
   * connection: the answer is one delta at exactly `g.length` with everything
   * written since, so deltas ahead of it are dropped, and it is asked once
   * per connection and offset. Cannot ask: reconnect and resume.
   * @param {Reply} g
   */
  gap(g) {
    if (this.host.transport === "websocket" && this.ws) {
      const key = `${this.host._seq}:${g.length}`;
      if (g.restAsked === key) return;
      if (this._resume(g)) {
        g.restAsked = key;
        return;
      }
    }
    this.resync();
  }

  /** Stop a reply with a frame; false when there is no socket (use REST). */
  cancel(generationId) {
    if (!this.ws || this.host.transport !== "websocket") return false;
    this._send({ type: "generation.cancel", generation_id: generationId });
    return true;
  }

  /** Application ping: keeps proxies from closing an idle socket, and finds a
   * half-open one (no answer within pongTimeoutMs: reconnect and resume). Any
   * frame from the server counts as the answer. */
  probe() {
    const host = this.host;
    if (!this.ws || host.transport !== "websocket" || this.pingSentAt) return;
    const seq = host._seq;
    this.pingSentAt = performance.now();
    this._send({ type: "ping" });
    setTimeout(() => {
      if (seq === host._seq && this.pingSentAt && this.ws) this._abandon("no pong");
    }, host.options.pongTimeoutMs);
  }

  /** Drop a connection no longer trusted and reconnect at once, resuming by offset. */
  resync() {
    if (this.ws) this._abandon("offset gap");
  }

  /** Why the server would refuse this message's frame for its size, or null. */
  tooLarge(content, conversationId, model, limits) {
    return frameTooLong(content, conversationId, model, limits);
  }

  // ---------------------------------------------------------------- inside

  _send(frame) {
    if (!this.ws || this.ws.readyState !== 1) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  /** @param {Reply} g */
  _resume(g) {
    return this._send({ type: "generation.resume", generation_id: g.id, offset: g.length });
  }

  _failedToOpen(seq) {
    if (seq !== this.host._seq) return;
    this.ws = null;
    this.failures++;
    this.host._cannotOpen(seq, this.failures);
  }

  /** The server closed connection `seq` for a frame larger than it accepts
   * (1009). Only a message is ever that large: the largest one sent on that
   * connection and not acknowledged fails, since a re-send would be refused
   * again. The others are re-sent as after any dropped connection. */
  _frameRefused(seq) {
    const host = this.host;
    const culprit = host._outbox.largestSentOn(seq);
    if (!culprit) return;
    const max = host.limits ? host.limits.max_frame_bytes : null;
    host._sendFailed(culprit.pending, frameTooLarge(culprit.bytes, max));
  }

  /** Connection `seq` died abnormally (1006). Its largest unacknowledged
   * message, when large and already sent once before on a connection that
   * died, fails as too large (see the invariants above). */
  _diedWhileSending(seq) {
    const host = this.host;
    const culprit = host._outbox.largestSentOn(seq);
    if (!culprit || culprit.bytes <= SUSPECT_BYTES || culprit.pending.sends < 2) return;
    const max = host.limits ? host.limits.max_frame_bytes : null;
    host._sendFailed(culprit.pending, frameTooLarge(culprit.bytes, max));
  }

  /** Give up on the socket now (a dead one may take long to report its close)
   * and reconnect at once, resuming by offset. */
  _abandon(reason) {
    detach(this.ws, reason);
    this.ws = null;
    this.host._scheduleReconnect({ immediate: true });
  }

  _startPing() {
    this._clearTimer("ping");
    this.pingSentAt = 0;
    this.timers.ping = setInterval(() => this.probe(), this.host.options.pingIntervalMs);
  }

  _clearTimer(name) {
    if (this.timers[name]) {
      clearTimeout(this.timers[name]);
      clearInterval(this.timers[name]);
      this.timers[name] = null;
    }
  }
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

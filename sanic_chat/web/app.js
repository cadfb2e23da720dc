/**
 * The sanic-chat page: a sidebar of conversations, the open conversation's
 * history (paged), live replies rendered as Markdown, Stop, a model picker and
 * a connection indicator. All wire work is done by sanic-chat.js; this module
 * only keeps the DOM in step with its events.
 *
 * The open conversation lives in the URL (`#/c/{id}`), so a reload or a second
 * tab opens the same conversation and joins a running reply where it stands.
 * Text from users and models only ever reaches the DOM as text nodes (user
 * messages) or through markdown.js (replies), which builds no HTML from text.
 */

import { ChatClient } from "./sanic-chat.js";
import { renderMarkdown } from "./markdown.js";

const TOKEN_KEY = "sanic-chat.token";
const MODEL_KEY = "sanic-chat.model";
const PAGE_SIZE = 30;
const NARROW = matchMedia("(max-width: 760px)");

/**
 * The page's element `id`, which must be a `type` (checked: a missing or
 * different element fails here, at start, not later at first use).
 * @template {HTMLElement} T
 * @param {string} id
 * @param {{new (): T, prototype: T}} type
 * @returns {T}
 */
function $(id, type) {
  const node = document.getElementById(id);
  if (!(node instanceof type)) throw new Error(`the page has no ${type.name} #${id}`);
  return node;
}
const Button = HTMLButtonElement;
const ui = {
  app: $("app", HTMLElement),
  sidebar: $("sidebar", HTMLElement),
  scrim: $("scrim", HTMLElement),
  openSidebar: $("open-sidebar", Button),
  closeSidebar: $("close-sidebar", Button),
  newChat: $("new-chat", Button),
  conversations: $("conversations", HTMLUListElement),
  conversationsEmpty: $("conversations-empty", HTMLParagraphElement),
  moreConversations: $("more-conversations", Button),
  tokenButton: $("token-button", Button),
  title: $("title", HTMLHeadingElement),
  model: $("model", HTMLSelectElement),
  conn: $("conn", HTMLSpanElement),
  connLabel: $("conn-label", HTMLSpanElement),
  banner: $("banner", HTMLDivElement),
  bannerText: $("banner-text", HTMLSpanElement),
  bannerAction: $("banner-action", Button),
  bannerClose: $("banner-close", Button),
  messages: $("messages", HTMLElement),
  older: $("older", Button),
  empty: $("empty", HTMLDivElement),
  list: $("list", HTMLOListElement),
  live: $("live", HTMLDivElement),
  composer: $("composer", HTMLFormElement),
  input: $("input", HTMLTextAreaElement),
  send: $("send", Button),
  stop: $("stop", Button),
  hint: $("hint", HTMLParagraphElement),
  tokenDialog: $("token-dialog", HTMLDialogElement),
  tokenForm: $("token-form", HTMLFormElement),
  tokenInput: $("token-input", HTMLInputElement),
  tokenClear: $("token-clear", Button),
};

const client = new ChatClient({ token: sessionStorage.getItem(TOKEN_KEY) });
// for the console (and the browser tests): the page's client
Object.assign(window, { sanicChat: { client } });

const view = {
  conversationId: null,
  opening: 0, // bumps per navigation: a late history page for another conversation is dropped
  nextBefore: null,
  running: null, // the generation streaming in the open conversation
  byId: new Map(), // message id -> <li>
  byClient: new Map(), // client id -> <li> of a message not acknowledged yet
  contents: new Map(), // assistant id -> latest content
  dirty: new Set(), // assistant ids waiting for the next frame's render
  frame: 0,
  announced: new Map(), // assistant id -> characters already read out
  pendingNew: null, // client id of the message that starts a new conversation
  conversations: new Map(), // id -> conversation
  nextConversations: null,
  models: [],
  defaultModel: null,
  bannerKind: null,
};

// ------------------------------------------------------------------ routing

function routeId() {
  const m = /^#\/c\/([0-9a-f-]{36})$/i.exec(location.hash);
  return m ? m[1].toLowerCase() : null;
}

function navigate(id) {
  const hash = id ? `#/c/${id}` : "#/";
  if (location.hash !== hash) location.hash = hash; // hashchange shows it
  else show(id);
}

addEventListener("hashchange", () => show(routeId()));

// ------------------------------------------------------------------ conversation view

async function show(id) {
  closeSidebar();
  if (id && id === view.conversationId && view.byId.size) return;
  const opening = ++view.opening;
  view.conversationId = id;
  view.pendingNew = null;
  resetThread();
  markActiveConversation();
  updateTitle();
  if (!id) {
    client.openConversation(null);
    ui.input.focus();
    return;
  }
  ui.list.setAttribute("aria-busy", "true");
  try {
    const page = await client.openConversation(id, { limit: PAGE_SIZE });
    if (opening !== view.opening) return;
    view.nextBefore = page.next_before;
    for (const m of page.items) insertMessage(m);
    ui.older.hidden = !view.nextBefore;
    const streaming = page.items.findLast((m) => m.role === "assistant" && m.status === "streaming");
    setRunning(streaming ? streaming.id : null);
    const conversation = view.conversations.get(id);
    if (conversation && conversation.model) selectModel(conversation.model);
    scrollToBottom();
  } catch (error) {
    if (opening !== view.opening) return;
    if (error.code === "not_found") {
      showBanner("error", "That conversation does not exist any more.");
      navigate(null);
    } else if (error.code !== "unauthorized") {
      showBanner("error", `Could not load this conversation: ${describe(error)}`, {
        action: "Try again",
        onAction: () => show(id),
      });
    }
  } finally {
    if (opening === view.opening) ui.list.removeAttribute("aria-busy");
  }
}

function resetThread() {
  ui.list.replaceChildren();
  ui.live.replaceChildren();
  view.byId.clear();
  view.byClient.clear();
  view.contents.clear();
  view.dirty.clear();
  view.announced.clear();
  view.nextBefore = null;
  ui.older.hidden = true;
  setRunning(null);
  updateEmpty();
}

function updateEmpty() {
  ui.empty.hidden = ui.list.childElementCount > 0 || !!view.conversationId;
}

function updateTitle() {
  const conversation = view.conversationId && view.conversations.get(view.conversationId);
  const title = view.conversationId ? titleOf(conversation) : "New chat";
  ui.title.dir = "auto";
  ui.title.textContent = title;
  document.title = view.conversationId ? `${isolated(title)} · sanic-chat` : "sanic-chat";
}

function titleOf(conversation) {
  return shownName((conversation && conversation.title) || "") || "Untitled chat";
}

/**
 * A title or name as shown: without the explicit bidi controls (embeddings,
 * overrides, isolates), with which "\u202Egnp.exe" would read "exe.png". The
 * stored text is unchanged. Elements showing one also isolate it (`dir="auto"`,
 * `unicode-bidi: isolate`) so that right-to-left text cannot reorder what is
 * beside it.
 * @param {string} text
 * @returns {string}
 */
function shownName(text) {
  return text.replace(/[\u202A-\u202E\u2066-\u2069]/g, "");
}

/**
 * `text` for plain-text places (the tab title, dialogs, labels), which have no
 * element to isolate it: first strong isolate ... pop directional isolate.
 * @param {string} text
 * @returns {string}
 */
function isolated(text) {
  return `\u2068${text}\u2069`;
}

async function loadOlder() {
  const id = view.conversationId;
  if (!id || !view.nextBefore) return;
  ui.older.disabled = true;
  try {
    const page = await client.listMessages(id, { limit: PAGE_SIZE, before: view.nextBefore });
    if (id !== view.conversationId) return;
    const before = ui.messages.scrollHeight;
    for (const m of page.items) insertMessage(m);
    ui.messages.scrollTop += ui.messages.scrollHeight - before; // keep what was on screen in place
    view.nextBefore = page.next_before;
    ui.older.hidden = !view.nextBefore;
  } catch (error) {
    showBanner("error", `Could not load earlier messages: ${describe(error)}`);
  } finally {
    ui.older.disabled = false;
  }
}

// ------------------------------------------------------------------ messages

/** Put a stored message in the thread (in time order), or refresh its item. */
function insertMessage(m) {
  const pending = m.client_id && view.byClient.get(m.client_id);
  if (pending) {
    // this page sent it and has not heard back yet (history came first)
    markSent(pending, m);
    return pending;
  }
  const existing = view.byId.get(m.id);
  if (existing) {
    if (m.role !== "assistant" || existing.dataset.status !== "streaming") return existing;
    if (m.status !== "streaming") {
      finishAssistant(existing, m);
    } else if (m.content.length > (view.contents.get(m.id) || "").length) {
      view.contents.set(m.id, m.content);
      scheduleRender(m.id);
    }
    return existing;
  }
  const li = messageItem(m.role, m.id);
  li.dataset.created = m.created_at || "";
  if (m.role === "assistant") {
    if (m.status === "streaming") {
      view.contents.set(m.id, m.content);
      renderAssistant(li, m.content);
    } else {
      finishAssistant(li, m);
    }
  } else {
    li.querySelector(".text").textContent = m.content;
  }
  placeByTime(li);
  return li;
}

function messageItem(role, id) {
  const li = document.createElement("li");
  li.className = `msg ${role === "user" ? "user" : "assistant"}`;
  if (id) {
    li.dataset.id = id;
    view.byId.set(id, li);
  }
  const bubble = document.createElement("div");
  bubble.className = "bubble";
  const body = document.createElement("div");
  body.className = role === "user" ? "text" : "md";
  bubble.append(body);
  const meta = document.createElement("div");
  meta.className = "meta";
  li.append(bubble, meta);
  if (role === "assistant") {
    li.dataset.status = "streaming";
    bubble.setAttribute("aria-busy", "true");
  }
  return li;
}

/** A message this page sent is stored: it gets its id. */
function markSent(li, message) {
  view.byClient.delete(li.dataset.clientId);
  li.classList.remove("sending");
  li.dataset.id = message.id;
  li.dataset.created = message.created_at || "";
  li.querySelector(".meta").replaceChildren();
  view.byId.set(message.id, li);
}

function placeByTime(li) {
  const created = li.dataset.created;
  /** @type {HTMLElement|null} the thread's items are all <li> */
  let after = /** @type {HTMLElement|null} */ (ui.list.lastElementChild);
  while (created && after && after.dataset.created && after.dataset.created > created) {
    after = /** @type {HTMLElement|null} */ (after.previousElementSibling);
  }
  if (after) after.after(li);
  else ui.list.prepend(li);
  updateEmpty();
}

function assistantItem(id) {
  let li = view.byId.get(id);
  if (!li) {
    li = messageItem("assistant", id);
    ui.list.append(li);
    updateEmpty();
  }
  return li;
}

function renderAssistant(li, content) {
  renderMarkdown(content, li.querySelector(".md"));
}

function scheduleRender(id) {
  view.dirty.add(id);
  if (view.frame) return;
  view.frame = requestAnimationFrame(() => {
    view.frame = 0;
    const stick = nearBottom();
    for (const dirtyId of view.dirty) {
      const li = view.byId.get(dirtyId);
      if (li) renderAssistant(li, view.contents.get(dirtyId) || "");
    }
    view.dirty.clear();
    if (stick) scrollToBottom();
  });
}

/** Show a reply's end: its final text and, unless complete, why it ended. */
function finishAssistant(li, message, error = null) {
  const id = li.dataset.id;
  const content = typeof message.content === "string" ? message.content : view.contents.get(id) || "";
  view.contents.set(id, content);
  view.dirty.delete(id);
  renderAssistant(li, content);
  li.dataset.status = message.status || "complete";
  li.querySelector(".bubble").removeAttribute("aria-busy");
  const meta = li.querySelector(".meta");
  meta.replaceChildren();
  const status = message.status;
  const problem = error || message.error;
  if (status === "cancelled") {
    meta.append(note("Stopped"));
  } else if (status === "failed") {
    meta.append(note(`The model failed: ${problem ? problem.message : "unknown error"}${problem && problem.code ? ` (${problem.code})` : ""}`, "error"));
    meta.append(retryButton(message));
  } else if (status === "interrupted") {
    meta.append(note("Interrupted: the server stopped while writing this reply.", "error"));
    meta.append(retryButton(message));
  }
}

function note(text, kind = "") {
  const span = document.createElement("span");
  span.className = `note ${kind}`;
  span.textContent = text;
  return span;
}

function retryButton(message) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "button subtle small";
  button.textContent = "Retry";
  button.addEventListener("click", () => {
    const question = message.reply_to && view.byId.get(message.reply_to);
    const text = question ? question.querySelector(".text").textContent : "";
    if (text) sendText(text);
  });
  return button;
}

function setRunning(id) {
  view.running = id;
  ui.stop.hidden = !id;
  ui.stop.disabled = false;
  ui.send.hidden = !!id;
  updateHint();
}

/** The hint under the box: what Enter does, or why the text is too large to send. */
function updateHint() {
  const text = ui.input.value;
  const problem = text.trim()
    ? client.sizeProblem(text, { conversationId: view.conversationId, model: ui.model.value || undefined })
    : null;
  ui.hint.classList.toggle("error", !!problem);
  if (problem) ui.hint.textContent = sentence(problem.message);
  else if (view.running) ui.hint.textContent = "A reply is being written · Stop ends it";
  else ui.hint.textContent = "Enter to send · Shift+Enter for a new line";
}

// ------------------------------------------------------------------ reading out

function announce(id, content, final) {
  // whole sentences only: a screen reader hears the reply as it is written
  // without a word-by-word torrent
  const done = view.announced.get(id) ?? 0;
  let upto = content.length;
  if (!final) {
    const tail = content.slice(done);
    const m = /[\s\S]*[.!?。\n](?=\s|$)/.exec(tail);
    if (!m) return;
    upto = done + m[0].length;
  }
  const text = content.slice(done, upto).trim();
  view.announced.set(id, upto);
  if (!text) return;
  const p = document.createElement("p");
  p.textContent = text;
  ui.live.append(p);
  while (ui.live.childElementCount > 4) ui.live.firstElementChild.remove();
}

function announceText(text) {
  const p = document.createElement("p");
  p.textContent = text;
  ui.live.append(p);
}

// ------------------------------------------------------------------ scrolling

function nearBottom() {
  const m = ui.messages;
  return m.scrollHeight - m.scrollTop - m.clientHeight < 120;
}

function scrollToBottom() {
  ui.messages.scrollTop = ui.messages.scrollHeight;
}

// ------------------------------------------------------------------ sending

function sendText(text) {
  if (!text.trim()) return false;
  if (view.running) {
    showBanner("error", "A reply is still being written: wait for it or press Stop.");
    return false;
  }
  const model = ui.model.value || undefined;
  const startsConversation = !view.conversationId;
  let sent;
  try {
    sent = client.send(text, {
      conversationId: view.conversationId,
      model,
      title: startsConversation ? titleFrom(text) : undefined,
    });
  } catch (error) {
    showBanner("error", describe(error));
    return false;
  }
  if (startsConversation) view.pendingNew = sent.clientId;
  const li = messageItem("user", null);
  li.classList.add("sending");
  li.dataset.clientId = sent.clientId;
  li.querySelector(".text").textContent = text;
  li.querySelector(".meta").append(note(client.state === "open" ? "Sending…" : "Waiting for the connection…"));
  view.byClient.set(sent.clientId, li);
  ui.list.append(li);
  updateEmpty();
  scrollToBottom();
  sent.accepted.catch((error) => {
    li.classList.remove("sending");
    li.classList.add("not-sent");
    const meta = li.querySelector(".meta");
    meta.replaceChildren(note(`Not sent: ${describe(error)}`, "error"));
    const again = document.createElement("button");
    again.type = "button";
    again.className = "button subtle small";
    again.textContent = "Send again";
    again.addEventListener("click", () => {
      li.remove();
      view.byClient.delete(sent.clientId);
      sendText(text);
    });
    meta.append(again);
  });
  return true;
}

function titleFrom(text) {
  const line = text.trim().split("\n")[0].replace(/\s+/g, " ");
  return line.length > 60 ? `${line.slice(0, 57)}…` : line;
}

/** The open view becomes `conversationId` (a new chat got its id). */
function adoptConversation(conversationId) {
  view.conversationId = conversationId;
  view.pendingNew = null;
  history.replaceState(null, "", `#/c/${conversationId}`);
  markActiveConversation();
  updateTitle();
  updateEmpty();
}

ui.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  if (sendText(ui.input.value)) {
    ui.input.value = "";
    autosize();
  }
});

ui.input.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.altKey && !event.ctrlKey &&
      !event.metaKey && !event.isComposing) {
    event.preventDefault();
    ui.composer.requestSubmit();
  }
});

function autosize() {
  ui.input.style.height = "auto";
  ui.input.style.height = `${Math.min(ui.input.scrollHeight, 200)}px`;
}
ui.input.addEventListener("input", () => {
  autosize();
  updateHint();
});

ui.stop.addEventListener("click", async () => {
  const id = view.running;
  if (!id) return;
  ui.stop.disabled = true;
  try {
    await client.cancel(id);
  } catch (error) {
    ui.stop.disabled = false;
    showBanner("error", `Could not stop the reply: ${describe(error)}`);
  }
});

ui.older.addEventListener("click", loadOlder);

// copy buttons of code blocks (markdown.js renders them; one listener serves all)
ui.list.addEventListener("click", async (event) => {
  if (!(event.target instanceof Element)) return;
  const button = event.target.closest("button[data-copy]");
  if (!button) return;
  const code = button.closest(".codeblock").querySelector("code").textContent;
  try {
    await navigator.clipboard.writeText(code);
  } catch {
    const area = document.createElement("textarea");
    area.value = code;
    area.setAttribute("readonly", "");
    area.className = "visually-hidden";
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  button.textContent = "Copied";
  setTimeout(() => (button.textContent = "Copy"), 1500);
});

// ------------------------------------------------------------------ client events

/**
 * Listen to one of the client's events; they are CustomEvents: `handle` gets the detail.
 * @param {string} type
 * @param {(detail: any) => void} handle
 */
function onClient(type, handle) {
  client.addEventListener(type, (event) => handle(/** @type {CustomEvent} */ (event).detail));
}

onClient("conversation", (detail) => {
  // a new chat was created for a message being sent; it joins the sidebar
  // when that message is stored (the "message" event), not before: a message
  // the server refuses leaves no empty conversation there
  view.conversations.set(detail.conversation.id, detail.conversation);
  if (view.pendingNew === detail.clientId && !view.conversationId) {
    adoptConversation(detail.conversation.id);
  }
});

onClient("discarded", (detail) => {
  // the message it was made for was refused: the client deleted it again
  forgetConversation(detail.conversationId);
  if (view.conversationId !== detail.conversationId) return;
  // back to a new chat, keeping the refused message on screen (Send again)
  view.conversationId = null;
  view.pendingNew = null;
  history.replaceState(null, "", "#/");
  markActiveConversation();
  updateTitle();
});

onClient("message", (detail) => {
  const { conversationId, message, clientId, generationId } = detail;
  if (view.pendingNew === clientId && !view.conversationId) adoptConversation(conversationId);
  touchConversation(conversationId, message.created_at);
  if (conversationId !== view.conversationId) return;
  const pending = view.byClient.get(clientId);
  if (pending) {
    markSent(pending, message);
  } else {
    insertMessage(message);
    if (nearBottom()) scrollToBottom();
  }
  if (generationId && client.generation(generationId)) {
    const li = assistantItem(generationId);
    li.dataset.created = "";
    setRunning(generationId);
    if (nearBottom()) scrollToBottom();
  }
});

onClient("generation", (detail) => {
  const { type, generationId, conversationId } = detail;
  if (conversationId) touchConversation(conversationId);
  if (conversationId !== view.conversationId && !view.byId.has(generationId)) return;
  if (type === "started") {
    assistantItem(generationId);
    setRunning(generationId);
    return;
  }
  const stick = nearBottom();
  const li = assistantItem(generationId);
  finishAssistant(li, { ...detail.message, content: detail.content }, detail.error);
  if (view.running === generationId) setRunning(null);
  announce(generationId, detail.content, true);
  if (type === "cancelled") announceText("Reply stopped.");
  if (type === "failed") announceText(`The reply failed: ${detail.error ? detail.error.message : ""}`);
  if (stick) scrollToBottom();
});

onClient("delta", (detail) => {
  const { generationId, conversationId, content } = detail;
  if (conversationId !== view.conversationId && !view.byId.has(generationId)) return;
  assistantItem(generationId);
  if (!view.running) setRunning(generationId);
  view.contents.set(generationId, content);
  scheduleRender(generationId);
  announce(generationId, content, false);
});

onClient("resync", (detail) => {
  // back after a disconnect: show what happened meanwhile
  if (detail.conversationId !== view.conversationId) return;
  for (const m of detail.page.items) insertMessage(m);
  const streaming = detail.page.items.findLast((m) => m.role === "assistant" && m.status === "streaming");
  if (streaming && !view.running) setRunning(streaming.id);
});

onClient("status", (detail) => showStatus(detail));

onClient("error", (detail) => {
  if (detail.clientId) return; // shown on the message that was not sent
  if (detail.code === "not_found" && detail.conversationId) {
    if (detail.conversationId === view.conversationId) navigate(null);
    forgetConversation(detail.conversationId);
    showBanner("error", "That conversation was deleted.");
    return;
  }
  showBanner("error", describe(detail));
});

client.addEventListener("fallback", () => {
  announceText("WebSocket is unavailable; using Server-Sent Events.");
});

// ------------------------------------------------------------------ connection state

const STATE_LABELS = {
  idle: "Not connected",
  connecting: "Connecting…",
  reconnecting: "Reconnecting…",
  offline: "Offline",
  unauthorized: "Token needed",
  closed: "Closed",
};

function showStatus({ state, transport, retryInMs }) {
  ui.conn.dataset.state = state;
  ui.conn.dataset.transport = transport || "";
  ui.connLabel.textContent =
    state === "open" ? (transport === "sse" ? "Live · SSE" : "Live · WebSocket") : STATE_LABELS[state] || state;
  ui.conn.title =
    state === "open"
      ? `Connected over ${transport === "sse" ? "Server-Sent Events (WebSocket unavailable)" : "WebSocket"}`
      : ui.connLabel.textContent;
  for (const li of view.byClient.values()) {
    const meta = li.querySelector(".meta");
    if (li.classList.contains("sending")) {
      meta.replaceChildren(note(state === "open" ? "Sending…" : "Waiting for the connection…"));
    }
  }
  if (state === "open") {
    if (view.bannerKind === "connection" || view.bannerKind === "auth") hideBanner();
  } else if (state === "offline") {
    showBanner("connection", "You are offline. Messages you send wait here and go out when the connection is back.");
  } else if (state === "reconnecting" && retryInMs !== undefined) {
    const seconds = Math.max(1, Math.round(retryInMs / 1000));
    showBanner("connection", `Connection lost. Reconnecting${retryInMs > 1500 ? ` in ${seconds} s` : ""}…`, {
      action: "Retry now",
      onAction: () => client.reconnectNow(),
    });
  } else if (state === "unauthorized") {
    ui.tokenButton.hidden = false;
    showBanner("auth", "This server needs an access token.", {
      action: "Enter token",
      onAction: openTokenDialog,
    });
    if (!client.token) openTokenDialog();
  }
}

// ------------------------------------------------------------------ banner

/**
 * @param {string} kind what the banner is about (a later one of the same kind replaces it)
 * @param {string} text
 * @param {{action?: string, onAction?: () => void}} [button]
 */
function showBanner(kind, text, { action, onAction } = {}) {
  view.bannerKind = kind;
  ui.banner.hidden = false;
  ui.banner.dataset.kind = kind;
  ui.bannerText.textContent = text;
  ui.bannerAction.hidden = !action;
  ui.bannerAction.textContent = action || "";
  ui.bannerAction.onclick = onAction || null;
}

function hideBanner() {
  view.bannerKind = null;
  ui.banner.hidden = true;
}

ui.bannerClose.addEventListener("click", hideBanner);

function sentence(text) {
  return `${text[0].toUpperCase()}${text.slice(1)}.`;
}

const FRIENDLY = {
  network: "the server could not be reached",
  conflict: "a reply is already being written in this conversation",
  rate_limited: "too many messages; wait a moment",
  unauthorized: "the token was refused",
  unavailable: "the server is busy; it will be retried",
};

function describe(error) {
  if (error.code === "too_large") {
    // the client states the limit; the server's refusal says what it was
    return error.limit ? sentence(error.message) : `The message is too long: ${error.message}.`;
  }
  const friendly = FRIENDLY[error.code];
  return friendly ? `${friendly[0].toUpperCase()}${friendly.slice(1)}.` : error.message || String(error);
}

// ------------------------------------------------------------------ sidebar

function rememberConversation(conversation, { top = false } = {}) {
  view.conversations.set(conversation.id, conversation);
  let li = ui.conversations.querySelector(`li[data-id="${conversation.id}"]`);
  if (!li) {
    li = conversationItem(conversation);
    if (top) ui.conversations.prepend(li);
    else ui.conversations.append(li);
  } else {
    li.querySelector(".conv-title").textContent = titleOf(conversation);
    if (top) ui.conversations.prepend(li);
  }
  ui.conversationsEmpty.hidden = true;
  if (conversation.id === view.conversationId) updateTitle();
  markActiveConversation();
}

function conversationItem(conversation) {
  const li = document.createElement("li");
  li.dataset.id = conversation.id;
  const link = document.createElement("a");
  link.className = "conv-link";
  link.href = `#/c/${conversation.id}`;
  const title = document.createElement("span");
  title.className = "conv-title";
  title.dir = "auto";
  title.textContent = titleOf(conversation);
  const when = document.createElement("span");
  when.className = "conv-when muted small";
  when.textContent = shortDate(conversation.updated_at || conversation.created_at);
  link.append(title, when);
  link.addEventListener("click", closeSidebar); // also when it is the open one (no hashchange)
  const remove = document.createElement("button");
  remove.type = "button";
  remove.className = "icon-button conv-delete";
  remove.setAttribute("aria-label", `Delete “${isolated(titleOf(conversation))}”`);
  remove.append(trashIcon());
  remove.addEventListener("click", () => removeConversation(conversation.id));
  li.append(link, remove);
  return li;
}

function trashIcon() {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", "0 0 16 16");
  svg.setAttribute("width", "14");
  svg.setAttribute("height", "14");
  svg.setAttribute("aria-hidden", "true");
  const path = document.createElementNS(ns, "path");
  path.setAttribute("d", "M6 2h4l.5 1H13v1.5H3V3h2.5zM4 5.5h8l-.6 8.5H4.6z");
  path.setAttribute("fill", "currentColor");
  svg.append(path);
  return svg;
}

function touchConversation(id, when) {
  const conversation = view.conversations.get(id);
  if (conversation) {
    if (when) conversation.updated_at = when;
    rememberConversation(conversation, { top: true });
  } else {
    client.getConversation(id).then((c) => rememberConversation(c, { top: true }), () => {});
  }
}

function forgetConversation(id) {
  view.conversations.delete(id);
  ui.conversations.querySelector(`li[data-id="${id}"]`)?.remove();
  ui.conversationsEmpty.hidden = ui.conversations.childElementCount > 0;
}

async function removeConversation(id) {
  const title = titleOf(view.conversations.get(id));
  if (!confirm(`Delete “${isolated(title)}”? This cannot be undone.`)) return;
  try {
    await client.deleteConversation(id);
  } catch (error) {
    if (error.code !== "not_found") {
      showBanner("error", `Could not delete: ${describe(error)}`);
      return;
    }
  }
  forgetConversation(id);
  if (id === view.conversationId) navigate(null);
}

function markActiveConversation() {
  for (const li of ui.conversations.children) {
    if (!(li instanceof HTMLLIElement)) continue;
    const link = li.querySelector("a");
    if (li.dataset.id === view.conversationId) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

async function loadConversations(more = false) {
  ui.moreConversations.disabled = true;
  try {
    const page = await client.listConversations({
      limit: 30,
      before: more ? view.nextConversations : undefined,
    });
    for (const c of page.items) rememberConversation(c);
    view.nextConversations = page.next_before;
    ui.moreConversations.hidden = !page.next_before;
    ui.conversationsEmpty.hidden = ui.conversations.childElementCount > 0;
    updateTitle();
  } catch (error) {
    if (error.code !== "unauthorized") showBanner("error", `Could not load conversations: ${describe(error)}`);
  } finally {
    ui.moreConversations.disabled = false;
  }
}

function shortDate(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  const today = new Date();
  return date.toDateString() === today.toDateString()
    ? date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
    : date.toLocaleDateString([], { month: "short", day: "numeric" });
}

ui.moreConversations.addEventListener("click", () => loadConversations(true));
ui.newChat.addEventListener("click", () => navigate(null));

function openSidebar() {
  ui.app.classList.add("sidebar-open");
  ui.scrim.hidden = false;
  ui.openSidebar.setAttribute("aria-expanded", "true");
  ui.newChat.focus();
}

function closeSidebar() {
  if (!ui.app.classList.contains("sidebar-open")) return;
  ui.app.classList.remove("sidebar-open");
  ui.scrim.hidden = true;
  ui.openSidebar.setAttribute("aria-expanded", "false");
}

ui.openSidebar.addEventListener("click", openSidebar);
ui.closeSidebar.addEventListener("click", closeSidebar);
ui.scrim.addEventListener("click", closeSidebar);
addEventListener("keydown", (event) => {
  if (event.key === "Escape") closeSidebar();
});
NARROW.addEventListener("change", closeSidebar);

// ------------------------------------------------------------------ models

async function loadModels() {
  try {
    const answer = await client.listModels();
    view.models = answer.items || [];
    view.defaultModel = answer.default;
    ui.model.replaceChildren(
      ...view.models.map((m) => {
        const option = document.createElement("option");
        option.value = m.name;
        const name = isolated(shownName(m.name));
        option.textContent = m.name === answer.default ? `${name} (default)` : name;
        option.title = `${m.provider} · ${m.model}`;
        return option;
      })
    );
    const saved = localStorage.getItem(MODEL_KEY);
    selectModel(view.models.some((m) => m.name === saved) ? saved : answer.default);
    ui.model.disabled = view.models.length < 2;
  } catch (error) {
    if (error.code !== "unauthorized") showBanner("error", `Could not load the models: ${describe(error)}`);
  }
}

function selectModel(name) {
  if (view.models.some((m) => m.name === name)) ui.model.value = name;
}

ui.model.addEventListener("change", () => localStorage.setItem(MODEL_KEY, ui.model.value));

// ------------------------------------------------------------------ token

function openTokenDialog() {
  ui.tokenInput.value = "";
  if (!ui.tokenDialog.open) ui.tokenDialog.showModal();
}

ui.tokenForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const token = ui.tokenInput.value.trim();
  ui.tokenDialog.close();
  if (!token) return;
  sessionStorage.setItem(TOKEN_KEY, token);
  client.setToken(token);
  ui.tokenButton.hidden = false;
  reloadAll();
});

ui.tokenClear.addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  ui.tokenDialog.close();
  client.setToken(null);
});

ui.tokenButton.addEventListener("click", openTokenDialog);

// ------------------------------------------------------------------ start

function reloadAll() {
  view.conversationId = null; // so show() reloads even the same conversation
  return Promise.all([loadModels(), loadConversations(), show(routeId())]);
}

if (client.token) ui.tokenButton.hidden = false;
client.connect();
reloadAll();

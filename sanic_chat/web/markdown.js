/**
 * markdown.js: a small Markdown renderer that is safe by construction.
 *
 * It never parses or inserts HTML. Output is built with createElement from a
 * fixed set of tags (p, h1-h6, strong, em, del, code, pre, blockquote, ul, ol,
 * li, hr, br, a, table parts, and div/span/button for code blocks), attributes
 * are a fixed set, and every piece of source text becomes a text node. Raw HTML
 * in the source (`<script>`, `<img onerror=...>`) therefore shows as the text
 * it is. Links keep only absolute http:, https: and mailto: targets; images are
 * shown as links (a reply cannot make the browser fetch anything).
 *
 * Covered: paragraphs, ATX headings, fenced code (an unclosed fence, as while
 * streaming, runs to the end), block quotes, nested bullet and ordered lists,
 * GitHub tables, thematic breaks; inline code, strong, emphasis,
 * strikethrough, links, autolinks, bare URLs, backslash escapes, hard breaks.
 */

const SAFE_PROTOCOLS = new Set(["http:", "https:", "mailto:"]);
const PUNCTUATION = /[!-/:-@[-`{-~]/;

const FENCE = /^( {0,3})(`{3,}|~{3,})[ \t]*([^\s`]*)[^`]*$/;
const HEADING = /^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$/;
const RULE = /^ {0,3}(?:(?:-[ \t]*){3,}|(?:\*[ \t]*){3,}|(?:_[ \t]*){3,})$/;
const QUOTE = /^ {0,3}> ?(.*)$/;
const ITEM = /^( {0,3})([-*+]|\d{1,9}[.)])(?:([ \t]+)(.*)|)$/;
const TABLE_SEPARATOR = /^ {0,3}\|?[ \t]*:?-+:?[ \t]*(?:\|[ \t]*:?-+:?[ \t]*)*\|?[ \t]*$/;

/** Render `source` into `target`, replacing what it held. */
export function renderMarkdown(source, target) {
  target.replaceChildren(markdownFragment(source));
}

/** `source` as a DocumentFragment of safe elements. */
export function markdownFragment(source) {
  const fragment = document.createDocumentFragment();
  const text = String(source ?? "").replace(/\r\n?/g, "\n").replace(/\t/g, "    ");
  fragment.append(...blocks(text.split("\n")));
  return fragment;
}

/** Is `href` an absolute http(s)/mailto URL? Returns the normalised URL or null. */
export function safeUrl(href) {
  let url;
  try {
    url = new URL(String(href).trim());
  } catch {
    return null; // relative or malformed
  }
  return SAFE_PROTOCOLS.has(url.protocol) ? url.href : null;
}

// ------------------------------------------------------------------ elements

function el(tag, children = [], attributes = {}) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  for (const child of children) node.append(child);
  return node;
}

function codeBlock(code, language) {
  const lang = /^[\w+#.-]{1,30}$/.test(language) ? language : "";
  const codeEl = el("code", [document.createTextNode(code)]);
  if (lang) codeEl.className = `language-${lang}`;
  const bar = el("div", [
    el("span", [document.createTextNode(lang || "code")], { class: "codeblock-lang" }),
    el("button", [document.createTextNode("Copy")], {
      type: "button",
      class: "copy",
      "data-copy": "",
      "aria-label": "Copy code",
    }),
  ], { class: "codeblock-bar" });
  return el("div", [bar, el("pre", [codeEl])], { class: "codeblock" });
}

// ------------------------------------------------------------------ blocks

function indentOf(line) {
  return line.length - line.trimStart().length;
}

function isBlank(line) {
  return line.trim() === "";
}

/** Does `line` start a block that ends a paragraph? */
function interrupts(line) {
  return (
    FENCE.test(line) || HEADING.test(line) || RULE.test(line) || QUOTE.test(line) ||
    (ITEM.test(line) && !isBlank(ITEM.exec(line)[4] ?? ""))
  );
}

function blocks(lines) {
  const out = [];
  let paragraph = [];
  const flush = () => {
    if (paragraph.length) out.push(el("p", inline(paragraph.join("\n").trim())));
    paragraph = [];
  };
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (isBlank(line)) {
      flush();
      i++;
      continue;
    }
    let m;
    if ((m = FENCE.exec(line))) {
      flush();
      const [, indent, fence, info] = m;
      const body = [];
      i++;
      const close = new RegExp(`^ {0,3}${fence[0] === "`" ? "`" : "~"}{${fence.length},}[ \\t]*$`);
      while (i < lines.length && !close.test(lines[i])) {
        const l = lines[i];
        body.push(l.slice(Math.min(indent.length, indentOf(l))));
        i++;
      }
      i++; // the closing fence (or past the end)
      out.push(codeBlock(body.join("\n"), info));
      continue;
    }
    if ((m = HEADING.exec(line))) {
      flush();
      out.push(el(`h${m[1].length}`, inline((m[2] || "").trim())));
      i++;
      continue;
    }
    if (RULE.test(line)) {
      flush();
      out.push(el("hr"));
      i++;
      continue;
    }
    if (QUOTE.test(line)) {
      flush();
      const inner = [];
      while (i < lines.length && !isBlank(lines[i])) {
        const q = QUOTE.exec(lines[i]);
        if (!q && interrupts(lines[i])) break;
        inner.push(q ? q[1] : lines[i]);
        i++;
      }
      out.push(el("blockquote", blocks(inner)));
      continue;
    }
    if ((m = ITEM.exec(line)) && (paragraph.length === 0 || !isBlank(m[4] ?? ""))) {
      flush();
      i = list(lines, i, out);
      continue;
    }
    if (line.includes("|") && i + 1 < lines.length && TABLE_SEPARATOR.test(lines[i + 1]) &&
        lines[i + 1].includes("-")) {
      const header = cells(line);
      const aligns = cells(lines[i + 1]).map((c) =>
        c.startsWith(":") && c.endsWith(":") ? "center" : c.endsWith(":") ? "right" : c.startsWith(":") ? "left" : "");
      if (header.length === aligns.length) {
        flush();
        i = table(lines, i, header, aligns, out);
        continue;
      }
    }
    if (paragraph.length && interrupts(line)) {
      flush();
      continue;
    }
    paragraph.push(line);
    i++;
  }
  flush();
  return out;
}

function list(lines, i, out) {
  const first = ITEM.exec(lines[i]);
  const ordered = /\d/.test(first[2]);
  const marker = ordered ? first[2].slice(-1) : first[2];
  const items = [];
  let loose = false;
  while (i < lines.length) {
    const m = ITEM.exec(lines[i]);
    if (!m) break;
    const sameKind = ordered ? /\d/.test(m[2]) && m[2].endsWith(marker) : m[2] === marker;
    if (!sameKind) break;
    const gap = (m[3] || " ").length;
    const width = m[1].length + m[2].length + (gap > 4 ? 1 : gap);
    const body = [gap > 4 ? " ".repeat(gap - 1) + (m[4] ?? "") : m[4] ?? ""];
    i++;
    while (i < lines.length) {
      const l = lines[i];
      if (isBlank(l)) {
        let j = i + 1;
        while (j < lines.length && isBlank(lines[j])) j++;
        if (j < lines.length && indentOf(lines[j]) >= width) {
          for (; i < j; i++) body.push("");
          loose = true;
          continue;
        }
        break;
      }
      if (indentOf(l) >= width) {
        body.push(l.slice(width));
        i++;
        continue;
      }
      if (ITEM.test(l) || interrupts(l)) break;
      body.push(l.trim()); // a lazy continuation of the item's paragraph
      i++;
    }
    items.push(body);
    // a blank line between items makes the list loose, if the list goes on
    let j = i;
    while (j < lines.length && isBlank(lines[j])) j++;
    if (j > i && j < lines.length) {
      const next = ITEM.exec(lines[j]);
      if (next && indentOf(lines[j]) === first[1].length) {
        loose = true;
        i = j;
        continue;
      }
    }
    if (j > i) break;
  }
  const children = items.map((body) => {
    const content = blocks(body);
    if (!loose && content[0] && content[0].tagName === "P") {
      return el("li", [...content[0].childNodes, ...content.slice(1)]);
    }
    return el("li", content);
  });
  const attributes = {};
  if (ordered) {
    const start = parseInt(first[2], 10);
    if (start !== 1) attributes.start = String(start);
  }
  out.push(el(ordered ? "ol" : "ul", children, attributes));
  return i;
}

function cells(row) {
  let text = row.trim();
  if (text.startsWith("|")) text = text.slice(1);
  if (text.endsWith("|") && !text.endsWith("\\|")) text = text.slice(0, -1);
  const out = [];
  let cell = "";
  let inCode = false;
  for (let k = 0; k < text.length; k++) {
    const c = text[k];
    if (c === "\\" && text[k + 1] === "|") {
      cell += "|";
      k++;
    } else if (c === "`") {
      inCode = !inCode;
      cell += c;
    } else if (c === "|" && !inCode) {
      out.push(cell.trim());
      cell = "";
    } else {
      cell += c;
    }
  }
  out.push(cell.trim());
  return out;
}

function table(lines, i, header, aligns, out) {
  const cell = (tag, text, k) => {
    const node = el(tag, inline(text));
    if (aligns[k]) node.setAttribute("align", aligns[k]);
    return node;
  };
  const head = el("thead", [el("tr", header.map((h, k) => cell("th", h, k)))]);
  const rows = [];
  i += 2;
  while (i < lines.length && !isBlank(lines[i]) && lines[i].includes("|")) {
    const values = cells(lines[i]);
    rows.push(el("tr", aligns.map((_, k) => cell("td", values[k] ?? "", k))));
    i++;
  }
  out.push(el("div", [el("table", [head, el("tbody", rows)])], { class: "table-wrap" }));
  return i;
}

// ------------------------------------------------------------------ inline

/** Inline Markdown of `text` as nodes. `links` is false inside a link's label. */
function inline(text, links = true) {
  const out = [];
  let buffer = "";
  const push = (node) => {
    if (buffer) out.push(document.createTextNode(buffer));
    buffer = "";
    out.push(node);
  };
  let i = 0;
  while (i < text.length) {
    const c = text[i];
    if (c === "\\" && i + 1 < text.length) {
      if (text[i + 1] === "\n") {
        push(el("br"));
        i += 2;
        continue;
      }
      if (PUNCTUATION.test(text[i + 1])) {
        buffer += text[i + 1];
        i += 2;
        continue;
      }
    }
    if (c === "\n") {
      buffer = buffer.replace(/ +$/, "");
      push(el("br"));
      i++;
      continue;
    }
    if (c === "`") {
      let run = 1;
      while (text[i + run] === "`") run++;
      const fence = "`".repeat(run);
      let close = text.indexOf(fence, i + run);
      while (close !== -1 && text[close + run] === "`") {
        let skip = close;
        while (text[skip] === "`") skip++;
        close = text.indexOf(fence, skip);
      }
      if (close !== -1) {
        let code = text.slice(i + run, close).replace(/\n/g, " ");
        if (/^ .*[^ ].* $/.test(code)) code = code.slice(1, -1);
        push(el("code", [document.createTextNode(code)]));
        i = close + run;
        continue;
      }
      buffer += fence;
      i += run;
      continue;
    }
    if (c === "*" || c === "_" || c === "~") {
      const span = emphasis(text, i, links);
      if (span) {
        push(span.node);
        i = span.end;
        continue;
      }
      let run = 1;
      while (text[i + run] === c) run++;
      buffer += text.slice(i, i + run);
      i += run;
      continue;
    }
    if (links && (c === "[" || (c === "!" && text[i + 1] === "["))) {
      const link = linkAt(text, c === "!" ? i + 1 : i);
      if (link) {
        const href = safeUrl(link.href);
        const label = c === "!" ? [document.createTextNode(link.label || link.href)] : inline(link.label, false);
        if (href) {
          push(anchor(href, label));
        } else {
          for (const node of label) push(node);
        }
        i = link.end;
        continue;
      }
    }
    if (links && c === "<") {
      const m = /^<((?:https?:\/\/|mailto:)[^\s<>]+)>/i.exec(text.slice(i, i + 2050));
      const href = m && safeUrl(m[1]);
      if (href) {
        push(anchor(href, [document.createTextNode(m[1])]));
        i += m[0].length;
        continue;
      }
    }
    if (links && (c === "h" || c === "H") && !/[\w/]/.test(text[i - 1] || "")) {
      const m = /^https?:\/\/[^\s<>"]*[^\s<>".,:;!?'")\]*_~]/i.exec(text.slice(i, i + 2050));
      const href = m && safeUrl(m[0]);
      if (href) {
        push(anchor(href, [document.createTextNode(m[0])]));
        i += m[0].length;
        continue;
      }
    }
    buffer += c;
    i++;
  }
  if (buffer) out.push(document.createTextNode(buffer));
  return out;
}

function anchor(href, label) {
  return el("a", label, { href, target: "_blank", rel: "noopener noreferrer nofollow" });
}

/** `**strong**`, `*em*`, `~~del~~` (and the `_` forms) starting at `i`, or null. */
function emphasis(text, i, links) {
  const c = text[i];
  const forms = c === "~" ? [["~~", "del"]] : [[c + c, "strong"], [c, "em"]];
  for (const [delimiter, tag] of forms) {
    if (!text.startsWith(delimiter, i)) continue;
    const start = i + delimiter.length;
    const after = text[start];
    if (!after || /\s/.test(after)) continue; // must open before a non-space
    if (c === "_" && /[\p{L}\p{N}]/u.test(text[i - 1] || "")) continue; // snake_case
    let close = text.indexOf(delimiter, start + 1);
    while (close !== -1) {
      const before = text[close - 1];
      const next = text[close + delimiter.length];
      const ok =
        !/\s/.test(before) &&
        !(delimiter.length === 1 && next === c) && // `*a**b*`: not this one
        !(c === "_" && /[\p{L}\p{N}]/u.test(next || ""));
      if (ok && !text.slice(start, close).includes("\n\n")) {
        return { node: el(tag, inline(text.slice(start, close), links)), end: close + delimiter.length };
      }
      close = text.indexOf(delimiter, close + 1);
    }
  }
  return null;
}

/** `[label](href "title")` starting at `i` (on the `[`), or null. */
function linkAt(text, i) {
  let depth = 0;
  let k = i;
  for (; k < text.length; k++) {
    const c = text[k];
    if (c === "\\") {
      k++;
      continue;
    }
    if (c === "[") depth++;
    else if (c === "]" && --depth === 0) break;
    else if (c === "\n" && text[k + 1] === "\n") return null;
  }
  if (k >= text.length || text[k + 1] !== "(") return null;
  const label = text.slice(i + 1, k);
  let j = k + 2;
  while (text[j] === " ") j++;
  let href = "";
  if (text[j] === "<") {
    const end = text.indexOf(">", j);
    if (end === -1) return null;
    href = text.slice(j + 1, end);
    j = end + 1;
  } else {
    let parens = 0;
    for (; j < text.length; j++) {
      const c = text[j];
      if (/\s/.test(c)) break;
      if (c === "(") parens++;
      else if (c === ")" && parens-- === 0) break;
      href += c;
    }
  }
  while (text[j] === " ") j++;
  if (text[j] === '"' || text[j] === "'") {
    const end = text.indexOf(text[j], j + 1);
    if (end === -1) return null;
    j = end + 1; // titles are dropped
    while (text[j] === " ") j++;
  }
  if (text[j] !== ")") return null;
  return { label, href, end: j + 1 };
}

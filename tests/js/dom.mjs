// A minimal stand-in for the browser's `document`, enough for markdown.js:
// createElement, createTextNode, createDocumentFragment, setAttribute,
// className, append, replaceChildren, textContent. It has no innerHTML and no
// HTML parser at all: the renderer builds elements and text nodes only, and a
// renderer that tried to parse HTML would fail here.
//
// `html(node)` serialises a tree the way a browser would (text escaped), so a
// test can state exactly what the renderer built.

class Text {
  constructor(data) {
    this.data = String(data);
  }
  get textContent() {
    return this.data;
  }
}

class Parent {
  constructor() {
    this.childNodes = [];
  }
  append(...nodes) {
    for (const node of nodes) {
      if (node instanceof Fragment) this.childNodes.push(...node.childNodes.splice(0));
      else if (node instanceof Text || node instanceof Element) this.childNodes.push(node);
      else this.childNodes.push(new Text(node)); // as the DOM does with strings
    }
  }
  replaceChildren(...nodes) {
    this.childNodes = [];
    this.append(...nodes);
  }
  get textContent() {
    return this.childNodes.map((n) => n.textContent).join("");
  }
}

class Fragment extends Parent {}

class Element extends Parent {
  constructor(tag) {
    super();
    this.tagName = tag.toUpperCase();
    this.attributes = new Map();
  }
  setAttribute(name, value) {
    if (!/^[a-z][a-z0-9-]*$/.test(name)) throw new Error(`bad attribute name ${name}`);
    this.attributes.set(name, String(value));
  }
  getAttribute(name) {
    return this.attributes.has(name) ? this.attributes.get(name) : null;
  }
  get className() {
    return this.getAttribute("class") ?? "";
  }
  set className(value) {
    this.setAttribute("class", value);
  }
  /** Every element below this one, depth first. */
  descendants() {
    return this.childNodes.flatMap((n) => (n instanceof Element ? [n, ...n.descendants()] : []));
  }
}

export const document = {
  createElement: (tag) => new Element(tag),
  createTextNode: (data) => new Text(data),
  createDocumentFragment: () => new Fragment(),
};

/** Install the stand-in as the global `document` (markdown.js reads it at call time). */
export function installDocument() {
  globalThis.document = /** @type {any} */ (document);
}

const escapeText = (s) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
const escapeAttribute = (s) => escapeText(s).replace(/"/g, "&quot;");

/** The HTML a browser would serialise `node` to. */
export function html(node) {
  if (node instanceof Text) return escapeText(node.data);
  const inner = node.childNodes.map(html).join("");
  if (node instanceof Fragment) return inner;
  const tag = node.tagName.toLowerCase();
  const attributes = [...node.attributes].map(([k, v]) => ` ${k}="${escapeAttribute(v)}"`).join("");
  return tag === "br" || tag === "hr" ? `<${tag}${attributes}>` : `<${tag}${attributes}>${inner}</${tag}>`;
}

/** Every element in a fragment, depth first. */
export function elements(fragment) {
  return fragment.childNodes.flatMap((n) => (n instanceof Element ? [n, ...n.descendants()] : []));
}

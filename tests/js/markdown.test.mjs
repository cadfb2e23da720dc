// markdown.js: what it renders, and that text never becomes markup.
import assert from "node:assert/strict";
import { before, describe, test } from "node:test";

import { elements, html, installDocument } from "./dom.mjs";

installDocument();
const { markdownFragment, renderMarkdown, safeUrl } = await import("../../sanic_chat/web/markdown.js");

const render = (source) => html(markdownFragment(source));
const LINK = 'target="_blank" rel="noopener noreferrer nofollow"';
/** The tags markdown.js may create (see its header). */
const ALLOWED = new Set(
  "p h1 h2 h3 h4 h5 h6 strong em del code pre blockquote ul ol li hr br a table thead tbody tr th td div span button".split(" ")
);

describe("rendering", () => {
  test("paragraphs, headings, emphasis, inline code; a line break is kept (chat text)", () => {
    assert.equal(
      render("# Title\n\nsome **bold**, *em*, ~~gone~~ and `x < y`\nsame paragraph"),
      "<h1>Title</h1><p>some <strong>bold</strong>, <em>em</em>, <del>gone</del> and <code>x &lt; y</code><br>same paragraph</p>"
    );
  });

  test("lists nest, ordered lists keep their start", () => {
    assert.equal(render("- a\n- b\n  1. c\n  2. d"), "<ul><li>a</li><li>b<ol><li>c</li><li>d</li></ol></li></ul>");
    assert.equal(render("3. three\n4. four"), '<ol start="3"><li>three</li><li>four</li></ol>');
  });

  test("block quotes, rules, hard breaks, backslash escapes", () => {
    assert.equal(render("> quoted\n\n---\n\na  \nb \\*not em\\*"), "<blockquote><p>quoted</p></blockquote><hr><p>a<br>b *not em*</p>");
  });

  test("tables, with alignment", () => {
    assert.equal(
      render("| a | b |\n|---|:-:|\n| 1 | 2 |"),
      '<div class="table-wrap"><table><thead><tr><th>a</th><th align="center">b</th></tr></thead>' +
        '<tbody><tr><td>1</td><td align="center">2</td></tr></tbody></table></div>'
    );
  });

  test("links, autolinks and bare URLs open safely; images become links", () => {
    assert.equal(
      render("[site](https://example.com/a?q=1) <https://example.com/b> see https://example.com/c ![pic](https://example.com/p.png)"),
      `<p><a href="https://example.com/a?q=1" ${LINK}>site</a> <a href="https://example.com/b" ${LINK}>https://example.com/b</a>` +
        ` see <a href="https://example.com/c" ${LINK}>https://example.com/c</a> <a href="https://example.com/p.png" ${LINK}>pic</a></p>`
    );
  });

  test("renderMarkdown replaces what the target held", () => {
    const target = globalThis.document.createElement("div");
    renderMarkdown("first", target);
    renderMarkdown("second", target);
    assert.equal(html(target), "<div><p>second</p></div>");
  });

  test("CRLF and tabs are normalised; null renders nothing", () => {
    assert.equal(render("a\r\nb"), "<p>a<br>b</p>");
    assert.equal(render("```\n\tx\n```"), render("```\n    x\n```"));
    assert.equal(render(null), "");
  });
});

describe("code blocks", () => {
  test("a fenced block keeps its text exactly, with its language and a Copy button", () => {
    assert.equal(
      render("```python\nif a < b:\n    print('<&>')\n```\nafter"),
      '<div class="codeblock"><div class="codeblock-bar"><span class="codeblock-lang">python</span>' +
        '<button type="button" class="copy" data-copy="" aria-label="Copy code">Copy</button></div>' +
        "<pre><code class=\"language-python\">if a &lt; b:\n    print('&lt;&amp;&gt;')</code></pre></div><p>after</p>"
    );
  });

  test("an unclosed fence (a reply still streaming) is code to the end", () => {
    const out = render("text\n\n```js\nconst a = 1;\n**not bold**");
    assert.match(out, /<code class="language-js">const a = 1;\n\*\*not bold\*\*<\/code>/);
  });

  test("a language that is not a plain word is dropped, not put in an attribute", () => {
    const out = render('```"><img src=x onerror=alert(1)>\ncode\n```');
    assert.match(out, /<span class="codeblock-lang">code<\/span>/);
    assert.doesNotMatch(out, /<img/);
  });

  test("tilde fences work too", () => {
    assert.match(render("~~~\nplain\n~~~"), /<pre><code>plain<\/code><\/pre>/);
  });
});

describe("HTML in the source is text (XSS)", () => {
  const hostile = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "<svg/onload=alert(1)>",
    '<a href="javascript:alert(1)">x</a>',
    '<iframe src="https://evil.example"></iframe>',
    "<b onmouseover=alert(1)>hover</b>",
    "&lt;script&gt; stays as typed",
  ];

  for (const source of hostile) {
    test(`${source} shows as the text it is`, () => {
      const fragment = markdownFragment(source);
      assert.equal(fragment.textContent, source);
      for (const node of elements(fragment)) assert.ok(ALLOWED.has(node.tagName.toLowerCase()), node.tagName);
      assert.doesNotMatch(html(fragment), /<(script|img|svg|iframe|b )/i);
      for (const node of elements(fragment)) {
        assert.deepEqual([...node.attributes.keys()].filter((k) => k.startsWith("on")), []);
      }
    });
  }

  test("HTML inside headings, emphasis, lists, quotes and tables stays text", () => {
    const source = "# <img src=x onerror=a()>\n**<script>b()</script>**\n- <svg onload=c()>\n> <iframe>\n\n| <i>x</i> |\n|---|\n| <b>y</b> |";
    const fragment = markdownFragment(source);
    const tags = new Set(elements(fragment).map((n) => n.tagName.toLowerCase()));
    for (const tag of tags) assert.ok(ALLOWED.has(tag), tag);
    for (const tag of ["img", "script", "svg", "iframe", "i", "b"]) assert.ok(!tags.has(tag), tag);
    assert.match(fragment.textContent, /<script>b\(\)<\/script>/);
  });

  test("links keep only http, https and mailto targets", () => {
    const fragment = markdownFragment(
      "[a](javascript:alert(1)) [b](JAVASCRIPT:alert(1)) [c](data:text/html,<script>x</script>) " +
        "[d](vbscript:msgbox) [e](/relative) [f](mailto:someone@example.com) [g]( javascript:alert(1))"
    );
    const hrefs = elements(fragment)
      .filter((n) => n.tagName === "A")
      .map((n) => n.getAttribute("href"));
    assert.deepEqual(hrefs, ["mailto:someone@example.com"]);
  });

  test("a quote in a URL cannot leave its attribute", () => {
    const fragment = markdownFragment('[x](https://example.com/"onmouseover="alert(1))');
    for (const node of elements(fragment)) {
      assert.deepEqual([...node.attributes.keys()].filter((k) => k.startsWith("on")), []);
    }
  });

  test("safeUrl", () => {
    assert.equal(safeUrl("https://example.com"), "https://example.com/");
    assert.equal(safeUrl(" http://example.com/x "), "http://example.com/x");
    assert.equal(safeUrl("mailto:a@b.c"), "mailto:a@b.c");
    for (const bad of ["javascript:alert(1)", "data:text/html,x", "/relative", "//example.com", "file:///etc/passwd", ""]) {
      assert.equal(safeUrl(bad), null, bad);
    }
  });
});

before(() => assert.equal(typeof globalThis.document.createElement, "function"));

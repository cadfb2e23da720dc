// offsets.js: deltas applied by code-point offset, as sanic-chat.js applies them.
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { applyDelta, codePointLength, dropCodePoints } from "../../sanic_chat/web/offsets.js";
import * as client from "../../sanic_chat/web/sanic-chat.js";

/** A reply as the client keeps it: its text and its length in code points. */
function reply() {
  const r = { content: "", length: 0, gaps: [] };
  r.apply = (offset, text) => {
    const step = applyDelta(r.length, offset, text);
    if (step.kind === "gap") r.gaps.push([r.length, offset]);
    if (step.kind === "append") {
      assert.equal(step.offset, r.length);
      r.content += step.text;
      r.length = step.length;
    }
    return step.kind;
  };
  return r;
}

describe("code points", () => {
  test("count code points, as Python's len does", () => {
    assert.equal(codePointLength(""), 0);
    assert.equal(codePointLength("abc"), 3);
    assert.equal(codePointLength("🙂"), 1); // two UTF-16 units
    assert.equal(codePointLength("a🙂b🚀"), 4);
    assert.equal(codePointLength("é"), 1);
    assert.equal(codePointLength("e\u0301"), 2); // a combining mark is its own code point
    assert.equal(codePointLength("👩‍👩‍👧"), 5); // a ZWJ sequence: 3 emoji, 2 joiners
    assert.equal(codePointLength("\ud800"), 1); // a lone surrogate counts once
    assert.equal(codePointLength("\ud83d\ud83d\ude42"), 2);
  });

  test("drop code points, never half an emoji", () => {
    assert.equal(dropCodePoints("a🙂b", 1), "🙂b");
    assert.equal(dropCodePoints("a🙂b", 2), "b");
    assert.equal(dropCodePoints("🙂🚀", 1), "🚀");
    assert.equal(dropCodePoints("abc", 0), "abc");
    assert.equal(dropCodePoints("abc", 9), "");
  });

  test("sanic-chat.js exports the same helpers", () => {
    assert.equal(client.codePointLength, codePointLength);
    assert.equal(client.dropCodePoints, dropCodePoints);
  });
});

describe("applying deltas by offset", () => {
  test("in order, the text grows by each delta", () => {
    const r = reply();
    assert.equal(r.apply(0, "Hello"), "append");
    assert.equal(r.apply(5, ", world"), "append");
    assert.deepEqual([r.content, r.length], ["Hello, world", 12]);
  });

  test("a duplicate (a replay, a resume) is dropped", () => {
    const r = reply();
    r.apply(0, "Hello");
    r.apply(5, " world");
    assert.equal(r.apply(0, "Hello"), "duplicate");
    assert.equal(r.apply(5, " world"), "duplicate");
    assert.equal(r.apply(3, "lo"), "duplicate");
    assert.equal(r.apply(11, ""), "duplicate");
    assert.equal(r.content, "Hello world");
  });

  test("an overlapping delta adds only what is new", () => {
    const r = reply();
    r.apply(0, "Hello");
    assert.equal(r.apply(3, "lo there"), "append");
    assert.equal(r.content, "Hello there");
    // a resume answered with everything from 0
    assert.equal(r.apply(0, "Hello there, friend"), "append");
    assert.equal(r.content, "Hello there, friend");
  });

  test("a gap (text in between never came) is detected and nothing is applied", () => {
    const r = reply();
    r.apply(0, "Hello");
    assert.equal(r.apply(7, "world"), "gap");
    assert.deepEqual(r.gaps, [[5, 7]]);
    assert.equal(r.content, "Hello");
    // the rest asked for from what is held (5) fills it
    assert.equal(r.apply(5, ", world"), "append");
    assert.equal(r.content, "Hello, world");
  });

  test("offsets are code points: emoji count once", () => {
    const r = reply();
    r.apply(0, "a🙂"); // 2 code points, 3 UTF-16 units
    assert.equal(r.length, 2);
    assert.equal(r.apply(2, "b"), "append"); // UTF-16 counting would see a gap here
    assert.equal(r.apply(1, "🙂b🚀"), "append"); // overlap starting on the emoji
    assert.deepEqual([r.content, r.length], ["a🙂b🚀", 4]);
    assert.equal(r.apply(3, "🚀"), "duplicate");
    assert.equal(r.apply(5, "x"), "gap");
    assert.equal(r.content, "a🙂b🚀");
  });

  test("any split of a text into deltas, replayed and reordered, yields it once", () => {
    const text = "Once 🙂 upon a time 🚀 there was a 👩‍👩‍👧 family.";
    const points = [...text];
    for (let size = 1; size <= 7; size++) {
      const deltas = [];
      for (let i = 0; i < points.length; i += size) deltas.push([i, points.slice(i, i + size).join("")]);
      const r = reply();
      for (const [offset, piece] of deltas) {
        r.apply(offset, piece);
        r.apply(offset, piece); // delivered twice
        r.apply(0, points.slice(0, offset).join("")); // an old replay
      }
      assert.equal(r.content, text);
      assert.equal(r.length, codePointLength(text));
      assert.deepEqual(r.gaps, []);
    }
  });
});

describe("the client's size check", () => {
  const limits = { max_content_chars: 10, max_frame_bytes: 300, max_body_bytes: 250 };

  test("nothing is refused while the limits are not known", () => {
    const chat = new client.ChatClient();
    assert.equal(chat.sizeProblem("x".repeat(1_000_000)), null);
  });

  test("content longer than max_content_chars, counted in code points", () => {
    const chat = new client.ChatClient();
    chat.limits = limits;
    assert.equal(chat.sizeProblem("🙂".repeat(10)), null); // 10 code points, 20 UTF-16 units
    const problem = chat.sizeProblem("🙂".repeat(11));
    assert.equal(problem.code, "too_large");
    assert.deepEqual(problem.limit, { name: "content_chars", max: 10, size: 11 });
    assert.match(problem.message, /11 characters.*at most 10/);
  });

  test("a frame over max_frame_bytes (UTF-8, as sent) is refused", () => {
    const chat = new client.ChatClient();
    chat.limits = { ...limits, max_content_chars: 1000 };
    assert.equal(chat.sizeProblem("é".repeat(40)), null);
    const problem = chat.sizeProblem("é".repeat(100)); // 200 bytes of text, more with the frame
    assert.equal(problem.limit.name, "frame_bytes");
    assert.equal(problem.limit.max, 300);
    assert.ok(problem.limit.size > 300);
  });

  test("send() refuses it at once: nothing is queued", () => {
    const chat = new client.ChatClient();
    chat.limits = limits;
    assert.throws(() => chat.send("x".repeat(11)), (error) => error.code === "too_large");
    assert.deepEqual(chat.pending, []);
    chat.send("short"); // within limits: queued until connected
    assert.equal(chat.pending.length, 1);
  });
});

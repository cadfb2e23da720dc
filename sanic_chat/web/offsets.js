/**
 * offsets.js: code-point offsets, as the sanic-chat protocol counts them.
 *
 * Pure functions with no browser dependency (sanic-chat.js imports them; the
 * Node unit tests in tests/js/ import them directly).
 *
 * Invariant: offsets count Unicode code points (Python `len(str)`), never
 * UTF-16 units, so that the server and the client agree on where a piece of
 * text starts; an emoji outside the Basic Multilingual Plane is one code point
 * and two UTF-16 units.
 */

/**
 * Length of `text` in Unicode code points (what the protocol's offsets count).
 * @param {string} text
 * @returns {number}
 */
export function codePointLength(text) {
  let n = text.length;
  for (let i = 0; i < text.length - 1; i++) {
    const c = text.charCodeAt(i);
    if (c >= 0xd800 && c <= 0xdbff) {
      const d = text.charCodeAt(i + 1);
      if (d >= 0xdc00 && d <= 0xdfff) {
        n--;
        i++;
      }
    }
  }
  return n;
}

/**
 * `text` without its first `count` code points.
 * @param {string} text
 * @param {number} count
 * @returns {string}
 */
export function dropCodePoints(text, count) {
  let i = 0;
  for (let seen = 0; seen < count && i < text.length; seen++) {
    const c = text.charCodeAt(i);
    const pair =
      c >= 0xd800 && c <= 0xdbff && i + 1 < text.length &&
      (text.charCodeAt(i + 1) & 0xfc00) === 0xdc00;
    i += pair ? 2 : 1;
  }
  return text.slice(i);
}

/**
 * @typedef {{kind: "gap"}
 *   | {kind: "duplicate"}
 *   | {kind: "append", offset: number, text: string, length: number}} DeltaStep
 */

/**
 * What a delta of `text` at code point `offset` does to a reply of which
 * `have` code points are held. A reply only ever grows by appending exactly
 * the code points after what is held:
 * - `gap`: the delta starts after what is held (text in between never came);
 *   nothing is applied, the caller asks for the rest from `have`;
 * - `duplicate`: everything in it is held already (a replay, a resume);
 * - `append`: `text` (the delta without what is held) goes at `offset`
 *   (= `have`), and the reply is then `length` code points long.
 * @param {number} have code points held
 * @param {number} offset the delta's offset
 * @param {string} text the delta's text
 * @returns {DeltaStep}
 */
export function applyDelta(have, offset, text) {
  if (offset > have) return { kind: "gap" };
  const end = offset + codePointLength(text);
  if (end <= have) return { kind: "duplicate" };
  return {
    kind: "append",
    offset: have,
    text: offset < have ? dropCodePoints(text, have - offset) : text,
    length: end,
  };
}

// Strict JSON for untrusted TUF / Notary metadata, and the two canonical encodings signatures are made over.
// Design notes and measurements: docs/canonical-json.md.
import { TrustError } from './errors.js';

export type JsonValue = null | boolean | number | string | JsonValue[] | JsonObject;
export interface JsonObject { [key: string]: JsonValue }

export interface ParseOptions {
  /** Refuse documents larger than this many bytes (endless data). */
  readonly maxBytes: number;
  /** Refuse nesting deeper than this. */
  readonly maxDepth?: number;
  /** What is being parsed, for the error message ("root.json from https://…"). */
  readonly what: string;
}

const DEFAULT_MAX_DEPTH = 64;

// fatal: invalid UTF-8 (overlongs, encoded surrogates, truncated sequences) throws instead of becoming U+FFFD.
// ignoreBOM: keep a leading U+FEFF in the output so the parser sees it and refuses it.
const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/**
 * Parses bytes from an untrusted source. Throws TrustError MALFORMED / ENDLESS_DATA; never a raw SyntaxError.
 *
 * Stricter than JSON.parse on purpose: duplicate keys, lone surrogate escapes, integers JS cannot hold exactly,
 * a BOM, and nesting deeper than `maxDepth` are refused. Objects are created without a prototype, so a key named
 * `__proto__`, `constructor` or `toString` is an ordinary own key and a lookup such as `targets[name]` can never
 * reach Object.prototype.
 */
export function parseUntrustedJson(bytes: Uint8Array, opts: ParseOptions): JsonValue {
  if (bytes.byteLength > opts.maxBytes) {
    throw new TrustError(
      'ENDLESS_DATA',
      `${opts.what}: ${bytes.byteLength} bytes exceeds the limit of ${opts.maxBytes} bytes`,
    );
  }
  let text: string;
  try {
    text = utf8.decode(bytes);
  } catch {
    throw new TrustError('MALFORMED', `${opts.what}: not valid UTF-8`);
  }
  return new Parser(text, opts.what, opts.maxDepth ?? DEFAULT_MAX_DEPTH).parse();
}

interface Frame {
  readonly arr: JsonValue[] | null; // set for an array
  readonly obj: JsonObject | null; // set for an object
  key: string; // the member being parsed (objects)
}

// Character codes used by the parser.
const QUOTE = 0x22, BACKSLASH = 0x5c, COMMA = 0x2c, COLON = 0x3a, MINUS = 0x2d, DOT = 0x2e;
const LBRACE = 0x7b, RBRACE = 0x7d, LBRACKET = 0x5b, RBRACKET = 0x5d, ZERO = 0x30, NINE = 0x39;

function isWs(c: number): boolean {
  return c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09;
}

function isDigit(c: number): boolean {
  return c >= ZERO && c <= NINE;
}

// An iterative parser: containers live on an explicit stack, so nesting costs heap, not call stack, and the
// depth limit (not the engine's stack size) decides when a document is too deep.
class Parser {
  private i = 0;
  private readonly stack: Frame[] = [];

  constructor(
    private readonly s: string,
    private readonly what: string,
    private readonly maxDepth: number,
  ) {}

  parse(): JsonValue {
    const s = this.s;
    const stack = this.stack;
    if (s.charCodeAt(0) === 0xfeff) this.fail('starts with a byte order mark (U+FEFF)', 0);
    let value: JsonValue;
    next: for (;;) {
      // Parse one value at this.i; containers push a frame and restart this loop for their first element.
      this.skipWs();
      const c = s.charCodeAt(this.i);
      if (c === LBRACE || c === LBRACKET) {
        if (stack.length >= this.maxDepth) this.fail(`nesting is deeper than ${this.maxDepth}`, this.i);
        this.i++;
        this.skipWs();
        if (c === LBRACKET) {
          const arr: JsonValue[] = [];
          if (s.charCodeAt(this.i) === RBRACKET) {
            this.i++;
            value = arr;
          } else {
            stack.push({ arr, obj: null, key: '' });
            continue next;
          }
        } else {
          const obj = Object.create(null) as JsonObject;
          if (s.charCodeAt(this.i) === RBRACE) {
            this.i++;
            value = obj;
          } else {
            const frame: Frame = { arr: null, obj, key: '' };
            stack.push(frame);
            frame.key = this.member(obj);
            continue next;
          }
        }
      } else if (c === QUOTE) {
        value = this.string();
      } else if (c === MINUS || isDigit(c)) {
        value = this.number();
      } else if (c === 0x74 && s.startsWith('true', this.i)) {
        this.i += 4;
        value = true;
      } else if (c === 0x66 && s.startsWith('false', this.i)) {
        this.i += 5;
        value = false;
      } else if (c === 0x6e && s.startsWith('null', this.i)) {
        this.i += 4;
        value = null;
      } else {
        this.unexpected();
      }

      // A value is complete: hand it to the enclosing container(s) until one wants another element.
      for (;;) {
        const top = stack[stack.length - 1];
        if (top === undefined) {
          this.skipWs();
          if (this.i < s.length) this.fail('trailing data after the JSON value', this.i);
          return value;
        }
        this.skipWs();
        const d = s.charCodeAt(this.i);
        if (top.arr !== null) {
          top.arr.push(value);
          if (d === COMMA) {
            this.i++;
            continue next;
          }
          if (d !== RBRACKET) this.unexpected("',' or ']'");
          this.i++;
          value = top.arr;
        } else {
          const obj = top.obj!;
          obj[top.key] = value;
          if (d === COMMA) {
            this.i++;
            this.skipWs();
            top.key = this.member(obj);
            continue next;
          }
          if (d !== RBRACE) this.unexpected("',' or '}'");
          this.i++;
          value = obj;
        }
        stack.pop();
      }
    }
  }

  /** Reads `"key" :` and refuses a key the object already has. */
  private member(obj: JsonObject): string {
    if (this.s.charCodeAt(this.i) !== QUOTE) this.unexpected('an object key');
    const at = this.i;
    const key = this.string();
    // Values are never undefined and the object has no prototype, so this is an exact own-key test.
    if (obj[key] !== undefined) {
      this.fail(
        `duplicate key ${JSON.stringify(key)} in the object at ${this.path()} (parsers disagree on which one counts)`,
        at,
      );
    }
    this.skipWs();
    if (this.s.charCodeAt(this.i) !== COLON) this.unexpected("':'");
    this.i++;
    return key;
  }

  private skipWs(): void {
    const s = this.s;
    let i = this.i;
    while (isWs(s.charCodeAt(i))) i++;
    this.i = i;
  }

  private string(): string {
    const s = this.s;
    const start = this.i + 1;
    let i = start;
    // Fast path: no escapes.
    for (;;) {
      const c = s.charCodeAt(i);
      if (c === QUOTE) {
        this.i = i + 1;
        return s.slice(start, i);
      }
      if (c === BACKSLASH) break;
      if (c < 0x20) this.badStringChar(c, i);
      if (c !== c) this.fail('unterminated string', start - 1); // NaN: end of input
      i++;
    }
    let out = s.slice(start, i);
    let chunk = i;
    for (;;) {
      const c = s.charCodeAt(i);
      if (c === QUOTE) {
        this.i = i + 1;
        return out + s.slice(chunk, i);
      }
      if (c === BACKSLASH) {
        out += s.slice(chunk, i);
        const e = s.charCodeAt(i + 1);
        switch (e) {
          case 0x22: out += '"'; break;
          case 0x5c: out += '\\'; break;
          case 0x2f: out += '/'; break;
          case 0x62: out += '\b'; break;
          case 0x66: out += '\f'; break;
          case 0x6e: out += '\n'; break;
          case 0x72: out += '\r'; break;
          case 0x74: out += '\t'; break;
          case 0x75: {
            const u = this.hex4(i + 2);
            if (u >= 0xd800 && u <= 0xdbff) {
              // A high surrogate must be followed at once by an escaped low surrogate.
              const lo = s.charCodeAt(i + 6) === BACKSLASH && s.charCodeAt(i + 7) === 0x75 ? this.hex4(i + 8) : -1;
              if (lo < 0xdc00 || lo > 0xdfff) this.fail('lone surrogate escape (not a Unicode character)', i);
              out += String.fromCharCode(u, lo);
              i += 6;
            } else if (u >= 0xdc00 && u <= 0xdfff) {
              this.fail('lone surrogate escape (not a Unicode character)', i);
            } else {
              out += String.fromCharCode(u);
            }
            i += 4;
            break;
          }
          default:
            this.fail('invalid escape sequence in a string', i);
        }
        i += 2;
        chunk = i;
        continue;
      }
      if (c < 0x20) this.badStringChar(c, i);
      if (c !== c) this.fail('unterminated string', start - 1);
      i++;
    }
  }

  private hex4(at: number): number {
    let v = 0;
    for (let k = 0; k < 4; k++) {
      const c = this.s.charCodeAt(at + k);
      let d: number;
      if (c >= 0x30 && c <= 0x39) d = c - 0x30;
      else if (c >= 0x61 && c <= 0x66) d = c - 0x57;
      else if (c >= 0x41 && c <= 0x46) d = c - 0x37;
      else return this.fail('invalid \\u escape', at - 2);
      v = v * 16 + d;
    }
    return v;
  }

  private badStringChar(c: number, at: number): never {
    return this.fail(`unescaped control character U+${c.toString(16).padStart(4, '0')} in a string`, at);
  }

  private number(): number {
    const s = this.s;
    const start = this.i;
    let i = start;
    let c = s.charCodeAt(i);
    if (c === MINUS) c = s.charCodeAt(++i);
    if (c === ZERO) {
      c = s.charCodeAt(++i);
      if (isDigit(c)) this.fail('number with a leading zero', start);
    } else if (isDigit(c)) {
      do c = s.charCodeAt(++i); while (isDigit(c));
    } else {
      this.fail('invalid number', start);
    }
    if (c === DOT) {
      c = s.charCodeAt(++i);
      if (!isDigit(c)) this.fail('invalid number (no digit after the decimal point)', start);
      do c = s.charCodeAt(++i); while (isDigit(c));
    }
    if (c === 0x65 || c === 0x45) {
      c = s.charCodeAt(++i);
      if (c === 0x2b || c === MINUS) c = s.charCodeAt(++i);
      if (!isDigit(c)) this.fail('invalid number (no digit in the exponent)', start);
      do c = s.charCodeAt(++i); while (isDigit(c));
    }
    this.i = i;
    const text = s.slice(start, i);
    const n = Number(text); // the grammar above is a subset of what Number() reads, with the same meaning
    if (!Number.isFinite(n)) this.fail(`number ${text} is out of range`, start);
    if (Number.isInteger(n) && !Number.isSafeInteger(n)) {
      this.fail(`integer ${text} cannot be represented exactly (beyond ±(2^53-1))`, start);
    }
    return n === 0 ? 0 : n; // -0 and -0.0 are plain zero
  }

  private unexpected(expected?: string): never {
    const c = this.s.codePointAt(this.i);
    const got = c === undefined ? 'end of input' : `${JSON.stringify(String.fromCodePoint(c))}`;
    return this.fail(`unexpected ${got}${expected ? `, expected ${expected}` : ''}`, this.i);
  }

  /** A JSONPath-like location of the container on top of the stack, for messages. */
  private path(): string {
    let p = '$';
    // The top frame is the object whose key is being read; the frames below it are its ancestors, each in the
    // middle of its member `key` or its element number `arr.length`.
    for (let k = 0; k < this.stack.length - 1; k++) {
      const f = this.stack[k]!;
      p += f.arr !== null ? `[${f.arr.length}]` : /^[A-Za-z_][A-Za-z0-9_]*$/.test(f.key) ? `.${f.key}` : `[${JSON.stringify(f.key)}]`;
    }
    return p;
  }

  private fail(why: string, at: number): never {
    // Report a byte offset: that is what an operator can find in the fetched file.
    const byteOffset = Buffer.byteLength(this.s.slice(0, at), 'utf8');
    throw new TrustError('MALFORMED', `${this.what}: ${why} at byte ${byteOffset}`);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Canonical encodings. Both dialects escape only '"' and '\' in strings, write every other character (control
// characters, U+2028/U+2029, '<', '>', '&', non-ASCII) as raw UTF-8, sort object keys by Unicode code point (=
// the byte order of their UTF-8 encoding), and use no insignificant whitespace. On the values these encoders
// accept they produce identical bytes; they are kept apart because they answer to different reference
// implementations (docs/canonical-json.md).

type Dialect = 'Go canonical JSON (Notary)' | 'OLPC canonical JSON (TUF)';

/** Deeper than this is refused (also stops a cyclic value before the stack does). Parsed values nest ≤ maxDepth. */
const MAX_ENCODE_DEPTH = 512;

const LONE_SURROGATE = /[\ud800-\udfff]/u; // with the u flag, a well-formed surrogate pair is one code point
const HIGH_CODE_UNIT = /[\ud800-\uffff]/; // where UTF-16 order and code point order can disagree
const NEEDS_ESCAPE = /["\\]/;
const ESCAPE_ALL = /["\\]/g;

/** Orders strings by Unicode code point, which for well-formed strings is the byte order of their UTF-8. */
function compareCodePoints(a: string, b: string): number {
  const n = a.length < b.length ? a.length : b.length;
  for (let k = 0; k < n; k++) {
    let x = a.charCodeAt(k);
    let y = b.charCodeAt(k);
    if (x !== y) {
      // UTF-16 puts surrogates (astral characters, U+10000 up) below U+E000..U+FFFF; code point order puts them
      // above. Move the surrogate block above U+FFFF's code unit when both sides are in the affected range.
      if (x >= 0xd800 && y >= 0xd800) {
        x = x >= 0xe000 ? x - 0x800 : x + 0x2000;
        y = y >= 0xe000 ? y - 0x800 : y + 0x2000;
      }
      return x - y;
    }
  }
  return a.length - b.length;
}

function encodeString(s: string, dialect: Dialect): string {
  if (LONE_SURROGATE.test(s)) {
    throw new TrustError('MALFORMED', `cannot write ${dialect}: a string contains a lone surrogate (not valid UTF-8)`);
  }
  return NEEDS_ESCAPE.test(s) ? `"${s.replace(ESCAPE_ALL, '\\$&')}"` : `"${s}"`;
}

function encode(v: unknown, dialect: Dialect, depth: number): string {
  switch (typeof v) {
    case 'string':
      return encodeString(v, dialect);
    case 'number':
      if (!Number.isInteger(v)) {
        throw new TrustError('MALFORMED', `cannot write ${dialect}: cannot canonicalise a non-integer number (${v})`);
      }
      if (!Number.isSafeInteger(v)) {
        throw new TrustError('MALFORMED', `cannot write ${dialect}: integer ${v} is beyond ±(2^53-1)`);
      }
      return String(v); // -0 prints as "0", as in both reference implementations
    case 'boolean':
      return v ? 'true' : 'false';
    case 'object': {
      if (v === null) return 'null';
      if (depth >= MAX_ENCODE_DEPTH) {
        throw new TrustError('MALFORMED', `cannot write ${dialect}: nesting deeper than ${MAX_ENCODE_DEPTH} (or a cycle)`);
      }
      if (Array.isArray(v)) {
        let out = '[';
        for (let k = 0; k < v.length; k++) {
          if (k > 0) out += ',';
          out += encode(v[k], dialect, depth + 1);
        }
        return out + ']';
      }
      const proto = Object.getPrototypeOf(v) as unknown;
      if (proto !== null && proto !== Object.prototype) {
        throw new TrustError('MALFORMED', `cannot write ${dialect}: not a plain JSON object`);
      }
      const o = v as Record<string, unknown>;
      const keys = Object.keys(o);
      // The engine's default sort is UTF-16 order; it equals code point order unless a key has a code unit
      // >= U+D800, so only then pay for the comparator.
      if (keys.some((key) => HIGH_CODE_UNIT.test(key))) keys.sort(compareCodePoints);
      else keys.sort();
      let out = '{';
      for (let k = 0; k < keys.length; k++) {
        const key = keys[k]!;
        if (k > 0) out += ',';
        out += encodeString(key, dialect) + ':' + encode(o[key], dialect, depth + 1);
      }
      return out + '}';
    }
    default:
      throw new TrustError('MALFORMED', `cannot write ${dialect}: a ${typeof v} is not a JSON value`);
  }
}

/**
 * Go's canonical JSON as Notary v1 signs and verifies it (github.com/docker/go/canonical/json, MarshalCanonical):
 * keys sorted by byte order, no whitespace, only '"' and '\' escaped (no HTML or U+2028 escaping, control
 * characters raw). Notary decodes numbers to float64 and writes integral ones as integers; we write safe integers
 * and refuse anything else, so nothing we cannot reproduce exactly is ever "verified".
 */
export function canonicalGo(value: JsonValue): Buffer {
  return Buffer.from(encode(value, 'Go canonical JSON (Notary)', 0), 'utf8');
}

/**
 * OLPC canonical JSON as TUF 1.0 (securesystemslib encode_canonical) signs it: keys sorted by code point, no
 * whitespace, only '"' and '\' escaped, UTF-8, integers only (floats refused, as securesystemslib does).
 */
export function canonicalOlpc(value: JsonValue): Buffer {
  return Buffer.from(encode(value, 'OLPC canonical JSON (TUF)', 0), 'utf8');
}

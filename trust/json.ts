// PROVISIONAL: the canonical-JSON helper replaces this file's bodies; the exported signatures are the contract.
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

/** Parses bytes from an untrusted source. Throws TrustError MALFORMED / ENDLESS_DATA; never a raw SyntaxError. */
export function parseUntrustedJson(bytes: Uint8Array, opts: ParseOptions): JsonValue {
  if (bytes.byteLength > opts.maxBytes) {
    throw new TrustError('ENDLESS_DATA', `${opts.what}: ${bytes.byteLength} bytes exceeds the limit of ${opts.maxBytes}`);
  }
  try {
    return JSON.parse(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('utf8')) as JsonValue;
  } catch (e) {
    throw new TrustError('MALFORMED', `${opts.what}: not valid JSON: ${(e as Error).message}`);
  }
}

function enc(v: JsonValue): string {
  if (Array.isArray(v)) return '[' + v.map(enc).join(',') + ']';
  if (v !== null && typeof v === 'object') {
    return '{' + Object.keys(v).sort().map((k) => JSON.stringify(k) + ':' + enc(v[k]!)).join(',') + '}';
  }
  return JSON.stringify(v);
}

/** Go's canonical JSON as Notary v1 signs it (docker/go/canonical): sorted keys, no whitespace, no HTML escaping. */
export function canonicalGo(value: JsonValue): Buffer {
  return Buffer.from(enc(value), 'utf8');
}

/** OLPC canonical JSON as TUF 1.0 (securesystemslib) signs it. */
export function canonicalOlpc(value: JsonValue): Buffer {
  return Buffer.from(enc(value), 'utf8');
}

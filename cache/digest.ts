// Content digests as the cache sees them: an algorithm name and a lowercase hex string, nothing more.
// A Digest is only ever produced by parseDigest (or by hashing bytes), so any value of that type is safe to
// turn into a file name: no uppercase, no whitespace, no separators, no dots.

import { createHash } from 'node:crypto';

export type Digest = string & { readonly __brand: 'Digest' };

export type DigestAlgorithm = 'sha256' | 'sha512';

/** Hex length of each accepted algorithm. */
const HEX_LENGTH: Readonly<Record<DigestAlgorithm, number>> = { sha256: 64, sha512: 128 };

const SHA256_RE = /^sha256:[0-9a-f]{64}$/;
const SHA512_RE = /^sha512:[0-9a-f]{128}$/;

export class DigestError extends Error {
  override readonly name = 'DigestError';
  /** The refused input, cut short (a hostile caller may hand us megabytes). */
  readonly input: string;

  constructor(input: unknown, reason: string) {
    const shown = describe(input);
    super(`malformed digest ${shown}: ${reason}`);
    this.input = typeof input === 'string' ? input.slice(0, 200) : String(input).slice(0, 200);
  }
}

function describe(input: unknown): string {
  if (typeof input !== 'string') return `(${typeof input})`;
  const cut = input.length > 80 ? `${input.slice(0, 80)}…` : input;
  return JSON.stringify(cut);
}

function reasonFor(s: string): string {
  const colon = s.indexOf(':');
  if (colon < 0) return 'expected "<algorithm>:<hex>"';
  const alg = s.slice(0, colon);
  const hex = s.slice(colon + 1);
  if (alg !== 'sha256' && alg !== 'sha512') return `unsupported algorithm ${JSON.stringify(alg.slice(0, 20))} (want sha256 or sha512)`;
  if (/[^0-9a-f]/.test(hex)) {
    if (/[A-F]/.test(hex) && !/[^0-9a-fA-F]/.test(hex)) return 'hex must be lowercase';
    return 'hex part contains characters other than 0-9 a-f';
  }
  return `${alg} wants ${HEX_LENGTH[alg]} hex characters, got ${hex.length}`;
}

/** Accepts exactly `sha256:<64 lowercase hex>` or `sha512:<128 lowercase hex>`; anything else throws DigestError. */
export function parseDigest(s: string): Digest {
  if (typeof s !== 'string') throw new DigestError(s, 'not a string');
  if (SHA256_RE.test(s) || SHA512_RE.test(s)) return s as Digest;
  throw new DigestError(s, reasonFor(s));
}

/** Non-throwing form of parseDigest. */
export function isDigest(s: unknown): s is Digest {
  return typeof s === 'string' && (SHA256_RE.test(s) || SHA512_RE.test(s));
}

export function digestAlgorithm(d: Digest): DigestAlgorithm {
  return d.startsWith('sha512:') ? 'sha512' : 'sha256';
}

export function digestHex(d: Digest): string {
  return d.slice(d.indexOf(':') + 1);
}

/** Builds a Digest from an algorithm and a hex string (validated). */
export function makeDigest(algorithm: DigestAlgorithm, hex: string): Digest {
  return parseDigest(`${algorithm}:${hex}`);
}

export function sha256Digest(bytes: Uint8Array): Digest {
  return `sha256:${createHash('sha256').update(bytes).digest('hex')}` as Digest;
}

export function digestOf(algorithm: DigestAlgorithm, bytes: Uint8Array): Digest {
  return `${algorithm}:${createHash(algorithm).update(bytes).digest('hex')}` as Digest;
}

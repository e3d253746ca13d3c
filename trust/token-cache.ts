// Bearer tokens from Docker token servers (the registry token flow), shared by the Notary fetcher and the registry
// client. Keyed by the challenge (realm, service, scope) and bounded, so a server that names a new scope on every
// 401 cannot grow it; one fetch per key at a time however many requests met the challenge; and a token the server
// has just refused is never offered again (that would loop on 401).

/** A token server cannot make us keep a token longer than a day (`expires_in: 1e400` parses as Infinity). */
export const MAX_TOKEN_TTL_S = 24 * 3600;
export const DEFAULT_TOKEN_TTL_S = 60;
export const TOKEN_CACHE_MAX = 1024;
/** A token server's answer is a few KiB; read no more than this of it. */
export const TOKEN_MAX_BYTES = 256 * 1024;
const TOKEN_RE = /^[A-Za-z0-9\-._~+/]+=*$/;

export interface CachedToken {
  readonly token: string;
  /** ms since epoch */
  readonly expiresAt: number;
}

/**
 * The body of a token server's answer (`token` or OAuth2 `access_token`, `expires_in` seconds). A token must be a
 * plain token68 so it cannot smuggle header syntax; the string result says what is wrong, for the caller's own
 * error type.
 */
export function parseTokenResponse(bytes: Buffer, issuedMs: number): CachedToken | 'not JSON' | 'has no usable token' {
  let doc: unknown;
  try {
    doc = JSON.parse(bytes.toString('utf8'));
  } catch {
    return 'not JSON';
  }
  const o = (doc !== null && typeof doc === 'object' ? doc : {}) as Record<string, unknown>;
  const token = typeof o['token'] === 'string' && o['token'] ? o['token'] : o['access_token'];
  if (typeof token !== 'string' || !TOKEN_RE.test(token)) return 'has no usable token';
  const e = o['expires_in'];
  const ttl = typeof e === 'number' && Number.isFinite(e) && e > 0 ? Math.min(e, MAX_TOKEN_TTL_S) : DEFAULT_TOKEN_TTL_S;
  return { token, expiresAt: issuedMs + ttl * 1000 };
}

export class TokenCache {
  readonly #tokens = new Map<string, CachedToken>();
  readonly #flights = new Map<string, Promise<CachedToken>>();
  readonly #now: () => number;
  readonly #max: number;

  constructor(now: () => number, max = TOKEN_CACHE_MAX) {
    this.#now = now;
    this.#max = max;
  }

  /** The unexpired token for `key`, if there is one. */
  get(key: string): CachedToken | undefined {
    const t = this.#tokens.get(key);
    return t && this.#now() < t.expiresAt ? t : undefined;
  }

  /**
   * An unexpired token for `key` other than `refused` (the one the server just answered 401 to); else the result
   * of `fetch`, shared with every caller that asks for `key` while it runs.
   */
  obtain(key: string, refused: string | undefined, fetch: () => Promise<CachedToken>): Promise<CachedToken> {
    const live = this.get(key);
    if (live && live.token !== refused) return Promise.resolve(live);
    let flight = this.#flights.get(key);
    if (!flight) {
      this.#tokens.delete(key);
      flight = fetch()
        .then((t) => {
          this.#store(key, t);
          return t;
        })
        .finally(() => this.#flights.delete(key));
      this.#flights.set(key, flight);
    }
    return flight;
  }

  get size(): number {
    return this.#tokens.size;
  }

  #store(key: string, t: CachedToken): void {
    if (this.#tokens.size >= this.#max) {
      const now = this.#now();
      for (const [k, v] of this.#tokens) if (now >= v.expiresAt) this.#tokens.delete(k);
      // still full: drop the oldest (a Map keeps insertion order)
      for (const k of this.#tokens.keys()) {
        if (this.#tokens.size < this.#max) break;
        this.#tokens.delete(k);
      }
    }
    this.#tokens.set(key, t);
  }
}

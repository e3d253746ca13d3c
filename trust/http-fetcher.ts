// A small GET-only HTTP(S) client for trust metadata, over undici. It is deliberately narrow: it only ever talks to
// the origin of `baseUrl` (and, for registry token auth, to token realms on the same host or on hosts named in
// `allowedTokenHosts`), it streams bodies and aborts the transfer the moment a size limit is passed (endless data),
// it puts one deadline on each get() (slow-retrieval / slowloris), and it follows redirects by hand only within
// the same origin. Every response body is consumed or destroyed so no connection is left half-read.
import { Agent, type Dispatcher } from 'undici';
import { TrustError } from './errors.js';
import { parseTokenResponse, TOKEN_MAX_BYTES, TokenCache, type CachedToken } from './token-cache.js';

export type HttpAuth =
  | { readonly username: string; readonly password: string }
  | { readonly token: string };

export interface HttpFetcherOptions {
  /** `https://host[:port][/prefix]`; requests go to `<baseUrl><path>`. Must not contain credentials. */
  readonly baseUrl: string;
  /** PEM CA certificate(s) trusted for TLS, replacing the system trust store. */
  readonly ca?: Buffer | string;
  /** Basic credentials (sent to a token realm, or on a Basic challenge) or a static bearer token. */
  readonly auth?: HttpAuth;
  /** One deadline for a whole get(): connect, headers, body, redirects and token fetch. Default 30 000. */
  readonly timeoutMs?: number;
  /** Same-origin redirects followed per get(). Default 3. */
  readonly maxRedirects?: number;
  /** Hosts (`host` or `host:port`) other than baseUrl's host that may serve as a Bearer token realm. */
  readonly allowedTokenHosts?: readonly string[];
  /** Default `portcullis`. */
  readonly userAgent?: string;
  /** Clock for token expiry (ms since epoch). Default Date.now. */
  readonly now?: () => number;
}

export interface AuthChallenge {
  /** Lower-case scheme, e.g. `bearer`, `basic`. */
  readonly scheme: string;
  /** Parameters with lower-case names. */
  readonly params: Readonly<Record<string, string>>;
}

const REDIRECTS = new Set([301, 302, 303, 307, 308]);
const DISCARD_LIMIT = 64 * 1024;
const TCHAR = /[!#$%&'*+.^_`|~0-9A-Za-z-]/;

/** Parses a WWW-Authenticate header value into challenges (RFC 9110 §11.6.1). Lenient, never throws. */
export function parseWwwAuthenticate(value: string): AuthChallenge[] {
  const out: Array<{ scheme: string; params: Record<string, string> }> = [];
  let i = 0;
  const n = value.length;
  const skip = (re: RegExp) => {
    while (i < n && re.test(value[i]!)) i++;
  };
  const token = () => {
    const s = i;
    while (i < n && TCHAR.test(value[i]!)) i++;
    return value.slice(s, i);
  };
  while (i < n) {
    skip(/[\s,]/);
    if (i >= n) break;
    const t = token();
    if (t === '') {
      i++; // stray character
      continue;
    }
    let j = i;
    while (j < n && (value[j] === ' ' || value[j] === '\t')) j++;
    if (value[j] === '=' && out.length > 0) {
      // auth-param of the current challenge
      i = j + 1;
      skip(/[ \t]/);
      let v = '';
      if (value[i] === '"') {
        i++;
        while (i < n && value[i] !== '"') {
          if (value[i] === '\\' && i + 1 < n) i++;
          v += value[i];
          i++;
        }
        i++; // closing quote
      } else {
        v = token();
      }
      out[out.length - 1]!.params[t.toLowerCase()] = v;
    } else {
      out.push({ scheme: t.toLowerCase(), params: {} });
      // a token68 right after the scheme ("Negotiate abc==") is skipped, auth-params are not
      skip(/[ \t]/);
      const m = /^[A-Za-z0-9\-._~+/]+=*[ \t]*(?=,|$)/.exec(value.slice(i));
      if (m) i += m[0].length;
    }
  }
  return out;
}

export function isLoopback(hostname: string): boolean {
  return hostname === 'localhost' || hostname === '[::1]' || /^127\.\d+\.\d+\.\d+$/.test(hostname);
}

export function headerValues(v: string | string[] | undefined): string[] {
  if (v === undefined) return [];
  return Array.isArray(v) ? v : [v];
}

export class HttpFetcher {
  readonly baseUrl: string;
  private readonly base: URL;
  private readonly prefix: string;
  private readonly agent: Agent;
  private readonly auth: HttpAuth | undefined;
  private readonly timeoutMs: number;
  private readonly maxRedirects: number;
  private readonly allowedTokenHosts: ReadonlySet<string>;
  private readonly userAgent: string;
  private readonly now: () => number;
  private readonly tokens: TokenCache;
  /** The bearer token sent up front (the last one a challenge asked for), and its challenge key. */
  private current: { key: string; token: CachedToken } | undefined;
  /** The server asked for Basic once: send it up front from then on. */
  private basicFirst = false;
  private closed = false;

  constructor(opts: HttpFetcherOptions) {
    let base: URL;
    try {
      base = new URL(opts.baseUrl);
    } catch {
      throw new TypeError(`HttpFetcher: baseUrl is not a URL`);
    }
    if (base.protocol !== 'https:' && base.protocol !== 'http:') throw new TypeError(`HttpFetcher: baseUrl must be http(s)`);
    if (base.username || base.password) throw new TypeError('HttpFetcher: baseUrl must not contain credentials (use auth)');
    if (base.search || base.hash) throw new TypeError('HttpFetcher: baseUrl must not have a query or fragment');
    this.base = base;
    this.prefix = base.pathname.replace(/\/+$/, '');
    this.baseUrl = base.origin + this.prefix;
    this.auth = opts.auth;
    this.timeoutMs = opts.timeoutMs ?? 30_000;
    this.maxRedirects = opts.maxRedirects ?? 3;
    if (!(this.timeoutMs > 0)) throw new TypeError('HttpFetcher: timeoutMs must be > 0');
    if (!Number.isInteger(this.maxRedirects) || this.maxRedirects < 0) throw new TypeError('HttpFetcher: bad maxRedirects');
    this.allowedTokenHosts = new Set((opts.allowedTokenHosts ?? []).map((h) => h.toLowerCase()));
    this.userAgent = opts.userAgent ?? 'portcullis';
    this.now = opts.now ?? Date.now;
    this.tokens = new TokenCache(this.now);
    this.agent = new Agent({
      connect: opts.ca === undefined ? {} : { ca: opts.ca },
      keepAliveTimeout: 10_000,
      headersTimeout: this.timeoutMs,
      bodyTimeout: this.timeoutMs,
      connections: 8,
    });
  }

  /**
   * GET `<baseUrl><path>` and return the body, or null on 404. Throws TrustError ENDLESS_DATA when the body
   * exceeds `maxBytes` (the transfer is aborted at that point), TRUST_UNAVAILABLE for network errors, timeouts,
   * refused redirects or auth, and any status other than 200/404.
   */
  async get(path: string, maxBytes: number): Promise<Buffer | null> {
    if (this.closed) throw new TrustError('TRUST_UNAVAILABLE', `${this.baseUrl}: the fetcher is closed`);
    if (!Number.isSafeInteger(maxBytes) || maxBytes < 0) throw new TypeError(`HttpFetcher.get: bad maxBytes ${maxBytes}`);
    let url = this.resolve(path);
    const budget = new Budget(this.timeoutMs);
    try {
      let authTried = false;
      for (let redirects = 0; ; ) {
        const res = await this.send(url, this.authorizationFor(url), budget);
        const status = res.statusCode;
        if (status === 200) return await this.readBody(res, url, maxBytes, budget);
        if (status === 404) {
          await discard(res);
          return null;
        }
        if (REDIRECTS.has(status)) {
          const location = headerValues(res.headers.location)[0];
          await discard(res);
          url = this.redirectTarget(url, location);
          if (++redirects > this.maxRedirects) {
            throw new TrustError('TRUST_UNAVAILABLE', `GET ${redact(url)}: more than ${this.maxRedirects} redirects`);
          }
          continue;
        }
        if (status === 401 && !authTried) {
          const challenges = headerValues(res.headers['www-authenticate']).flatMap(parseWwwAuthenticate);
          await discard(res);
          authTried = true;
          await this.answerChallenge(url, challenges, budget);
          continue;
        }
        await discard(res);
        const what = status === 401 ? 'authentication refused (HTTP 401)' : status === 403 ? 'access denied (HTTP 403)' : `HTTP ${status}`;
        throw new TrustError('TRUST_UNAVAILABLE', `GET ${redact(url)}: ${what}`);
      }
    } catch (e) {
      throw this.mapError(e, url, budget);
    } finally {
      budget.dispose();
    }
  }

  /** Closes idle connections and refuses further requests. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.agent.close();
  }

  // ---------------------------------------------------------------------------------------------- internals

  private resolve(path: string): URL {
    if (!path.startsWith('/') || /[\s\\#\u0000-\u001f\u007f]/.test(path)) {
      throw new TrustError('MALFORMED', `request path ${JSON.stringify(path)} is not a clean absolute path`);
    }
    const p = path.split('?')[0]!;
    if (p.split('/').some((s) => s === '.' || s === '..' || /^(%2e|\.){1,2}$/i.test(s))) {
      throw new TrustError('MALFORMED', `request path ${JSON.stringify(path)} has dot segments`);
    }
    const url = new URL(this.base.origin + this.prefix + path);
    if (url.origin !== this.base.origin) throw new TrustError('MALFORMED', `request path ${JSON.stringify(path)} leaves ${this.base.origin}`);
    return url;
  }

  private async send(url: URL, authorization: string | undefined, budget: Budget): Promise<Dispatcher.ResponseData> {
    const headers: Record<string, string> = { 'user-agent': this.userAgent, accept: 'application/json, */*;q=0.5' };
    if (authorization !== undefined) headers.authorization = authorization;
    return this.agent.request({
      origin: url.origin,
      path: url.pathname + url.search,
      method: 'GET',
      headers,
      signal: budget.signal,
    });
  }

  private async readBody(res: Dispatcher.ResponseData, url: URL, maxBytes: number, budget: Budget): Promise<Buffer> {
    const body = res.body;
    const declared = headerValues(res.headers['content-length'])[0];
    if (declared !== undefined && /^\d+$/.test(declared) && Number(declared) > maxBytes) {
      destroyBody(res);
      throw new TrustError('ENDLESS_DATA', `GET ${redact(url)}: Content-Length ${declared} exceeds the limit of ${maxBytes} bytes`);
    }
    const chunks: Buffer[] = [];
    let total = 0;
    try {
      for await (const chunk of body as AsyncIterable<Buffer>) {
        total += chunk.length;
        if (total > maxBytes) {
          throw new TrustError('ENDLESS_DATA', `GET ${redact(url)}: body exceeds the limit of ${maxBytes} bytes`);
        }
        chunks.push(chunk);
      }
    } catch (e) {
      destroyBody(res);
      if (e instanceof TrustError) throw e;
      throw this.mapError(e, url, budget);
    }
    return Buffer.concat(chunks, total);
  }

  private redirectTarget(from: URL, location: string | undefined): URL {
    if (location === undefined) throw new TrustError('TRUST_UNAVAILABLE', `GET ${redact(from)}: redirect without a Location`);
    let to: URL;
    try {
      to = new URL(location, from);
    } catch {
      throw new TrustError('TRUST_UNAVAILABLE', `GET ${redact(from)}: redirect to an invalid Location`);
    }
    if (to.origin !== this.base.origin || to.username || to.password) {
      throw new TrustError(
        'TRUST_UNAVAILABLE',
        `GET ${redact(from)}: redirect to another host refused (${to.protocol}//${to.host})`,
      );
    }
    to.hash = '';
    return to;
  }

  private authorizationFor(url: URL): string | undefined {
    const a = this.auth;
    if (a && 'token' in a) return `Bearer ${a.token}`;
    if (this.current && this.now() < this.current.token.expiresAt) return `Bearer ${this.current.token.token}`;
    if (a && this.basicFirst && this.cleartextOk(url)) return basic(a.username, a.password);
    return undefined;
  }

  private cleartextOk(url: URL): boolean {
    return url.protocol === 'https:' || isLoopback(url.hostname);
  }

  private async answerChallenge(url: URL, challenges: AuthChallenge[], budget: Budget): Promise<void> {
    const a = this.auth;
    if (a && 'token' in a) {
      throw new TrustError('TRUST_UNAVAILABLE', `GET ${redact(url)}: authentication refused (HTTP 401) for the configured token`);
    }
    const bearer = challenges.find((c) => c.scheme === 'bearer');
    if (bearer) {
      const key = JSON.stringify([bearer.params.realm ?? '', bearer.params.service ?? '', bearer.params.scope ?? '']);
      // a token we just sent and that was refused must not be reused
      const sent = this.current && this.now() < this.current.token.expiresAt ? this.current.token.token : undefined;
      const tok = await this.tokens.obtain(key, sent, () => this.fetchToken(bearer, url, budget));
      this.current = { key, token: tok };
      return;
    }
    if (challenges.some((c) => c.scheme === 'basic') && a) {
      if (!this.cleartextOk(url)) {
        throw new TrustError('TRUST_UNAVAILABLE', `GET ${redact(url)}: refusing to send credentials over plain http`);
      }
      if (this.basicFirst) {
        throw new TrustError('TRUST_UNAVAILABLE', `GET ${redact(url)}: authentication refused (HTTP 401)`);
      }
      this.basicFirst = true;
      return;
    }
    throw new TrustError('TRUST_UNAVAILABLE', `GET ${redact(url)}: authentication required (HTTP 401)`);
  }

  private async fetchToken(ch: AuthChallenge, from: URL, budget: Budget): Promise<CachedToken> {
    const realmText = ch.params.realm;
    if (!realmText) throw new TrustError('TRUST_UNAVAILABLE', `GET ${redact(from)}: Bearer challenge without a realm`);
    let realm: URL;
    try {
      realm = new URL(realmText);
    } catch {
      throw new TrustError('TRUST_UNAVAILABLE', `GET ${redact(from)}: Bearer realm is not a URL`);
    }
    const host = realm.host.toLowerCase();
    const sameHost = realm.hostname.toLowerCase() === this.base.hostname.toLowerCase();
    if (!sameHost && !this.allowedTokenHosts.has(host) && !this.allowedTokenHosts.has(realm.hostname.toLowerCase())) {
      throw new TrustError(
        'TRUST_UNAVAILABLE',
        `GET ${redact(from)}: token realm on another host refused (${realm.protocol}//${realm.host} is not allowed)`,
      );
    }
    if (realm.protocol !== 'https:' && realm.protocol !== 'http:') {
      throw new TrustError('TRUST_UNAVAILABLE', `GET ${redact(from)}: token realm must be http(s)`);
    }
    if (realm.protocol === 'http:' && this.base.protocol === 'https:') {
      throw new TrustError('TRUST_UNAVAILABLE', `GET ${redact(from)}: token realm downgrades https to http, refused`);
    }
    if (realm.username || realm.password) throw new TrustError('TRUST_UNAVAILABLE', `GET ${redact(from)}: token realm carries credentials`);
    realm.hash = '';
    if (ch.params.service !== undefined) realm.searchParams.set('service', ch.params.service);
    if (ch.params.scope !== undefined) {
      for (const s of ch.params.scope.split(' ').filter(Boolean)) realm.searchParams.append('scope', s);
    }
    let authorization: string | undefined;
    const a = this.auth;
    if (a && 'username' in a) {
      if (!this.cleartextOk(realm)) {
        throw new TrustError('TRUST_UNAVAILABLE', `GET ${redact(realm)}: refusing to send credentials over plain http`);
      }
      authorization = basic(a.username, a.password);
    }
    const issued = this.now();
    const res = await this.send(realm, authorization, budget);
    if (res.statusCode !== 200) {
      await discard(res);
      throw new TrustError('TRUST_UNAVAILABLE', `token request to ${redact(realm)}: HTTP ${res.statusCode}`);
    }
    const bytes = await this.readBody(res, realm, TOKEN_MAX_BYTES, budget);
    const t = parseTokenResponse(bytes, issued);
    if (typeof t === 'string') throw new TrustError('TRUST_UNAVAILABLE', `token response from ${redact(realm)} ${t}`);
    return t;
  }

  private mapError(e: unknown, url: URL, budget: Budget): TrustError {
    if (e instanceof TrustError) return e;
    if (budget.timedOut()) {
      return new TrustError('TRUST_UNAVAILABLE', `GET ${redact(url)}: timed out after ${this.timeoutMs} ms`, undefined, { cause: e });
    }
    const err = e as { code?: string; message?: string };
    const detail = [err.code, err.message].filter(Boolean).join(' ');
    return new TrustError('TRUST_UNAVAILABLE', `GET ${redact(url)}: ${detail || 'request failed'}`, undefined, { cause: e });
  }
}

/** Per-get() state: one deadline and one abort signal for every exchange it makes. */
class Budget {
  private readonly controller = new AbortController();
  private expired = false;
  private readonly timer: NodeJS.Timeout;
  constructor(ms: number) {
    this.timer = setTimeout(() => {
      this.expired = true;
      this.controller.abort(new Error(`deadline of ${ms} ms passed`));
    }, ms);
  }
  get signal(): AbortSignal {
    return this.controller.signal;
  }
  timedOut(): boolean {
    return this.expired;
  }
  dispose(): void {
    clearTimeout(this.timer);
  }
}

export function basic(username: string, password: string): string {
  return 'Basic ' + Buffer.from(`${username}:${password}`, 'utf8').toString('base64');
}

/** A URL for messages: scheme, host, port and path only (no credentials, no query). */
function redact(url: URL): string {
  return url.origin + url.pathname;
}

/** Reads and drops a small body so the connection can be reused; destroys it if it is large or slow. */
export async function discard(res: Dispatcher.ResponseData): Promise<void> {
  try {
    await res.body.dump({ limit: DISCARD_LIMIT });
  } catch {
    destroyBody(res);
  }
}

/** Aborts the transfer: the connection is closed, the stream's abort error is swallowed. */
export function destroyBody(res: Dispatcher.ResponseData): void {
  res.body.on('error', () => {});
  if (!res.body.destroyed) res.body.destroy();
}

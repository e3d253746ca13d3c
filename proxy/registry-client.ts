// A read-only client for one upstream registry (the OCI distribution API), over undici. One connection pool per
// upstream (keep-alive, pipelining 1) and one Agent for the extra hosts the config allows (token realms, blob
// redirect targets such as S3/GCS/CDN hosts). Every request leaves through `dispatch()`, the only place that picks a
// dispatcher, and it refuses any host that is neither the upstream's own origin nor in `allowedHosts`.
//
// Manifests and tag lists are buffered with a size cap enforced while the bytes stream in; blobs are handed over
// as the undici body stream, untouched. Redirects are followed by hand (at most 3 hops), and the Authorization
// header never leaves the upstream's origin. Bearer tokens are fetched from the challenge's realm (allowed hosts
// only), single-flighted per scope and cached until they expire.
import type { Readable } from 'node:stream';
import { rootCertificates } from 'node:tls';
import { Agent, Pool, type Dispatcher } from 'undici';
import {
  basic,
  destroyBody,
  discard,
  headerValues,
  isLoopback,
  parseWwwAuthenticate,
  type AuthChallenge,
  type HttpAuth,
} from '../trust/http-fetcher.js';
import { parseTokenResponse, TOKEN_CACHE_MAX, TOKEN_MAX_BYTES, TokenCache, type CachedToken } from '../trust/token-cache.js';

// ------------------------------------------------------------------------------------------------ errors

export const upstreamErrorCodes = [
  /** Connection refused, DNS failure, TLS failure, connect timeout, connection reset, client closed. */
  'UNREACHABLE',
  /** No response headers, or no body bytes, within the configured time. */
  'TIMEOUT',
  /** An unexpected HTTP status (carries `status`). */
  'STATUS',
  /** A buffered body (manifest, tag list, token) is larger than its cap; the transfer was aborted. */
  'TOO_LARGE',
  /** A redirect to a host that is neither the upstream nor allowed, a downgrade to http, or too many hops. */
  'REDIRECT_REFUSED',
  /** A Bearer challenge named a token realm that is neither the upstream's host nor allowed. */
  'REALM_REFUSED',
  /** HTTP 401 after authenticating (or when no configured credential can answer the challenge). */
  'UNAUTHORIZED',
  /** HTTP 429 (carries `retryAfterS` when the upstream said). */
  'TOOMANYREQUESTS',
] as const;

export type UpstreamErrorCode = (typeof upstreamErrorCodes)[number];

export interface UpstreamErrorDetails {
  readonly repo?: string;
  readonly status?: number;
  readonly retryAfterS?: number;
}

/** A failure talking to an upstream registry. Messages name the upstream and repository, never credentials. */
export class UpstreamError extends Error {
  override readonly name = 'UpstreamError';
  readonly repo: string | undefined;
  readonly status: number | undefined;
  readonly retryAfterS: number | undefined;
  constructor(
    readonly code: UpstreamErrorCode,
    /** The upstream's config key, e.g. `docker.io`. */
    readonly upstream: string,
    message: string,
    details: UpstreamErrorDetails = {},
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.repo = details.repo;
    this.status = details.status;
    this.retryAfterS = details.retryAfterS;
  }
}

// ------------------------------------------------------------------------------------------------ options, results

export interface RegistryClientTimeouts {
  /** TCP + TLS connect. Default 10 000. */
  readonly connectMs: number;
  /** Request sent → response headers. Default 30 000. */
  readonly headersMs: number;
  /** Longest silence between two body chunks. Default 30 000. */
  readonly bodyIdleMs: number;
}

export interface RegistryClientOptions {
  /** Config key, e.g. `docker.io` or `127.0.0.1:5000`; used in messages. */
  readonly host: string;
  /** `http(s)://host[:port]`, origin only. */
  readonly url: string;
  /** PEM CA bundle trusted for the upstream instead of the system roots (for allowed extra hosts: in addition). */
  readonly ca?: Buffer | string;
  readonly auth?: HttpAuth;
  /**
   * Hosts other than the upstream's that may serve token realms or blob redirects: `host` (any port) or
   * `host:port` (that port only; the scheme's default port when the URL has none).
   */
  readonly allowedHosts?: readonly string[];
  readonly timeouts?: Partial<RegistryClientTimeouts>;
  /** Connections per origin. Default 8. */
  readonly connections?: number;
  /** Default `portcullis`. */
  readonly userAgent?: string;
  /** Clock for token expiry (ms since epoch). Default Date.now. */
  readonly now?: () => number;
}

export type ManifestResult =
  | { readonly status: 200; readonly bytes: Buffer; readonly mediaType: string; readonly digestHeader?: string }
  | { readonly status: 404 };

export type ManifestHeadResult =
  | { readonly status: 200; readonly mediaType: string; readonly digestHeader?: string; readonly size?: number }
  | { readonly status: 404 };

export type BlobResult = { readonly status: 200; readonly body: Readable; readonly size?: number } | { readonly status: 404 };

export type TagListResult = { readonly status: 200; readonly bytes: Buffer; readonly link?: string } | { readonly status: 404 };

/** Requests sent on the wire, per kind: retries, 401 re-sends and redirect hops each count. */
export interface RegistryClientStats {
  manifestGets: number;
  manifestHeads: number;
  blobGets: number;
  tagLists: number;
  tokenFetches: number;
}

export const TAG_LIST_MAX_BYTES = 1024 * 1024;
const MAX_REDIRECTS = 3;
const REDIRECTS = new Set([301, 302, 303, 307, 308]);

const REPO_RE = /^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:\/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$/;
const TAG_RE = /^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$/;
const DIGEST_RE = /^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[A-Za-z0-9=_-]+$/;
// eslint-disable-next-line no-control-regex
const HEADER_VALUE_RE = /^[\t\x20-\x7e\x80-\xff]*$/;

// ------------------------------------------------------------------------------------------------ host guard

type Route = 'upstream' | 'extra';

/**
 * The rule for where requests may go: the upstream's own origin, or a host named in `allowedHosts`; always http(s),
 * never with userinfo, never from an https upstream to plain http. Pure, so it can be tested on its own; the
 * client consults it in exactly one place.
 */
export class HostGuard {
  private readonly upstream: URL;
  private readonly allowed: ReadonlyArray<{ readonly hostname: string; readonly port: string | undefined }>;

  constructor(upstreamUrl: string, allowedHosts: readonly string[] = []) {
    this.upstream = new URL(upstreamUrl);
    this.allowed = allowedHosts.map(parseHostEntry);
  }

  check(url: URL): { readonly ok: true; readonly route: Route } | { readonly ok: false; readonly reason: string } {
    if (url.protocol !== 'http:' && url.protocol !== 'https:') return { ok: false, reason: 'not http(s)' };
    if (url.username || url.password) return { ok: false, reason: 'the URL carries credentials' };
    if (this.upstream.protocol === 'https:' && url.protocol === 'http:') return { ok: false, reason: 'downgrade from https to http' };
    if (url.origin === this.upstream.origin) return { ok: true, route: 'upstream' };
    const hostname = url.hostname.toLowerCase();
    const port = effectivePort(url);
    if (this.allowed.some((a) => a.hostname === hostname && (a.port === undefined || a.port === port))) {
      return { ok: true, route: 'extra' };
    }
    return { ok: false, reason: 'the host is neither the upstream nor in allowedHosts' };
  }
}

function parseHostEntry(entry: string): { hostname: string; port: string | undefined } {
  const m = /^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(?::(\d{1,5}))?$/.exec(entry.trim());
  if (!m) throw new TypeError(`RegistryClient: allowedHosts entry ${JSON.stringify(entry)} is not host or host:port`);
  return { hostname: m[1]!.toLowerCase(), port: m[2] === undefined ? undefined : String(Number(m[2])) };
}

function effectivePort(url: URL): string {
  return url.port || (url.protocol === 'https:' ? '443' : '80');
}

// ------------------------------------------------------------------------------------------------ client

type Kind = 'manifestGets' | 'manifestHeads' | 'blobGets' | 'tagLists' | 'tokenFetches';
type Purpose = 'request' | 'redirect' | 'realm';

interface Op {
  readonly kind: Kind;
  readonly method: 'GET' | 'HEAD';
  readonly repo: string;
  /** For messages, e.g. `GET manifest library/demo:latest`. */
  readonly what: string;
  readonly path: string;
  readonly accept?: readonly string[];
  readonly signal: AbortSignal | undefined;
  /** Shared by every exchange of one call: at most one retry in all. */
  readonly retry: { left: number };
}

/** A body stream failed; `received` bytes had arrived. */
class BodyReadError extends Error {
  constructor(
    readonly received: number,
    readonly original: unknown,
  ) {
    super('body read failed');
  }
}

export class RegistryClient {
  readonly host: string;
  readonly url: string;
  readonly stats: RegistryClientStats = { manifestGets: 0, manifestHeads: 0, blobGets: 0, tagLists: 0, tokenFetches: 0 };
  private readonly base: URL;
  private readonly guard: HostGuard;
  private readonly pool: Pool;
  private readonly extra: Agent;
  private readonly auth: HttpAuth | undefined;
  private readonly userAgent: string;
  private readonly now: () => number;
  private readonly timeouts: RegistryClientTimeouts;
  private readonly tokens: TokenCache;
  /** repo → the token cache key its last challenge named (bounded like the tokens: repo names come from clients). */
  private readonly repoTokenKey = new Map<string, string>();
  /** The upstream asked for Basic once: send it up front from then on. */
  private basicFirst = false;
  private closed = false;

  constructor(opts: RegistryClientOptions) {
    let base: URL;
    try {
      base = new URL(opts.url);
    } catch {
      throw new TypeError(`RegistryClient ${opts.host}: url is not a URL`);
    }
    if (base.protocol !== 'https:' && base.protocol !== 'http:') throw new TypeError(`RegistryClient ${opts.host}: url must be http(s)`);
    if (base.username || base.password) throw new TypeError(`RegistryClient ${opts.host}: url must not contain credentials`);
    if (base.pathname !== '/' || base.search || base.hash) throw new TypeError(`RegistryClient ${opts.host}: url must be an origin only`);
    if (opts.auth && !cleartextOk(base)) {
      throw new TypeError(`RegistryClient ${opts.host}: credentials would travel in clear text to ${base.origin}`);
    }
    this.host = opts.host;
    this.base = base;
    this.url = base.origin;
    this.guard = new HostGuard(base.origin, opts.allowedHosts ?? []);
    this.auth = opts.auth;
    this.userAgent = opts.userAgent ?? 'portcullis';
    this.now = opts.now ?? Date.now;
    this.tokens = new TokenCache(this.now);
    this.timeouts = {
      connectMs: opts.timeouts?.connectMs ?? 10_000,
      headersMs: opts.timeouts?.headersMs ?? 30_000,
      bodyIdleMs: opts.timeouts?.bodyIdleMs ?? 30_000,
    };
    for (const [k, v] of Object.entries(this.timeouts)) {
      if (!(Number.isFinite(v) && v > 0)) throw new TypeError(`RegistryClient ${opts.host}: timeouts.${k} must be > 0`);
    }
    const connections = opts.connections ?? 8;
    if (!Number.isInteger(connections) || connections < 1) throw new TypeError(`RegistryClient ${opts.host}: bad connections`);
    const common = {
      connections,
      pipelining: 1,
      keepAliveTimeout: 30_000,
      headersTimeout: this.timeouts.headersMs,
      bodyTimeout: this.timeouts.bodyIdleMs,
    };
    this.pool = new Pool(base.origin, {
      ...common,
      connect: opts.ca === undefined ? { timeout: this.timeouts.connectMs } : { timeout: this.timeouts.connectMs, ca: opts.ca },
    });
    // Extra hosts (token servers, object storage, CDNs) mostly carry public certificates: system roots, plus the
    // upstream's CA for private setups where the token server shares it.
    this.extra = new Agent({
      ...common,
      connect: opts.ca === undefined ? { timeout: this.timeouts.connectMs } : { timeout: this.timeouts.connectMs, ca: [...rootCertificates, opts.ca] },
    });
  }

  /** GET /v2/<repo>/manifests/<reference>, buffered; TOO_LARGE once more than maxBytes arrive. */
  async getManifest(repo: string, reference: string, accept: readonly string[], maxBytes: number, signal?: AbortSignal): Promise<ManifestResult> {
    checkRepo(repo);
    checkReference(reference);
    checkAccept(accept);
    if (!Number.isSafeInteger(maxBytes) || maxBytes < 0) throw new TypeError(`getManifest: bad maxBytes ${maxBytes}`);
    const op = this.op('manifestGets', 'GET', repo, `GET manifest ${repo}${refSep(reference)}${reference}`, `/v2/${repo}/manifests/${reference}`, signal, accept);
    const r = await this.buffered(op, maxBytes);
    if (r === null) return { status: 404 };
    const digestHeader = digestHeaderOf(r.headers);
    return { status: 200, bytes: r.bytes, mediaType: mediaTypeOf(r.headers), ...(digestHeader === undefined ? {} : { digestHeader }) };
  }

  /** HEAD /v2/<repo>/manifests/<reference>. */
  async headManifest(repo: string, reference: string, accept: readonly string[], signal?: AbortSignal): Promise<ManifestHeadResult> {
    checkRepo(repo);
    checkReference(reference);
    checkAccept(accept);
    const op = this.op('manifestHeads', 'HEAD', repo, `HEAD manifest ${repo}${refSep(reference)}${reference}`, `/v2/${repo}/manifests/${reference}`, signal, accept);
    try {
      const res = await this.exchange(op);
      if (res === null) return { status: 404 };
      await discard(res);
      const digestHeader = digestHeaderOf(res.headers);
      const size = contentLength(res.headers);
      return {
        status: 200,
        mediaType: mediaTypeOf(res.headers),
        ...(digestHeader === undefined ? {} : { digestHeader }),
        ...(size === undefined ? {} : { size }),
      };
    } catch (e) {
      throw this.mapError(e, op);
    }
  }

  /**
   * GET /v2/<repo>/blobs/<digest>, streaming: the returned body is the undici body stream (errors on it are undici
   * errors; `signal` still aborts it). The caller must consume or destroy it. Never retried once it is returned.
   */
  async getBlob(repo: string, digest: string, signal?: AbortSignal): Promise<BlobResult> {
    checkRepo(repo);
    if (!DIGEST_RE.test(digest)) throw new TypeError(`getBlob: bad digest ${JSON.stringify(digest.slice(0, 100))}`);
    const op = this.op('blobGets', 'GET', repo, `GET blob ${repo}@${digest}`, `/v2/${repo}/blobs/${digest}`, signal);
    try {
      const res = await this.exchange(op);
      if (res === null) return { status: 404 };
      const size = contentLength(res.headers);
      return { status: 200, body: res.body, ...(size === undefined ? {} : { size }) };
    } catch (e) {
      throw this.mapError(e, op);
    }
  }

  /** GET /v2/<repo>/tags/list[?n=&last=], buffered (cap 1 MiB); the Link header is passed through as is. */
  async listTags(repo: string, query: { readonly n?: number; readonly last?: string } = {}, signal?: AbortSignal): Promise<TagListResult> {
    checkRepo(repo);
    const q = new URLSearchParams();
    if (query.n !== undefined) {
      if (!Number.isSafeInteger(query.n) || query.n < 0) throw new TypeError(`listTags: bad n ${query.n}`);
      q.set('n', String(query.n));
    }
    if (query.last !== undefined) q.set('last', query.last);
    const qs = q.toString();
    const op = this.op('tagLists', 'GET', repo, `GET tags ${repo}`, `/v2/${repo}/tags/list${qs ? `?${qs}` : ''}`, signal);
    const r = await this.buffered(op, TAG_LIST_MAX_BYTES);
    if (r === null) return { status: 404 };
    const link = headerValues(r.headers.link).join(', ');
    return { status: 200, bytes: r.bytes, ...(link ? { link } : {}) };
  }

  /** Closes the connections once in-flight requests (and blob bodies being read) finish; later calls fail. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.all([this.pool.close(), this.extra.close()]);
  }

  // ---------------------------------------------------------------------------------------------- internals

  private op(kind: Kind, method: 'GET' | 'HEAD', repo: string, what: string, path: string, signal: AbortSignal | undefined, accept?: readonly string[]): Op {
    return { kind, method, repo, what, path, signal, retry: { left: 1 }, ...(accept === undefined ? {} : { accept }) };
  }

  /**
   * THE way out: every request, to the upstream, a redirect target or a token realm, is sent here, and the host
   * guard decides which dispatcher (if any) may carry it. Retries once on a connection-level failure when the
   * caller's retry budget allows (nothing has been received yet at this point).
   */
  private async dispatch(
    url: URL,
    purpose: Purpose,
    kind: Kind,
    method: 'GET' | 'HEAD',
    headers: Record<string, string | string[]>,
    signal: AbortSignal | undefined,
    retry: { left: number },
    repo: string,
  ): Promise<Dispatcher.ResponseData> {
    if (this.closed) throw new UpstreamError('UNREACHABLE', this.host, `upstream ${this.host}: the client is closed`, { repo });
    const verdict = this.guard.check(url);
    if (!verdict.ok) {
      const code = purpose === 'realm' ? 'REALM_REFUSED' : 'REDIRECT_REFUSED';
      const what = purpose === 'realm' ? 'token realm' : purpose === 'redirect' ? 'redirect' : 'request';
      throw new UpstreamError(code, this.host, `upstream ${this.host}: ${repo}: ${what} to ${url.protocol}//${url.host} refused (${verdict.reason})`, { repo });
    }
    const dispatcher: Dispatcher = verdict.route === 'upstream' ? this.pool : this.extra;
    for (;;) {
      this.stats[kind]++;
      try {
        return await dispatcher.request({
          origin: url.origin,
          path: url.pathname + url.search,
          method,
          headers,
          ...(signal === undefined ? {} : { signal }),
        });
      } catch (e) {
        if (retry.left > 0 && !signal?.aborted && !this.closed && isRetryable(e)) {
          retry.left--;
          continue;
        }
        throw e;
      }
    }
  }

  /**
   * Runs one operation to a final response: follows redirects (own origin or allowed hosts, at most 3 hops),
   * answers one auth challenge, maps other statuses to errors. Returns the response for 200, null for 404.
   */
  private async exchange(op: Op): Promise<Dispatcher.ResponseData | null> {
    let url = new URL(this.base.origin + op.path);
    let purpose: Purpose = 'request';
    let authTried = false;
    for (let hops = 0; ; ) {
      const sameOrigin = url.origin === this.base.origin;
      const authorization = sameOrigin ? this.authorizationFor(op.repo) : undefined;
      const headers: Record<string, string | string[]> = { 'user-agent': this.userAgent };
      if (op.accept !== undefined && op.accept.length > 0) headers.accept = [...op.accept];
      if (authorization !== undefined) headers.authorization = authorization;
      const res = await this.dispatch(url, purpose, op.kind, op.method, headers, op.signal, op.retry, op.repo);
      const status = res.statusCode;
      if (status === 200) return res;
      if (status === 404) {
        await discard(res);
        return null;
      }
      if (REDIRECTS.has(status)) {
        const location = headerValues(res.headers.location)[0];
        await discard(res);
        if (++hops > MAX_REDIRECTS) {
          throw new UpstreamError('REDIRECT_REFUSED', this.host, `upstream ${this.host}: ${op.what}: more than ${MAX_REDIRECTS} redirects`, { repo: op.repo });
        }
        if (location === undefined) {
          throw new UpstreamError('STATUS', this.host, `upstream ${this.host}: ${op.what}: HTTP ${status} without a Location`, { repo: op.repo, status });
        }
        try {
          url = new URL(location, url);
        } catch {
          throw new UpstreamError('REDIRECT_REFUSED', this.host, `upstream ${this.host}: ${op.what}: redirect to an invalid Location`, { repo: op.repo });
        }
        url.hash = '';
        purpose = 'redirect';
        continue;
      }
      if (status === 401 && sameOrigin && !authTried) {
        const challenges = headerValues(res.headers['www-authenticate']).flatMap(parseWwwAuthenticate);
        await discard(res);
        authTried = true;
        await this.answerChallenge(op, challenges, authorization);
        continue;
      }
      await discard(res);
      throw this.statusError(status, res.headers, op.what, op.repo);
    }
  }

  /** exchange() plus a capped read of the body; one retry if the body failed before its first byte. */
  private async buffered(op: Op, maxBytes: number): Promise<{ headers: Dispatcher.ResponseData['headers']; bytes: Buffer } | null> {
    try {
      for (;;) {
        const res = await this.exchange(op);
        if (res === null) return null;
        try {
          return { headers: res.headers, bytes: await this.readCapped(res, maxBytes, op.what, op.repo) };
        } catch (e) {
          if (e instanceof BodyReadError && e.received === 0 && op.retry.left > 0 && !op.signal?.aborted && isRetryable(e.original)) {
            op.retry.left--;
            continue;
          }
          throw e;
        }
      }
    } catch (e) {
      throw this.mapError(e, op);
    }
  }

  private async readCapped(res: Dispatcher.ResponseData, maxBytes: number, what: string, repo: string): Promise<Buffer> {
    const declared = contentLength(res.headers);
    if (declared !== undefined && declared > maxBytes) {
      destroyBody(res);
      throw new UpstreamError('TOO_LARGE', this.host, `upstream ${this.host}: ${what}: Content-Length ${declared} exceeds the limit of ${maxBytes} bytes`, { repo });
    }
    const chunks: Buffer[] = [];
    let total = 0;
    try {
      for await (const chunk of res.body as AsyncIterable<Buffer>) {
        total += chunk.length;
        if (total > maxBytes) {
          throw new UpstreamError('TOO_LARGE', this.host, `upstream ${this.host}: ${what}: body exceeds the limit of ${maxBytes} bytes`, { repo });
        }
        chunks.push(chunk);
      }
    } catch (e) {
      destroyBody(res);
      if (e instanceof UpstreamError) throw e;
      throw new BodyReadError(total, e);
    }
    return Buffer.concat(chunks, total);
  }

  private authorizationFor(repo: string): string | undefined {
    const a = this.auth;
    if (a && 'token' in a) return `Bearer ${a.token}`;
    const key = this.repoTokenKey.get(repo);
    const tok = key === undefined ? undefined : this.tokens.get(key);
    if (tok) return `Bearer ${tok.token}`;
    if (a && this.basicFirst) return basic(a.username, a.password);
    return undefined;
  }

  private async answerChallenge(op: Op, challenges: AuthChallenge[], sent: string | undefined): Promise<void> {
    const a = this.auth;
    if (a && 'token' in a) {
      throw new UpstreamError('UNAUTHORIZED', this.host, `upstream ${this.host}: ${op.what}: the configured token was refused (HTTP 401)`, { repo: op.repo, status: 401 });
    }
    const bearer = challenges.find((c) => c.scheme === 'bearer');
    if (bearer) {
      const realm = bearer.params.realm ?? '';
      const service = bearer.params.service;
      const scope = bearer.params.scope || `repository:${op.repo}:pull`;
      const key = JSON.stringify([realm, service ?? '', scope]);
      const sentToken = sent?.startsWith('Bearer ') ? sent.slice('Bearer '.length) : undefined;
      await raceSignal(this.tokens.obtain(key, sentToken, () => this.fetchToken(realm, service, scope, op)), op.signal);
      this.repoTokenKey.delete(op.repo);
      if (this.repoTokenKey.size >= TOKEN_CACHE_MAX) this.repoTokenKey.delete(this.repoTokenKey.keys().next().value!);
      this.repoTokenKey.set(op.repo, key);
      return;
    }
    if (a && challenges.some((c) => c.scheme === 'basic')) {
      if (sent?.startsWith('Basic ')) {
        throw new UpstreamError('UNAUTHORIZED', this.host, `upstream ${this.host}: ${op.what}: the configured credentials were refused (HTTP 401)`, { repo: op.repo, status: 401 });
      }
      this.basicFirst = true;
      return;
    }
    throw new UpstreamError('UNAUTHORIZED', this.host, `upstream ${this.host}: ${op.what}: authentication required (HTTP 401) and no configured credential answers it`, {
      repo: op.repo,
      status: 401,
    });
  }

  /** One token request (shared by every waiter of the flight, so it takes no caller signal: timeouts bound it). */
  private async fetchToken(realmText: string, service: string | undefined, scope: string, op: Op): Promise<CachedToken> {
    const what = `token for ${op.repo}`;
    let realm: URL;
    try {
      realm = new URL(realmText);
    } catch {
      throw new UpstreamError('REALM_REFUSED', this.host, `upstream ${this.host}: ${what}: the Bearer challenge has no usable realm`, { repo: op.repo });
    }
    realm.hash = '';
    if (service !== undefined) realm.searchParams.set('service', service);
    for (const s of scope.split(' ').filter(Boolean)) realm.searchParams.append('scope', s);
    const headers: Record<string, string> = { 'user-agent': this.userAgent, accept: 'application/json' };
    const a = this.auth;
    if (a && 'username' in a) {
      if (!cleartextOk(realm)) {
        throw new UpstreamError('REALM_REFUSED', this.host, `upstream ${this.host}: ${what}: refusing to send credentials over plain http to ${realm.host}`, { repo: op.repo });
      }
      headers.authorization = basic(a.username, a.password);
    }
    const retry = { left: 1 };
    try {
      for (;;) {
        const issued = this.now();
        const res = await this.dispatch(realm, 'realm', 'tokenFetches', 'GET', headers, undefined, retry, op.repo);
        if (res.statusCode !== 200) {
          await discard(res);
          throw this.statusError(res.statusCode, res.headers, `${what} (realm ${realm.host})`, op.repo);
        }
        let bytes: Buffer;
        try {
          bytes = await this.readCapped(res, TOKEN_MAX_BYTES, what, op.repo);
        } catch (e) {
          if (e instanceof BodyReadError && e.received === 0 && retry.left > 0 && isRetryable(e.original)) {
            retry.left--;
            continue;
          }
          throw e;
        }
        const t = parseTokenResponse(bytes, issued);
        if (typeof t === 'string') {
          throw new UpstreamError('UNAUTHORIZED', this.host, `upstream ${this.host}: ${what}: the token response from ${realm.host} ${t}`, { repo: op.repo });
        }
        return t;
      }
    } catch (e) {
      throw this.mapError(e, { ...op, what, signal: undefined });
    }
  }

  private statusError(status: number, headers: Dispatcher.ResponseData['headers'], what: string, repo: string): UpstreamError {
    if (status === 401) {
      return new UpstreamError('UNAUTHORIZED', this.host, `upstream ${this.host}: ${what}: authentication refused (HTTP 401)`, { repo, status });
    }
    if (status === 429) {
      const retryAfterS = retryAfter(headerValues(headers['retry-after'])[0], this.now());
      return new UpstreamError(
        'TOOMANYREQUESTS',
        this.host,
        `upstream ${this.host}: ${what}: too many requests (HTTP 429)${retryAfterS === undefined ? '' : `, retry after ${retryAfterS} s`}`,
        { repo, status, ...(retryAfterS === undefined ? {} : { retryAfterS }) },
      );
    }
    return new UpstreamError('STATUS', this.host, `upstream ${this.host}: ${what}: unexpected HTTP ${status}`, { repo, status });
  }

  /** UpstreamError as is; the caller's abort reason as is; network failures to UNREACHABLE / TIMEOUT. */
  private mapError(e: unknown, op: Pick<Op, 'what' | 'repo' | 'signal'>): unknown {
    if (e instanceof UpstreamError) return e;
    if (op.signal?.aborted) return op.signal.reason ?? e;
    const original = e instanceof BodyReadError ? e.original : e;
    const err = (original ?? {}) as { code?: string; message?: string };
    if (err.code === 'UND_ERR_HEADERS_TIMEOUT' || err.code === 'UND_ERR_BODY_TIMEOUT') {
      const phase = err.code === 'UND_ERR_HEADERS_TIMEOUT' ? `no response headers within ${this.timeouts.headersMs} ms` : `body idle for ${this.timeouts.bodyIdleMs} ms`;
      return new UpstreamError('TIMEOUT', this.host, `upstream ${this.host}: ${op.what}: ${phase}`, { repo: op.repo }, { cause: original });
    }
    const detail = [err.code, err.message].filter(Boolean).join(' ') || 'request failed';
    return new UpstreamError('UNREACHABLE', this.host, `upstream ${this.host}: ${op.what}: ${detail}`, { repo: op.repo }, { cause: original });
  }
}

// ------------------------------------------------------------------------------------------------ helpers

const RETRYABLE = new Set(['ECONNRESET', 'ECONNREFUSED', 'EPIPE', 'ECONNABORTED', 'EAI_AGAIN', 'UND_ERR_SOCKET']);

/** A connection-level failure worth one more try: reset, refused, transient DNS. Never timeouts or TLS errors. */
function isRetryable(e: unknown): boolean {
  const err = e as { code?: string; errors?: unknown[] } | null;
  if (!err) return false;
  if (typeof err.code === 'string' && RETRYABLE.has(err.code)) return true;
  return Array.isArray(err.errors) && err.errors.some(isRetryable);
}

function cleartextOk(url: URL): boolean {
  return url.protocol === 'https:' || isLoopback(url.hostname);
}

function checkRepo(repo: string): void {
  if (typeof repo !== 'string' || repo.length > 255 || !REPO_RE.test(repo)) {
    throw new TypeError(`bad repository name ${JSON.stringify(String(repo).slice(0, 100))}`);
  }
}

function checkReference(ref: string): void {
  if (typeof ref !== 'string' || !(TAG_RE.test(ref) || DIGEST_RE.test(ref))) {
    throw new TypeError(`bad reference ${JSON.stringify(String(ref).slice(0, 100))}`);
  }
}

function checkAccept(accept: readonly string[]): void {
  for (const a of accept) {
    if (typeof a !== 'string' || !HEADER_VALUE_RE.test(a)) throw new TypeError(`bad Accept value ${JSON.stringify(String(a).slice(0, 100))}`);
  }
}

function refSep(reference: string): string {
  return reference.includes(':') ? '@' : ':';
}

function mediaTypeOf(headers: Dispatcher.ResponseData['headers']): string {
  const ct = headerValues(headers['content-type'])[0] ?? '';
  return ct.split(';')[0]!.trim();
}

function digestHeaderOf(headers: Dispatcher.ResponseData['headers']): string | undefined {
  const d = headerValues(headers['docker-content-digest'])[0]?.trim();
  return d !== undefined && DIGEST_RE.test(d) ? d : undefined;
}

function contentLength(headers: Dispatcher.ResponseData['headers']): number | undefined {
  const v = headerValues(headers['content-length'])[0];
  if (v === undefined || !/^\d{1,15}$/.test(v)) return undefined;
  return Number(v);
}

function retryAfter(v: string | undefined, now: number): number | undefined {
  if (v === undefined) return undefined;
  if (/^\d{1,9}$/.test(v.trim())) return Number(v.trim());
  const t = Date.parse(v);
  return Number.isNaN(t) ? undefined : Math.max(0, Math.ceil((t - now) / 1000));
}

/** Waits for p, but rejects as soon as signal aborts (p keeps running for its other waiters). */
function raceSignal<T>(p: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (signal === undefined) return p;
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
    p.then(
      (v) => {
        signal.removeEventListener('abort', onAbort);
        resolve(v);
      },
      (e: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(e);
      },
    );
  });
}

// The writing half of the Notary v1 server client, next to the reading half (notary-client.ts):
//  - `GET /v2/<gun>/_trust/tuf/<role>.key`: the public key of a server-managed role (timestamp, or snapshot for
//    `notary init -p` / `key rotate snapshot -r`). The server CREATES the key on the first request.
//  - `POST /v2/<gun>/_trust/tuf/`: one multipart form, field "files", one part per role with the role name
//    (no .json, `targets/releases` with its slash) as the filename. The server applies the whole form or nothing.
// Same TLS options (one CA replacing the system store), same auth (Basic, a static bearer token, or a registry
// token fetched from a Bearer challenge's realm on the same host) and the same path escaping as the reader.
// Nothing here decides what is trusted: the publisher verifies what it uploads with the trust core first.
import { createHash, randomBytes } from 'node:crypto';
import { Agent, type Dispatcher } from 'undici';
import { TrustError } from './errors.js';
import {
  basic, discard, headerValues, HttpFetcher, isLoopback, parseWwwAuthenticate,
  type AuthChallenge, type HttpAuth, type HttpFetcherOptions,
} from './http-fetcher.js';
import { parseTokenResponse, TOKEN_MAX_BYTES } from './token-cache.js';
import { canonicalGo, parseUntrustedJson, type JsonObject, type JsonValue } from './json.js';
import { parseKey } from './keys.js';
import { escapeGun, notaryMetadataPath } from './notary-client.js';

/** The server's refusal of an upload (or of a key request), with Notary's error code when it sent one. */
export class NotaryUploadError extends Error {
  override readonly name = 'NotaryUploadError';
  constructor(
    /** HTTP status (0 when no answer arrived: network error, timeout). */
    readonly status: number,
    /** Notary's error code: `VERSION` (not newer than what the server has), `INVALID_UPDATE`, `UNKNOWN`… */
    readonly code: string | undefined,
    message: string,
    /** The `detail` object of the first error, as sent. */
    readonly detail?: JsonValue,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }

  /** The server has a newer version of some role than the one offered: re-read and re-apply. */
  get isVersionConflict(): boolean {
    return this.status === 400 && this.code === 'VERSION';
  }
}

/** A server-held public key: its Notary key ID and the key object as root metadata lists it. */
export interface ServerKey {
  readonly id: string;
  readonly json: JsonObject;
}

const KEY_MAX_BYTES = 64 * 1024;
const ERROR_BODY_MAX = 64 * 1024;
/** Role names a client may upload (the server refuses timestamp uploads anyway). */
const UPLOAD_ROLE = /^(root|targets|snapshot|targets(\/[A-Za-z0-9._-]+)+)$/;

export class NotaryWriter {
  readonly #reader: HttpFetcher;
  readonly #agent: Agent;
  readonly #base: URL;
  readonly #prefix: string;
  readonly #auth: HttpAuth | undefined;
  readonly #timeoutMs: number;
  readonly #allowedTokenHosts: ReadonlySet<string>;
  readonly #userAgent: string;
  #bearer: string | undefined;
  #closed = false;

  constructor(opts: HttpFetcherOptions) {
    this.#reader = new HttpFetcher(opts); // validates baseUrl the same way
    this.#base = new URL(opts.baseUrl);
    this.#prefix = this.#base.pathname.replace(/\/+$/, '');
    this.#auth = opts.auth;
    this.#timeoutMs = opts.timeoutMs ?? 30_000;
    this.#allowedTokenHosts = new Set((opts.allowedTokenHosts ?? []).map((h) => h.toLowerCase()));
    this.#userAgent = opts.userAgent ?? 'portcullis';
    this.#agent = new Agent({
      connect: opts.ca === undefined ? {} : { ca: opts.ca },
      headersTimeout: this.#timeoutMs,
      bodyTimeout: this.#timeoutMs,
      connections: 2,
    });
  }

  get baseUrl(): string {
    return this.#reader.baseUrl;
  }

  /**
   * The public key of a server-managed role (`timestamp` or `snapshot`). The server creates the key if the GUN
   * has none yet, so this has a side effect on the server, as `notary init` has.
   */
  async serverKey(gun: string, role: 'timestamp' | 'snapshot'): Promise<ServerKey> {
    const bytes = await this.#reader.get(notaryMetadataPath(gun, `${role}.key`), KEY_MAX_BYTES);
    if (bytes === null) throw new TrustError('NO_TRUST_DATA', `${this.baseUrl}: the server has no ${role} key for ${gun} (404)`, role);
    const json = parseUntrustedJson(bytes, { maxBytes: KEY_MAX_BYTES, what: `${role}.key from ${this.baseUrl}` });
    if (json === null || typeof json !== 'object' || Array.isArray(json)) throw new TrustError('MALFORMED', `${role}.key is not a key object`, role);
    const keytype = json['keytype'];
    const keyval = json['keyval'];
    const pub = keyval !== null && typeof keyval === 'object' && !Array.isArray(keyval) ? keyval['public'] : undefined;
    if (typeof keytype !== 'string' || typeof pub !== 'string') throw new TrustError('MALFORMED', `${role}.key has no keytype or public key`, role);
    // Re-serialise as Notary does (private always null) and let the trust core compute and check the ID.
    const key: JsonObject = { keytype, keyval: { private: null, public: pub } };
    const id = createHash('sha256').update(canonicalGo(key)).digest('hex');
    parseKey(id, key, 'notary'); // a key we could not verify with is refused now, not after publishing it
    return { id, json: key };
  }

  /**
   * Uploads documents of one GUN in one atomic update (role name -> exact bytes). Resolves when the server
   * accepted all of them; throws NotaryUploadError with the server's code otherwise (see `isVersionConflict`).
   */
  async upload(gun: string, files: ReadonlyMap<string, Buffer>): Promise<void> {
    if (this.#closed) throw new NotaryUploadError(0, undefined, `${this.baseUrl}: the writer is closed`);
    if (files.size === 0) throw new TypeError('NotaryWriter.upload: nothing to upload');
    const path = `/v2/${escapeGun(gun)}/_trust/tuf/`;
    const boundary = `portcullis-${randomBytes(16).toString('hex')}`;
    const parts: Buffer[] = [];
    for (const [role, bytes] of files) {
      if (!UPLOAD_ROLE.test(role) || role.split('/').some((s) => s === '.' || s === '..')) {
        throw new TypeError(`NotaryWriter.upload: ${JSON.stringify(role)} is not a role name`);
      }
      parts.push(Buffer.from(
        `--${boundary}\r\nContent-Disposition: form-data; name="files"; filename="${role}"\r\n` +
        'Content-Type: application/octet-stream\r\n\r\n', 'utf8'));
      parts.push(bytes, Buffer.from('\r\n'));
    }
    parts.push(Buffer.from(`--${boundary}--\r\n`));
    const body = Buffer.concat(parts);
    const url = new URL(this.#base.origin + this.#prefix + path);
    const contentType = `multipart/form-data; boundary=${boundary}`;
    let res = await this.#post(url, body, contentType, this.#authorization());
    if (res.statusCode === 401) {
      const challenges = headerValues(res.headers['www-authenticate']).flatMap(parseWwwAuthenticate);
      await discard(res);
      const authz = await this.#answer(url, challenges);
      res = await this.#post(url, body, contentType, authz);
    }
    if (res.statusCode >= 200 && res.statusCode < 300) {
      await discard(res);
      return;
    }
    throw await this.#errorOf(res, `POST ${url.origin}${url.pathname}`);
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await Promise.all([this.#reader.close(), this.#agent.close()]);
  }

  // ------------------------------------------------------------------------------------------- internals

  async #post(url: URL, body: Buffer, contentType: string, authorization: string | undefined): Promise<Dispatcher.ResponseData> {
    const headers: Record<string, string> = { 'user-agent': this.#userAgent, 'content-type': contentType, accept: 'application/json' };
    if (authorization !== undefined) headers.authorization = authorization;
    try {
      return await this.#agent.request({
        origin: url.origin, path: url.pathname, method: 'POST', headers, body, signal: AbortSignal.timeout(this.#timeoutMs),
      });
    } catch (e) {
      const err = e as { code?: string; message?: string };
      throw new NotaryUploadError(0, undefined, `POST ${url.origin}${url.pathname}: ${[err.code, err.message].filter(Boolean).join(' ') || 'request failed'}`, undefined, { cause: e });
    }
  }

  #authorization(): string | undefined {
    const a = this.#auth;
    if (a && 'token' in a) return `Bearer ${a.token}`;
    if (this.#bearer) return `Bearer ${this.#bearer}`;
    return undefined;
  }

  /** As HttpFetcher: credentials go out only in answer to a challenge (Basic, or a Bearer token realm). */
  async #answer(url: URL, challenges: AuthChallenge[]): Promise<string> {
    const a = this.#auth;
    const refused = () => new NotaryUploadError(401, 'UNAUTHORIZED', `POST ${url.origin}${url.pathname}: authentication refused (HTTP 401)`);
    if (!a || 'token' in a) throw refused();
    const bearer = challenges.find((c) => c.scheme === 'bearer');
    if (!bearer) {
      if (!challenges.some((c) => c.scheme === 'basic')) throw refused();
      if (url.protocol !== 'https:' && !isLoopback(url.hostname)) throw new NotaryUploadError(401, 'UNAUTHORIZED', `POST ${url.origin}${url.pathname}: refusing to send credentials over plain http`);
      return basic(a.username, a.password);
    }
    const realmText = bearer.params.realm;
    let realm: URL;
    try {
      realm = new URL(realmText ?? '');
    } catch {
      throw new NotaryUploadError(401, 'UNAUTHORIZED', `POST ${url.origin}${url.pathname}: Bearer challenge without a usable realm`);
    }
    const sameHost = realm.hostname.toLowerCase() === this.#base.hostname.toLowerCase();
    if (!sameHost && !this.#allowedTokenHosts.has(realm.host.toLowerCase()) && !this.#allowedTokenHosts.has(realm.hostname.toLowerCase())) {
      throw new NotaryUploadError(401, 'UNAUTHORIZED', `token realm on another host refused (${realm.protocol}//${realm.host} is not allowed)`);
    }
    if (realm.protocol !== 'https:' && !(realm.protocol === 'http:' && isLoopback(realm.hostname) && this.#base.protocol === 'http:')) {
      throw new NotaryUploadError(401, 'UNAUTHORIZED', `refusing to send credentials to ${realm.protocol}//${realm.host}`);
    }
    if (bearer.params.service !== undefined) realm.searchParams.set('service', bearer.params.service);
    for (const s of (bearer.params.scope ?? '').split(' ').filter(Boolean)) realm.searchParams.append('scope', s);
    let res: Dispatcher.ResponseData;
    try {
      res = await this.#agent.request({
        origin: realm.origin, path: realm.pathname + realm.search, method: 'GET',
        headers: { 'user-agent': this.#userAgent, authorization: basic(a.username, a.password) },
        signal: AbortSignal.timeout(this.#timeoutMs),
      });
    } catch (e) {
      throw new NotaryUploadError(0, undefined, `token request to ${realm.origin}${realm.pathname}: ${(e as Error).message}`, undefined, { cause: e });
    }
    if (res.statusCode !== 200) {
      await discard(res);
      throw new NotaryUploadError(401, 'UNAUTHORIZED', `token request to ${realm.origin}${realm.pathname}: HTTP ${res.statusCode}`);
    }
    const t = parseTokenResponse(await readLimited(res, TOKEN_MAX_BYTES), Date.now());
    if (typeof t === 'string') throw new NotaryUploadError(401, 'UNAUTHORIZED', `token response from ${realm.origin}${realm.pathname} ${t}`);
    const token = t.token;
    this.#bearer = token;
    return `Bearer ${token}`;
  }

  async #errorOf(res: Dispatcher.ResponseData, what: string): Promise<NotaryUploadError> {
    const text = (await readLimited(res, ERROR_BODY_MAX).catch(() => Buffer.alloc(0))).toString('utf8');
    let code: string | undefined;
    let message = text.trim().slice(0, 500);
    let detail: JsonValue | undefined;
    try {
      const doc = JSON.parse(text) as { errors?: { code?: unknown; message?: unknown; detail?: JsonValue }[] };
      const first = doc.errors?.[0];
      if (first) {
        code = typeof first.code === 'string' ? first.code : undefined;
        message = typeof first.message === 'string' ? first.message : message;
        detail = first.detail;
      }
    } catch { /* not JSON: keep the text */ }
    const d = detail !== undefined && detail !== null && JSON.stringify(detail) !== '{}' ? ` ${JSON.stringify(detail)}` : '';
    return new NotaryUploadError(res.statusCode, code, `${what}: HTTP ${res.statusCode}${code ? ` ${code}` : ''}: ${message}${d}`, detail);
  }
}

async function readLimited(res: Dispatcher.ResponseData, max: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let total = 0;
  for await (const chunk of res.body as AsyncIterable<Buffer>) {
    total += chunk.length;
    if (total > max) {
      res.body.destroy();
      break;
    }
    chunks.push(chunk);
  }
  return Buffer.concat(chunks);
}

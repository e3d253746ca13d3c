// The mirror's HTTP face: the OCI distribution read API in front of configured upstreams, with the gate on
// every manifest and blob. Bytes reach a client only when they hash to a digest the gate allowed.
import { randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { pipeline } from 'node:stream/promises';
import type { Readable } from 'node:stream';
import type { Logger } from 'pino';
import type { BlobFill } from '../cache/blob-fill.js';
import type { BlobStore, OpenBlob } from '../cache/blob-store.js';
import { sha256Digest, type Digest } from '../cache/digest.js';
import { SingleFlight } from '../cache/single-flight.js';
import type { Clock } from '../trust/clock.js';
import { sendFileRange } from './blob-send.js';
import type { TrustGate } from './gate.js';
import { inspectManifest, type ManifestInfo } from './manifest.js';
import { OciError, ociError, sendError } from './oci-errors.js';
import { Reachability } from './reachability.js';
import { parseRoute, type RepoRef } from './routes.js';
import type { UpstreamRegistry } from './upstream.js';

export interface ProxyOptions {
  readonly gate: TrustGate;
  readonly upstreams: ReadonlyMap<string, UpstreamRegistry>;
  readonly blobs: BlobStore;
  readonly fill: BlobFill;
  readonly log: Logger;
  readonly clock: Clock;
  readonly manifestMaxBytes?: number;
  /** How long content reachable from an unverified (trust: none) manifest stays servable. */
  readonly unverifiedTtlMs?: number;
}

/** A manifest whose bytes hash to the digest they were asked for: the only thing the handlers serve. */
export interface VerifiedManifest {
  readonly __brand: 'VerifiedManifest';
  readonly digest: Digest;
  readonly bytes: Buffer;
  readonly info: ManifestInfo;
}

const DEFAULT_MANIFEST_MAX = 4 * 1024 * 1024;
/** Verified manifests kept in memory (LRU): a warm GET by tag or digest then touches no file and parses no JSON. */
const HOT_MANIFESTS = { entries: 1024, bytes: 16 * 1024 * 1024, one: 1024 * 1024 } as const;
const API_HEADER = { 'Docker-Distribution-API-Version': 'registry/2.0' } as const;

export class ProxyServer {
  readonly server: Server;
  readonly #o: ProxyOptions;
  readonly #reach = new Reachability();
  readonly #manifestFetches = new SingleFlight<string, VerifiedManifest>();
  readonly #hot = new Map<Digest, VerifiedManifest>();
  #hotBytes = 0;
  readonly #upstreamHosts: ReadonlySet<string>;
  readonly #sockets = new Set<Socket>();
  #inFlight = 0;
  #draining = false;
  #drained: (() => void) | undefined;
  readonly stats = { requests: 0, denied: 0, blobHits: 0, blobFills: 0, manifestUpstream: 0 };

  constructor(o: ProxyOptions) {
    this.#o = o;
    this.#upstreamHosts = new Set(o.upstreams.keys());
    this.server = createServer({ keepAlive: true, requestTimeout: 0, headersTimeout: 30_000 }, (req, res) => this.#handle(req, res));
    this.server.on('connection', (s: Socket) => {
      this.#sockets.add(s);
      s.on('close', () => this.#sockets.delete(s));
    });
  }

  listen(port: number, host: string): Promise<{ port: number; host: string }> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, host, () => {
        this.server.off('error', reject);
        const a = this.server.address();
        resolve(typeof a === 'object' && a ? { port: a.port, host: a.address } : { port, host });
      });
    });
  }

  get ready(): boolean {
    return !this.#draining && this.server.listening;
  }

  /** SIGTERM: stop accepting, let in-flight responses finish (up to `graceMs`), then close what is left. */
  async shutdown(graceMs = 25_000): Promise<void> {
    this.#draining = true;
    const closed = new Promise<void>((r) => this.server.close(() => r()));
    this.server.closeIdleConnections();
    if (this.#inFlight > 0) {
      await Promise.race([new Promise<void>((r) => (this.#drained = r)), new Promise((r) => setTimeout(r, graceMs).unref())]);
    }
    for (const s of this.#sockets) s.destroy();
    await closed;
  }

  #handle(req: IncomingMessage, res: ServerResponse): void {
    this.stats.requests++;
    this.#inFlight++;
    res.on('close', () => {
      if (--this.#inFlight === 0 && this.#drained) this.#drained();
      if (this.#draining) this.server.closeIdleConnections();
    });
    const id = (req.headers['x-request-id'] as string | undefined)?.slice(0, 64) ?? randomUUID();
    const log = this.#o.log.child({ req: id, method: req.method, url: req.url?.slice(0, 300) });
    const head = req.method === 'HEAD';
    if (this.#draining) res.setHeader('Connection', 'close');
    this.#route(req, res, log).catch((e: unknown) => {
      if (e instanceof OciError) {
        if (e.spec.code === 'DENIED') this.stats.denied++;
        sendError(res, log, e.spec, head);
      } else {
        sendError(res, log, { code: 'UNAVAILABLE', message: `internal error: ${(e as Error)?.message ?? String(e)}`, log: { err: e } }, head);
      }
    });
  }

  async #route(req: IncomingMessage, res: ServerResponse, log: Logger): Promise<void> {
    const url = req.url ?? '/';
    const method = req.method ?? 'GET';
    if (url === '/healthz') return this.#plain(res, 200, 'ok\n');
    if (url === '/readyz') return this.ready ? this.#plain(res, 200, 'ready\n') : this.#plain(res, 503, 'draining\n');
    // Bodies are never read: a request that sends one is not a read.
    req.resume();
    const route = parseRoute(method, url, this.#upstreamHosts);
    const head = method === 'HEAD';
    switch (route.kind) {
      case 'base':
        res.writeHead(200, { ...API_HEADER, 'Content-Type': 'application/json', 'Content-Length': 2 });
        res.end(head ? undefined : '{}');
        return;
      case 'manifest':
        return route.tag !== undefined
          ? this.#manifestByTag(req, res, log, route.repo, route.tag, head)
          : this.#manifestByDigest(req, res, log, route.repo, route.digest, head);
      case 'blob':
        return this.#blob(req, res, log, route.repo, route.digest, head);
      case 'tags':
        return this.#tags(res, route.repo, route.n, route.last, head);
    }
  }

  #plain(res: ServerResponse, status: number, body: string): void {
    res.writeHead(status, { 'Content-Type': 'text/plain', 'Content-Length': Buffer.byteLength(body) });
    res.end(body);
  }

  #upstream(repo: RepoRef): UpstreamRegistry {
    const u = this.#o.upstreams.get(repo.host);
    if (!u) throw ociError('NAME_UNKNOWN', `registry ${repo.host} is not configured`);
    return u;
  }

  #accept(req: IncomingMessage): string[] {
    const raw = req.headersDistinct['accept'] ?? [];
    return raw.flatMap((v) => v.split(',')).map((s) => s.trim()).filter((s) => s.length > 0 && s.length < 256).slice(0, 32);
  }

  async #manifestByTag(req: IncomingMessage, res: ServerResponse, log: Logger, repo: RepoRef, tag: string, head: boolean): Promise<void> {
    const decision = await this.#o.gate.decideTag(repo, tag as never);
    const accept = this.#accept(req);
    if (decision.kind === 'unverified') {
      const m = await this.#fetchManifestByTag(repo, tag, accept);
      this.#reach.allow(repo.name, m.digest, undefined, this.#o.clock().getTime() + (this.#o.unverifiedTtlMs ?? 3_600_000));
      this.#reach.allowChildren(repo.name, m.info, this.#o.clock().getTime() + (this.#o.unverifiedTtlMs ?? 3_600_000));
      log.info({ event: 'decision', allow: true, repo: repo.name, tag, rule: decision.rule.match, trust: 'none', digest: m.digest }, `serving ${repo.name}:${tag} unverified (policy trust: none)`);
      return this.#sendManifest(res, m, head);
    }
    const t = decision.target;
    let m: VerifiedManifest;
    try {
      m = await this.#manifest(repo, t.digest as Digest, accept, t.length);
    } catch (e) {
      if (e instanceof OciError && e.spec.code === 'MANIFEST_UNKNOWN') {
        throw ociError('MANIFEST_UNKNOWN', `tag ${tag} of ${repo.name} is signed as ${t.digest}, but the registry does not have that manifest`, undefined, { digest: t.digest });
      }
      throw e;
    }
    const until = t.validUntil.getTime();
    this.#reach.allow(repo.name, m.digest, m.bytes.length, until);
    this.#reach.allowChildren(repo.name, m.info, until);
    log.info(
      { event: 'decision', allow: true, repo: repo.name, tag, rule: decision.rule.match, roles: t.roles, digest: t.digest, offline: decision.offline, validUntil: t.validUntil.toISOString() },
      `tag ${tag} of ${repo.name} is signed by ${t.roles.join(', ')}: serving ${t.digest}${decision.offline ? ' (offline: from stored trust data)' : ''}`,
    );
    return this.#sendManifest(res, m, head);
  }

  async #manifestByDigest(req: IncomingMessage, res: ServerResponse, log: Logger, repo: RepoRef, digest: Digest, head: boolean): Promise<void> {
    const rule = this.#o.gate.admit(repo);
    const accept = this.#accept(req);
    if (rule.trust !== 'none' && !this.#reach.allowed(repo.name, digest, this.#o.clock().getTime())) {
      if (!(await this.#o.gate.isSignedDigest(repo, digest))) {
        throw ociError('DENIED', `manifest ${digest} of ${repo.name} is neither signed nor part of a signed image`, 'NOT_REACHABLE', { rule: rule.match, digest });
      }
      this.#reach.allow(repo.name, digest, undefined, this.#o.clock().getTime() + 60_000);
    }
    const m = await this.#manifest(repo, digest, accept, this.#reach.sizeOf(repo.name, digest));
    const until = this.#reach.until(repo.name, digest) ?? this.#o.clock().getTime() + (this.#o.unverifiedTtlMs ?? 3_600_000);
    this.#reach.allowChildren(repo.name, m.info, until);
    log.debug({ event: 'manifest', repo: repo.name, digest }, 'serving manifest by digest');
    return this.#sendManifest(res, m, head);
  }

  #sendManifest(res: ServerResponse, m: VerifiedManifest, head: boolean): void {
    res.writeHead(200, {
      ...API_HEADER,
      'Content-Type': m.info.mediaType,
      'Content-Length': m.bytes.length,
      'Docker-Content-Digest': m.digest,
      ETag: `"${m.digest}"`,
    });
    res.end(head ? undefined : m.bytes);
  }

  /** A manifest by digest: from the store, else fetched once upstream and kept only if its bytes hash right. */
  async #manifest(repo: RepoRef, digest: Digest, accept: string[], expectedSize: number | undefined): Promise<VerifiedManifest> {
    const max = this.#o.manifestMaxBytes ?? DEFAULT_MANIFEST_MAX;
    const hot = this.#hot.get(digest);
    if (hot) {
      this.#hot.delete(digest);
      this.#hot.set(digest, hot);
      return hot;
    }
    const stored = await this.#o.blobs.open(digest);
    if (stored) {
      const bytes = await stored.readAll();
      return this.#remember({ __brand: 'VerifiedManifest', digest, bytes, info: inspectManifest(bytes, undefined, max) });
    }
    return this.#manifestFetches.run(`${repo.host}/${digest}`, async () => {
      this.stats.manifestUpstream++;
      const r = await this.#callUpstream(repo, () => this.#upstream(repo).getManifest(repo.path, digest, accept, max));
      if (r.status === 404) throw ociError('MANIFEST_UNKNOWN', `manifest ${digest} is not in ${repo.name}`);
      // Never trust Docker-Content-Digest: hash what arrived.
      const actual = sha256Digest(r.bytes);
      if (actual !== digest || (expectedSize !== undefined && r.bytes.length !== expectedSize)) {
        throw ociError('DENIED', `the registry served other bytes for ${repo.name}@${digest} (got ${actual}, ${r.bytes.length} bytes): refusing a tampered manifest`, 'DIGEST_MISMATCH', { digest, actual });
      }
      let info: ManifestInfo;
      try {
        info = inspectManifest(r.bytes, r.mediaType, max);
      } catch (e) {
        throw ociError('MANIFEST_INVALID', `manifest ${digest} of ${repo.name} is not valid: ${(e as Error).message}`);
      }
      await this.#o.blobs.put(digest, [r.bytes], r.bytes.length);
      return this.#remember({ __brand: 'VerifiedManifest', digest, bytes: r.bytes, info });
    });
  }

  /** Keeps a manifest whose bytes hashed to its digest in the in-memory LRU (content-addressed: never stale). */
  #remember(m: VerifiedManifest): VerifiedManifest {
    if (m.bytes.length > HOT_MANIFESTS.one || this.#hot.has(m.digest)) return m;
    this.#hot.set(m.digest, m);
    this.#hotBytes += m.bytes.length;
    for (const [d, old] of this.#hot) {
      if (this.#hot.size <= HOT_MANIFESTS.entries && this.#hotBytes <= HOT_MANIFESTS.bytes) break;
      this.#hot.delete(d);
      this.#hotBytes -= old.bytes.length;
    }
    return m;
  }

  /** A tag for `trust: none` rules: whatever the registry says now, hashed here. */
  async #fetchManifestByTag(repo: RepoRef, tag: string, accept: string[]): Promise<VerifiedManifest> {
    const max = this.#o.manifestMaxBytes ?? DEFAULT_MANIFEST_MAX;
    this.stats.manifestUpstream++;
    const r = await this.#callUpstream(repo, () => this.#upstream(repo).getManifest(repo.path, tag, accept, max));
    if (r.status === 404) throw ociError('MANIFEST_UNKNOWN', `tag ${tag} is not in ${repo.name}`);
    const digest = sha256Digest(r.bytes);
    let info: ManifestInfo;
    try {
      info = inspectManifest(r.bytes, r.mediaType, max);
    } catch (e) {
      throw ociError('MANIFEST_INVALID', `manifest ${repo.name}:${tag} is not valid: ${(e as Error).message}`);
    }
    await this.#o.blobs.put(digest, [r.bytes], r.bytes.length);
    return { __brand: 'VerifiedManifest', digest, bytes: r.bytes, info };
  }

  async #callUpstream<T>(repo: RepoRef, f: () => Promise<T>): Promise<T> {
    try {
      return await f();
    } catch (e) {
      if (e instanceof OciError) throw e;
      const code = (e as { code?: string }).code;
      if (code === 'TOOMANYREQUESTS') throw ociError('TOOMANYREQUESTS', `registry ${repo.host} asks to slow down (429)`);
      if (code === 'TOO_LARGE') throw ociError('MANIFEST_INVALID', `a manifest of ${repo.name} exceeds the size limit`);
      // Say "unreachable" when the registry could not be reached at all (connection refused, DNS, TLS): an
      // offline mirror's refusal of an uncached image must tell the operator why, not just "unavailable".
      const what = code === 'UNREACHABLE' ? 'unreachable' : 'unavailable';
      throw ociError('UNAVAILABLE', `registry ${repo.host} is ${what} for ${repo.name}: ${(e as Error).message}`, undefined, { upstreamError: code });
    }
  }

  async #blob(req: IncomingMessage, res: ServerResponse, log: Logger, repo: RepoRef, digest: Digest, head: boolean): Promise<void> {
    const rule = this.#o.gate.admit(repo);
    const now = this.#o.clock().getTime();
    if (rule.trust !== 'none' && !this.#reach.allowed(repo.name, digest, now)) {
      throw ociError('DENIED', `blob ${digest} of ${repo.name} is not part of an image this mirror has verified`, 'NOT_REACHABLE', { rule: rule.match, digest });
    }
    const range = parseRange(req.headers['range']);
    const stored = await this.#o.blobs.open(digest);
    if (stored) {
      this.stats.blobHits++;
      return this.#sendStored(res, stored, digest, range, head);
    }
    const expected = this.#reach.sizeOf(repo.name, digest);
    const handle = this.#o.fill.fill(digest, expected, async () => {
      const r = await this.#callUpstream(repo, () => this.#upstream(repo).getBlob(repo.path, digest));
      if (r.status === 404) throw ociError('BLOB_UNKNOWN', `blob ${digest} is not in ${repo.name}`);
      this.stats.blobFills++;
      return r.body;
    });
    let ready;
    try {
      ready = await handle.ready;
    } catch (e) {
      handle.stream.destroy();
      throw e;
    }
    if (range || head || ready.size === undefined) {
      // Ranges and HEAD wait for the verified copy: nothing unverified is ever served partially.
      handle.stream.destroy();
      await handle.done;
      const s = await this.#o.blobs.open(digest);
      if (!s) throw ociError('BLOB_UNKNOWN', `blob ${digest} vanished from the cache`);
      return this.#sendStored(res, s, digest, range, head);
    }
    res.writeHead(200, { ...API_HEADER, 'Content-Type': 'application/octet-stream', 'Content-Length': ready.size, 'Docker-Content-Digest': digest, 'Accept-Ranges': 'bytes' });
    log.debug({ event: 'blob-fill', digest, size: ready.size, joined: handle.joined }, 'streaming blob from upstream');
    try {
      await pipeline(handle.stream as Readable, res);
    } catch (e) {
      // The fill failed its digest check or the upstream broke: the client must see a broken transfer.
      res.destroy(e as Error);
      log.warn({ event: 'blob-aborted', digest, err: (e as Error).message }, `transfer of ${digest} aborted`);
    }
  }

  async #sendStored(res: ServerResponse, stored: OpenBlob, digest: Digest, range: { start: number; end?: number } | undefined, head: boolean): Promise<void> {
    const size = stored.size;
    if (range) {
      const end = Math.min(range.end ?? size - 1, size - 1);
      if (range.start >= size || range.start > end) {
        await stored.close();
        res.writeHead(416, { ...API_HEADER, 'Content-Range': `bytes */${size}` });
        res.end();
        return;
      }
      res.writeHead(206, { ...API_HEADER, 'Content-Type': 'application/octet-stream', 'Content-Length': end - range.start + 1, 'Content-Range': `bytes ${range.start}-${end}/${size}`, 'Docker-Content-Digest': digest, 'Accept-Ranges': 'bytes' });
      if (head) { await stored.close(); res.end(); return; }
      return this.#sendBytes(res, stored, range.start, end);
    }
    res.writeHead(200, { ...API_HEADER, 'Content-Type': 'application/octet-stream', 'Content-Length': size, 'Docker-Content-Digest': digest, 'Accept-Ranges': 'bytes', ETag: `"${digest}"` });
    if (head) { await stored.close(); res.end(); return; }
    return this.#sendBytes(res, stored, 0, size - 1);
  }

  /** Bytes [start, end] of a stored blob, from its descriptor through pooled buffers; closes it afterwards. */
  async #sendBytes(res: ServerResponse, stored: OpenBlob, start: number, end: number): Promise<void> {
    try {
      await sendFileRange(res, stored.handle.fd, start, end);
    } finally {
      await stored.close().catch(() => {});
    }
  }

  async #tags(res: ServerResponse, repo: RepoRef, n: number | undefined, last: string | undefined, head: boolean): Promise<void> {
    this.#o.gate.admit(repo);
    const r = await this.#callUpstream(repo, () => this.#upstream(repo).listTags(repo.path, { n, last }));
    if (r.status === 404) throw ociError('NAME_UNKNOWN', `repository ${repo.name} is not known upstream`);
    const headers: Record<string, string | number> = { ...API_HEADER, 'Content-Type': 'application/json', 'Content-Length': r.bytes.length };
    res.writeHead(200, headers);
    res.end(head ? undefined : r.bytes);
  }
}

function parseRange(h: string | undefined): { start: number; end?: number } | undefined {
  if (!h) return undefined;
  const m = /^bytes=(\d{1,15})-(\d{0,15})$/.exec(h.trim());
  if (!m) throw ociError('RANGE_INVALID', `unsupported Range ${JSON.stringify(h.slice(0, 100))}: only one bytes=start-[end] range is served`);
  const start = Number(m[1]);
  const end = m[2] ? Number(m[2]) : undefined;
  if (end !== undefined && end < start) throw ociError('RANGE_INVALID', 'range end before start');
  return { start, ...(end !== undefined ? { end } : {}) };
}


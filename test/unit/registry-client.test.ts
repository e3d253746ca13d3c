// RegistryClient against fake upstreams (node:http on 127.0.0.1: they produce the faults a real registry does not:
// hostile realms and redirects, endless manifests, resets, 429s, dripping blobs), then against a real distribution
// registry when /usr/bin/docker-registry is installed.
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Readable } from 'node:stream';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { HostGuard, RegistryClient, UpstreamError, type RegistryClientOptions } from '../../proxy/registry-client.js';
import { freePort } from '../harness/ports.js';
import { REGISTRY_BIN, startRegistry, type Registry } from '../harness/registry.js';

type Handler = (req: IncomingMessage, res: ServerResponse) => void;

interface Seen {
  readonly method: string;
  readonly url: string;
  readonly authorization: string | undefined;
  /** Every Accept header line, as sent. */
  readonly accept: string[];
}

interface FakeServer {
  readonly port: number;
  /** `http://127.0.0.1:<port>` */
  readonly url: string;
  /** `127.0.0.1:<port>` */
  readonly host: string;
  /** The same server as `localhost:<port>`: another host as far as the client is concerned. */
  readonly otherHost: string;
  readonly requests: Seen[];
  readonly connections: number;
  handler: Handler;
  close(): Promise<void>;
}

const servers: FakeServer[] = [];
const clients: RegistryClient[] = [];

async function fakeServer(): Promise<FakeServer> {
  const state = { requests: [] as Seen[], connections: 0, handler: ((_q, r) => json(r, 500, {})) as Handler };
  const srv: Server = createServer((req, res) => {
    const accept: string[] = [];
    for (let i = 0; i < req.rawHeaders.length; i += 2) {
      if (req.rawHeaders[i]!.toLowerCase() === 'accept') accept.push(req.rawHeaders[i + 1]!);
    }
    state.requests.push({ method: req.method ?? '', url: req.url ?? '', authorization: req.headers.authorization, accept });
    state.handler(req, res);
  });
  srv.on('connection', () => state.connections++);
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as AddressInfo).port;
  const s: FakeServer = {
    port,
    url: `http://127.0.0.1:${port}`,
    host: `127.0.0.1:${port}`,
    otherHost: `localhost:${port}`,
    get requests() {
      return state.requests;
    },
    get connections() {
      return state.connections;
    },
    get handler() {
      return state.handler;
    },
    set handler(h: Handler) {
      state.handler = h;
    },
    close: () =>
      new Promise<void>((r) => {
        srv.closeAllConnections();
        srv.close(() => r());
      }),
  };
  servers.push(s);
  return s;
}

function client(opts: Partial<RegistryClientOptions> & { url: string }): RegistryClient {
  const c = new RegistryClient({ host: 'test.example', ...opts });
  clients.push(c);
  return c;
}

function json(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const b = Buffer.from(JSON.stringify(body));
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': String(b.length), ...headers });
  res.end(b);
}

function manifestBody(n = 1): Buffer {
  return Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: OCI_MANIFEST, n }));
}

function sha256(b: Buffer): string {
  return `sha256:${createHash('sha256').update(b).digest('hex')}`;
}

function serveManifest(res: ServerResponse, body = manifestBody()): void {
  res.writeHead(200, { 'content-type': OCI_MANIFEST, 'content-length': String(body.length), 'docker-content-digest': sha256(body) });
  res.end(body);
}

async function upstreamError(p: Promise<unknown>): Promise<UpstreamError> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(UpstreamError);
    return e as UpstreamError;
  }
  throw new Error('expected a rejection');
}

async function readAll(body: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of body as AsyncIterable<Buffer>) chunks.push(c);
  return Buffer.concat(chunks);
}

function bearerChallenge(realm: string, repo = 'library/demo'): string {
  return `Bearer realm="${realm}",service="test-registry",scope="repository:${repo}:pull"`;
}

/** An upstream that wants `Bearer <token>` on every /v2/ request and answers with `routes` once it has it. */
function bearerUpstream(s: FakeServer, realm: string, token: string, routes: Handler): void {
  s.handler = (req, res) => {
    if (req.url?.startsWith('/token')) return json(res, 500, {});
    if (req.headers.authorization !== `Bearer ${token}`) {
      const repo = /^\/v2\/(.+?)\/(?:manifests|blobs|tags)\//.exec(req.url ?? '')?.[1] ?? 'library/demo';
      return json(res, 401, { errors: [{ code: 'UNAUTHORIZED' }] }, { 'www-authenticate': bearerChallenge(realm, repo) });
    }
    routes(req, res);
  };
}

const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const DIGEST = `sha256:${'ab'.repeat(32)}`;

afterEach(async () => {
  await Promise.all(clients.splice(0).map((c) => c.close()));
  await Promise.all(servers.splice(0).map((s) => s.close()));
});

// ------------------------------------------------------------------------------------------ the one place

describe('HostGuard (the single check every outgoing request passes)', () => {
  it('admits the upstream origin and allowed hosts, nothing else', () => {
    const g = new HostGuard('https://registry.example', ['auth.example', 'cdn.example:8443', '[::1]:5000']);
    const ok = (u: string) => g.check(new URL(u));
    expect(ok('https://registry.example/v2/x/blobs/y')).toEqual({ ok: true, route: 'upstream' });
    expect(ok('https://registry.example:443/v2/')).toEqual({ ok: true, route: 'upstream' });
    expect(ok('https://AUTH.example/token')).toEqual({ ok: true, route: 'extra' });
    expect(ok('https://auth.example:9999/token')).toEqual({ ok: true, route: 'extra' }); // a bare host: any port
    expect(ok('https://cdn.example:8443/x')).toEqual({ ok: true, route: 'extra' });
    expect(ok('https://[::1]:5000/x')).toEqual({ ok: true, route: 'extra' });
    for (const refused of [
      'https://cdn.example/x', // host:port entry: that port only
      'https://registry.example:5000/v2/', // another port of the upstream's hostname is another host
      'https://evil.example/x',
      'https://registry.example.evil.example/x',
      'http://registry.example/v2/', // downgrade
      'http://auth.example/token', // downgrade to an allowed host
      'https://user:pw@registry.example/v2/', // userinfo
      'ftp://auth.example/x',
      'file:///etc/passwd',
    ]) {
      expect(ok(refused).ok, refused).toBe(false);
    }
  });

  it('lets a plain-http upstream use http or https, and rejects malformed allowedHosts entries', () => {
    const g = new HostGuard('http://127.0.0.1:5000', ['localhost']);
    expect(g.check(new URL('http://127.0.0.1:5000/v2/')).ok).toBe(true);
    expect(g.check(new URL('https://localhost/x')).ok).toBe(true);
    expect(g.check(new URL('http://127.0.0.1:5001/v2/')).ok).toBe(false);
    expect(() => new HostGuard('http://127.0.0.1:5000', ['http://x.example'])).toThrow(TypeError);
    expect(() => new HostGuard('http://127.0.0.1:5000', ['x.example/path'])).toThrow(TypeError);
  });
});

// ------------------------------------------------------------------------------------------ fake upstreams

describe('RegistryClient: hosts it may talk to', () => {
  it('token realm on an unnamed host is never contacted', async () => {
    const up = await fakeServer();
    const other = await fakeServer();
    other.handler = (_q, r) => json(r, 200, { token: 'stolen' });
    for (const realmHost of [other.otherHost, other.host /* same hostname as the upstream, another port */]) {
      up.handler = (_q, r) => json(r, 401, {}, { 'www-authenticate': bearerChallenge(`http://${realmHost}/token`) });
      const c = client({ url: up.url, auth: { username: 'alice', password: 'pw-secret' } });
      const e = await upstreamError(c.getManifest('library/demo', 'latest', [OCI_MANIFEST], 1 << 20));
      expect(e.code).toBe('REALM_REFUSED');
      expect(e.message).toContain(realmHost);
      expect(e.message).toContain('test.example');
      expect(e.message).toContain('library/demo');
      expect(e.message).not.toContain('pw-secret');
      expect(c.stats.tokenFetches).toBe(0);
    }
    expect(other.requests).toHaveLength(0);
  });

  it('blob redirect to an unnamed host is refused', async () => {
    const up = await fakeServer();
    const other = await fakeServer();
    other.handler = (_q, r) => r.end('bytes');
    up.handler = (_q, r) => {
      r.writeHead(307, { location: `http://${other.otherHost}/blob?X-Amz-Signature=sig-secret` });
      r.end();
    };
    const c = client({ url: up.url, allowedHosts: ['auth.example'] });
    const e = await upstreamError(c.getBlob('library/demo', DIGEST));
    expect(e.code).toBe('REDIRECT_REFUSED');
    expect(e.message).toContain(other.otherHost);
    expect(e.message).not.toContain('sig-secret');
    expect(other.requests).toHaveLength(0);
    expect(c.stats.blobGets).toBe(1);
  });

  it('blob redirect to an allowed host does not carry the Authorization header', async () => {
    const up = await fakeServer();
    const store = await fakeServer();
    const blob = Buffer.from('layer bytes '.repeat(100));
    store.handler = (req, res) => {
      if (req.url === '/bucket/blob?sig=1') {
        res.writeHead(200, { 'content-length': String(blob.length) });
        res.end(blob);
      } else json(res, 404, {});
    };
    const routes: Handler = (req, res) => {
      if (req.url === `/v2/library/demo/blobs/${DIGEST}`) {
        // a same-origin hop first (keeps the token), then off to object storage (must drop it)
        res.writeHead(307, { location: `/v2/library/demo/blobs/${DIGEST}/redirected` });
        return res.end();
      }
      if (req.url === `/v2/library/demo/blobs/${DIGEST}/redirected`) {
        res.writeHead(307, { location: `http://${store.otherHost}/bucket/blob?sig=1` });
        return res.end();
      }
      json(res, 404, {});
    };
    bearerUpstream(up, `${up.url}/token`, 'tok-1', routes);
    const tokenServer = up.handler;
    up.handler = (req, res) => (req.url?.startsWith('/token') ? json(res, 200, { token: 'tok-1', expires_in: 300 }) : tokenServer(req, res));

    const c = client({ url: up.url, auth: { username: 'alice', password: 'pw' }, allowedHosts: [store.otherHost] });
    const r = await c.getBlob('library/demo', DIGEST);
    expect(r.status).toBe(200);
    if (r.status !== 200) return;
    expect(r.size).toBe(blob.length);
    expect(await readAll(r.body)).toEqual(blob);
    expect(store.requests).toHaveLength(1);
    expect(store.requests[0]!.authorization).toBeUndefined();
    const blobHops = up.requests.filter((q) => q.url.includes('/blobs/'));
    expect(blobHops.map((q) => q.authorization)).toEqual([undefined, 'Bearer tok-1', 'Bearer tok-1']);
    expect(c.stats.blobGets).toBe(4); // 401, 307, 307, 200
  });

  it('redirects stop after 3 hops', async () => {
    const up = await fakeServer();
    let n = 0;
    up.handler = (_q, r) => {
      r.writeHead(302, { location: `/hop/${++n}` });
      r.end();
    };
    const c = client({ url: up.url });
    const e = await upstreamError(c.getBlob('library/demo', DIGEST));
    expect(e.code).toBe('REDIRECT_REFUSED');
    expect(up.requests).toHaveLength(4);
  });
});

describe('RegistryClient: manifests', () => {
  it('manifest larger than the cap is aborted', async () => {
    const up = await fakeServer();
    let written = 0;
    let closed = false;
    up.handler = (req, res) => {
      if (req.url === '/v2/library/demo/manifests/declared') {
        res.writeHead(200, { 'content-type': OCI_MANIFEST, 'content-length': String(50 << 20) });
        res.write(Buffer.alloc(1024, 0x20));
        return;
      }
      // endless, no Content-Length
      res.writeHead(200, { 'content-type': OCI_MANIFEST });
      res.on('close', () => (closed = true));
      const chunk = Buffer.alloc(16 * 1024, 0x20);
      const pump = () => {
        while (!res.destroyed && written < 512 << 20) {
          written += chunk.length;
          if (!res.write(chunk)) return void res.once('drain', pump);
        }
      };
      pump();
    };
    const c = client({ url: up.url });
    const e = await upstreamError(c.getManifest('library/demo', 'latest', [OCI_MANIFEST], 100 * 1024));
    expect(e.code).toBe('TOO_LARGE');
    expect(e.message).toContain('library/demo');
    await expect.poll(() => closed).toBe(true);
    expect(written).toBeLessThan(64 << 20); // stopped early, not after the 512 MiB the server would send

    const d = await upstreamError(c.getManifest('library/demo', 'declared', [OCI_MANIFEST], 100 * 1024));
    expect(d.code).toBe('TOO_LARGE');
    expect(d.message).toMatch(/Content-Length/);
  });

  it('Accept list is forwarded verbatim', async () => {
    const up = await fakeServer();
    const body = manifestBody();
    up.handler = (_q, r) => serveManifest(r, body);
    const accept = [
      'application/vnd.oci.image.index.v1+json',
      'application/vnd.docker.distribution.manifest.list.v2+json; q=0.9',
      OCI_MANIFEST,
      'application/vnd.docker.distribution.manifest.v2+json',
    ];
    const c = client({ url: up.url });
    const r = await c.getManifest('library/demo', 'latest', accept, 1 << 20);
    expect(r).toEqual({ status: 200, bytes: body, mediaType: OCI_MANIFEST, digestHeader: sha256(body) });
    const h = await c.headManifest('library/demo', sha256(body), accept);
    expect(h).toEqual({ status: 200, mediaType: OCI_MANIFEST, digestHeader: sha256(body), size: body.length });
    expect(up.requests.map((q) => [q.method, q.url])).toEqual([
      ['GET', '/v2/library/demo/manifests/latest'],
      ['HEAD', `/v2/library/demo/manifests/${sha256(body)}`],
    ]);
    for (const q of up.requests) expect(q.accept).toEqual(accept);
    expect(c.stats).toMatchObject({ manifestGets: 1, manifestHeads: 1 });
  });

  it('404 is a result, other statuses are STATUS errors, and every body is consumed (one keep-alive connection)', async () => {
    const up = await fakeServer();
    up.handler = (req, res) => {
      if (req.url!.endsWith('/missing') || req.url!.includes('/blobs/')) return json(res, 404, { errors: [{ code: 'MANIFEST_UNKNOWN', detail: 'x'.repeat(5000) }] });
      if (req.url!.endsWith('/denied')) return json(res, 403, { errors: ['y'.repeat(5000)] });
      if (req.url!.endsWith('/broken')) return json(res, 502, { errors: ['z'.repeat(5000)] });
      serveManifest(res);
    };
    const c = client({ url: up.url, connections: 1 });
    for (let i = 0; i < 3; i++) {
      expect(await c.getManifest('library/demo', 'missing', [OCI_MANIFEST], 1 << 20)).toEqual({ status: 404 });
      expect(await c.headManifest('library/demo', 'missing', [OCI_MANIFEST])).toEqual({ status: 404 });
      expect(await c.getBlob('library/demo', DIGEST.replace('ab', 'cd'))).toEqual({ status: 404 });
      const denied = await upstreamError(c.getManifest('library/demo', 'denied', [OCI_MANIFEST], 1 << 20));
      expect([denied.code, denied.status]).toEqual(['STATUS', 403]);
      const broken = await upstreamError(c.getManifest('library/demo', 'broken', [OCI_MANIFEST], 1 << 20));
      expect([broken.code, broken.status]).toEqual(['STATUS', 502]);
      expect(broken.message).toMatch(/test\.example.*library\/demo:broken.*502/);
    }
    expect((await c.getManifest('library/demo', 'ok', [OCI_MANIFEST], 1 << 20)).status).toBe(200);
    // one keep-alive connection for everything, plus one per HEAD: undici closes the socket after every HEAD
    // (its guard against servers that send a body with a HEAD response)
    expect(up.connections).toBe(1 + 3);
  });

  it('a connection reset before any byte is retried once for manifests, never twice', async () => {
    const up = await fakeServer();
    let n = 0;
    up.handler = (req, res) => {
      n++;
      if (req.url!.endsWith('/flaky') && n === 1) return void req.socket.destroy();
      if (req.url!.endsWith('/dead')) return void req.socket.destroy();
      serveManifest(res);
    };
    const c = client({ url: up.url });
    expect((await c.getManifest('library/demo', 'flaky', [OCI_MANIFEST], 1 << 20)).status).toBe(200);
    expect(c.stats.manifestGets).toBe(2);
    const e = await upstreamError(c.getManifest('library/demo', 'dead', [OCI_MANIFEST], 1 << 20));
    expect(e.code).toBe('UNREACHABLE');
    expect(c.stats.manifestGets).toBe(4);
  });

  it('a manifest body cut after some bytes is not retried', async () => {
    const up = await fakeServer();
    up.handler = (_q, res) => {
      res.writeHead(200, { 'content-type': OCI_MANIFEST, 'content-length': '1000' });
      res.write('{"schemaVersion":2,', () => setTimeout(() => res.socket?.destroy(), 20));
    };
    const c = client({ url: up.url });
    const e = await upstreamError(c.getManifest('library/demo', 'latest', [OCI_MANIFEST], 1 << 20));
    expect(e.code).toBe('UNREACHABLE');
    expect(c.stats.manifestGets).toBe(1);
  });
});

describe('RegistryClient: errors', () => {
  it('connection refused is UNREACHABLE', async () => {
    const port = await freePort();
    const c = client({ url: `http://127.0.0.1:${port}`, host: `127.0.0.1:${port}` });
    const e = await upstreamError(c.getManifest('library/demo', 'latest', [OCI_MANIFEST], 1 << 20));
    expect(e.code).toBe('UNREACHABLE');
    expect(e.message).toContain(`127.0.0.1:${port}`);
    expect(e.message).toContain('library/demo');
    expect(c.stats.manifestGets).toBe(2); // one retry
    const b = await upstreamError(c.getBlob('library/demo', DIGEST));
    expect(b.code).toBe('UNREACHABLE');
  });

  it('429 is TOOMANYREQUESTS', async () => {
    const up = await fakeServer();
    up.handler = (_q, r) => json(r, 429, { errors: [{ code: 'TOOMANYREQUESTS' }] }, { 'retry-after': '7' });
    const c = client({ url: up.url });
    const e = await upstreamError(c.getManifest('library/demo', 'latest', [OCI_MANIFEST], 1 << 20));
    expect([e.code, e.status, e.retryAfterS]).toEqual(['TOOMANYREQUESTS', 429, 7]);
    const b = await upstreamError(c.getBlob('library/demo', DIGEST));
    expect(b.code).toBe('TOOMANYREQUESTS');
    expect(c.stats.manifestGets).toBe(1); // a status is not retried
  });

  it('no response headers in time is TIMEOUT', async () => {
    const up = await fakeServer();
    up.handler = () => {}; // never answers
    const c = client({ url: up.url, timeouts: { headersMs: 200 } });
    const e = await upstreamError(c.getManifest('library/demo', 'latest', [OCI_MANIFEST], 1 << 20));
    expect(e.code).toBe('TIMEOUT');
    expect(c.stats.manifestGets).toBe(1);
  });

  it("the caller's abort is passed through as is", async () => {
    const up = await fakeServer();
    up.handler = () => {};
    const c = client({ url: up.url });
    const ac = new AbortController();
    const reason = new Error('client went away');
    setTimeout(() => ac.abort(reason), 50);
    await expect(c.getManifest('library/demo', 'latest', [OCI_MANIFEST], 1 << 20, ac.signal)).rejects.toBe(reason);
  });

  it('refuses bad names before sending anything, and closes', async () => {
    const up = await fakeServer();
    const c = client({ url: up.url });
    await expect(c.getManifest('../etc', 'latest', [], 100)).rejects.toThrow(TypeError);
    await expect(c.getManifest('library/demo', 'a/b', [], 100)).rejects.toThrow(TypeError);
    await expect(c.getManifest('library/demo', 'latest', ['x\r\nInjected: 1'], 100)).rejects.toThrow(TypeError);
    await expect(c.getBlob('library/demo', 'sha256:../x')).rejects.toThrow(TypeError);
    expect(up.requests).toHaveLength(0);
    await c.close();
    expect((await upstreamError(c.getBlob('library/demo', DIGEST))).code).toBe('UNREACHABLE');
    expect(() => new RegistryClient({ host: 'x', url: 'http://registry.example', auth: { token: 't' } })).toThrow(/clear text/);
    expect(() => new RegistryClient({ host: 'x', url: 'https://registry.example/v2' })).toThrow(/origin/);
  });
});

describe('RegistryClient: auth', () => {
  it('bearer token is fetched once for concurrent requests and reused', async () => {
    const up = await fakeServer();
    let clock = 1_000_000;
    let issued = 0;
    bearerUpstream(up, `${up.url}/token`, 'tok', (_q, r) => serveManifest(r));
    const routes = up.handler;
    up.handler = (req, res) => {
      if (!req.url?.startsWith('/token')) return routes(req, res);
      issued++;
      // slow enough that all concurrent requests are waiting for it
      setTimeout(() => json(res, 200, { token: 'tok', expires_in: 120 }), 100);
    };
    const c = client({ url: up.url, now: () => clock });
    const all = await Promise.all(Array.from({ length: 8 }, () => c.getManifest('library/demo', 'latest', [OCI_MANIFEST], 1 << 20)));
    expect(all.every((r) => r.status === 200)).toBe(true);
    expect(issued).toBe(1);
    expect(c.stats.tokenFetches).toBe(1);

    // later requests of the same repo send the token up front: no 401 round trip
    const before = up.requests.length;
    await c.getManifest('library/demo', 'v2', [OCI_MANIFEST], 1 << 20);
    await c.getBlob('library/demo', DIGEST).then((r) => r.status === 200 && r.body.resume());
    expect(up.requests.slice(before).map((q) => q.authorization)).toEqual(['Bearer tok', 'Bearer tok']);
    expect(issued).toBe(1);

    // after expires_in a new token is fetched
    clock += 121_000;
    await c.getManifest('library/demo', 'latest', [OCI_MANIFEST], 1 << 20);
    expect(issued).toBe(2);
  });

  it('a refused cached token is replaced once, then UNAUTHORIZED', async () => {
    const up = await fakeServer();
    let next = 1;
    let accepted = 'tok-1';
    up.handler = (req, res) => {
      if (req.url?.startsWith('/token')) return json(res, 200, { token: `tok-${next++}` });
      if (req.headers.authorization === `Bearer ${accepted}`) return serveManifest(res);
      json(res, 401, {}, { 'www-authenticate': bearerChallenge(`${up.url}/token`) });
    };
    const c = client({ url: up.url });
    expect((await c.getManifest('library/demo', 'a', [OCI_MANIFEST], 1 << 20)).status).toBe(200);
    accepted = 'tok-2'; // revoked upstream
    expect((await c.getManifest('library/demo', 'b', [OCI_MANIFEST], 1 << 20)).status).toBe(200);
    accepted = 'never';
    const e = await upstreamError(c.getManifest('library/demo', 'c', [OCI_MANIFEST], 1 << 20));
    expect(e.code).toBe('UNAUTHORIZED');
    expect(c.stats.tokenFetches).toBe(3);
  });

  it('anonymous token flow', async () => {
    const up = await fakeServer();
    const auth = await fakeServer();
    auth.handler = (_q, r) => json(r, 200, { access_token: 'anon-tok', expires_in: 300 });
    bearerUpstream(up, `http://${auth.otherHost}/token?account=`, 'anon-tok', (req, res) => {
      if (req.url === '/v2/library/demo/tags/list?n=2&last=a') {
        return json(res, 200, { name: 'library/demo', tags: ['b', 'c'] }, { link: '</v2/library/demo/tags/list?n=2&last=c>; rel="next"' });
      }
      serveManifest(res);
    });
    const c = client({ url: up.url, allowedHosts: [auth.otherHost] });
    expect((await c.getManifest('library/demo', 'latest', [OCI_MANIFEST], 1 << 20)).status).toBe(200);
    const t = await c.listTags('library/demo', { n: 2, last: 'a' });
    expect(t.status).toBe(200);
    if (t.status !== 200) return;
    expect(JSON.parse(t.bytes.toString())).toEqual({ name: 'library/demo', tags: ['b', 'c'] });
    expect(t.link).toBe('</v2/library/demo/tags/list?n=2&last=c>; rel="next"');
    expect(auth.requests).toHaveLength(1);
    const q = new URL(auth.requests[0]!.url, 'http://x');
    expect(q.pathname).toBe('/token');
    expect(q.searchParams.get('service')).toBe('test-registry');
    expect(q.searchParams.getAll('scope')).toEqual(['repository:library/demo:pull']);
    expect(auth.requests[0]!.authorization).toBeUndefined();
    expect(c.stats).toMatchObject({ tokenFetches: 1, manifestGets: 2, tagLists: 1 });
  });

  it('basic credentials go to the realm', async () => {
    const up = await fakeServer();
    const auth = await fakeServer();
    const creds = `Basic ${Buffer.from('alice:pw-secret').toString('base64')}`;
    auth.handler = (req, r) => (req.headers.authorization === creds ? json(r, 200, { token: 'alice-tok' }) : json(r, 401, {}));
    bearerUpstream(up, `http://${auth.otherHost}/token`, 'alice-tok', (req, res) =>
      req.url!.includes('/forbidden/') ? json(res, 403, {}) : serveManifest(res),
    );
    const c = client({ url: up.url, auth: { username: 'alice', password: 'pw-secret' }, allowedHosts: ['localhost'] });
    expect((await c.getManifest('library/demo', 'latest', [OCI_MANIFEST], 1 << 20)).status).toBe(200);
    expect(auth.requests.map((q) => q.authorization)).toEqual([creds]);
    // the registry itself never sees the password
    expect(up.requests.some((q) => q.authorization?.startsWith('Basic'))).toBe(false);
    const e = await upstreamError(c.getManifest('library/forbidden', 'latest', [OCI_MANIFEST], 1 << 20));
    expect([e.code, e.status]).toEqual(['STATUS', 403]);
    expect(e.message).not.toContain('pw-secret');
    expect(e.message).not.toContain('alice-tok');

    // wrong password: the realm says 401, which is UNAUTHORIZED naming the realm host
    const bad = client({ url: up.url, auth: { username: 'alice', password: 'wrong' }, allowedHosts: ['localhost'] });
    const u = await upstreamError(bad.getManifest('library/other', 'latest', [OCI_MANIFEST], 1 << 20));
    expect(u.code).toBe('UNAUTHORIZED');
    expect(u.message).toContain(auth.otherHost);
    expect(u.message).not.toContain('wrong');
  });

  it('a Basic challenge gets the configured credentials, then they are sent up front', async () => {
    const up = await fakeServer();
    const creds = `Basic ${Buffer.from('bob:pw').toString('base64')}`;
    up.handler = (req, res) =>
      req.headers.authorization === creds ? serveManifest(res) : json(res, 401, {}, { 'www-authenticate': 'Basic realm="registry"' });
    const c = client({ url: up.url, auth: { username: 'bob', password: 'pw' } });
    await c.getManifest('library/demo', 'a', [OCI_MANIFEST], 1 << 20);
    await c.getManifest('library/demo', 'b', [OCI_MANIFEST], 1 << 20);
    expect(up.requests.map((q) => q.authorization)).toEqual([undefined, creds, creds]);
    const anon = client({ url: up.url });
    expect((await upstreamError(anon.getManifest('library/demo', 'a', [OCI_MANIFEST], 1 << 20))).code).toBe('UNAUTHORIZED');
  });
});

describe('RegistryClient: blobs', () => {
  it('blob body streams (first bytes arrive before the upstream finished sending)', async () => {
    const up = await fakeServer();
    let release!: () => void;
    const released = new Promise<void>((r) => (release = r));
    let finished = false;
    up.handler = (_q, res) => {
      res.writeHead(200, { 'content-length': String(5 + 1024 * 1024) });
      res.write('first');
      void released.then(() => {
        res.end(Buffer.alloc(1024 * 1024, 0x61), () => (finished = true));
      });
    };
    const c = client({ url: up.url });
    const r = await c.getBlob('library/demo', DIGEST);
    expect(r.status).toBe(200);
    if (r.status !== 200) return;
    expect(r.size).toBe(5 + 1024 * 1024);
    const it = (r.body as AsyncIterable<Buffer>)[Symbol.asyncIterator]();
    const first = await it.next();
    expect(first.value?.toString()).toBe('first');
    expect(finished).toBe(false);
    release();
    let rest = 0;
    for (let n = await it.next(); !n.done; n = await it.next()) rest += (n.value as Buffer).length;
    expect(rest).toBe(1024 * 1024);
    expect(finished).toBe(true);
    expect(c.stats.blobGets).toBe(1);
  });

  it('a blob cut mid-stream errors on the stream and is not retried', async () => {
    const up = await fakeServer();
    up.handler = (_q, res) => {
      res.writeHead(200, { 'content-length': '100000' });
      res.write(Buffer.alloc(1000), () => setTimeout(() => res.socket?.destroy(), 20));
    };
    const c = client({ url: up.url });
    const r = await c.getBlob('library/demo', DIGEST);
    if (r.status !== 200) throw new Error('expected 200');
    await expect(readAll(r.body)).rejects.toThrow();
    expect(c.stats.blobGets).toBe(1);
    expect(up.requests).toHaveLength(1);
  });
});

// ------------------------------------------------------------------------------------------ the real registry

describe.skipIf(!existsSync(REGISTRY_BIN))('RegistryClient against a real distribution registry', () => {
  let reg: Registry;
  const repo = 'test/demo';
  const layer = Buffer.from('hello from a tiny layer\n');
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [] } }));
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: sha256(config), size: config.length },
      layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: sha256(layer), size: layer.length }],
    }),
  );

  async function pushBlob(bytes: Buffer): Promise<void> {
    const start = await fetch(`${reg.url}/v2/${repo}/blobs/uploads/`, { method: 'POST' });
    expect(start.status).toBe(202);
    await start.arrayBuffer();
    const loc = new URL(start.headers.get('location')!, reg.url);
    loc.searchParams.set('digest', sha256(bytes));
    const put = await fetch(loc, { method: 'PUT', body: bytes, headers: { 'content-type': 'application/octet-stream' } });
    await put.arrayBuffer();
    expect(put.status).toBe(201);
  }

  beforeAll(async () => {
    reg = await startRegistry({ name: 'registry-client-test', logLevel: 'warn' });
    await pushBlob(config);
    await pushBlob(layer);
    for (const tag of ['v1', 'v2', 'v3']) {
      const put = await fetch(`${reg.url}/v2/${repo}/manifests/${tag}`, { method: 'PUT', body: manifest, headers: { 'content-type': OCI_MANIFEST } });
      await put.arrayBuffer();
      expect(put.status).toBe(201);
    }
  }, 60_000);

  afterAll(async () => {
    await reg?.stop();
  });

  it('gets manifests, streams blobs and lists tags', async () => {
    const c = client({ url: reg.url, host: reg.host });
    const m = await c.getManifest(repo, 'v1', [OCI_MANIFEST], 1 << 20);
    expect(m).toEqual({ status: 200, bytes: manifest, mediaType: OCI_MANIFEST, digestHeader: sha256(manifest) });
    expect(await c.headManifest(repo, sha256(manifest), [OCI_MANIFEST])).toEqual({
      status: 200,
      mediaType: OCI_MANIFEST,
      digestHeader: sha256(manifest),
      size: manifest.length,
    });
    expect(await c.getManifest(repo, 'nope', [OCI_MANIFEST], 1 << 20)).toEqual({ status: 404 });
    expect(await c.getManifest('test/unknown', 'v1', [OCI_MANIFEST], 1 << 20)).toEqual({ status: 404 });
    expect((await upstreamError(c.getManifest(repo, 'v1', [OCI_MANIFEST], 10))).code).toBe('TOO_LARGE');

    const b = await c.getBlob(repo, sha256(layer));
    expect(b.status).toBe(200);
    if (b.status !== 200) return;
    expect(b.size).toBe(layer.length);
    expect(await readAll(b.body)).toEqual(layer);
    expect(await c.getBlob(repo, sha256(Buffer.from('absent')))).toEqual({ status: 404 });

    const all = await c.listTags(repo);
    expect(all.status).toBe(200);
    if (all.status !== 200) return;
    expect(JSON.parse(all.bytes.toString())).toEqual({ name: repo, tags: ['v1', 'v2', 'v3'] });
    // distribution 2.8 ignores n/last (pagination came in 3.0); a paginating registry answers one tag and a Link
    const page = await c.listTags(repo, { n: 1, last: 'v1' });
    if (page.status !== 200) throw new Error('expected 200');
    const tags = (JSON.parse(page.bytes.toString()) as { tags: string[] }).tags;
    if (page.link === undefined) expect(tags).toEqual(['v1', 'v2', 'v3']);
    else {
      expect(tags).toEqual(['v2']);
      expect(page.link).toMatch(/^<\/v2\/test\/demo\/tags\/list\?.*last=v2.*>; rel="next"$/);
    }
    expect(await c.listTags('test/unknown')).toEqual({ status: 404 });
    expect(c.stats).toMatchObject({ manifestGets: 4, manifestHeads: 1, blobGets: 2, tagLists: 3, tokenFetches: 0 });
  });
});

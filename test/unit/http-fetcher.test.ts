// HttpFetcher against a local fake server: the faults here (endless or dripping bodies, cross-host redirects,
// token realms on other hosts) are ones a real Notary server does not produce on demand.
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { readFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { TrustError } from '../../trust/errors.js';
import { HttpFetcher, parseWwwAuthenticate, type HttpFetcherOptions } from '../../trust/http-fetcher.js';
import { MAX_TOKEN_TTL_S, parseTokenResponse, TokenCache } from '../../trust/token-cache.js';
import { NotaryClient, escapeGun, notaryFetcher, notaryMetadataPath } from '../../trust/notary-client.js';
import { makeTempDir, removeTempDir } from '../harness/process.js';
import { makePki, type Pki } from '../harness/tls.js';

type Handler = (req: IncomingMessage, res: ServerResponse) => void;

interface FakeServer {
  readonly port: number;
  /** `http(s)://127.0.0.1:<port>` */
  readonly url: string;
  /** Same server, by the name `localhost` (another host as far as the fetcher is concerned). */
  readonly otherHostUrl: string;
  readonly requests: Array<{ url: string; authorization: string | undefined }>;
  connections: number;
  handler: Handler;
  close(): Promise<void>;
}

const servers: FakeServer[] = [];
const fetchers: HttpFetcher[] = [];

async function fakeServer(tls?: { key: Buffer; cert: Buffer }): Promise<FakeServer> {
  const state = {
    requests: [] as FakeServer['requests'],
    connections: 0,
    handler: ((_req, res) => {
      res.statusCode = 500;
      res.end();
    }) as Handler,
  };
  const onRequest: Handler = (req, res) => {
    state.requests.push({ url: req.url ?? '', authorization: req.headers.authorization });
    state.handler(req, res);
  };
  const srv: Server = tls ? createHttpsServer(tls, onRequest) : createHttpServer(onRequest);
  srv.on('connection', () => state.connections++);
  srv.on('secureConnection', () => {});
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as AddressInfo).port;
  const scheme = tls ? 'https' : 'http';
  const s: FakeServer = {
    port,
    url: `${scheme}://127.0.0.1:${port}`,
    otherHostUrl: `${scheme}://localhost:${port}`,
    get requests() {
      return state.requests;
    },
    get connections() {
      return state.connections;
    },
    set connections(v: number) {
      state.connections = v;
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

function fetcher(opts: HttpFetcherOptions): HttpFetcher {
  const f = new HttpFetcher(opts);
  fetchers.push(f);
  return f;
}

async function rejection(p: Promise<unknown>): Promise<TrustError> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(TrustError);
    return e as TrustError;
  }
  throw new Error('expected a rejection');
}

function json(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const b = Buffer.from(JSON.stringify(body));
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': String(b.length), ...headers });
  res.end(b);
}

afterEach(async () => {
  await Promise.all(fetchers.splice(0).map((f) => f.close()));
  await Promise.all(servers.splice(0).map((s) => s.close()));
});

describe('HttpFetcher basics', () => {
  it('returns the exact body of a 200 and null for a 404', async () => {
    const s = await fakeServer();
    s.handler = (req, res) => (req.url === '/v2/x/root.json' ? json(res, 200, { signed: 1 }) : json(res, 404, { errors: [] }));
    const f = fetcher({ baseUrl: s.url });
    expect((await f.get('/v2/x/root.json', 1024))!.toString()).toBe('{"signed":1}');
    expect(await f.get('/v2/x/nope.json', 1024)).toBeNull();
  });

  it('keeps the baseUrl path prefix and reuses keep-alive connections across 200/404/500 answers (bodies consumed)', async () => {
    const s = await fakeServer();
    s.handler = (req, res) => {
      if (req.url === '/prefix/ok') return json(res, 200, 'ok');
      if (req.url === '/prefix/missing') return json(res, 404, { errors: ['x'.repeat(5000)] });
      return json(res, 500, { errors: ['y'.repeat(5000)] });
    };
    const f = fetcher({ baseUrl: `${s.url}/prefix/` });
    for (let i = 0; i < 3; i++) {
      expect((await f.get('/ok', 100))!.toString()).toBe('"ok"');
      expect(await f.get('/missing', 100)).toBeNull();
      expect((await rejection(f.get('/boom', 100))).reason).toBe('TRUST_UNAVAILABLE');
    }
    // an unconsumed body would pin its connection: 9 requests would need ever more sockets (and then hang)
    expect(s.requests).toHaveLength(9);
    expect(s.connections).toBeLessThanOrEqual(2);
  });

  it('5xx is TRUST_UNAVAILABLE naming the URL but never the credentials', async () => {
    const s = await fakeServer();
    s.handler = (_req, res) => json(res, 503, {}, { 'www-authenticate': 'Basic realm="x"' });
    const f = fetcher({ baseUrl: s.url, auth: { username: 'alice', password: 's3cret-pw' } });
    const e = await rejection(f.get('/v2/x/_trust/tuf/root.json?q=1', 100));
    expect(e.reason).toBe('TRUST_UNAVAILABLE');
    expect(e.message).toContain(`${s.url}/v2/x/_trust/tuf/root.json`);
    expect(e.message).toMatch(/503/);
    expect(e.message).not.toMatch(/s3cret|alice|YWxpY2U/);
  });

  it('a baseUrl carrying credentials is refused at construction', () => {
    expect(() => new HttpFetcher({ baseUrl: 'https://u:p@127.0.0.1:1' })).toThrow(/credentials/);
  });

  it('connection refused is TRUST_UNAVAILABLE', async () => {
    const s = await fakeServer();
    const url = s.url;
    await s.close();
    const e = await rejection(fetcher({ baseUrl: url, timeoutMs: 2000 }).get('/x', 10));
    expect(e.reason).toBe('TRUST_UNAVAILABLE');
    expect(e.message).toContain(url);
  });

  it('path tricks cannot leave the base origin: "//host" stays a path, dot segments and fragments are refused', async () => {
    const s = await fakeServer();
    s.handler = (req, res) => json(res, 200, req.url);
    const f = fetcher({ baseUrl: s.url });
    expect((await f.get('//evil.example/x', 100))!.toString()).toBe('"//evil.example/x"');
    for (const p of ['/a/../b', '/a/./b', '/a/%2e%2e/b', '/x#frag', 'relative', '/a\\b', '/a b']) {
      expect((await rejection(f.get(p, 100))).reason).toBe('MALFORMED');
    }
    expect(s.requests.map((r) => r.url)).toEqual(['//evil.example/x']);
  });
});

describe('endless data', () => {
  it('endless data: body beyond maxBytes aborts the transfer', async () => {
    const s = await fakeServer();
    let sent = 0;
    let closed!: () => void;
    const connectionClosed = new Promise<void>((r) => (closed = r));
    s.handler = (_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' }); // chunked, no length
      const chunk = Buffer.alloc(64 * 1024, 0x20);
      res.on('close', closed);
      const pump = () => {
        while (!res.destroyed && sent < 2 ** 31) {
          sent += chunk.length;
          if (!res.write(chunk)) return void res.once('drain', pump);
        }
      };
      pump();
    };
    const f = fetcher({ baseUrl: s.url });
    const e = await rejection(f.get('/timestamp.json', 1024 * 1024));
    expect(e.reason).toBe('ENDLESS_DATA');
    await connectionClosed; // the client hung up: the server is not still streaming
    expect(sent).toBeLessThan(64 * 1024 * 1024);
  });

  it('endless data: a Content-Length over the limit is refused before the body is read', async () => {
    const s = await fakeServer();
    s.handler = (_req, res) => json(res, 200, 'x'.repeat(10_000));
    const e = await rejection(fetcher({ baseUrl: s.url }).get('/root.json', 100));
    expect(e.reason).toBe('ENDLESS_DATA');
    expect(e.message).toMatch(/Content-Length 10002/);
  });

  it('a body of exactly maxBytes is accepted', async () => {
    const s = await fakeServer();
    s.handler = (_req, res) => res.end('x'.repeat(100));
    expect((await fetcher({ baseUrl: s.url }).get('/a', 100))!.length).toBe(100);
  });
});

describe('slow retrieval', () => {
  it('slow retrieval: a dripping body is cut off at the deadline', async () => {
    const s = await fakeServer();
    s.handler = (_req, res) => {
      res.writeHead(200);
      const t = setInterval(() => res.write(' '), 50);
      res.on('close', () => clearInterval(t));
    };
    const t0 = Date.now();
    const e = await rejection(fetcher({ baseUrl: s.url, timeoutMs: 600 }).get('/snapshot.json', 1 << 20));
    expect(e.reason).toBe('TRUST_UNAVAILABLE');
    expect(e.message).toMatch(/timed out after 600 ms/);
    expect(Date.now() - t0).toBeLessThan(3000);
  });

  it('slow retrieval: headers that never come time out', async () => {
    const s = await fakeServer();
    s.handler = () => {}; // never answers
    const e = await rejection(fetcher({ baseUrl: s.url, timeoutMs: 300 }).get('/root.json', 100));
    expect(e.reason).toBe('TRUST_UNAVAILABLE');
    expect(e.message).toMatch(/timed out/);
  });
});

describe('redirects', () => {
  it('redirect to another host is refused', async () => {
    const a = await fakeServer();
    const b = await fakeServer();
    b.handler = (_req, res) => json(res, 200, 'attacker metadata');
    a.handler = (_req, res) => {
      res.writeHead(302, { location: `${b.url}/root.json` });
      res.end();
    };
    const e = await rejection(fetcher({ baseUrl: a.url }).get('/root.json', 100));
    expect(e.reason).toBe('TRUST_UNAVAILABLE');
    expect(e.message).toMatch(/redirect to another host refused/);
    expect(b.requests).toHaveLength(0);
  });

  it('redirect to the same port by another host name, or to another scheme, is refused', async () => {
    const a = await fakeServer();
    a.handler = (req, res) => {
      res.writeHead(301, { location: req.url === '/1' ? `${a.otherHostUrl}/x` : `https://127.0.0.1:${a.port}/x` });
      res.end();
    };
    const f = fetcher({ baseUrl: a.url });
    expect((await rejection(f.get('/1', 100))).message).toMatch(/another host/);
    expect((await rejection(f.get('/2', 100))).message).toMatch(/another host/);
    expect(a.requests.map((r) => r.url)).toEqual(['/1', '/2']);
  });

  it('same-origin redirects are followed, at most maxRedirects times', async () => {
    const s = await fakeServer();
    s.handler = (req, res) => {
      const m = /^\/hop\/(\d+)$/.exec(req.url ?? '');
      if (m && Number(m[1]) > 0) {
        res.writeHead(307, { location: `/hop/${Number(m[1]) - 1}` });
        return void res.end();
      }
      json(res, 200, 'landed');
    };
    const f = fetcher({ baseUrl: s.url, maxRedirects: 2 });
    expect((await f.get('/hop/2', 100))!.toString()).toBe('"landed"');
    expect((await rejection(f.get('/hop/3', 100))).message).toMatch(/more than 2 redirects/);
  });
});

describe('token auth', () => {
  function registryWithTokens(s: FakeServer, realm: string, tokenServer: FakeServer, ttl = 60) {
    let issued = 0;
    let valid = '';
    tokenServer.handler = (req, res) => {
      if (!req.url?.startsWith('/token')) return json(res, 404, {});
      valid = `tok-${++issued}`;
      json(res, 200, { token: valid, expires_in: ttl });
    };
    const prev = s === tokenServer ? tokenServer.handler : undefined;
    s.handler = (req, res) => {
      if (prev && req.url?.startsWith('/token')) return prev(req, res);
      if (valid && req.headers.authorization === `Bearer ${valid}`) return json(res, 200, { ok: req.url });
      json(res, 401, { errors: [{ code: 'UNAUTHORIZED' }] }, {
        'www-authenticate': `Bearer realm="${realm}",service="notary-server",scope="repository:library/demo:pull"`,
      });
    };
    return { issued: () => issued };
  }

  it('token realm on an unnamed host is never contacted', async () => {
    const s = await fakeServer();
    const evil = await fakeServer();
    registryWithTokens(s, `${evil.otherHostUrl}/token`, evil);
    const f = fetcher({ baseUrl: s.url, auth: { username: 'alice', password: 'pw' } });
    const e = await rejection(f.get('/v2/x/_trust/tuf/root.json', 1000));
    expect(e.reason).toBe('TRUST_UNAVAILABLE');
    expect(e.message).toMatch(/token realm on another host refused/);
    expect(evil.requests).toHaveLength(0);
  });

  it('token realm on an allowed host: basic creds go to the realm only, Bearer retry, token cached until expires_in', async () => {
    const s = await fakeServer();
    const auth = await fakeServer();
    const tokens = registryWithTokens(s, `${auth.otherHostUrl}/token`, auth, 60);
    let clock = 1_000_000;
    const f = fetcher({
      baseUrl: s.url,
      auth: { username: 'alice', password: 'pw' },
      allowedTokenHosts: [`localhost:${auth.port}`],
      now: () => clock,
    });
    expect(JSON.parse((await f.get('/a', 1000))!.toString())).toEqual({ ok: '/a' });
    expect(tokens.issued()).toBe(1);
    const tokenReq = auth.requests[0]!;
    expect(tokenReq.authorization).toBe('Basic ' + Buffer.from('alice:pw').toString('base64'));
    expect(new URL(tokenReq.url, 'http://x').searchParams.get('scope')).toBe('repository:library/demo:pull');
    expect(new URL(tokenReq.url, 'http://x').searchParams.get('service')).toBe('notary-server');
    // the registry never sees the password
    expect(s.requests.every((r) => !r.authorization?.startsWith('Basic'))).toBe(true);

    clock += 59_000;
    await f.get('/b', 1000); // cached token sent up front: no 401, no token request
    expect(tokens.issued()).toBe(1);
    expect(s.requests.at(-1)!.authorization).toBe('Bearer tok-1');

    clock += 2_000; // past expires_in
    await f.get('/c', 1000);
    expect(tokens.issued()).toBe(2);
    expect(s.requests.at(-1)!.authorization).toBe('Bearer tok-2');
  });

  it('same-host realm without credentials: anonymous token request', async () => {
    const s = await fakeServer();
    const tokens = registryWithTokens(s, `${s.url}/token`, s);
    const f = fetcher({ baseUrl: s.url });
    await f.get('/a', 1000);
    expect(tokens.issued()).toBe(1);
    const tokenReq = s.requests.find((r) => r.url.startsWith('/token'))!;
    expect(tokenReq.authorization).toBeUndefined();
  });

  it('a token that is refused again is not retried in a loop', async () => {
    const s = await fakeServer();
    let tokenRequests = 0;
    s.handler = (req, res) => {
      if (req.url?.startsWith('/token')) {
        tokenRequests++;
        return json(res, 200, { access_token: 'abc' });
      }
      json(res, 401, {}, { 'www-authenticate': `Bearer realm="${s.url}/token",service="x"` });
    };
    const e = await rejection(fetcher({ baseUrl: s.url }).get('/a', 100));
    expect(e.reason).toBe('TRUST_UNAVAILABLE');
    expect(e.message).toMatch(/401/);
    expect(tokenRequests).toBe(1);
    expect(s.requests.filter((r) => !r.url.startsWith('/token'))).toHaveLength(2);
  });

  it('a token realm that downgrades https to http is refused', async () => {
    const dir = makeTempDir('portcullis-fetcher-tls');
    try {
      const pki = await makePki(dir, ['server']);
      const c = pki.certs.server!;
      const s = await fakeServer({ key: readFileSync(c.keyPath), cert: readFileSync(c.certPath) });
      const plain = await fakeServer();
      s.handler = (_req, res) => json(res, 401, {}, { 'www-authenticate': `Bearer realm="${plain.url}/token"` });
      const f = fetcher({ baseUrl: s.url, ca: pki.caPem(), auth: { username: 'u', password: 'p' } });
      expect((await rejection(f.get('/a', 100))).message).toMatch(/downgrades https to http/);
      expect(plain.requests).toHaveLength(0);
    } finally {
      removeTempDir(dir);
    }
  });

  it('a static token is sent up front; Basic challenge is answered with the configured credentials', async () => {
    const s = await fakeServer();
    s.handler = (req, res) => json(res, req.headers.authorization === 'Bearer static-1' ? 200 : 401, {});
    await fetcher({ baseUrl: s.url, auth: { token: 'static-1' } }).get('/a', 100);
    expect(s.requests[0]!.authorization).toBe('Bearer static-1');

    const b = await fakeServer();
    const cred = 'Basic ' + Buffer.from('bob:pw').toString('base64');
    b.handler = (req, res) => json(res, req.headers.authorization === cred ? 200 : 401, {}, { 'www-authenticate': 'Basic realm="notary"' });
    const f = fetcher({ baseUrl: b.url, auth: { username: 'bob', password: 'pw' } });
    await f.get('/a', 100);
    await f.get('/b', 100);
    expect(b.requests.map((r) => r.authorization)).toEqual([undefined, cred, cred]);
  });

  it('parses WWW-Authenticate challenges', () => {
    expect(parseWwwAuthenticate('Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull"')).toEqual([
      { scheme: 'bearer', params: { realm: 'https://auth.example/token', service: 'registry.example', scope: 'repository:a/b:pull' } },
    ]);
    expect(parseWwwAuthenticate('Newauth realm="apps", type=1, title="Login to \\"apps\\"", Basic realm="simple"')).toEqual([
      { scheme: 'newauth', params: { realm: 'apps', type: '1', title: 'Login to "apps"' } },
      { scheme: 'basic', params: { realm: 'simple' } },
    ]);
    expect(parseWwwAuthenticate('Negotiate abc==, Bearer realm=x')).toEqual([
      { scheme: 'negotiate', params: {} },
      { scheme: 'bearer', params: { realm: 'x' } },
    ]);
    expect(parseWwwAuthenticate('')).toEqual([]);
  });
});

describe('TLS', () => {
  let dir: string;
  let pki: Pki;
  beforeAll(async () => {
    dir = makeTempDir('portcullis-fetcher-tls');
    pki = await makePki(dir, ['notary-server']);
  });
  afterAll(() => removeTempDir(dir));

  it('a server certificate from a CA that was not configured is refused; with the CA it is accepted', async () => {
    const c = pki.certs['notary-server']!;
    const s = await fakeServer({ key: readFileSync(c.keyPath), cert: readFileSync(c.certPath) });
    s.handler = (_req, res) => json(res, 200, 'tls ok');
    const e = await rejection(fetcher({ baseUrl: s.url, timeoutMs: 5000 }).get('/root.json', 100));
    expect(e.reason).toBe('TRUST_UNAVAILABLE');
    expect(e.message).toMatch(/certificate|self.signed|issuer/i);
    expect((await fetcher({ baseUrl: s.url, ca: pki.caPem() }).get('/root.json', 100))!.toString()).toBe('"tls ok"');
    expect((await fetcher({ baseUrl: s.url, ca: readFileSync(pki.ca.certPath) }).get('/root.json', 100))!.toString()).toBe('"tls ok"');
  });
});

describe('NotaryClient paths', () => {
  it('fetches /v2/<gun>/_trust/tuf/<name> with the GUN escaped per segment', async () => {
    const s = await fakeServer();
    s.handler = (req, res) => (req.url?.endsWith('/root.json') ? json(res, 200, req.url) : json(res, 404, {}));
    const client = new NotaryClient({ baseUrl: s.url });
    try {
      const f = notaryFetcher(client, '127.0.0.1:5000/library/demo');
      expect((await f.fetch('root.json', 1000))!.toString()).toBe('"/v2/127.0.0.1:5000/library/demo/_trust/tuf/root.json"');
      expect(await f.fetch('targets/releases.json', 1000)).toBeNull();
      expect(s.requests.map((r) => r.url)).toEqual([
        '/v2/127.0.0.1:5000/library/demo/_trust/tuf/root.json',
        '/v2/127.0.0.1:5000/library/demo/_trust/tuf/targets/releases.json',
      ]);
    } finally {
      await client.close();
    }
  });

  it('a GUN or role name that would change the path is refused as MALFORMED without a request', async () => {
    const s = await fakeServer();
    const client = new NotaryClient({ baseUrl: s.url });
    try {
      for (const gun of ['../../etc', 'a/../b', 'docker.io/library/x?y=1', 'x#frag', 'a//b', '/abs', 'a/b/', 'a%2f..', 'a b', '']) {
        expect((await rejection(client.fetchMetadata(gun, 'root.json', 100))).reason).toBe('MALFORMED');
        expect(() => notaryFetcher(client, gun)).toThrow(TrustError);
      }
      for (const name of ['../root.json', 'targets/../../x.json', 'root.json?x', 'root.json#', 'a//b.json', '']) {
        expect((await rejection(client.fetchMetadata('docker.io/library/x', name, 100))).reason).toBe('MALFORMED');
      }
      expect(s.requests).toHaveLength(0);
    } finally {
      await client.close();
    }
  });

  it('builds the paths the Notary server serves', () => {
    expect(notaryMetadataPath('docker.io/library/alpine', `snapshot.${'ab'.repeat(32)}.json`)).toBe(
      `/v2/docker.io/library/alpine/_trust/tuf/snapshot.${'ab'.repeat(32)}.json`,
    );
    expect(notaryMetadataPath('[::1]:5000/x', '2.root.json')).toBe('/v2/%5B::1%5D:5000/x/_trust/tuf/2.root.json');
    expect(escapeGun('registry.example:443/team/app')).toBe('registry.example:443/team/app');
  });
});

describe('token server answers (shared by the Notary fetcher, the Notary uploader and the registry client)', () => {
  const at = 1_000_000;
  const parse = (body: string) => parseTokenResponse(Buffer.from(body), at);

  it('takes token or access_token, and expires_in seconds', () => {
    expect(parse('{"token":"abc.def","expires_in":300}')).toEqual({ token: 'abc.def', expiresAt: at + 300_000 });
    expect(parse('{"access_token":"xyz=="}')).toEqual({ token: 'xyz==', expiresAt: at + 60_000 });
  });

  it('token pinning: expires_in 1e400 (Infinity) gets the default, a year is capped at a day', () => {
    expect(parse('{"token":"t","expires_in":1e400}')).toEqual({ token: 't', expiresAt: at + 60_000 });
    expect(parse('{"token":"t","expires_in":31536000}')).toEqual({ token: 't', expiresAt: at + MAX_TOKEN_TTL_S * 1000 });
    expect(parse('{"token":"t","expires_in":-5}')).toEqual({ token: 't', expiresAt: at + 60_000 });
  });

  it('header injection: a token with spaces, CR/LF or commas is not usable', () => {
    for (const t of ['a b', 'a\r\nX-Evil: 1', 'a,b', '', 'ä']) expect(parse(JSON.stringify({ token: t }))).toBe('has no usable token');
    expect(parse('{"token":42}')).toBe('has no usable token');
    expect(parse('null')).toBe('has no usable token');
    expect(parse('"tok"')).toBe('has no usable token');
  });

  it('a body that is not JSON is named as such', () => {
    expect(parse('<html>')).toBe('not JSON');
  });
});

describe('TokenCache (the bearer tokens of both HTTP clients)', () => {
  let now = 1_000;
  const clock = () => now;
  const tok = (token: string, ttlMs = 60_000) => ({ token, expiresAt: now + ttlMs });

  it('one fetch per key however many requests met the challenge at once', async () => {
    const c = new TokenCache(clock);
    let fetches = 0;
    const fetch = async () => {
      fetches++;
      await new Promise((r) => setTimeout(r, 5));
      return tok('a');
    };
    const got = await Promise.all(Array.from({ length: 20 }, () => c.obtain('k', undefined, fetch)));
    expect(fetches).toBe(1);
    expect(new Set(got.map((t) => t.token))).toEqual(new Set(['a']));
    expect((await c.obtain('k', undefined, fetch)).token).toBe('a');
    expect(fetches).toBe(1);
  });

  it('401 loop: the token the server just refused is fetched anew, never offered again', async () => {
    const c = new TokenCache(clock);
    await c.obtain('k', undefined, async () => tok('old'));
    const t = await c.obtain('k', 'old', async () => tok('new'));
    expect(t.token).toBe('new');
    expect(c.get('k')?.token).toBe('new');
  });

  it('an expired token is not used', async () => {
    const c = new TokenCache(clock);
    await c.obtain('k', undefined, async () => tok('a', 1_000));
    now += 1_000;
    expect(c.get('k')).toBeUndefined();
    expect((await c.obtain('k', undefined, async () => tok('b'))).token).toBe('b');
  });

  it('a failed fetch is not cached and the next caller tries again', async () => {
    const c = new TokenCache(clock);
    await expect(c.obtain('k', undefined, async () => { throw new Error('token server down'); })).rejects.toThrow('token server down');
    expect((await c.obtain('k', undefined, async () => tok('ok'))).token).toBe('ok');
  });

  it('memory growth: a server naming a new scope on every 401 cannot grow the cache past its bound', async () => {
    const c = new TokenCache(clock, 16);
    for (let i = 0; i < 1_000; i++) await c.obtain(`scope-${i}`, undefined, async () => tok(`t${i}`));
    expect(c.size).toBe(16);
    expect(c.get('scope-999')?.token).toBe('t999');
    expect(c.get('scope-0')).toBeUndefined();
  });
});

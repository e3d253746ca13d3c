// The verifying mirror over HTTP, against real distribution 2.8 and a real notary-server (clients come in
// mirror-clients.test.ts). Every refusal is checked for its OCI code, its reason and that no host was contacted.
import { createHash } from 'node:crypto';
import { request as httpRequest, type IncomingHttpHeaders } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { request } from 'undici';
import { ACCEPT_ALL } from '../harness/images.js';
import { startLab, type Lab } from '../harness/lab.js';
import { startMirror, type Mirror } from '../harness/mirror.js';

let lab: Lab;
let mirror: Mirror;
const logLines: string[] = [];

async function get(path: string, headers: Record<string, string> = { accept: ACCEPT_ALL }, method: 'GET' | 'HEAD' = 'GET') {
  // node:http sends the path verbatim (undici would resolve %2e%2e before the server sees it)
  const u = new URL(mirror.url);
  return new Promise<{ status: number; headers: IncomingHttpHeaders; body: Buffer; json: () => any }>((resolve, reject) => {
    const req = httpRequest({ host: u.hostname, port: u.port, path, method, headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const body = Buffer.concat(chunks);
        resolve({ status: res.statusCode!, headers: res.headers, body, json: () => JSON.parse(body.toString()) });
      });
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}

beforeAll(async () => {
  lab = await startLab({ withHubGun: true });
  mirror = await startMirror(lab, { logLines });
});

afterAll(async () => {
  await mirror?.stop();
  await lab?.stop();
});

describe('the gate, in all three addressing modes', () => {
  const modes = () => [
    ['docker mirror', '/v2/library/demo'],
    ['containerd ns', '/v2/library/demo', `?ns=${lab.registryHost}`],
    ['explicit prefix', `/v2/${lab.registryHost}/library/demo`],
  ] as const;

  it('a signed tag is served as the signed digest', async () => {
    for (const [, base, q = ''] of modes()) {
      const r = await get(`${base}/manifests/v1${q}`);
      expect(r.status).toBe(200);
      expect(r.headers['docker-content-digest']).toBe(lab.images.v1.digest);
      expect(`sha256:${createHash('sha256').update(r.body).digest('hex')}`).toBe(lab.images.v1.digest);
      const h = await get(`${base}/manifests/v1${q}`, { accept: ACCEPT_ALL }, 'HEAD');
      expect(h.status).toBe(200);
      expect(h.headers['docker-content-digest']).toBe(lab.images.v1.digest);
    }
  });

  it('an unsigned tag is refused with DENIED and a reason a person can act on', async () => {
    for (const [, base, q = ''] of modes()) {
      const r = await get(`${base}/manifests/v2${q}`);
      expect(r.status).toBe(403);
      const e = r.json().errors[0];
      expect(e.code).toBe('DENIED');
      expect(e.detail.reason).toBe('NOT_SIGNED');
      expect(e.message).toMatch(/^tag v2 of .*library\/demo has no valid Notary trust data \(targets\/releases or targets\): not signed/);
    }
    expect(logLines.some((l) => l.includes('"event":"refused"') && l.includes('"reason":"NOT_SIGNED"'))).toBe(true);
  });

  it('a multi-arch index signed in targets/releases pulls, and its child manifests and blobs become reachable', async () => {
    const base = `/v2/${lab.registryHost}/library/demo`;
    const r = await get(`${base}/manifests/multi`);
    expect(r.status).toBe(200);
    expect(r.headers['docker-content-digest']).toBe(lab.images.multi.digest);
    const index = r.json();
    for (const m of index.manifests) {
      const c = await get(`${base}/manifests/${m.digest}`);
      expect(c.status).toBe(200);
      const layer = c.json().layers[0];
      const b = await get(`${base}/blobs/${layer.digest}`, {});
      expect(b.status).toBe(200);
      expect(`sha256:${createHash('sha256').update(b.body).digest('hex')}`).toBe(layer.digest);
    }
  });

  it('by-digest bypass: a manifest or blob not reachable from an allowed tag is refused', async () => {
    const m = await get(`/v2/library/demo/manifests/${lab.images.v2.digest}`);
    expect(m.status).toBe(403);
    expect(m.json().errors[0].detail.reason).toBe('NOT_REACHABLE');
    const layer = JSON.parse(lab.images.v2.bytes.toString()).layers[0].digest;
    const b = await get(`/v2/library/demo/blobs/${layer}`, {});
    expect(b.status).toBe(403);
    expect(b.json().errors[0].detail.reason).toBe('NOT_REACHABLE');
  });

  it('a signed digest pulled by digest is served (signed itself)', async () => {
    const r = await get(`/v2/${lab.registryHost}/library/demo/manifests/${lab.images.v1.digest}`);
    expect(r.status).toBe(200);
  });

  it('blobs: Range is served from the verified store, and a second request makes no upstream fetch', async () => {
    await get('/v2/library/demo/manifests/v1');
    const layer = JSON.parse(lab.images.v1.bytes.toString()).layers[0];
    const client = mirror.daemon.upstreams.get('docker.io')!;
    const full = await get(`/v2/library/demo/blobs/${layer.digest}`, {});
    expect(full.status).toBe(200);
    const before = client.stats.blobGets;
    const part = await get(`/v2/library/demo/blobs/${layer.digest}`, { range: 'bytes=2-9' });
    expect(part.status).toBe(206);
    expect(part.body).toEqual(full.body.subarray(2, 10));
    expect(part.headers['content-range']).toBe(`bytes 2-9/${layer.size}`);
    expect(client.stats.blobGets).toBe(before);
  });
});

describe('hostile requests get 4xx and contact no host', () => {
  const cases: [string, number, string][] = [
    ['/v2/library/demo/manifests/v1?ns=evil.example.com', 404, 'NAME_UNKNOWN'],
    ['/v2/library/demo/manifests/v1?ns=169.254.169.254', 404, 'NAME_UNKNOWN'],
    ['/v2/evil.example.com/library/demo/manifests/v1', 404, 'NAME_UNKNOWN'],
    ['/v2/127.0.0.2:80/library/demo/manifests/v1', 404, 'NAME_UNKNOWN'],
    ['/v2/library/%2e%2e/demo/manifests/v1', 400, 'NAME_INVALID'],
    ['/v2/library/Demo/manifests/v1', 400, 'NAME_INVALID'],
    ['/v2/library/demo/manifests/sha256:abc', 400, 'DIGEST_INVALID'],
    ['/v2/library/demo/blobs/md5:0123', 400, 'DIGEST_INVALID'],
    ['/v2/library/demo/manifests/-bad-tag', 404, 'MANIFEST_UNKNOWN'],
    ['/v2/library/demo/blobs/uploads/', 405, 'UNSUPPORTED'],
  ];
  it.each(cases)('%s → %d %s', async (path, status, code) => {
    const client = mirror.daemon.upstreams.get('docker.io')!;
    const before = JSON.stringify(client.stats);
    const r = await get(path);
    expect(r.status).toBe(status);
    expect(r.json().errors[0].code).toBe(code);
    expect(JSON.stringify(client.stats)).toBe(before);
  });

  it('writes are refused', async () => {
    const r = await request(`${mirror.url}/v2/library/demo/manifests/v1`, { method: 'PUT', body: '{}' });
    expect(r.statusCode).toBe(405);
    expect((await r.body.json() as { errors: { code: string }[] }).errors[0]!.code).toBe('UNSUPPORTED');
  });

  it('a repository the policy denies is refused before any upstream call', async () => {
    const r = await get('/v2/otherteam/app/manifests/v1');
    expect(r.status).toBe(403);
    expect(r.json().errors[0].detail.reason).toBe('POLICY_DENY');
  });
});

describe('tags/list and the base endpoint', () => {
  it('GET /v2/ answers with the API version header and no upstream call; tags/list is forwarded for allowed repos', async () => {
    const b = await get('/v2/');
    expect(b.status).toBe(200);
    expect(b.headers['docker-distribution-api-version']).toBe('registry/2.0');
    const t = await get(`/v2/${lab.registryHost}/library/demo/tags/list`);
    expect(t.status).toBe(200);
    expect(t.json().tags).toEqual(expect.arrayContaining(['v1', 'v2', 'multi']));
    const denied = await get('/v2/otherteam/app/tags/list');
    expect(denied.status).toBe(403);
  });
});

describe('health', () => {
  it('/healthz and /readyz answer', async () => {
    expect((await get('/healthz')).status).toBe(200);
    expect((await get('/readyz')).status).toBe(200);
  });
});

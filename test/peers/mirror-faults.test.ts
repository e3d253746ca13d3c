// The mirror under faults: an upstream that corrupts bytes in transit, a tag moved after signing, a signed manifest
// deleted upstream, a thundering herd on one cold blob, a shutdown in the middle of a download, and both peers
// (registry + Notary) going away. Real distribution 2.8 and notary-server throughout; the fake in front of the
// registry only injects what a real registry cannot produce (flipped bytes, a slow link).
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, writeFileSync } from 'node:fs';
import { request as httpRequest, type IncomingHttpHeaders } from 'node:http';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Clock } from '../../trust/clock.js';
import { startFakeUpstream, type FakeUpstream } from '../harness/fake-upstream.js';
import { ACCEPT_ALL, pushTag, writeOciLayout, type PushedManifest } from '../harness/images.js';
import { startLab, type Lab } from '../harness/lab.js';
import { startMirror, type Mirror, type MirrorOptions } from '../harness/mirror.js';
import { httpGet } from '../harness/process.js';

let lab: Lab;
const mirrors: Mirror[] = [];
const fakes: FakeUpstream[] = [];

interface Got {
  status: number;
  headers: IncomingHttpHeaders;
  body: Buffer;
  /** The body ended cleanly (res.complete), not by a reset. */
  complete: boolean;
  /** The transfer broke ('aborted' or an error on the response). */
  aborted: boolean;
  json: () => any;
}

/** GET through the mirror with node:http (path verbatim, a fresh connection each time). Resolves even when aborted. */
function get(mirror: Mirror, path: string, headers: Record<string, string> = { accept: ACCEPT_ALL }, onResponse?: (res: import('node:http').IncomingMessage) => void): Promise<Got> {
  const u = new URL(mirror.url);
  return new Promise<Got>((resolve, reject) => {
    const req = httpRequest({ host: u.hostname, port: u.port, path, method: 'GET', headers, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      let aborted = false;
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('aborted', () => (aborted = true));
      res.on('error', () => (aborted = true));
      res.on('close', () => {
        const body = Buffer.concat(chunks);
        resolve({ status: res.statusCode!, headers: res.headers, body, complete: res.complete && !aborted, aborted, json: () => JSON.parse(body.toString()) });
      });
      onResponse?.(res);
    });
    req.on('error', reject);
    req.end();
  });
}

const sha = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;
const blobPath = (m: Mirror, digest: string) => {
  const hex = digest.replace(/^sha256:/, '');
  return join(m.stateDir, 'cas', 'blobs', 'sha256', hex.slice(0, 2), hex);
};
const layersOf = (pm: PushedManifest): { digest: string; size: number }[] => {
  const j = JSON.parse(pm.bytes.toString());
  return [j.config, ...j.layers];
};

async function mirrorFor(o: MirrorOptions = {}): Promise<Mirror> {
  const m = await startMirror(lab, o);
  mirrors.push(m);
  return m;
}

async function fakeUpstream(): Promise<FakeUpstream> {
  const f = await startFakeUpstream(lab.registryUrl);
  fakes.push(f);
  return f;
}

beforeAll(async () => {
  lab = await startLab({ withHubGun: true });
});

afterAll(async () => {
  for (const m of mirrors) await m.stop().catch(() => {});
  for (const f of fakes) await f.stop().catch(() => {});
  await lab?.stop();
});

const base = () => `/v2/${lab.registryHost}/library/demo`;

describe('integrity faults', () => {
  it('corrupt blob bytes from the upstream are never stored or fully delivered', async () => {
    const fake = await fakeUpstream();
    const mirror = await mirrorFor({ registryUrl: fake.url });
    const v1 = lab.images.v1;

    // The manifest first: altered bytes for the signed digest are refused and not stored.
    fake.faults.alterManifest = v1.digest;
    const bad = await get(mirror, `${base()}/manifests/v1`);
    expect(bad.status).toBe(403);
    expect(bad.json().errors[0].code).toBe('DENIED');
    expect(bad.json().errors[0].detail.reason).toBe('DIGEST_MISMATCH');
    expect(bad.json().errors[0].message).toContain(v1.digest);
    expect(fake.tampered.count).toBeGreaterThan(0);
    expect(existsSync(blobPath(mirror, v1.digest))).toBe(false);

    fake.faults.alterManifest = undefined;
    const good = await get(mirror, `${base()}/manifests/v1`);
    expect(good.status).toBe(200);
    expect(sha(good.body)).toBe(v1.digest);
    expect(existsSync(blobPath(mirror, v1.digest))).toBe(true);

    // A layer whose bytes are flipped in transit: every client sees a broken transfer, nothing is stored.
    const layer = JSON.parse(v1.bytes.toString()).layers[0] as { digest: string; size: number };
    fake.faults.corruptBlob = layer.digest;
    const before = fake.tampered.count;
    const results = await Promise.all(Array.from({ length: 4 }, () => get(mirror, `${base()}/blobs/${layer.digest}`, {})));
    expect(fake.tampered.count).toBeGreaterThan(before);
    for (const r of results) {
      if (r.status === 200) {
        // Headers went out before the digest check could fail: the body must be cut short, never clean.
        expect(r.complete).toBe(false);
        expect(r.aborted).toBe(true);
        expect(r.body.length).toBeLessThan(Number(r.headers['content-length']));
      } else {
        expect(r.status).toBeGreaterThanOrEqual(500);
      }
      expect(sha(r.body) === layer.digest && r.complete).toBe(false);
    }
    expect(existsSync(blobPath(mirror, layer.digest))).toBe(false);

    // The upstream heals: the next request fills, verifies and stores.
    fake.faults.corruptBlob = undefined;
    const ok = await get(mirror, `${base()}/blobs/${layer.digest}`, {});
    expect(ok.status).toBe(200);
    expect(ok.complete).toBe(true);
    expect(ok.body.length).toBe(layer.size);
    expect(sha(ok.body)).toBe(layer.digest);
    expect(existsSync(blobPath(mirror, layer.digest))).toBe(true);
  });
});

describe('single flight', () => {
  it('concurrent cold requests for one blob make one upstream GET', async () => {
    // A slow link (the fake only paces the real registry's bytes) so all 8 requests arrive while the fill runs.
    const fake = await fakeUpstream();
    const mirror = await mirrorFor({ registryUrl: fake.url });
    expect((await get(mirror, `${base()}/manifests/v1`)).status).toBe(200);
    const layer = JSON.parse(lab.images.v1.bytes.toString()).layers[0] as { digest: string; size: number };
    fake.faults.slowBlob = { digest: layer.digest, chunkBytes: 16, intervalMs: 40 };
    expect(existsSync(blobPath(mirror, layer.digest))).toBe(false);
    const client = mirror.daemon.upstreams.get(lab.registryHost)!;
    const before = client.stats.blobGets;
    const hitsBefore = mirror.daemon.proxy.stats.blobHits;
    const all = await Promise.all(Array.from({ length: 8 }, () => get(mirror, `${base()}/blobs/${layer.digest}`, {})));
    for (const r of all) {
      expect(r.status).toBe(200);
      expect(r.complete).toBe(true);
      expect(r.body.length).toBe(layer.size);
      expect(sha(r.body)).toBe(layer.digest);
    }
    expect(client.stats.blobGets - before).toBe(1);
    expect(fake.requests.filter((q) => q === `GET /v2/${lab.repo}/blobs/${layer.digest}`)).toHaveLength(1);
    // none of the 8 was served from the store: they all joined the one running fill
    expect(mirror.daemon.proxy.stats.blobHits - hitsBefore).toBe(0);
    expect(existsSync(blobPath(mirror, layer.digest))).toBe(true);
  });
});

describe('shutdown', () => {
  it('graceful shutdown drains in-flight responses', async () => {
    // A signed image with a 5 MiB layer, so a download is still running when stop() is called.
    const layoutDir = join(lab.dir, 'oci-big');
    writeOciLayout(layoutDir, [{ tag: 'big', image: { files: { 'big.txt': randomBytes(5 * 1024 * 1024 + 512 * 1024).toString('base64') } } }]);
    const big = await pushTag(layoutDir, 'big', lab.registry, lab.repo, 'big', { format: 'v2s2' });
    const manifestFile = join(lab.dir, 'manifest-big.json');
    writeFileSync(manifestFile, big.bytes);
    await lab.notaryPeer.notaryOk('add', lab.gun, 'big', manifestFile);
    await lab.notaryPeer.notaryOk('publish', lab.gun);
    const layer = JSON.parse(big.bytes.toString()).layers[0] as { digest: string; size: number };
    expect(layer.size).toBeGreaterThan(5 * 1024 * 1024);

    const fake = await fakeUpstream();
    fake.faults.slowBlob = { digest: layer.digest, chunkBytes: 256 * 1024, intervalMs: 40 };
    const mirror = await mirrorFor({ registryUrl: fake.url });
    expect((await get(mirror, `${base()}/manifests/big`)).status).toBe(200);

    let firstBytes!: () => void;
    const started = new Promise<void>((r) => (firstBytes = r));
    const download = get(mirror, `${base()}/blobs/${layer.digest}`, {}, (res) => res.once('data', () => firstBytes()));
    await started;
    const stopping = mirror.daemon.stop();
    let stoppedAt = 0;
    void stopping.then(() => (stoppedAt = Date.now()));

    // No new connection is accepted (or, if one gets in, it hears that the mirror is draining).
    await new Promise((r) => setTimeout(r, 50));
    const ready = await httpGet(`${mirror.url}/readyz`, { timeoutMs: 2000 }).then(
      (r) => r.status,
      (e: NodeJS.ErrnoException) => e.code ?? (e.cause as NodeJS.ErrnoException | undefined)?.code ?? e.message,
    );
    expect([503, 'ECONNREFUSED']).toContain(ready);

    const r = await download;
    const doneAt = Date.now();
    expect(r.status).toBe(200);
    expect(r.complete).toBe(true);
    expect(r.body.length).toBe(layer.size);
    expect(sha(r.body)).toBe(layer.digest);
    await stopping;
    expect(stoppedAt).toBeGreaterThanOrEqual(doneAt - 5);
    expect(existsSync(blobPath(mirror, layer.digest))).toBe(true);
    const after = await httpGet(`${mirror.url}/readyz`, { timeoutMs: 2000 }).then(
      (x) => x.status,
      (e: NodeJS.ErrnoException) => e.code ?? (e.cause as NodeJS.ErrnoException | undefined)?.code ?? e.message,
    );
    expect(after).toBe('ECONNREFUSED');
  });
});

describe('tag moved upstream', () => {
  it('a tag swapped upstream after signing serves the signed digest, or is refused when the signed manifest is gone', async () => {
    const v1 = lab.images.v1;
    const swapped = await pushTag(join(lab.dir, 'oci'), 'v2', lab.registry, lab.repo, 'v1', { format: 'v2s2' });
    expect(swapped.digest).not.toBe(v1.digest);

    const pinned = await mirrorFor();
    const r = await get(pinned, `${base()}/manifests/v1`);
    expect(r.status).toBe(200);
    expect(r.headers['docker-content-digest']).toBe(v1.digest);
    expect(sha(r.body)).toBe(v1.digest);

    // The signed manifest deleted by digest: the tag now only leads to the swapped manifest.
    const del = await fetch(`${lab.registryUrl}/v2/${lab.repo}/manifests/${v1.digest}`, { method: 'DELETE' });
    expect(del.status).toBe(202);
    try {
      const fresh = await mirrorFor();
      const gone = await get(fresh, `${base()}/manifests/v1`);
      expect(gone.status).toBe(404);
      const e = gone.json().errors[0];
      expect(e.code).toBe('MANIFEST_UNKNOWN');
      expect(e.message).toContain(v1.digest);
      expect(e.message).toMatch(/signed as/);
      expect(gone.body.toString()).not.toContain(swapped.digest);
      expect(existsSync(blobPath(fresh, swapped.digest))).toBe(false);
    } finally {
      // Put the lab back as it was (deterministic layout: the same bytes, the same digest).
      const restored = await pushTag(join(lab.dir, 'oci'), 'v1', lab.registry, lab.repo, 'v1', { format: 'v2s2' });
      expect(restored.digest).toBe(v1.digest);
    }
  });
});

describe('offline', () => {
  // The gate caches decisions for 30 s and debounces refreshes for 1 s; the mirror's clock is ours to move.
  let offset = 0;
  const clock: Clock = () => new Date(Date.now() + offset);
  let mirror: Mirror;
  const logLines: string[] = [];
  const v1Blobs = () => layersOf(lab.images.v1);

  beforeAll(async () => {
    mirror = await mirrorFor({ clock, logLines });
  });

  it('offline: with the upstream and the Notary server stopped, a cached signed image still pulls and an uncached one fails clearly', async () => {
    const m = await get(mirror, `${base()}/manifests/v1`);
    expect(m.status).toBe(200);
    for (const b of v1Blobs()) expect((await get(mirror, `${base()}/blobs/${b.digest}`, {})).status).toBe(200);

    await lab.registry.stop();
    await lab.notaryPeer.stop();
    offset += 31_000;

    const again = await get(mirror, `${base()}/manifests/v1`);
    expect(again.status).toBe(200);
    expect(again.headers['docker-content-digest']).toBe(lab.images.v1.digest);
    expect(sha(again.body)).toBe(lab.images.v1.digest);
    for (const b of v1Blobs()) {
      const r = await get(mirror, `${base()}/blobs/${b.digest}`, {});
      expect(r.status).toBe(200);
      expect(sha(r.body)).toBe(b.digest);
    }
    expect(logLines.some((l) => l.includes('"event":"trust-offline"'))).toBe(true);

    const multi = await get(mirror, `${base()}/manifests/multi`);
    expect([403, 503]).toContain(multi.status);
    const e = multi.json().errors[0];
    if (multi.status === 503) {
      expect(e.code).toBe('UNAVAILABLE');
    } else {
      expect(e.code).toBe('DENIED');
      expect(e.detail.reason).toBe('TRUST_UNAVAILABLE');
    }
    expect(e.message).toMatch(/unreachable/i);
  });

  it('never serve past expiry: offline past the timestamp expiry, v1 is refused with DENIED EXPIRED', async () => {
    offset += 15 * 24 * 3600 * 1000;
    const r = await get(mirror, `${base()}/manifests/v1`);
    expect(r.status).toBe(403);
    const e = r.json().errors[0];
    expect(e.code).toBe('DENIED');
    expect(e.detail.reason).toBe('EXPIRED');
    // and nothing reachable from it is served either
    const layer = v1Blobs()[1]!;
    const b = await get(mirror, `${base()}/blobs/${layer.digest}`, {});
    expect(b.status).toBe(403);
  });
});

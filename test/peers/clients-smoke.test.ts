// Validates test/harness/clients.ts against the REAL clients, with distribution 2.8 in proxy mode standing in for
// the mirror (Portcullis's own server takes its place in later tests): an upstream registry holds library/demo
// (v1, v2: Docker schema 2; v1-oci; multi: OCI index amd64 + arm64), the proxy in front of it serves it under any
// host name — so docker.io/library/demo comes out of the upstream's library/demo.
//
// The last block points every client at a tiny node:http mirror that answers manifest requests with
// `403 {"errors":[{"code":"DENIED",…}]}` and pins down where each client shows (or hides) the refusal reason.
import { createServer, type IncomingMessage, type Server } from 'node:http';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  mountsUnder,
  podman,
  skopeoCopy,
  skopeoManifestDigest,
  startContainerd,
  startDockerd,
  upstreamRequestLog,
  writeHostsToml,
  type Containerd,
  type Dockerd,
  type Podman,
  type RequestLog,
} from '../harness/clients.js';
import { pushDemoImages, type DemoTag, type PushedManifest } from '../harness/images.js';
import { livePids, makeTempDir } from '../harness/process.js';
import { startRegistry, type Registry } from '../harness/registry.js';

const DENIED_MESSAGE = 'tag v2 of docker.io/library/demo has no valid Notary trust data: not signed';

let upstream: Registry;
let proxy: Registry;
let images: Record<DemoTag, PushedManifest>;
let dockerd: Dockerd;
let containerd: Containerd;
let hostsDir: string;
let upLog: RequestLog;
let proxyLog: RequestLog;
const timings: Record<string, number> = {};

/** The digests of the platform manifests in the `multi` index. */
function platformDigest(arch: string): string {
  const index = JSON.parse(images.multi.bytes.toString('utf8')) as { manifests: Array<{ digest: string; platform: { architecture: string } }> };
  const m = index.manifests.find((x) => x.platform.architecture === arch);
  if (!m) throw new Error(`no ${arch} in multi`);
  return m.digest;
}

beforeAll(async () => {
  const t0 = performance.now();
  upstream = await startRegistry({ name: 'upstream' });
  [images, proxy] = await Promise.all([
    pushDemoImages(upstream, join(makeTempDir('pc-smoke-oci'), 'oci')),
    startRegistry({ proxyRemoteUrl: upstream.url }),
  ]);
  timings.registriesAndImages = Math.round(performance.now() - t0);
  upLog = upstreamRequestLog(upstream);
  proxyLog = upstreamRequestLog(proxy);
  hostsDir = makeTempDir('pc-smoke-hosts');
  writeHostsToml(hostsDir, 'docker.io', proxy.url);
  [dockerd, containerd] = await Promise.all([
    startDockerd({ mirrorUrl: proxy.url, insecureRegistries: [proxy.host] }),
    startContainerd(),
  ]);
  timings.dockerd = dockerd.startMs;
  timings.containerd = containerd.startMs;
  timings.setup = Math.round(performance.now() - t0);
});

afterAll(async () => {
  await Promise.all([dockerd?.stop(), containerd?.stop()]);
  await proxy?.stop();
  await upstream?.stop();
  console.log('clients-smoke timings (ms):', timings);
});

describe('docker (registry-mirrors: docker.io names only)', () => {
  it('pulls demo:v1 through the mirror onto the upstream digest; a second pull makes no upstream blob request', async () => {
    const up = upLog.mark();
    const px = proxyLog.mark();
    const t = performance.now();
    const r = await dockerd.pull('demo:v1');
    timings.dockerPullCold = Math.round(performance.now() - t);
    expect(r.code, r.combined).toBe(0);
    expect(r.stdout).toContain(`Digest: ${images.v1.digest}`);
    expect(await dockerd.imageDigest('demo:v1')).toBe(images.v1.digest);
    expect(await dockerd.repoDigests('demo:v1')).toEqual([`demo@${images.v1.digest}`]);

    // docker → mirror: GET /v2/, HEAD by tag, GET by digest, then the blobs; no ?ns=
    const seen = proxyLog.since(px);
    expect(seen.find((x) => x.kind === 'manifest' && x.method === 'HEAD')?.reference).toBe('v1');
    expect(seen.some((x) => x.kind === 'manifest' && x.method === 'GET' && x.reference === images.v1.digest)).toBe(true);
    expect(seen.every((x) => x.query === '' && x.userAgent.startsWith('docker/'))).toBe(true);
    expect(proxyLog.blobGets(px)).toHaveLength(2); // config + layer
    expect(upLog.blobGets(up).length).toBeGreaterThanOrEqual(2); // cold: the proxy fetched them (2 GETs per blob)

    await dockerd.removeImage('demo:v1');
    expect(await dockerd.imageDigest('demo:v1')).toBeUndefined();
    const up2 = await upLog.settle(); // the proxy may still be filling its cache from the first pull
    const px2 = proxyLog.mark();
    const again = await dockerd.pull('demo:v1');
    expect(again.code, again.combined).toBe(0);
    expect(proxyLog.blobGets(px2)).toHaveLength(2); // docker fetched both blobs again…
    expect(upLog.blobGets(up2)).toEqual([]); // …from the proxy's cache
    expect(upLog.manifestRequests(up2).map((x) => `${x.method} ${x.reference}`)).toEqual(['HEAD v1']); // tag re-checked
  });

  it('pulls the multi-arch tag for linux/amd64 (RepoDigest = the index digest)', async () => {
    const px = proxyLog.mark();
    const r = await dockerd.pull('demo:multi');
    expect(r.code, r.combined).toBe(0);
    expect(await dockerd.imageDigest('demo:multi')).toBe(images.multi.digest);
    const arch = await dockerd.docker(['image', 'inspect', '--format', '{{.Os}}/{{.Architecture}}', 'demo:multi']);
    expect(arch.stdout.trim()).toBe('linux/amd64');
    const refs = proxyLog.manifestRequests(px).map((x) => x.reference);
    expect(refs).toContain(platformDigest('amd64'));
    expect(refs).not.toContain(platformDigest('arm64'));
  });
});

describe('containerd (ctr images pull --hosts-dir)', () => {
  it('pulls docker.io/library/demo:v1 through the mirror, with ?ns=docker.io on every request', async () => {
    const px = proxyLog.mark();
    const t = performance.now();
    const r = await containerd.pull('docker.io/library/demo:v1', { hostsDir });
    timings.ctrPull = Math.round(performance.now() - t);
    expect(r.code, r.combined).toBe(0);
    expect(await containerd.imageDigest('docker.io/library/demo:v1')).toBe(images.v1.digest);
    const seen = proxyLog.since(px);
    expect(seen.length).toBeGreaterThan(0);
    expect(seen.every((x) => x.ns === 'docker.io' && x.query === 'ns=docker.io' && x.userAgent.startsWith('containerd/'))).toBe(true);
    expect(seen.find((x) => x.kind === 'manifest')).toMatchObject({ method: 'HEAD', reference: 'v1' });
    expect(proxyLog.blobGets(px)).toHaveLength(2);

    // removeImage (--sync) garbage-collects the content: the next pull fetches the blobs again
    await containerd.removeImage('docker.io/library/demo:v1');
    expect(await containerd.imageDigest('docker.io/library/demo:v1')).toBeUndefined();
    const px2 = proxyLog.mark();
    expect((await containerd.pull('docker.io/library/demo:v1', { hostsDir })).code).toBe(0);
    expect(proxyLog.blobGets(px2)).toHaveLength(2);
  });

  it('pulls the multi-arch tag: the image is the index, only the amd64 manifest is fetched', async () => {
    const px = proxyLog.mark();
    const r = await containerd.pull('docker.io/library/demo:multi', { hostsDir });
    expect(r.code, r.combined).toBe(0);
    const img = await containerd.image('docker.io/library/demo:multi');
    expect(img?.digest).toBe(images.multi.digest);
    // the PLATFORMS column lists what the index offers, not what was fetched
    expect(img?.platforms).toBe('linux/amd64,linux/arm64');
    const refs = proxyLog.manifestRequests(px).map((x) => x.reference);
    expect(refs).toContain(platformDigest('amd64'));
    expect(refs).not.toContain(platformDigest('arm64'));
    expect(r.stdout).toContain(`unpacking linux/amd64 ${images.multi.digest}`);
  });

  it('mirrors a non-docker.io registry too (ns=<that host>)', async () => {
    const dir = makeTempDir('pc-smoke-hosts-up');
    writeHostsToml(dir, upstream.host, proxy.url);
    const px = proxyLog.mark();
    const ref = `${upstream.host}/library/demo:v1-oci`;
    const r = await containerd.pull(ref, { hostsDir: dir });
    expect(r.code, r.combined).toBe(0);
    expect(await containerd.imageDigest(ref)).toBe(images['v1-oci'].digest);
    const seen = proxyLog.since(px);
    expect(seen.length).toBeGreaterThan(0);
    // the port's colon is percent-encoded: ?ns=127.0.0.1%3A<port>
    expect(seen.every((x) => x.query === `ns=${encodeURIComponent(upstream.host)}` && x.ns === upstream.host)).toBe(true);
  });
});

describe('podman (registries.conf mirror)', () => {
  let p: Podman;
  beforeAll(() => {
    p = podman({ mirrorHost: proxy.host, registries: ['docker.io'] });
  });
  afterAll(async () => {
    await p?.cleanup();
  });

  it('pulls docker.io/library/demo:v1 through the mirror, asking for the tag without ns', async () => {
    const px = proxyLog.mark();
    const t = performance.now();
    const r = await p.pull('docker.io/library/demo:v1');
    timings.podmanPull = Math.round(performance.now() - t);
    expect(r.code, r.stderr).toBe(0);
    expect(await p.imageDigest('docker.io/library/demo:v1')).toBe(images.v1.digest);
    const seen = proxyLog.since(px);
    expect(seen.every((x) => x.query === '' && x.userAgent.startsWith('containers/'))).toBe(true);
    // no HEAD: a GET by tag
    expect(proxyLog.manifestRequests(px).map((x) => `${x.method} ${x.reference}`)).toEqual(['GET v1']);
  });

  it('pulls the multi-arch tag for amd64 (Digest = index, RepoDigests = index + amd64 manifest)', async () => {
    const r = await p.pull('docker.io/library/demo:multi');
    expect(r.code, r.stderr).toBe(0);
    expect(await p.imageDigest('docker.io/library/demo:multi')).toBe(images.multi.digest);
    expect((await p.repoDigests('docker.io/library/demo:multi')).sort()).toEqual(
      [`docker.io/library/demo@${images.multi.digest}`, `docker.io/library/demo@${platformDigest('amd64')}`].sort(),
    );
    const arch = await p.podman(['image', 'inspect', '--format', '{{.Architecture}}', 'docker.io/library/demo:multi']);
    expect(arch.stdout.trim()).toBe('amd64');
  });

  it('mirrors a non-docker.io registry listed in `registries`', async () => {
    const p2 = podman({ mirrorHost: proxy.url, registries: ['docker.io', upstream.host] });
    try {
      const px = proxyLog.mark();
      const ref = `${upstream.host}/library/demo:v1-oci`;
      const r = await p2.pull(ref);
      expect(r.code, r.stderr).toBe(0);
      expect(await p2.imageDigest(ref)).toBe(images['v1-oci'].digest);
      expect(proxyLog.manifestRequests(px).map((x) => `${x.method} ${x.reference}`)).toEqual(['GET v1-oci']);
    } finally {
      await p2.cleanup();
    }
  });
});

describe('skopeo (copy from the mirror to an OCI layout)', () => {
  let out: string;
  beforeAll(() => {
    out = makeTempDir('pc-smoke-skopeo');
  });

  it('copies an OCI manifest unchanged', async () => {
    const t = performance.now();
    const r = await skopeoCopy(`${proxy.host}/library/demo:v1-oci`, out);
    timings.skopeoCopy = Math.round(performance.now() - t);
    expect(r.code, r.stderr).toBe(0);
    expect(r.digest).toBe(images['v1-oci'].digest);
  });

  it('converts a Docker schema 2 manifest to OCI (new digest); skopeoManifestDigest sees what was served', async () => {
    const r = await skopeoCopy(`docker://${proxy.host}/library/demo:v1`, out);
    expect(r.code, r.stderr).toBe(0);
    expect(r.mediaType).toBe('application/vnd.oci.image.manifest.v1+json');
    expect(r.digest).not.toBe(images.v1.digest);
    expect((await skopeoManifestDigest(`${proxy.host}/library/demo:v1`)).digest).toBe(images.v1.digest);
  });

  it('copies the amd64 instance of the multi-arch tag, or the whole index with all: true', async () => {
    const one = await skopeoCopy(`${proxy.host}/library/demo:multi`, out);
    expect(one.code, one.stderr).toBe(0);
    expect(one.digest).toBe(platformDigest('amd64'));
    const all = await skopeoCopy(`${proxy.host}/library/demo:multi`, out, { all: true, tag: 'multi-all' });
    expect(all.code, all.stderr).toBe(0);
    expect(all.digest).toBe(images.multi.digest);
  });
});

describe('a mirror that refuses: 403 with an OCI error body on manifest requests', () => {
  let stub: Server;
  let stubHost: string;
  const requests: string[] = [];
  const body = JSON.stringify({ errors: [{ code: 'DENIED', message: DENIED_MESSAGE }] });

  beforeAll(async () => {
    stub = createServer((req: IncomingMessage, res) => {
      requests.push(`${req.method} ${req.url}`);
      if ((req.url ?? '').split('?')[0] === '/v2/') {
        res.writeHead(200, { 'content-type': 'application/json', 'docker-distribution-api-version': 'registry/2.0' });
        res.end('{}');
        return;
      }
      res.writeHead(403, { 'content-type': 'application/json', 'docker-distribution-api-version': 'registry/2.0' });
      res.end(req.method === 'HEAD' ? undefined : body);
    });
    await new Promise<void>((resolve) => stub.listen(0, '127.0.0.1', resolve));
    stubHost = `127.0.0.1:${(stub.address() as { port: number }).port}`;
  });
  afterAll(async () => {
    await new Promise<void>((resolve) => (stub ? stub.close(() => resolve()) : resolve()));
  });

  it('docker: the CLI shows only the docker.io fallback error; the reason is in the daemon log', async () => {
    const t = performance.now();
    await dockerd.reload({ mirrorUrl: `http://${stubHost}`, insecureRegistries: [stubHost] });
    timings.dockerdReload = Math.round(performance.now() - t);
    requests.length = 0;
    const r = await dockerd.pull('demo:v2');
    expect(r.code).toBe(1);
    expect(r.stderr).not.toContain(DENIED_MESSAGE);
    expect(r.stderr).toMatch(/^Error response from daemon: Get "https:\/\/registry-1\.docker\.io\/v2\/": /);
    expect(r.endpointErrors[0]).toBe(`denied: ${DENIED_MESSAGE}`);
    expect(r.daemonLog).toContain(`level=info msg="Attempting next endpoint for pull after error: denied: ${DENIED_MESSAGE}"`);
    // HEAD by tag (403, no body) then GET by tag to read the error
    expect(requests).toEqual(['GET /v2/', 'HEAD /v2/library/demo/manifests/v2', 'GET /v2/library/demo/manifests/v2']);
  });

  it('containerd: only the status code, never the message (ctr sends a HEAD and reads no body)', async () => {
    const dir = makeTempDir('pc-smoke-hosts-deny');
    writeHostsToml(dir, 'docker.io', `http://${stubHost}`);
    requests.length = 0;
    const r = await containerd.pull('docker.io/library/demo:v2', { hostsDir: dir });
    expect(r.code).toBe(1);
    expect(r.combined).not.toContain(DENIED_MESSAGE);
    expect(r.stderr).toContain(
      `ctr: failed to resolve reference "docker.io/library/demo:v2": pulling from host ${stubHost} failed with status code [manifests v2]: 403 Forbidden`,
    );
    expect(requests).toEqual(['HEAD /v2/library/demo/manifests/v2?ns=docker.io']);
  });

  it('podman: the reason is on stderr, under "Mirrors also failed"', async () => {
    const p = podman({ mirrorHost: stubHost });
    try {
      const r = await p.pull('docker.io/library/demo:v2');
      expect(r.code).toBe(125);
      expect(r.stderr).toContain(
        `(Mirrors also failed: [${stubHost}/library/demo:v2: reading manifest v2 in ${stubHost}/library/demo: denied: ${DENIED_MESSAGE}]): docker.io/library/demo:v2: pinging container registry registry-1.docker.io`,
      );
    } finally {
      await p.cleanup();
    }
  });

  it('skopeo: the reason is on stderr (level=fatal)', async () => {
    const r = await skopeoCopy(`${stubHost}/library/demo:v2`, makeTempDir('pc-smoke-skopeo-deny'));
    expect(r.code).toBe(1);
    expect(r.digest).toBeUndefined();
    expect(r.stderr).toContain(`reading manifest v2 in ${stubHost}/library/demo: denied: ${DENIED_MESSAGE}`);
  });
});

describe('stop()', () => {
  it('ends the daemons, removes their dirs and mounts, and is idempotent', async () => {
    const pids = [dockerd.process.pid, containerd.process.pid];
    const dirs = [dockerd.dir, containerd.dir];
    expect(mountsUnder(dockerd.dir).length).toBeGreaterThan(0); // dockerd bind-mounts its data-root
    await Promise.all([dockerd.stop(), containerd.stop()]);
    await Promise.all([dockerd.stop(), containerd.stop()]);
    expect(pids.some((p) => livePids().includes(p))).toBe(false);
    for (const p of pids) expect(() => process.kill(-p, 0)).toThrow();
    for (const d of dirs) {
      expect(mountsUnder(d)).toEqual([]);
      expect(existsSync(d)).toBe(false);
    }
  });
});

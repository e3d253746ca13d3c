// The bench's fixture, built from nothing on loopback: an upstream distribution 2.8 registry holding an image set
// of random (incompressible) layers and 1,000 tags, and a notary-server holding the signed tags of both
// repositories (signed with the real notary CLI: `addhash` stages the digests, one `publish` per repository).
//
//   library/bench   big (1 big layer), mid (4 layers), small (20 x 1 MiB), tiny (50 x 20 KiB),
//                   multi (OCI index: amd64 + arm64 images, 2 x 1 MiB layers each)
//   library/tags    t0000 .. t0999, over 10 small images (t<i> -> image i % 10)
//
// Both are signed under GUNs docker.io/library/<repo>, so every server under test serves them at the same paths
// (/v2/library/<repo>/...), as a Docker registry mirror does.
import { createHash, randomFillSync, randomUUID } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { request } from 'undici';
import { startNotary, type NotaryPeer } from '../../test/harness/notary.js';
import { startRegistry, type Registry } from '../../test/harness/registry.js';

const MiB = 1024 * 1024;
const KiB = 1024;

export const MT = {
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  ociConfig: 'application/vnd.oci.image.config.v1+json',
  ociLayer: 'application/vnd.oci.image.layer.v1.tar+gzip',
} as const;

export interface SetSizes {
  readonly big: number;
  readonly mid: { readonly count: number; readonly size: number };
  readonly small: { readonly count: number; readonly size: number };
  readonly tiny: { readonly count: number; readonly size: number };
}

// Quick: fewer and smaller layers, so that 3 repetitions of 3 servers fit in 2 minutes on 2 cores (distribution's
// proxy pulls ~100 MiB/s cold with 8 clients there, per-blob round trips dominate).
export const QUICK_SIZES: SetSizes = { big: 50 * MiB, mid: { count: 4, size: 8 * MiB }, small: { count: 10, size: MiB }, tiny: { count: 25, size: 20 * KiB } };
export const FULL_SIZES: SetSizes = { big: 200 * MiB, mid: { count: 4, size: 30 * MiB }, small: { count: 20, size: MiB }, tiny: { count: 50, size: 20 * KiB } };

export interface Blob {
  readonly digest: string;
  readonly size: number;
  readonly mediaType: string;
  readonly data: Buffer;
}

export interface Manifest {
  readonly digest: string;
  readonly mediaType: string;
  readonly bytes: Buffer;
}

export interface Fixture {
  readonly dir: string;
  readonly upstream: Registry;
  readonly notary: NotaryPeer;
  /** `library/bench` */
  readonly setRepo: string;
  /** Tags of the image set, in pull order. */
  readonly setTags: string[];
  /** tag -> manifest (or index) digest, as signed. */
  readonly setDigests: Record<string, string>;
  /** Blobs an amd64 pull of the whole set fetches (configs + layers), deduplicated. */
  readonly setPullBlobs: number;
  /** Bytes one client receives pulling the whole set (manifests + blobs). */
  readonly setPullBytes: number;
  /** The big layer, for the warm blob runs. */
  readonly bigBlob: { readonly digest: string; readonly size: number; readonly file: string };
  /** `library/tags` */
  readonly tagsRepo: string;
  readonly tags: string[];
  readonly timings: Record<string, number>;
  stop(): Promise<void>;
}

function sha256(b: Uint8Array): string {
  return 'sha256:' + createHash('sha256').update(b).digest('hex');
}

function randomBlob(size: number, mediaType = MT.ociLayer): Blob {
  const data = Buffer.allocUnsafe(size);
  for (let off = 0; off < size; off += 64 * MiB) randomFillSync(data, off, Math.min(64 * MiB, size - off));
  return { digest: sha256(data), size, mediaType, data };
}

function jsonBlob(v: unknown, mediaType: string): Blob {
  const data = Buffer.from(JSON.stringify(v));
  return { digest: sha256(data), size: data.length, mediaType, data };
}

function descriptor(b: { digest: string; size: number; mediaType: string }, extra: object = {}): object {
  return { mediaType: b.mediaType, digest: b.digest, size: b.size, ...extra };
}

interface Image {
  readonly config: Blob;
  readonly layers: Blob[];
  readonly manifest: Manifest;
}

function image(name: string, arch: string, layers: Blob[]): Image {
  const config = jsonBlob(
    {
      architecture: arch,
      os: 'linux',
      config: { Labels: { 'org.example.bench': name } },
      rootfs: { type: 'layers', diff_ids: layers.map((l) => l.digest) },
      history: layers.map(() => ({ created: '2026-01-01T00:00:00Z', created_by: 'portcullis bench' })),
    },
    MT.ociConfig,
  );
  const bytes = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MT.ociManifest, config: descriptor(config), layers: layers.map((l) => descriptor(l)) }));
  return { config, layers, manifest: { digest: sha256(bytes), mediaType: MT.ociManifest, bytes } };
}

async function pool<T>(items: readonly T[], n: number, f: (t: T, i: number) => Promise<unknown>): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: Math.min(n, items.length) }, async () => {
    while (next < items.length) {
      const i = next++;
      await f(items[i]!, i);
    }
  }));
}

async function pushBlob(base: string, repo: string, b: Blob): Promise<void> {
  const start = await request(`${base}/v2/${repo}/blobs/uploads/`, { method: 'POST', headers: { 'content-length': '0' } });
  await start.body.dump();
  const loc = start.headers['location'];
  if (start.statusCode !== 202 || typeof loc !== 'string') throw new Error(`upload of ${b.digest} to ${repo}: HTTP ${start.statusCode}`);
  const url = new URL(loc, base);
  url.searchParams.set('digest', b.digest);
  const put = await request(url, { method: 'PUT', body: b.data, headers: { 'content-type': 'application/octet-stream', 'content-length': String(b.size) } });
  const text = await put.body.text();
  if (put.statusCode !== 201) throw new Error(`upload of ${b.digest} to ${repo}: HTTP ${put.statusCode} ${text.slice(0, 300)}`);
}

async function putManifest(base: string, repo: string, ref: string, m: Manifest): Promise<void> {
  const r = await request(`${base}/v2/${repo}/manifests/${ref}`, { method: 'PUT', body: m.bytes, headers: { 'content-type': m.mediaType } });
  const text = await r.body.text();
  if (r.statusCode !== 201) throw new Error(`PUT manifest ${repo}:${ref}: HTTP ${r.statusCode} ${text.slice(0, 300)}`);
}

/**
 * Signs `targets` (name -> manifest) in `gun` the way a DCT publisher does, with the real notary CLI: `init`, the
 * snapshot key handed to the server (as `docker trust` sets it up), one `addhash` per target, one `publish`.
 *
 * One `addhash` process per target costs ~10-15 ms of CPU, ~15 s for 1,000 tags on 2 cores. So only the first
 * target goes through `addhash`; the change file it wrote into the CLI's changelist is the template for the others
 * (same fields, its path and the hashes in its data replaced), and `publish` signs them all. What was published
 * is then read back with `notary list`; anything missing is added with `addhash` one by one and published again.
 */
async function sign(n: NotaryPeer, gun: string, targets: ReadonlyArray<readonly [string, Manifest]>): Promise<string> {
  await n.notaryOk('init', gun);
  await n.notaryOk('key', 'rotate', gun, 'snapshot', '-r');
  const addhash = ([name, m]: readonly [string, Manifest]) =>
    n.notaryOk('addhash', gun, name, String(m.bytes.length), '--sha256', m.digest.slice('sha256:'.length));
  const [first, ...rest] = targets;
  if (!first) return 'nothing to sign';
  await addhash(first);
  const changelist = join(n.trustDir, 'tuf', ...gun.split('/'), 'changelist');
  const files = readdirSync(changelist).filter((f) => f.endsWith('.change'));
  const template = files.length === 1 ? (JSON.parse(readFileSync(join(changelist, files[0]!), 'utf8')) as Record<string, unknown>) : undefined;
  const m = files.length === 1 ? /^(\d+)_/.exec(files[0]!) : null;
  if (template && m && template['path'] === first[0] && typeof template['data'] === 'string') {
    const data = JSON.parse(Buffer.from(template['data'], 'base64').toString('utf8')) as { length: number; hashes: Record<string, string> };
    let seq = BigInt(m[1]!);
    for (const [name, man] of rest) {
      seq += 1n;
      const d = { ...data, length: man.bytes.length, hashes: { sha256: Buffer.from(man.digest.slice('sha256:'.length), 'hex').toString('base64') } };
      const change = { ...template, path: name, data: Buffer.from(JSON.stringify(d)).toString('base64') };
      writeFileSync(join(changelist, `${seq.toString().padStart(m[1]!.length, '0')}_${randomUUID()}.change`), JSON.stringify(change));
    }
  } else {
    await pool(rest, 6, addhash);
  }
  await n.notaryOk('publish', gun);
  const listed = new Map<string, string>();
  for (const line of (await n.notaryOk('list', gun)).stdout.split('\n')) {
    const cols = line.trim().split(/\s+/);
    if (cols.length === 4 && /^[0-9a-f]{64}$/.test(cols[1]!)) listed.set(cols[0]!, cols[1]!);
  }
  const missing = targets.filter(([name, man]) => listed.get(name) !== man.digest.slice('sha256:'.length));
  if (missing.length > 0) {
    await pool(missing, 6, addhash);
    await n.notaryOk('publish', gun);
  }
  const how = template ? 'addhash + changelist template' : 'addhash each';
  return `${gun}: ${targets.length} targets (${how}${missing.length > 0 ? `, ${missing.length} re-added with addhash` : ''})`;
}

export async function buildFixture(dir: string, sizes: SetSizes, log: (s: string) => void): Promise<Fixture> {
  const timings: Record<string, number> = {};
  let t = performance.now();
  const mark = (what: string) => {
    timings[what] = Math.round(performance.now() - t);
    t = performance.now();
  };
  mkdirSync(dir, { recursive: true });
  const [upstream, notary] = await Promise.all([
    startRegistry({ dir: join(dir, 'upstream'), name: 'upstream' }),
    startNotary({ dir: join(dir, 'notary') }),
  ]);
  mark('peers');
  try {
    // ---- library/bench: the image set
    const setRepo = 'library/bench';
    const big = image('big', 'amd64', [randomBlob(sizes.big)]);
    const mid = image('mid', 'amd64', Array.from({ length: sizes.mid.count }, () => randomBlob(sizes.mid.size)));
    const small = image('small', 'amd64', Array.from({ length: sizes.small.count }, () => randomBlob(sizes.small.size)));
    const tiny = image('tiny', 'amd64', Array.from({ length: sizes.tiny.count }, () => randomBlob(sizes.tiny.size)));
    const amd = image('multi-amd64', 'amd64', [randomBlob(MiB), randomBlob(MiB)]);
    const arm = image('multi-arm64', 'arm64', [randomBlob(MiB), randomBlob(MiB)]);
    const indexBytes = Buffer.from(JSON.stringify({
      schemaVersion: 2,
      mediaType: MT.ociIndex,
      manifests: [
        descriptor({ ...amd.manifest, size: amd.manifest.bytes.length }, { platform: { architecture: 'amd64', os: 'linux' } }),
        descriptor({ ...arm.manifest, size: arm.manifest.bytes.length }, { platform: { architecture: 'arm64', os: 'linux' } }),
      ],
    }));
    const index: Manifest = { digest: sha256(indexBytes), mediaType: MT.ociIndex, bytes: indexBytes };
    const setImages: Record<string, Image> = { big, mid, small, tiny };
    const setTags = ['big', 'mid', 'small', 'tiny', 'multi'];
    const setDigests: Record<string, string> = { big: big.manifest.digest, mid: mid.manifest.digest, small: small.manifest.digest, tiny: tiny.manifest.digest, multi: index.digest };
    const pulled = [big, mid, small, tiny, amd];
    const setPullBlobs = new Set(pulled.flatMap((i) => [i.config.digest, ...i.layers.map((l) => l.digest)])).size;
    const setPullBytes =
      pulled.reduce((a, i) => a + i.manifest.bytes.length + i.config.size + i.layers.reduce((s, l) => s + l.size, 0), 0) + index.bytes.length;

    // ---- library/tags: 10 small images behind 1,000 tags
    const tagsRepo = 'library/tags';
    const tagImages = Array.from({ length: 10 }, (_, i) => image(`tags-${i}`, 'amd64', [randomBlob(20 * KiB)]));
    const tags = Array.from({ length: 1000 }, (_, i) => `t${String(i).padStart(4, '0')}`);
    mark('generate');

    const bigFile = join(dir, 'big-layer.bin');
    writeFileSync(bigFile, big.layers[0]!.data);

    const t0 = performance.now();
    const signing = Promise.all([
      sign(notary, `docker.io/${setRepo}`, setTags.map((tag) => [tag, tag === 'multi' ? index : setImages[tag]!.manifest] as const)),
      sign(notary, `docker.io/${tagsRepo}`, tags.map((tag, i) => [tag, tagImages[i % 10]!.manifest] as const)),
    ]).then((how) => {
      timings['signing (parallel with push)'] = Math.round(performance.now() - t0);
      log(`signed ${how.join('; ')}`);
    });

    const allImages = [big, mid, small, tiny, amd, arm];
    await pool(allImages.flatMap((i) => [i.config, ...i.layers]), 4, (b) => pushBlob(upstream.url, setRepo, b));
    for (const i of allImages) await putManifest(upstream.url, setRepo, i.manifest.digest, i.manifest);
    for (const tag of ['big', 'mid', 'small', 'tiny']) await putManifest(upstream.url, setRepo, tag, setImages[tag]!.manifest);
    await putManifest(upstream.url, setRepo, 'multi', index);
    await pool(tagImages.flatMap((i) => [i.config, ...i.layers]), 4, (b) => pushBlob(upstream.url, tagsRepo, b));
    await pool(tags, 16, (tag, i) => putManifest(upstream.url, tagsRepo, tag, tagImages[i % 10]!.manifest));
    mark('push');
    await signing;
    mark('signing (waited after push)');
    log(`fixture: ${setTags.length} set tags (${setPullBlobs} blobs, ${(setPullBytes / MiB).toFixed(1)} MiB per amd64 pull), ${tags.length} signed tags; ` +
      Object.entries(timings).map(([k, v]) => `${k} ${v} ms`).join(', '));

    return {
      dir,
      upstream,
      notary,
      setRepo,
      setTags,
      setDigests,
      setPullBlobs,
      setPullBytes,
      bigBlob: { digest: big.layers[0]!.digest, size: big.layers[0]!.size, file: bigFile },
      tagsRepo,
      tags,
      timings,
      async stop() {
        await upstream.stop();
        await notary.stop();
      },
    };
  } catch (e) {
    await upstream.stop();
    await notary.stop();
    throw e;
  }
}

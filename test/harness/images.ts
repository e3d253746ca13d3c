// Small deterministic OCI images built by hand (no container engine): an OCI image layout with a one-file gzip tar
// layer, an image config and a manifest per image, plus multi-arch indexes; pushed to a registry with skopeo.
import { createHash } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { httpGet, runChecked } from './process.js';

export const MT = Object.freeze({
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  ociConfig: 'application/vnd.oci.image.config.v1+json',
  ociLayerGzip: 'application/vnd.oci.image.layer.v1.tar+gzip',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerList: 'application/vnd.docker.distribution.manifest.list.v2+json',
});

/** Every manifest type a registry may answer with (schema1 excluded). */
export const ACCEPT_ALL = [MT.dockerManifest, MT.dockerList, MT.ociManifest, MT.ociIndex].join(', ');

export interface Platform {
  readonly architecture: string;
  readonly os: string;
}

export interface Descriptor {
  readonly mediaType: string;
  /** `sha256:<hex>` */
  readonly digest: string;
  readonly size: number;
  readonly platform?: Platform;
  readonly annotations?: Readonly<Record<string, string>>;
}

export interface ImageSpec {
  /** Default amd64. */
  readonly arch?: string;
  /** Files in the single layer: path → content. */
  readonly files: Readonly<Record<string, string>>;
}

export type LayoutEntry =
  | { readonly tag: string; readonly image: ImageSpec }
  | { readonly tag: string; readonly index: readonly ImageSpec[] };

export interface OciLayout {
  readonly dir: string;
  /** The descriptor of each tag in index.json. */
  readonly tags: Readonly<Record<string, Descriptor>>;
}

export interface PushedManifest {
  readonly tag: string;
  /** `host/repo:tag` */
  readonly reference: string;
  /** `sha256:<hex>` of the bytes the registry serves. */
  readonly digest: string;
  /** hex part of `digest` (what `notary list` prints). */
  readonly sha256Hex: string;
  readonly size: number;
  readonly mediaType: string;
  /** The exact manifest bytes the registry serves for the tag. */
  readonly bytes: Buffer;
}

// ------------------------------------------------------------------------------------------ tar + blobs

function octal(n: number, width: number): string {
  return n.toString(8).padStart(width - 1, '0') + '\0';
}

/** A minimal deterministic ustar archive: regular files, mode 0644, uid/gid 0, mtime 0. */
export function tarFiles(files: Readonly<Record<string, string | Buffer>>): Buffer {
  const parts: Buffer[] = [];
  for (const name of Object.keys(files).sort()) {
    const data = Buffer.from(files[name]!);
    if (Buffer.byteLength(name) > 100) throw new Error(`tar: name too long: ${name}`);
    const h = Buffer.alloc(512);
    h.write(name, 0, 'utf8');
    h.write(octal(0o644, 8), 100, 'ascii');
    h.write(octal(0, 8), 108, 'ascii');
    h.write(octal(0, 8), 116, 'ascii');
    h.write(octal(data.length, 12), 124, 'ascii');
    h.write(octal(0, 12), 136, 'ascii');
    h.write('        ', 148, 'ascii'); // checksum is computed over spaces
    h.write('0', 156, 'ascii');
    h.write('ustar\0', 257, 'ascii');
    h.write('00', 263, 'ascii');
    h.write('root', 265, 'ascii');
    h.write('root', 297, 'ascii');
    let sum = 0;
    for (const b of h) sum += b;
    h.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 'ascii');
    parts.push(h, data, Buffer.alloc((512 - (data.length % 512)) % 512));
  }
  parts.push(Buffer.alloc(1024));
  return Buffer.concat(parts);
}

export function sha256Hex(b: Uint8Array): string {
  return createHash('sha256').update(b).digest('hex');
}

function writeBlob(dir: string, bytes: Buffer, mediaType: string): Descriptor {
  const hex = sha256Hex(bytes);
  writeFileSync(join(dir, 'blobs', 'sha256', hex), bytes);
  return { mediaType, digest: `sha256:${hex}`, size: bytes.length };
}

function json(v: unknown): Buffer {
  return Buffer.from(JSON.stringify(v));
}

function writeImage(dir: string, spec: ImageSpec): Descriptor {
  const arch = spec.arch ?? 'amd64';
  const tar = tarFiles(spec.files);
  const layer = writeBlob(dir, gzipSync(tar, { level: 9 }), MT.ociLayerGzip);
  const config = writeBlob(
    dir,
    json({
      architecture: arch,
      os: 'linux',
      config: { Env: ['PATH=/'], Cmd: ['/hello.txt'] },
      rootfs: { type: 'layers', diff_ids: [`sha256:${sha256Hex(tar)}`] },
      history: [{ created: '1970-01-01T00:00:00Z', created_by: 'portcullis test harness' }],
      created: '1970-01-01T00:00:00Z',
    }),
    MT.ociConfig,
  );
  const manifest = writeBlob(
    dir,
    json({ schemaVersion: 2, mediaType: MT.ociManifest, config, layers: [layer] }),
    MT.ociManifest,
  );
  return { ...manifest, platform: { architecture: arch, os: 'linux' } };
}

/** Writes an OCI image layout into `dir` (created) with one index.json entry per tag. Deterministic. */
export function writeOciLayout(dir: string, entries: readonly LayoutEntry[]): OciLayout {
  mkdirSync(join(dir, 'blobs', 'sha256'), { recursive: true });
  writeFileSync(join(dir, 'oci-layout'), json({ imageLayoutVersion: '1.0.0' }));
  const tags: Record<string, Descriptor> = {};
  for (const e of entries) {
    let d: Descriptor;
    if ('image' in e) {
      const { platform: _p, ...m } = writeImage(dir, e.image);
      d = m;
    } else {
      const manifests = e.index.map((s) => writeImage(dir, s));
      d = writeBlob(dir, json({ schemaVersion: 2, mediaType: MT.ociIndex, manifests }), MT.ociIndex);
    }
    tags[e.tag] = { ...d, annotations: { 'org.opencontainers.image.ref.name': e.tag } };
  }
  writeFileSync(join(dir, 'index.json'), json({ schemaVersion: 2, manifests: Object.values(tags) }));
  return { dir, tags };
}

/** The demo layout: `v1`, `v2` (amd64 images) and `multi` (index of amd64 + arm64). */
export function buildDemoLayout(dir: string): OciLayout {
  return writeOciLayout(dir, [
    { tag: 'v1', image: { files: { 'hello.txt': 'demo v1 (signed)\n' } } },
    { tag: 'v2', image: { files: { 'hello.txt': 'demo v2 (unsigned)\n' } } },
    {
      tag: 'multi',
      index: [
        { arch: 'amd64', files: { 'hello.txt': 'multi amd64\n' } },
        { arch: 'arm64', files: { 'hello.txt': 'multi arm64\n' } },
      ],
    },
  ]);
}

// ------------------------------------------------------------------------------------------ registry

/** GET a manifest with every Accept type; checks Docker-Content-Digest against the bytes. */
export async function fetchManifest(registryUrl: string, repo: string, ref: string, accept = ACCEPT_ALL): Promise<PushedManifest> {
  const r = await httpGet(`${registryUrl}/v2/${repo}/manifests/${ref}`, { headers: { Accept: accept } });
  if (r.status !== 200) throw new Error(`GET manifest ${repo}:${ref}: HTTP ${r.status} ${r.body.toString('utf8').slice(0, 300)}`);
  const hex = sha256Hex(r.body);
  const served = r.headers['docker-content-digest'];
  if (served !== undefined && served !== `sha256:${hex}`) throw new Error(`${repo}:${ref}: Docker-Content-Digest ${String(served)} != sha256:${hex}`);
  const host = new URL(registryUrl).host;
  return {
    tag: ref,
    reference: `${host}/${repo}:${ref}`,
    digest: `sha256:${hex}`,
    sha256Hex: hex,
    size: r.body.length,
    mediaType: String(r.headers['content-type'] ?? ''),
    bytes: r.body,
  };
}

export interface PushOptions {
  /** `v2s2` converts to Docker schema 2 (what `docker push` makes); default keeps OCI. */
  readonly format?: 'v2s2' | 'oci';
  /** Copy every manifest of an index (`--all`). */
  readonly all?: boolean;
}

/** `skopeo copy oci:<layout>:<srcTag> docker://<host>/<repo>:<destTag>`, then reads back what the registry serves. */
export async function pushTag(
  layoutDir: string,
  srcTag: string,
  registry: { url: string; host: string },
  repo: string,
  destTag: string,
  opts: PushOptions = {},
): Promise<PushedManifest> {
  const args = ['copy', '-q', '--dest-tls-verify=false'];
  if (opts.format) args.push('--format', opts.format);
  if (opts.all) args.push('--all');
  args.push(`oci:${layoutDir}:${srcTag}`, `docker://${registry.host}/${repo}:${destTag}`);
  await runChecked('skopeo', args);
  return fetchManifest(registry.url, repo, destTag);
}

export type DemoTag = 'v1' | 'v2' | 'multi' | 'v1-oci';

/**
 * Builds the demo layout in `layoutDir` and pushes `repo` tags: v1 and v2 (Docker schema 2), v1-oci (v1 as OCI),
 * multi (OCI index, all platforms). Two pushes at a time.
 */
export async function pushDemoImages(
  registry: { url: string; host: string },
  layoutDir: string,
  repo = 'library/demo',
): Promise<Record<DemoTag, PushedManifest>> {
  buildDemoLayout(layoutDir);
  const [v1, multi] = await Promise.all([
    pushTag(layoutDir, 'v1', registry, repo, 'v1', { format: 'v2s2' }),
    pushTag(layoutDir, 'multi', registry, repo, 'multi', { all: true }),
  ]);
  const [v2, v1oci] = await Promise.all([
    pushTag(layoutDir, 'v2', registry, repo, 'v2', { format: 'v2s2' }),
    pushTag(layoutDir, 'v1', registry, repo, 'v1-oci'),
  ]);
  return { v1, v2, multi, 'v1-oci': v1oci };
}

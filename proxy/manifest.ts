// What a verified manifest makes reachable: the child manifests of an index / manifest list, or the config and
// layers of an image manifest. Only bytes whose digest already checked out are parsed here.
import { isDigest, type Digest } from '../cache/digest.js';
import { parseUntrustedJson, type JsonObject, type JsonValue } from '../trust/json.js';

export const MT = {
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  ociIndex: 'application/vnd.oci.image.index.v1+json',
} as const;

export interface ChildRef {
  readonly digest: Digest;
  readonly size: number | undefined;
  readonly kind: 'manifest' | 'blob';
}

export interface ManifestInfo {
  readonly mediaType: string;
  readonly children: readonly ChildRef[];
}

function obj(v: JsonValue | undefined): JsonObject | undefined {
  return v !== null && typeof v === 'object' && !Array.isArray(v) ? v : undefined;
}

function descriptor(v: JsonValue | undefined, kind: ChildRef['kind']): ChildRef | undefined {
  const o = obj(v);
  const d = o?.['digest'];
  if (typeof d !== 'string' || !isDigest(d)) return undefined;
  const size = o?.['size'];
  return { digest: d, size: typeof size === 'number' && Number.isSafeInteger(size) && size >= 0 ? size : undefined, kind };
}

/** Throws when the bytes are not a JSON manifest; `contentType` is the upstream's header, if any. */
export function inspectManifest(bytes: Buffer, contentType: string | undefined, maxBytes: number): ManifestInfo {
  const doc = obj(parseUntrustedJson(bytes, { maxBytes, what: 'manifest' }));
  if (!doc) throw new Error('manifest is not a JSON object');
  const declared = typeof doc['mediaType'] === 'string' ? (doc['mediaType'] as string) : undefined;
  const manifests = Array.isArray(doc['manifests']) ? (doc['manifests'] as JsonValue[]) : undefined;
  const ct = contentType?.split(';')[0]?.trim();
  const mediaType = declared ?? (ct && ct !== 'application/octet-stream' && ct !== 'text/plain' ? ct : manifests ? MT.ociIndex : MT.ociManifest);
  const children: ChildRef[] = [];
  if (manifests) {
    for (const m of manifests) {
      const c = descriptor(m, 'manifest');
      if (c) children.push(c);
    }
  } else {
    const config = descriptor(doc['config'], 'blob');
    if (config) children.push(config);
    const layers = Array.isArray(doc['layers']) ? (doc['layers'] as JsonValue[]) : [];
    for (const l of layers) {
      const c = descriptor(l, 'blob');
      if (c) children.push(c);
    }
    // schema1 (fsLayers/blobSum) is refused upstream of here: it cannot be pinned by a signed digest reliably.
  }
  return { mediaType, children };
}

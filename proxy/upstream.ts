// The narrow view of an upstream registry the server needs; RegistryClient implements it over undici.
import type { Readable } from 'node:stream';

export type ManifestResult = { readonly status: 200; readonly bytes: Buffer; readonly mediaType: string | undefined } | { readonly status: 404 };
export type BlobResult = { readonly status: 200; readonly body: Readable; readonly size?: number | undefined } | { readonly status: 404 };
export type TagsResult = { readonly status: 200; readonly bytes: Buffer } | { readonly status: 404 };

export interface UpstreamRegistry {
  getManifest(repo: string, reference: string, accept: string[], maxBytes: number): Promise<ManifestResult>;
  getBlob(repo: string, digest: string): Promise<BlobResult>;
  listTags(repo: string, query: { n?: number | undefined; last?: string | undefined }): Promise<TagsResult>;
}

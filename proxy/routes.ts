// Turns a request line into a validated route before any I/O: which configured upstream, which repository,
// what is asked for. Three addressing modes reach the same place:
//   - Docker mirror:      /v2/library/demo/manifests/v1           (registry-mirrors: always docker.io)
//   - containerd:         /v2/library/demo/manifests/v1?ns=127.0.0.1:5000
//   - explicit prefix:    /v2/127.0.0.1:5000/library/demo/manifests/v1
// The upstream host only ever comes from the config's keys: a request can name a host, never invent one.
import { parseDigest, type Digest } from '../cache/digest.js';
import { DOCKER_HUB, parseHost, parseRepositoryPath, parseTag, ReferenceError, repositoryName, type RepositoryName, type Tag } from '../trust/reference.js';
import { ociError } from './oci-errors.js';

export type AddressingMode = 'mirror' | 'ns' | 'prefix';

export interface RepoRef {
  readonly host: string;
  /** Path under the host ("library/demo"). */
  readonly path: string;
  /** "host/path", what policy and logs use. */
  readonly name: RepositoryName;
  readonly mode: AddressingMode;
}

export type Route =
  | { readonly kind: 'base' }
  | { readonly kind: 'manifest'; readonly repo: RepoRef; readonly tag: Tag; readonly digest?: undefined }
  | { readonly kind: 'manifest'; readonly repo: RepoRef; readonly digest: Digest; readonly tag?: undefined }
  | { readonly kind: 'blob'; readonly repo: RepoRef; readonly digest: Digest }
  | { readonly kind: 'tags'; readonly repo: RepoRef; readonly n?: number; readonly last?: string };

const MAX_URL = 4096;

export function parseRoute(method: string, rawUrl: string, upstreams: ReadonlySet<string>): Route {
  if (rawUrl.length > MAX_URL) throw ociError('NAME_INVALID', `request URL longer than ${MAX_URL} bytes`);
  const q = rawUrl.indexOf('?');
  const pathname = q < 0 ? rawUrl : rawUrl.slice(0, q);
  const params = new URLSearchParams(q < 0 ? '' : rawUrl.slice(q + 1));
  if (pathname === '/v2' || pathname === '/v2/') {
    if (method !== 'GET' && method !== 'HEAD') throw ociError('UNSUPPORTED', `${method} is not supported: this mirror is read-only`);
    return { kind: 'base' };
  }
  if (!pathname.startsWith('/v2/')) throw ociError('NAME_UNKNOWN', `no such endpoint ${JSON.stringify(pathname.slice(0, 200))}`);
  // Percent-encoding has no business in a repository path; decoding it would let "%2e%2e" become "..".
  if (pathname.includes('%')) throw ociError('NAME_INVALID', 'percent-encoded characters are not allowed in repository paths');
  const rest = pathname.slice(4);
  const m = /^(.+?)\/(manifests\/[^/]+|blobs\/uploads(?:\/.*)?|blobs\/[^/]+|tags\/list)$/.exec(rest);
  if (!m) throw ociError('NAME_UNKNOWN', `no such endpoint ${JSON.stringify(pathname.slice(0, 200))}`);
  const [, name, what] = m as unknown as [string, string, string];
  if (what.startsWith('blobs/uploads') || (method !== 'GET' && method !== 'HEAD')) {
    throw ociError('UNSUPPORTED', `${method} ${what.split('/')[0]} is not supported: this mirror is read-only (push to the upstream registry)`);
  }
  const repo = parseRepo(name, params.get('ns'), upstreams);
  if (what.startsWith('manifests/')) {
    const ref = what.slice('manifests/'.length);
    if (ref.includes(':')) return { kind: 'manifest', repo, digest: digestOrThrow(ref) };
    try {
      return { kind: 'manifest', repo, tag: parseTag(ref) };
    } catch (e) {
      throw ociError('MANIFEST_UNKNOWN', (e as Error).message);
    }
  }
  if (what.startsWith('blobs/')) return { kind: 'blob', repo, digest: digestOrThrow(what.slice('blobs/'.length)) };
  const n = params.get('n');
  const last = params.get('last');
  if (n !== null && !/^[0-9]{1,5}$/.test(n)) throw ociError('UNSUPPORTED', 'tags/list: n must be a number');
  if (last !== null) {
    try { parseTag(last); } catch (e) { throw ociError('UNSUPPORTED', `tags/list: last: ${(e as Error).message}`); }
  }
  return { kind: 'tags', repo, ...(n !== null ? { n: Number(n) } : {}), ...(last !== null ? { last } : {}) };
}

function digestOrThrow(s: string): Digest {
  try {
    return parseDigest(s);
  } catch (e) {
    throw ociError('DIGEST_INVALID', (e as Error).message);
  }
}

function parseRepo(name: string, ns: string | null, upstreams: ReadonlySet<string>): RepoRef {
  try {
    let host: string;
    let path: string;
    let mode: AddressingMode;
    if (ns !== null) {
      host = parseHost(ns === 'index.docker.io' || ns === 'registry-1.docker.io' ? DOCKER_HUB : ns);
      path = name;
      mode = 'ns';
    } else {
      const first = name.split('/')[0]!;
      if (name.includes('/') && upstreams.has(first.toLowerCase())) {
        host = first.toLowerCase();
        path = name.slice(first.length + 1);
        mode = 'prefix';
      } else if (name.includes('/') && (first.includes('.') || first.includes(':') || first === 'localhost')) {
        // Looks like a registry host, and Docker Hub namespaces never contain "." or ":": refuse, don't guess.
        throw ociError('NAME_UNKNOWN', `registry ${first} is not configured as an upstream of this mirror`);
      } else {
        host = DOCKER_HUB;
        path = name;
        mode = 'mirror';
      }
    }
    if (!upstreams.has(host)) {
      throw ociError('NAME_UNKNOWN', `registry ${host} is not configured as an upstream of this mirror`);
    }
    parseRepositoryPath(path);
    const full = repositoryName(host, path);
    return { host, path: full.slice(host.length + 1), name: full, mode };
  } catch (e) {
    if (e instanceof ReferenceError) throw ociError('NAME_INVALID', e.message);
    throw e;
  }
}

// Image references, parsed at the edge into branded types (the distribution reference grammar, strictly).
// A `RepositoryName` always carries its registry host ("docker.io/library/demo"), so policy globs, GUNs and
// store keys never have to guess what "demo" meant.

export type RepositoryName = string & { readonly __brand: 'RepositoryName' };
export type Tag = string & { readonly __brand: 'Tag' };

export class ReferenceError extends Error {
  override readonly name = 'ReferenceError';
}

export const DOCKER_HUB = 'docker.io';
/** A path component: lower-case alphanumerics separated by `.`, `_`, `__` or runs of `-`. */
const COMPONENT = /^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*$/;
const TAG = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/;
const HOST = /^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*|\[[0-9A-Fa-f:]+\])(?::[0-9]{1,5})?$/;
const MAX_NAME = 255;

export function parseTag(s: string): Tag {
  if (!TAG.test(s)) throw new ReferenceError(`invalid tag ${JSON.stringify(s)}: tags are 1-128 characters of [A-Za-z0-9_.-], not starting with . or -`);
  return s as Tag;
}

/** The path part of a repository (no host): "library/demo". */
export function parseRepositoryPath(path: string): string {
  if (path.length === 0 || path.length > MAX_NAME) throw new ReferenceError(`invalid repository name ${JSON.stringify(path)}: length must be 1-${MAX_NAME}`);
  for (const c of path.split('/')) {
    if (!COMPONENT.test(c)) throw new ReferenceError(`invalid repository name ${JSON.stringify(path)}: component ${JSON.stringify(c)} must be lower-case letters, digits and separators`);
  }
  return path;
}

export function parseHost(host: string): string {
  if (!HOST.test(host)) throw new ReferenceError(`invalid registry host ${JSON.stringify(host)}`);
  const port = /:(\d+)$/.exec(host)?.[1];
  if (port !== undefined && (Number(port) < 1 || Number(port) > 65535)) throw new ReferenceError(`invalid port in ${JSON.stringify(host)}`);
  return host.toLowerCase();
}

/** Joins a validated host and path; Docker Hub's official images live under "library/". */
export function repositoryName(host: string, path: string): RepositoryName {
  const h = parseHost(host);
  let p = parseRepositoryPath(path);
  if (h === DOCKER_HUB && !p.includes('/')) p = `library/${p}`;
  const full = `${h}/${p}`;
  if (full.length > MAX_NAME) throw new ReferenceError(`repository name too long (${full.length} > ${MAX_NAME})`);
  return full as RepositoryName;
}

export interface ImageReference {
  readonly repository: RepositoryName;
  readonly host: string;
  /** The repository path under the host ("library/demo"). */
  readonly path: string;
  readonly tag: Tag | undefined;
  readonly digest: string | undefined;
}

/**
 * Parses "host[:port]/path[:tag][@sha256:…]" the way docker does: the first component is a host only if it
 * contains "." or ":" or is "localhost"; otherwise the name is on Docker Hub.
 */
export function parseImageReference(ref: string): ImageReference {
  let rest = ref;
  let digest: string | undefined;
  const at = rest.indexOf('@');
  if (at >= 0) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
    if (!/^sha256:[a-f0-9]{64}$/.test(digest)) throw new ReferenceError(`invalid digest ${JSON.stringify(digest)} in ${JSON.stringify(ref)}`);
  }
  let tag: Tag | undefined;
  const lastSlash = rest.lastIndexOf('/');
  const colon = rest.lastIndexOf(':');
  if (colon > lastSlash) {
    tag = parseTag(rest.slice(colon + 1));
    rest = rest.slice(0, colon);
  }
  const first = rest.split('/')[0]!;
  let host = DOCKER_HUB;
  let path = rest;
  if (rest.includes('/') && (first.includes('.') || first.includes(':') || first === 'localhost')) {
    host = first;
    path = rest.slice(first.length + 1);
  }
  if (host === 'index.docker.io' || host === 'registry-1.docker.io') host = DOCKER_HUB;
  const repository = repositoryName(host, path);
  return { repository, host: parseHost(host), path: repository.slice(parseHost(host).length + 1), tag, digest };
}

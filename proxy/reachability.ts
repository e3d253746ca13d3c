// Which digests a repository may serve right now: those reachable from a manifest the gate allowed, until the
// trust data behind that decision expires. This is what stops a by-digest request from bypassing the policy.
import type { Digest } from '../cache/digest.js';
import type { ManifestInfo } from './manifest.js';

interface Entry {
  until: number;
  size: number | undefined;
}

const MAX_PER_REPO = 100_000;
const MAX_REPOS = 10_000;

export class Reachability {
  readonly #repos = new Map<string, Map<string, Entry>>();

  allow(repo: string, digest: Digest, size: number | undefined, until: number): void {
    let m = this.#repos.get(repo);
    if (!m) {
      if (this.#repos.size >= MAX_REPOS) this.#repos.clear();
      m = new Map();
      this.#repos.set(repo, m);
    }
    if (m.size >= MAX_PER_REPO) this.#prune(m, Date.now());
    const prev = m.get(digest);
    m.set(digest, { until: Math.max(prev?.until ?? 0, until), size: size ?? prev?.size });
  }

  allowChildren(repo: string, info: ManifestInfo, until: number): void {
    for (const c of info.children) this.allow(repo, c.digest, c.size, until);
  }

  allowed(repo: string, digest: Digest, now: number): boolean {
    const e = this.#repos.get(repo)?.get(digest);
    return e !== undefined && e.until > now;
  }

  until(repo: string, digest: Digest): number | undefined {
    return this.#repos.get(repo)?.get(digest)?.until;
  }

  sizeOf(repo: string, digest: Digest): number | undefined {
    return this.#repos.get(repo)?.get(digest)?.size;
  }

  #prune(m: Map<string, Entry>, now: number): void {
    for (const [k, v] of m) if (v.until <= now) m.delete(k);
    if (m.size >= MAX_PER_REPO) m.clear();
  }
}

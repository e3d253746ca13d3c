// The TUF client workflow (spec §5) for one repository: fetch in order, hand every byte to the TrustedSet, and
// commit what it accepted to the store in one transaction per refresh. This file decides what to fetch and from
// where; it never decides what to trust.
import type { MetadataStore } from '../cache/metadata-store.js';
import type { Clock } from './clock.js';
import { TrustError } from './errors.js';
import type { Dialect } from './keys.js';
import { defaultTrustLimits, type TrustLimits } from './limits.js';
import { checkLengthAndHashes, type MetaFile, type TargetFile } from './metadata.js';
import { TrustedSet } from './trusted-set.js';

/** Where metadata bytes come from: a Notary server, a TUF HTTP base URL, a bundle carried across an air gap. */
export interface MetadataFetcher {
  /** One file by its remote name. Resolves null when the source says it does not exist (404). */
  fetch(name: string, maxBytes: number): Promise<Buffer | null>;
}

export interface UpdaterOptions {
  readonly dialect: Dialect;
  /** Store namespace: the GUN for Notary, a repository key for TUF. */
  readonly namespace: string;
  /** Notary: the GUN (root certificates must carry it as CN). */
  readonly gun?: string | undefined;
  readonly store: MetadataStore;
  readonly fetcher: MetadataFetcher;
  readonly clock: Clock;
  readonly limits?: TrustLimits;
  /**
   * The root to start from when the store has none. Without it, a Notary repository is trusted on first use
   * (what the notary and docker clients do); a TUF repository refuses to start.
   */
  readonly initialRoot?: Buffer | undefined;
}

/** A target found by the delegation walk, with the chain of roles that vouch for it. */
export interface FoundTarget {
  readonly name: string;
  readonly target: TargetFile;
  /** The role that lists the target. */
  readonly role: string;
  /** Roles from "targets" down to `role`. */
  readonly path: readonly string[];
  /** The earliest expiry on that chain and the top-level roles: a decision based on this is good until then. */
  readonly validUntil: Date;
}

export class Updater {
  readonly #o: UpdaterOptions;
  readonly #limits: TrustLimits;
  #set: TrustedSet | undefined;

  constructor(o: UpdaterOptions) {
    this.#o = o;
    this.#limits = o.limits ?? defaultTrustLimits;
  }

  /** The trusted state, loaded from the store if need be (no network). Undefined when nothing was ever trusted. */
  async trusted(): Promise<TrustedSet | undefined> {
    if (!this.#set) {
      const stored = await this.#o.store.load(this.#o.namespace);
      this.#set = TrustedSet.load(stored, this.#setOptions(), this.#o.clock());
    }
    return this.#set;
  }

  #setOptions() {
    return { dialect: this.#o.dialect, gun: this.#o.gun, limits: this.#limits };
  }

  /**
   * §5.3-§5.6.1: root chain, timestamp, snapshot, top-level targets. Whatever was accepted is committed in one
   * store transaction, also when a later step is refused (a verified newer timestamp must raise the rollback floor).
   */
  async refresh(): Promise<TrustedSet> {
    const now = this.#o.clock();
    let set = await this.trusted();
    if (!set) {
      const root = this.#o.initialRoot ?? (this.#o.dialect === 'notary' ? await this.#fetchRequired('root.json', this.#limits.rootMaxBytes, 'root') : undefined);
      if (!root) throw new TrustError('NO_TRUST_DATA', 'no trusted root: initialise with a root file first', 'root');
      set = TrustedSet.fromRoot(root, this.#setOptions(), now);
      this.#set = set;
    }
    try {
      await this.#updateRoot(set, now);
      const ts = await this.#fetchRequired('timestamp.json', this.#limits.timestampMaxBytes, 'timestamp');
      set.updateTimestamp(ts, now);
      const snapMeta = set.timestamp!.info.snapshot;
      if (!this.#snapshotIsCurrent(set, snapMeta)) {
        const bytes = await this.#fetchRequired(this.#snapshotName(set, snapMeta), snapMeta.length ?? this.#limits.snapshotMaxBytes, 'snapshot');
        set.updateSnapshot(bytes, now);
      }
      await this.#ensureRole(set, 'targets', 'root', now);
      set.checkFresh(now, ['targets']);
      return set;
    } finally {
      await this.#commit(set);
    }
  }

  async #commit(set: TrustedSet): Promise<void> {
    const change = set.takeChange();
    if ((change.put?.size ?? 0) === 0 && (change.remove?.length ?? 0) === 0 && (change.highWater?.size ?? 0) === 0) return;
    try {
      await this.#o.store.commit(this.#o.namespace, change);
    } catch (e) {
      // The in-memory state ran ahead of the store; drop it so the next operation starts from what is durable.
      this.#set = undefined;
      throw new TrustError('STORE', `could not persist trusted metadata for ${this.#o.namespace}: ${(e as Error).message}`, undefined, { cause: e });
    }
  }

  async #updateRoot(set: TrustedSet, now: Date): Promise<void> {
    for (let i = 0; i < this.#limits.maxRootRotations; i++) {
      const next = set.rootVersion + 1;
      const bytes = await this.#o.fetcher.fetch(`${next}.root.json`, this.#limits.rootMaxBytes);
      if (bytes === null) return;
      set.updateRoot(bytes, now);
    }
    // More rotations than the limit in one go: keep what was verified, refuse to go on (spec's MAX_ROOT_ROTATIONS).
  }

  #snapshotIsCurrent(set: TrustedSet, meta: MetaFile): boolean {
    const snap = set.snapshot;
    if (!snap) return false;
    if (meta.version !== undefined && snap.env.version !== meta.version) return false;
    if (meta.hashes) {
      try {
        // Notary names the snapshot only by hashes.
        checkLengthAndHashes(snap.env.bytes, meta.length, meta.hashes, 'snapshot');
      } catch {
        return false;
      }
    }
    return true;
  }

  #snapshotName(set: TrustedSet, meta: MetaFile): string {
    if (this.#o.dialect === 'notary') {
      const h = meta.hashes?.get('sha256');
      return h ? `snapshot.${h.toString('hex')}.json` : 'snapshot.json';
    }
    return set.root.consistentSnapshot ? `${meta.version}.snapshot.json` : 'snapshot.json';
  }

  #roleFileName(set: TrustedSet, role: string, meta: MetaFile): string {
    if (this.#o.dialect === 'notary') {
      // Notary role names contain "/" and are path segments on the server (targets/releases.<hash>.json).
      const h = meta.hashes?.get('sha256');
      return h ? `${role}.${h.toString('hex')}.json` : `${role}.json`;
    }
    const quoted = encodeURIComponent(role);
    return set.root.consistentSnapshot ? `${meta.version}.${quoted}.json` : `${quoted}.json`;
  }

  /**
   * Makes the role the snapshot lists trusted (fetching it unless the trusted copy is current). Returns false
   * when a Notary snapshot does not list a delegated role: Notary publishes a delegation before its metadata,
   * and such a role simply signs nothing yet.
   */
  async #ensureRole(set: TrustedSet, role: string, parent: string, now: Date): Promise<boolean> {
    if (set.isCurrent(role)) return true;
    const meta = set.snapshotMetaFor(role);
    if (!meta) {
      if (this.#o.dialect === 'notary' && role !== 'targets') return false;
      throw new TrustError('MIX_AND_MATCH', `the trusted snapshot does not list ${role}`, role);
    }
    const bytes = await this.#fetchRequired(this.#roleFileName(set, role, meta), Math.min(meta.length ?? this.#limits.targetsMaxBytes, this.#limits.targetsMaxBytes), role);
    if (role === 'targets') set.updateTargets(bytes, now);
    else set.updateDelegated(bytes, role, parent, now);
    return true;
  }

  async #fetchRequired(name: string, maxBytes: number, role: string): Promise<Buffer> {
    const b = await this.#o.fetcher.fetch(name, maxBytes);
    if (b === null) throw new TrustError('NO_TRUST_DATA', `${name} does not exist on the server`, role);
    if (b.byteLength > maxBytes) throw new TrustError('ENDLESS_DATA', `${name}: ${b.byteLength} bytes exceeds the limit of ${maxBytes}`, role);
    return b;
  }

  /**
   * §5.6.7: the pre-order delegation walk for one target, honouring terminating delegations, bounded by the
   * delegation count and depth limits. Run `refresh()` first (or rely on what the store holds, offline).
   */
  async findTarget(name: string, o: { offline?: boolean } = {}): Promise<FoundTarget | undefined> {
    const set = await this.#requireSet();
    try {
      return await this.#walk(set, name, o);
    } finally {
      await this.#commit(set);
    }
  }

  async #walk(set: TrustedSet, name: string, o: { offline?: boolean }): Promise<FoundTarget | undefined> {
    const now = this.#o.clock();
    const stack: { role: string; parent: string; path: string[] }[] = [{ role: 'targets', parent: 'root', path: ['targets'] }];
    const visited = new Set<string>();
    let visits = 0;
    while (stack.length > 0) {
      const { role, parent, path } = stack.pop()!;
      if (visited.has(role)) continue; // a cycle or a diamond: each role speaks once
      visited.add(role);
      if (++visits > this.#limits.maxDelegations + 1) {
        throw new TrustError('DELEGATION', `looking up ${name} visited more than ${this.#limits.maxDelegations} delegated roles`, role);
      }
      if (path.length - 1 > this.#limits.maxDelegationDepth) {
        throw new TrustError('DELEGATION', `delegation chain to ${role} is deeper than ${this.#limits.maxDelegationDepth}`, role);
      }
      const present = o.offline ? set.targetsOf(role) !== undefined : await this.#ensureRole(set, role, parent, now);
      if (!present) continue;
      set.checkFresh(now, path);
      const t = set.targetsIn(role).get(name);
      if (t) return { name, target: t, role, path, validUntil: set.validUntil(path) };
      const children: typeof stack = [];
      for (const d of set.matchingDelegations(role, name)) {
        children.push({ role: d.role.name, parent: role, path: [...path, d.role.name] });
        if (d.role.terminating) {
          stack.length = 0;
          break;
        }
      }
      stack.push(...children.reverse());
    }
    return undefined;
  }

  /**
   * Every role reachable from "targets" (pre-order), loaded, with the targets each may sign: a target a role
   * lists outside the paths its delegation chain allows is left out (it may not speak for it).
   */
  async listAll(o: { offline?: boolean } = {}): Promise<{ role: string; path: string[]; targets: Map<string, TargetFile> }[]> {
    const set = await this.#requireSet();
    try {
      return await this.#walkAll(set, o);
    } finally {
      await this.#commit(set);
    }
  }

  async #walkAll(set: TrustedSet, o: { offline?: boolean }): Promise<{ role: string; path: string[]; targets: Map<string, TargetFile> }[]> {
    const now = this.#o.clock();
    const out: { role: string; path: string[]; targets: Map<string, TargetFile> }[] = [];
    type Item = { role: string; parent: string; path: string[]; allowed: (t: string) => boolean };
    const stack: Item[] = [{ role: 'targets', parent: 'root', path: ['targets'], allowed: () => true }];
    const visited = new Set<string>();
    while (stack.length > 0) {
      const it = stack.pop()!;
      if (visited.has(it.role)) continue;
      visited.add(it.role);
      if (visited.size > this.#limits.maxDelegations * 64) throw new TrustError('DELEGATION', 'delegation graph too large', it.role);
      if (it.path.length - 1 > this.#limits.maxDelegationDepth) {
        throw new TrustError('DELEGATION', `delegation chain to ${it.role} is deeper than ${this.#limits.maxDelegationDepth}`, it.role);
      }
      const present = o.offline ? set.targetsOf(it.role) !== undefined : await this.#ensureRole(set, it.role, it.parent, now);
      if (!present) continue;
      set.checkFresh(now, it.path);
      const targets = new Map<string, TargetFile>();
      for (const [n, t] of set.targetsIn(it.role)) if (it.allowed(n)) targets.set(n, t);
      out.push({ role: it.role, path: it.path, targets });
      const children: Item[] = set.delegationsOf(it.role).map((d) => ({
        role: d.role.name,
        parent: it.role,
        path: [...it.path, d.role.name],
        allowed: (t: string) => it.allowed(t) && set.delegationCovers(d.role, t),
      }));
      stack.push(...children.reverse());
    }
    return out;
  }

  async #requireSet(): Promise<TrustedSet> {
    const set = await this.trusted();
    if (!set) throw new TrustError('NO_TRUST_DATA', `no trusted metadata for ${this.#o.namespace}`);
    return set;
  }

  /** Persists roles fetched during lookups (delegations load lazily). */
  async flush(): Promise<void> {
    if (this.#set) await this.#commit(this.#set);
  }
}

// The one owner of trusted TUF state for one repository (a Notary GUN or a TUF 1.0 repository). Every invariant
// of the client workflow (TUF spec §5) is checked here and nowhere else: the updater fetches bytes and asks this
// class to accept them; the store only persists what this class hands out in `takeChange()`.
//
// Both dialects feed the same checks. Where they differ the code says so:
//  - Notary v1: computed key IDs, `_type` "Root", snapshot/timestamp meta without versions (so rollback of a
//    targets role is caught by its high-water mark), delegation paths are prefixes, root keys are x509 with CN=GUN.
//  - TUF 1.0: `spec_version`, versions in meta (so mix-and-match is caught by version equality too), glob paths,
//    path_hash_prefixes and succinct hash-bin delegations.
import { createHash } from 'node:crypto';
import type { NamespaceChange, StoredDocument, StoredNamespace } from '../cache/metadata-store.js';
import { TrustError } from './errors.js';
import { checkKeyUsable, parseKey, verifySignature, type Dialect, type PublicKey } from './keys.js';
import { defaultTrustLimits, type TrustLimits } from './limits.js';
import {
  checkLengthAndHashes,
  parseEnvelope,
  parseRoot,
  parseSnapshot,
  parseTargets,
  parseTimestamp,
  type DelegatedRole,
  type Envelope,
  type MetaFile,
  type RoleKeys,
  type RootInfo,
  type SnapshotInfo,
  type TargetFile,
  type TargetsInfo,
  type TimestampInfo,
  type TopRole,
} from './metadata.js';
import type { JsonValue } from './json.js';

export interface TrustedSetOptions {
  readonly dialect: Dialect;
  /** Notary: the GUN, for the CN check on root certificates. */
  readonly gun?: string | undefined;
  readonly limits?: TrustLimits;
}

interface Trusted<T> {
  readonly env: Envelope;
  readonly info: T;
}

/** A delegation edge as seen from the delegating role, with the keys to check the child's signatures. */
export interface Delegation {
  readonly role: DelegatedRole;
  readonly parent: string;
  readonly keys: ReadonlyMap<string, JsonValue>;
}

const TOP: readonly TopRole[] = ['root', 'timestamp', 'snapshot', 'targets'];

export class TrustedSet {
  readonly dialect: Dialect;
  readonly gun: string | undefined;
  readonly limits: TrustLimits;
  #root: Trusted<RootInfo>;
  #timestamp: Trusted<TimestampInfo> | undefined;
  #snapshot: Trusted<SnapshotInfo> | undefined;
  /** "targets" and every delegated role loaded so far. */
  readonly #targets = new Map<string, Trusted<TargetsInfo>>();
  /** Highest version ever accepted per role: survives restarts through the store, independent of the documents. */
  readonly #highWater = new Map<string, number>();
  readonly #keyCache = new Map<string, PublicKey>();
  #change: { put: Map<string, StoredDocument>; remove: Set<string>; highWater: Map<string, number | null> } = TrustedSet.#emptyChange();

  private constructor(opts: TrustedSetOptions, root: Trusted<RootInfo>) {
    this.dialect = opts.dialect;
    this.gun = opts.gun;
    this.limits = opts.limits ?? defaultTrustLimits;
    this.#root = root;
  }

  static #emptyChange() {
    return { put: new Map<string, StoredDocument>(), remove: new Set<string>(), highWater: new Map<string, number | null>() };
  }

  /**
   * Starts from a root the caller trusts out of band (a pinned root file, or trust on first use of a GUN).
   * The root must still be signed by a threshold of its own root keys (spec 5.2: a root that does not sign
   * itself is not a root).
   */
  static fromRoot(rootBytes: Buffer, opts: TrustedSetOptions, now: Date, fromStore = false): TrustedSet {
    const limits = opts.limits ?? defaultTrustLimits;
    const env = parseEnvelope(rootBytes, { dialect: opts.dialect, role: 'root', what: 'root', maxBytes: limits.rootMaxBytes, maxDepth: limits.maxJsonDepth });
    const info = parseRoot(env, 'root');
    const set = new TrustedSet(opts, { env, info });
    // A stored root is not re-checked for certificate validity (as for expiry): refresh() re-verifies it at `now`
    // after trying to rotate, so a client restarted after its root certificates expired can still rotate away.
    set.#verifyThreshold(env, info.roles.get('root')!, info.keys, 'root', now, 'root', fromStore);
    set.#record('root', env);
    return set;
  }

  /**
   * Rebuilds the trusted state from the store. Stored documents were verified when they arrived; they are
   * re-checked for signatures and chain consistency (a store is not a trust anchor), but not for expiry or
   * rollback: an expired copy still serves as the floor for rollback checks. A stored role that no longer
   * chains is dropped and will be fetched again; the high-water marks are kept whatever happens.
   */
  static load(stored: StoredNamespace, opts: TrustedSetOptions, now: Date): TrustedSet | undefined {
    const rootDoc = stored.documents.get('root');
    if (!rootDoc) return undefined;
    const set = TrustedSet.fromRoot(rootDoc.bytes, opts, now, true);
    for (const [name, v] of stored.highWater) set.#highWater.set(name, v);
    const docs = new Map<string, Buffer>();
    for (const [name, d] of stored.documents) if (name !== 'root') docs.set(name, d.bytes);
    set.#adopt(docs, now);
    set.#change = TrustedSet.#emptyChange();
    return set;
  }


  /**
   * Re-admits documents that were trusted before (from the store, or from before a root update) in chain
   * order, checking signatures under the current root and the timestamp -> snapshot -> targets links, but not
   * expiry or rollback. A document that no longer chains is dropped (and will be fetched again).
   */
  #adopt(docs: ReadonlyMap<string, Buffer>, now: Date): void {
    const attempt = (name: string, f: (bytes: Buffer) => void) => {
      const bytes = docs.get(name);
      if (!bytes) return false;
      try {
        f(bytes);
        return true;
      } catch {
        return false;
      }
    };
    if (!attempt('timestamp', (b) => this.updateTimestamp(b, now, { fromStore: true }))) return;
    if (!attempt('snapshot', (b) => this.updateSnapshot(b, now, { fromStore: true }))) return;
    if (!attempt('targets', (b) => this.updateTargets(b, now, { fromStore: true }))) return;
    // Delegated roles breadth-first from the top, so each one's delegator is in place first.
    let frontier = ['targets'];
    let budget = docs.size;
    while (frontier.length > 0 && budget > 0) {
      const next: string[] = [];
      for (const parent of frontier) {
        for (const d of this.delegationsOf(parent)) {
          if (this.#targets.has(d.role.name) || budget-- <= 0) continue;
          if (attempt(d.role.name, (b) => this.updateDelegated(b, d.role.name, parent, now, { fromStore: true }))) next.push(d.role.name);
        }
      }
      frontier = next;
    }
  }

  // ---------------------------------------------------------------- queries

  get rootVersion(): number { return this.#root.env.version; }
  get root(): RootInfo { return this.#root.info; }
  get rootExpires(): Date { return this.#root.env.expires; }
  get timestamp(): Trusted<TimestampInfo> | undefined { return this.#timestamp; }
  get snapshot(): Trusted<SnapshotInfo> | undefined { return this.#snapshot; }
  targetsOf(role: string): Trusted<TargetsInfo> | undefined { return this.#targets.get(role); }
  highWater(role: string): number | undefined { return this.#highWater.get(role); }
  /** Documents currently trusted, by role name. */
  loadedRoles(): string[] { return ['root', ...(this.#timestamp ? ['timestamp'] : []), ...(this.#snapshot ? ['snapshot'] : []), ...this.#targets.keys()]; }
  documentBytes(role: string): Buffer | undefined {
    if (role === 'root') return this.#root.env.bytes;
    if (role === 'timestamp') return this.#timestamp?.env.bytes;
    if (role === 'snapshot') return this.#snapshot?.env.bytes;
    return this.#targets.get(role)?.env.bytes;
  }
  expiresOf(role: string): Date | undefined {
    if (role === 'root') return this.#root.env.expires;
    if (role === 'timestamp') return this.#timestamp?.env.expires;
    if (role === 'snapshot') return this.#snapshot?.env.expires;
    return this.#targets.get(role)?.env.expires;
  }

  /** What the snapshot says about a targets role: the expected version/length/hashes, or undefined if unlisted. */
  snapshotMetaFor(role: string): MetaFile | undefined {
    return this.#snapshot?.info.meta.get(role);
  }

  /** Whether the trusted copy of a targets role is the one the current snapshot lists (no refetch needed). */
  isCurrent(role: string): boolean {
    const t = this.#targets.get(role);
    const meta = this.snapshotMetaFor(role);
    if (!t || !meta) return false;
    if (meta.version !== undefined && meta.version !== t.env.version) return false;
    try {
      checkLengthAndHashes(t.env.bytes, meta.length, meta.hashes, role);
      return true;
    } catch {
      return false;
    }
  }

  /** The delegations a loaded role makes, in order (succinct hash bins are expanded only on demand). */
  delegationsOf(parent: string): Delegation[] {
    const d = this.#targets.get(parent)?.info.delegations;
    if (!d) return [];
    return d.roles.map((role) => ({ role, parent, keys: d.keys }));
  }

  /**
   * The delegations of `parent` that may speak for `target`, in the order the spec's pre-order walk visits them
   * (§5.6.7.2): path patterns (TUF globs, Notary prefixes), hash prefixes, or the one succinct hash bin.
   */
  matchingDelegations(parent: string, target: string): Delegation[] {
    const d = this.#targets.get(parent)?.info.delegations;
    if (!d) return [];
    if (d.succinct) {
      const s = d.succinct;
      const hash = createHash('sha256').update(target, 'utf8').digest();
      const bin = hash.readUInt32BE(0) >>> (32 - s.bitLength);
      const width = Math.ceil(s.bitLength / 4);
      const name = `${s.namePrefix}-${bin.toString(16).padStart(width, '0')}`;
      return [{ role: { name, keyids: s.keyids, threshold: s.threshold, terminating: true, paths: undefined, pathHashPrefixes: undefined }, parent, keys: d.keys }];
    }
    return d.roles.filter((r) => this.delegationCovers(r, target)).map((role) => ({ role, parent, keys: d.keys }));
  }

  /** Whether a delegated role may sign `target`: a role listing targets outside its paths is ignored for them. */
  delegationCovers(role: DelegatedRole, target: string): boolean {
    if (role.pathHashPrefixes) {
      const h = createHash('sha256').update(target, 'utf8').digest('hex');
      return role.pathHashPrefixes.some((p) => h.startsWith(p));
    }
    const paths = role.paths ?? [];
    if (this.dialect === 'notary') return paths.some((p) => target.startsWith(p));
    return paths.some((p) => globMatch(p, target));
  }

  /** The targets a loaded role lists (not filtered by delegation paths: see `delegationCovers`). */
  targetsIn(role: string): ReadonlyMap<string, TargetFile> {
    return this.#targets.get(role)?.info.targets ?? new Map();
  }

  /**
   * Refuses to answer from state that has expired at `now` (freeze attack): the root, timestamp and snapshot,
   * and each targets role on the given delegation path.
   */
  checkFresh(now: Date, rolePath: readonly string[] = []): void {
    this.#checkExpiry('root', this.#root.env, now);
    if (!this.#timestamp) throw new TrustError('NO_TRUST_DATA', 'no trusted timestamp', 'timestamp');
    this.#checkExpiry('timestamp', this.#timestamp.env, now);
    if (!this.#snapshot) throw new TrustError('NO_TRUST_DATA', 'no trusted snapshot', 'snapshot');
    this.#checkExpiry('snapshot', this.#snapshot.env, now);
    for (const role of rolePath) {
      const t = this.#targets.get(role);
      if (!t) throw new TrustError('NO_TRUST_DATA', `no trusted ${role}`, role);
      this.#checkExpiry(role, t.env, now);
    }
  }

  /** The earliest expiry among root, timestamp, snapshot and the given roles: how long a decision may be cached. */
  validUntil(rolePath: readonly string[]): Date {
    let t = this.#root.env.expires.getTime();
    for (const e of [this.#timestamp?.env, this.#snapshot?.env, ...rolePath.map((r) => this.#targets.get(r)?.env)]) {
      if (e) t = Math.min(t, e.expires.getTime());
    }
    return new Date(t);
  }

  /** The store change accumulated since the last call: one commit per refresh. */
  takeChange(): NamespaceChange {
    const c = this.#change;
    this.#change = TrustedSet.#emptyChange();
    return { put: c.put, remove: [...c.remove], highWater: c.highWater };
  }

  // ---------------------------------------------------------------- updates (spec §5.3 - §5.6)

  /** §5.3: the next root, which must be version N+1 and signed by a threshold of both the old and its own root keys. */
  updateRoot(bytes: Buffer, now: Date): void {
    const env = parseEnvelope(bytes, { dialect: this.dialect, role: 'root', what: `root v${this.rootVersion + 1}`, maxBytes: this.limits.rootMaxBytes, maxDepth: this.limits.maxJsonDepth });
    const info = parseRoot(env, 'root');
    // §5.3.4: signed by the trusted root's keys (a root rotated by someone who does not hold the old keys is refused)
    // (Notary: the trusted root's certificates vouch for the next root even if they have expired, as in notary's
    // ValidateRoot; otherwise a root whose certificates expired could never be rotated.)
    this.#verifyThreshold(env, this.#root.info.roles.get('root')!, this.#root.info.keys, 'root', now, 'root', true);
    // §5.3.4: and by its own keys (new keys that do not sign their own root are refused)
    this.#verifyThreshold(env, info.roles.get('root')!, info.keys, 'root', now, 'root');
    // §5.3.5: exactly the next version (rollback, and skipping a root that rotated keys away)
    if (env.version !== this.#root.env.version + 1) {
      const reason = env.version <= this.#root.env.version ? 'ROLLBACK' : 'MALFORMED';
      throw new TrustError(reason, `root version ${env.version} offered where ${this.#root.env.version + 1} is next`, 'root');
    }
    const old = this.#root.info;
    const docs = new Map<string, Buffer>();
    for (const role of this.loadedRoles()) if (role !== 'root') docs.set(role, this.documentBytes(role)!);
    this.#timestamp = undefined;
    this.#snapshot = undefined;
    this.#targets.clear();
    this.#root = { env, info };
    this.#record('root', env);
    // §5.3.11 fast-forward recovery: after timestamp/snapshot keys rotate, their version history starts anew.
    const rotated = (r: TopRole) => !sameRoleKeys(old.roles.get(r)!, info.roles.get(r)!, old.keys, info.keys);
    if (rotated('timestamp') || rotated('snapshot')) { this.#forget('timestamp'); docs.delete('timestamp'); }
    if (rotated('snapshot')) { this.#forget('snapshot'); docs.delete('snapshot'); }
    // What was trusted under the old root stays only if the new root's keys still sign it.
    this.#adopt(docs, now);
  }

  /** §5.4: the timestamp. Returns false when it is the version already trusted (nothing changed). */
  updateTimestamp(bytes: Buffer, now: Date, o: { fromStore?: boolean } = {}): boolean {
    if (!o.fromStore) this.#checkExpiry('root', this.#root.env, now); // §5.3.10: a frozen root stops here
    // Notary: the trusted root's x509 keys must still be valid now (as the notary client re-validates its cached
    // root on every update). Without this a long-running client kept trusting a root whose certificates had
    // expired, while a restarted one (TrustedSet.load -> fromRoot) refused it with CERTIFICATE.
    if (!o.fromStore && this.dialect === 'notary') this.#verifyThreshold(this.#root.env, this.#root.info.roles.get('root')!, this.#root.info.keys, 'root', now, 'root');
    const env = parseEnvelope(bytes, { dialect: this.dialect, role: 'timestamp', what: 'timestamp', maxBytes: this.limits.timestampMaxBytes, maxDepth: this.limits.maxJsonDepth });
    this.#verifyThreshold(env, this.#root.info.roles.get('timestamp')!, this.#root.info.keys, 'timestamp', now);
    const info = parseTimestamp(env, 'timestamp', this.dialect);
    if (!o.fromStore) {
      const trusted = this.#timestamp;
      const floor = this.#highWater.get('timestamp') ?? 0;
      // §5.4.3.1 rollback: never below what was ever trusted, across restarts
      if (env.version < floor) throw new TrustError('ROLLBACK', `timestamp version ${env.version} is older than trusted version ${floor}`, 'timestamp');
      if (trusted && env.version === trusted.env.version) {
        if (!env.bytes.equals(trusted.env.bytes)) {
          throw new TrustError('ROLLBACK', `a different timestamp with the trusted version ${env.version} was offered (replay or fork)`, 'timestamp');
        }
        this.#checkExpiry('timestamp', trusted.env, now);
        return false;
      }
      // §5.4.3.2 snapshot version must not go back either (TUF: versions are in the meta)
      const oldSnap = trusted?.info.snapshot.version;
      const newSnap = info.snapshot.version;
      if (oldSnap !== undefined && newSnap !== undefined && newSnap < oldSnap) {
        throw new TrustError('ROLLBACK', `timestamp lists snapshot version ${newSnap}, older than trusted ${oldSnap}`, 'timestamp');
      }
      // §5.4.4 freeze: an expired timestamp is refused, and so nothing newer is believed
      this.#checkExpiry('timestamp', env, now);
    }
    this.#timestamp = { env, info };
    if (!o.fromStore) this.#record('timestamp', env);
    return true;
  }

  /** §5.5: the snapshot the trusted timestamp names. */
  updateSnapshot(bytes: Buffer, now: Date, o: { fromStore?: boolean } = {}): void {
    const ts = this.#timestamp;
    if (!ts) throw new TrustError('MALFORMED', 'snapshot offered before a timestamp is trusted (out-of-order update)', 'snapshot');
    const expected = ts.info.snapshot;
    const max = expected.length ?? this.limits.snapshotMaxBytes;
    if (bytes.byteLength > Math.min(max, this.limits.snapshotMaxBytes)) {
      throw new TrustError('ENDLESS_DATA', `snapshot is ${bytes.byteLength} bytes, limit ${Math.min(max, this.limits.snapshotMaxBytes)}`, 'snapshot');
    }
    if (!o.fromStore) {
      this.#checkExpiry('timestamp', ts.env, now);
      // §5.5.2 mix-and-match: exactly the bytes the timestamp signs
      try {
        checkLengthAndHashes(bytes, expected.length, expected.hashes, 'snapshot');
      } catch (e) {
        throw new TrustError('MIX_AND_MATCH', `snapshot does not match the trusted timestamp: ${(e as Error).message}`, 'snapshot');
      }
    }
    const env = parseEnvelope(bytes, { dialect: this.dialect, role: 'snapshot', what: 'snapshot', maxBytes: this.limits.snapshotMaxBytes, maxDepth: this.limits.maxJsonDepth });
    this.#verifyThreshold(env, this.#root.info.roles.get('snapshot')!, this.#root.info.keys, 'snapshot', now);
    const info = parseSnapshot(env, 'snapshot', this.dialect);
    if (!o.fromStore) {
      if (expected.version !== undefined && env.version !== expected.version) {
        throw new TrustError('MIX_AND_MATCH', `snapshot version ${env.version}, but the timestamp names version ${expected.version}`, 'snapshot');
      }
      const floor = this.#highWater.get('snapshot') ?? 0;
      if (env.version < floor) throw new TrustError('ROLLBACK', `snapshot version ${env.version} is older than trusted version ${floor}`, 'snapshot');
      // §5.5.5: no targets role listed before may vanish or go back (TUF; Notary meta carries no versions)
      const old = this.#snapshot;
      if (old && this.dialect === 'tuf') {
        for (const [role, m] of old.info.meta) {
          const n = info.meta.get(role);
          if (!n) throw new TrustError('ROLLBACK', `snapshot drops ${role}, which the trusted snapshot listed`, 'snapshot');
          if ((n.version ?? 0) < (m.version ?? 0)) {
            throw new TrustError('ROLLBACK', `snapshot lists ${role} version ${n.version}, older than trusted ${m.version}`, 'snapshot');
          }
        }
      }
      this.#checkExpiry('snapshot', env, now);
    }
    this.#snapshot = { env, info };
    if (!o.fromStore) this.#record('snapshot', env);
  }

  /** §5.6: the top-level targets role. */
  updateTargets(bytes: Buffer, now: Date, o: { fromStore?: boolean } = {}): void {
    this.#updateTargetsRole(bytes, 'targets', this.#root.info.roles.get('targets')!, this.#root.info.keys, now, o);
  }

  /** §5.6.7: a delegated targets role, checked against the keys its delegator gives it. */
  updateDelegated(bytes: Buffer, role: string, delegator: string, now: Date, o: { fromStore?: boolean } = {}): void {
    const parent = this.#targets.get(delegator);
    if (!parent) throw new TrustError('DELEGATION', `${role} offered before its delegator ${delegator} is trusted`, role);
    const d = parent.info.delegations;
    const edge = d?.roles.find((r) => r.name === role) ?? (d?.succinct ? this.#succinctEdge(d.succinct, role) : undefined);
    if (!d || !edge) throw new TrustError('DELEGATION', `${delegator} does not delegate to ${role}`, role);
    checkRoleName(this.dialect, role, delegator);
    this.#updateTargetsRole(bytes, role, edge, d.keys, now, o);
  }

  #succinctEdge(s: { namePrefix: string; bitLength: number } & RoleKeys, role: string): RoleKeys | undefined {
    const width = Math.ceil(s.bitLength / 4);
    const m = new RegExp(`^${escapeRegExp(s.namePrefix)}-([0-9a-f]{${width}})$`).exec(role);
    if (!m || parseInt(m[1]!, 16) >= 2 ** s.bitLength) return undefined;
    return s;
  }

  #updateTargetsRole(bytes: Buffer, role: string, keys: RoleKeys, keyMap: ReadonlyMap<string, JsonValue>, now: Date, o: { fromStore?: boolean }): void {
    const snap = this.#snapshot;
    if (!snap) throw new TrustError('MALFORMED', `${role} offered before a snapshot is trusted (out-of-order update)`, role);
    const meta = snap.info.meta.get(role);
    const limit = Math.min(meta?.length ?? this.limits.targetsMaxBytes, this.limits.targetsMaxBytes);
    if (bytes.byteLength > limit) throw new TrustError('ENDLESS_DATA', `${role} is ${bytes.byteLength} bytes, limit ${limit}`, role);
    if (!o.fromStore) {
      this.#checkExpiry('snapshot', snap.env, now);
      // §5.6.1: the snapshot must list the role; §5.6.2: and these must be its bytes
      if (!meta) throw new TrustError('MIX_AND_MATCH', `the trusted snapshot does not list ${role}`, role);
      try {
        checkLengthAndHashes(bytes, meta.length, meta.hashes, role);
      } catch (e) {
        throw new TrustError('MIX_AND_MATCH', `${role} does not match the trusted snapshot: ${(e as Error).message}`, role);
      }
    }
    const env = parseEnvelope(bytes, { dialect: this.dialect, role: 'targets', what: role, maxBytes: limit, maxDepth: this.limits.maxJsonDepth });
    this.#verifyThreshold(env, keys, keyMap, role, now);
    const info = parseTargets(env, role, this.dialect);
    if (this.dialect === 'tuf' && info.delegations) {
      for (const r of info.delegations.roles) {
        if ((TOP as readonly string[]).includes(r.name)) throw new TrustError('DELEGATION', `${role} delegates to the top-level role name ${r.name}`, role);
      }
    }
    if (!o.fromStore) {
      if (meta?.version !== undefined && env.version !== meta.version) {
        throw new TrustError('MIX_AND_MATCH', `${role} version ${env.version}, but the snapshot names version ${meta.version}`, role);
      }
      const floor = this.#highWater.get(role) ?? 0;
      if (env.version < floor) throw new TrustError('ROLLBACK', `${role} version ${env.version} is older than trusted version ${floor}`, role);
      this.#checkExpiry(role, env, now);
    }
    this.#targets.set(role, { env, info });
    if (!o.fromStore) this.#record(role, env);
  }

  // ---------------------------------------------------------------- internals

  #checkExpiry(role: string, env: Envelope, now: Date): void {
    if (env.expires.getTime() <= now.getTime()) {
      throw new TrustError('EXPIRED', `${role} expired at ${env.expires.toISOString()} (now ${now.toISOString()}): refusing frozen metadata`, role);
    }
  }

  #record(role: string, env: Envelope): void {
    this.#change.put.set(role, { bytes: env.bytes, version: env.version });
    this.#change.remove.delete(role);
    const hw = Math.max(this.#highWater.get(role) ?? 0, env.version);
    this.#highWater.set(role, hw);
    this.#change.highWater.set(role, hw);
  }

  #forget(role: 'timestamp' | 'snapshot'): void {
    if (role === 'timestamp') this.#timestamp = undefined;
    else this.#snapshot = undefined;
    this.#highWater.delete(role);
    this.#change.put.delete(role);
    this.#change.remove.add(role);
    this.#change.highWater.set(role, null);
  }

  #key(id: string, json: JsonValue, role: string): PublicKey {
    // The key object is part of the cache key: TUF key IDs are taken as given, so a new root (or delegator) may
    // map an existing ID to another key. Caching by ID alone kept verifying with the retired key (which could
    // still sign) and refused the new one; in Notary it also skipped the KEYID_MISMATCH check on a cache hit.
    const cacheKey = `${role}\u0000${id}\u0000${JSON.stringify(json)}`;
    let k = this.#keyCache.get(cacheKey);
    if (!k) {
      k = parseKey(id, json, this.dialect);
      this.#keyCache.set(cacheKey, k);
    }
    return k;
  }

  /**
   * Counts valid signatures from distinct key material. Two IDs naming one key count once; the same key ID
   * twice in the signature list is refused outright (a duplicate-signature threshold attack).
   */
  #verifyThreshold(env: Envelope, role: RoleKeys, keyMap: ReadonlyMap<string, JsonValue>, roleName: string, now: Date, certRole?: 'root', ignoreValidityWindow = false): void {
    const seen = new Set<string>();
    for (const s of env.signatures) {
      if (seen.has(s.keyid)) throw new TrustError('THRESHOLD', `${roleName}: key ${s.keyid} signs twice; duplicate signatures are refused`, roleName);
      seen.add(s.keyid);
    }
    const allowed = new Set(role.keyids);
    const counted = new Set<string>();
    let keyProblem: TrustError | undefined;
    for (const s of env.signatures) {
      if (!allowed.has(s.keyid)) continue;
      const json = keyMap.get(s.keyid);
      if (json === undefined) continue;
      let key: PublicKey;
      try {
        key = this.#key(s.keyid, json, roleName);
        if (this.dialect === 'notary') {
          checkKeyUsable(key, { now, requiredCommonName: certRole === 'root' ? this.gun : undefined, ignoreValidityWindow });
        }
      } catch (e) {
        if (e instanceof TrustError && !keyProblem) keyProblem = e;
        continue;
      }
      if (counted.has(key.material)) continue;
      if (verifySignature(key, s.method, env.signedBytes, s.sig, this.dialect)) counted.add(key.material);
    }
    if (counted.size < role.threshold) {
      if (keyProblem) throw new TrustError(keyProblem.reason, `${roleName}: ${keyProblem.message}`, roleName);
      throw new TrustError('THRESHOLD', `${roleName}: ${counted.size} valid signature(s) from distinct keys, threshold is ${role.threshold}`, roleName);
    }
  }
}

function sameRoleKeys(a: RoleKeys, b: RoleKeys, ak: ReadonlyMap<string, JsonValue>, bk: ReadonlyMap<string, JsonValue>): boolean {
  if (a.threshold !== b.threshold || a.keyids.length !== b.keyids.length) return false;
  return a.keyids.every((id) => b.keyids.includes(id) && JSON.stringify(ak.get(id)) === JSON.stringify(bk.get(id)));
}

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/**
 * Role names come from hostile metadata and become store keys and URL paths. Notary: a delegation is always a
 * child of its delegator (`targets/a` may delegate `targets/a/b`), as Notary enforces. Both: no path tricks.
 */
export function checkRoleName(dialect: Dialect, role: string, delegator: string): void {
  const bad = role.length === 0 || role.length > 255 || /[\u0000-\u001f\\]/.test(role) || role.split('/').some((s) => s === '' || s === '.' || s === '..');
  if (bad) throw new TrustError('DELEGATION', `invalid delegated role name ${JSON.stringify(role)}`, role);
  if (dialect === 'notary' && !(role.startsWith(`${delegator}/`) && !role.slice(delegator.length + 1).includes('/'))) {
    throw new TrustError('DELEGATION', `Notary role ${role} is not a direct child of ${delegator}`, role);
  }
}

/**
 * TUF 1.0 path patterns (§5.6.7.2, python-tuf's reading): the target and the pattern have the same number of
 * `/`-separated parts and each part matches with shell wildcards `*`, `?`, `[...]`; `*` never crosses a `/`.
 */
export function globMatch(pattern: string, target: string): boolean {
  const pp = pattern.split('/');
  const tp = target.split('/');
  if (pp.length !== tp.length) return false;
  return pp.every((p, i) => fnmatchSegment(p, tp[i]!));
}

function fnmatchSegment(p: string, s: string): boolean {
  let re = '^';
  for (let i = 0; i < p.length; i++) {
    const c = p[i]!;
    if (c === '*') re += '.*';
    else if (c === '?') re += '.';
    else if (c === '[') {
      // As Python's fnmatch (python-tuf) reads a set: "[!" negates, a "]" right after "[" or "[!" is a member,
      // and "^", "[", "]" and "\\" inside are literal. (JS read "[^a]" as a negation, a wider pattern than
      // the delegator wrote, and "[]a]" / "[!]a]" as something else entirely.)
      let j = i + 1;
      if (p[j] === '!') j++;
      if (p[j] === ']') j++;
      while (j < p.length && p[j] !== ']') j++;
      if (j >= p.length) { re += '\\['; continue; }
      let body = p.slice(i + 1, j);
      const negate = body.startsWith('!');
      if (negate) body = body.slice(1);
      re += '[' + (negate ? '^' : '') + body.replace(/[\\\]\[^]/g, '\\$&') + ']';
      i = j;
    } else re += escapeRegExp(c);
  }
  re += '$';
  try {
    return new RegExp(re, 's').test(s);
  } catch {
    return false;
  }
}

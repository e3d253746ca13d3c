// Publishing to a Notary v1 server with keys that stay in their Signer (a PKCS#11 token, or a key file): what
// `notary init|add|remove|delegation add|key rotate` + `publish` and `docker trust signer add|sign` do, with the
// same documents on the wire, so notary, docker and Portcullis' own gate accept the result.
//
// Usage (every flow takes the server, the GUN and the signers it needs; the caller owns and closes the Signers):
//
//   const server = { url: 'https://notary:4443', ca: readFileSync('ca.pem') };
//   const base = { server, gun: 'registry:5000/team/app', stateDir: '/var/lib/portcullis' }; // or store: …
//   await trustInit({ ...base, rootSigner, targetsSigner });            // timestamp + snapshot keys on the server
//   await signerAdd({ ...base, role: 'releases', keys: [releaseSigner], targetsSigner });
//   await sign({ ...base, tag: 'v1.2', target: { digest: 'sha256:…', size: 1234 }, signer: releaseSigner });
//   await revoke({ ...base, tag: 'v1.2', signer: releaseSigner });
//   await keyRotate({ ...base, role: 'targets', newSigner: newTargetsSigner, rootSigner });
//   await keyRotate({ ...base, role: 'root', newSigner: newRootSigner, rootSigner });
//
// Each flow: read the current state THROUGH the trust core (Updater + MetadataStore: the state we build on is
// verified, and it is the same cache `portcullis trust inspect` uses when given the same state dir), change it,
// sign with the Signers, run the new state through a fresh TrustedSet chain (verifyPublication: never upload what
// we would refuse), upload it in one multipart POST, and read it back through the trust core. When the server says
// another publisher got there first (400 VERSION), the flow re-reads and re-applies its change (bounded).
// Every flow writes one audit line (hsm/audit.ts). Errors: PublishError (our refusal, with a code), TrustError
// (the trust core refused what the server holds or what we built), NotaryUploadError (the server refused).
import { X509Certificate, type KeyObject } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import type { Logger } from 'pino';
import { LmdbMetadataStore } from '../cache/lmdb-metadata-store.js';
import type { MetadataStore, NamespaceChange, StoredDocument, StoredNamespace } from '../cache/metadata-store.js';
import { systemClock, type Clock } from '../trust/clock.js';
import { TrustError } from '../trust/errors.js';
import type { HttpAuth } from '../trust/http-fetcher.js';
import type { JsonObject, JsonValue } from '../trust/json.js';
import { defaultTrustLimits, type TrustLimits } from '../trust/limits.js';
import { NotaryClient, notaryFetcher } from '../trust/notary-client.js';
import { NotaryUploadError, NotaryWriter } from '../trust/notary-upload.js';
import { checkRoleName, type TrustedSet } from '../trust/trusted-set.js';
import { Updater } from '../trust/updater.js';
import { createAuditLogger, writeAudit, type AuditOperation } from './audit.js';
import {
  certificateProblem, defaultExpiry, findKeyId, goTime, metaEntry, notaryCertificateKey, notaryPublicKey, rootDocument,
  signDocument, signedOf, signerNotaryKey, snapshotDocument, targetEntry, targetsDocument, verifyPublication,
  type KeyedSigner, type NotaryKey, type TargetInput,
} from './metadata-writer.js';
import type { Signer } from './signer.js';
import { createSelfSignedCertificate } from './token-keys.js';

export interface NotaryServer {
  /** `https://notary:4443` */
  readonly url: string;
  /** PEM CA certificate(s) for TLS, replacing the system trust store. */
  readonly ca?: Buffer | string | undefined;
  readonly auth?: HttpAuth | undefined;
  readonly timeoutMs?: number | undefined;
  /** Hosts other than the server's that may issue Bearer tokens. */
  readonly allowedTokenHosts?: readonly string[] | undefined;
}

export interface PublishOptions {
  readonly server: NotaryServer;
  /** `registry:5000/team/app` */
  readonly gun: string;
  readonly clock?: Clock | undefined;
  /** Where the verified state of the GUN is kept (namespace = GUN). Default: `stateDir`'s LMDB, else in memory. */
  readonly store?: MetadataStore | undefined;
  /** Opens (and closes) the LMDB store under this directory, as `portcullis trust inspect --state-dir`. */
  readonly stateDir?: string | undefined;
  /** Audit logger (pino). Default: NDJSON on stderr. */
  readonly audit?: Logger | undefined;
  /** Attempts when the server reports a version conflict (default 3). */
  readonly maxAttempts?: number | undefined;
  readonly limits?: TrustLimits | undefined;
  /**
   * The snapshot key, when the client holds it (`notary init` without -p). Without it the server must sign the
   * snapshot (docker's layout, `notary key rotate <gun> snapshot -r`).
   */
  readonly snapshotSigner?: Signer | undefined;
}

export interface PublishResult {
  readonly gun: string;
  /** The version published per uploaded role. */
  readonly versions: Readonly<Record<string, number>>;
  /** Roles uploaded, in upload order. */
  readonly uploaded: readonly string[];
  /** 1, or more after version conflicts. */
  readonly attempts: number;
  /**
   * The root certificate made for this GUN when the root key had none usable (none stored, or one for another
   * GUN or expired), as `notary init` makes one: store it next to the key (token-keys `storeCertificate`) to
   * keep the same root key ID next time.
   */
  readonly rootCertificate?: X509Certificate | undefined;
}

export type PublishErrorCode =
  | 'ALREADY_INITIALISED' // trust init on a GUN the server has data for
  | 'NOT_INITIALISED' // the server has no trust data for the GUN
  | 'NOT_A_KEY' // a signer's key is not a key of the role it is asked to sign
  | 'NO_SUCH_ROLE' // the role is not delegated
  | 'NOT_SIGNED' // revoke: the tag is not in the role
  | 'NOT_VISIBLE' // what we would publish would not be seen by clients (delegation paths)
  | 'BAD_INPUT'
  | 'NOT_CONFIRMED'; // the server accepted the upload but serves something else

export class PublishError extends Error {
  override readonly name = 'PublishError';
  constructor(readonly code: PublishErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
  }
}

/** A delegation key: a Signer (its certificate if it has one, else its public key), a certificate, or a public key. */
export type DelegationKey = Signer | X509Certificate | KeyObject;

// ------------------------------------------------------------------------------------------------ flows

export interface TrustInitOptions extends PublishOptions {
  /**
   * The root key. Its certificate (CN = GUN): `rootCertificate` if given, else the one stored with the key if it
   * is for this GUN and valid, else a new self-signed one (10 years, signed by the key; see PublishResult).
   */
  readonly rootSigner: Signer;
  readonly rootCertificate?: X509Certificate | undefined;
  /** The targets key. Default: the root key (keep root offline: give a separate targets key). */
  readonly targetsSigner?: Signer | undefined;
  /** true (default unless `snapshotSigner` is given): the server creates and holds the snapshot key. */
  readonly serverSnapshot?: boolean | undefined;
}

/** `notary init [-p]`: root v1 (root key as x509 with CN = GUN; the server's timestamp key), targets v1, snapshot v1 when client-held. */
export async function trustInit(o: TrustInitOptions): Promise<PublishResult> {
  const targetsSigner = o.targetsSigner ?? o.rootSigner;
  const serverSnapshot = o.serverSnapshot ?? o.snapshotSigner === undefined;
  if (serverSnapshot && o.snapshotSigner) throw new PublishError('BAD_INPUT', 'give either snapshotSigner or serverSnapshot, not both');
  if (!serverSnapshot && !o.snapshotSigner) throw new PublishError('BAD_INPUT', 'serverSnapshot: false needs a snapshotSigner');
  const keys: Record<string, string> = { root: o.rootSigner.displayUri, targets: targetsSigner.displayUri };
  if (o.snapshotSigner) keys['snapshot'] = o.snapshotSigner.displayUri;
  return audited(o, { operation: 'trust-init', role: 'root', keyUri: o.rootSigner.displayUri, keys }, async (s) => {
    const now = s.clock();
    if ((await s.client.fetchMetadata(o.gun, 'root.json', s.limits.rootMaxBytes)) !== null) {
      throw new PublishError('ALREADY_INITIALISED', `${o.gun} already has trust data on ${o.server.url} (rotate keys instead)`);
    }
    const rootCert = await rootCertificateKey(o.rootSigner, o.rootCertificate, o.gun, now);
    const rootKey = rootCert.key;
    const targetsKey = targetsSigner === o.rootSigner ? rootKey : await signerNotaryKey(targetsSigner);
    const timestampKey = await s.writer.serverKey(o.gun, 'timestamp');
    const snapshotKey = serverSnapshot ? await s.writer.serverKey(o.gun, 'snapshot') : await signerNotaryKey(o.snapshotSigner!);
    const root = await signDocument(
      rootDocument({ version: 1, expires: defaultExpiry('root', now), roles: { root: [rootKey], targets: [targetsKey], snapshot: [snapshotKey], timestamp: [timestampKey] } }),
      [{ signer: o.rootSigner, keyid: rootKey.id }],
    );
    const targets = await signDocument(targetsDocument({ version: 1, expires: defaultExpiry('targets', now) }), [{ signer: targetsSigner, keyid: targetsKey.id }]);
    const files = new Map<string, Buffer>([['root', root], ['targets', targets]]);
    let snapshot: Buffer | undefined;
    if (!serverSnapshot) {
      snapshot = await signDocument(
        snapshotDocument({ version: 1, expires: defaultExpiry('snapshot', now), meta: { root: metaEntry(root), targets: metaEntry(targets) } }),
        [{ signer: o.snapshotSigner!, keyid: snapshotKey.id }],
      );
      files.set('snapshot', snapshot);
    }
    verifyPublication({ gun: o.gun, now, root, snapshot, targets: new Map([['targets', targets]]), limits: s.limits });
    await s.writer.upload(o.gun, files);
    // The new root is ours: trust it (not whatever a server says later on first use), forgetting any state a
    // previous life of this GUN left in the store.
    await s.forget();
    const confirmed = await s.current(root);
    confirm(confirmed, files);
    return { versions: versionsOf(files), uploaded: [...files.keys()], rootCertificate: rootCert.created };
  });
}

export interface SignerAddOptions extends PublishOptions {
  /**
   * `releases` (= `targets/releases`) or `targets/<name>`, or several (docker's `signer add carol` is
   * `['carol', 'releases']`: the signer's own role, and the key added to releases). One publish for all.
   */
  readonly role: string | readonly string[];
  readonly keys: readonly DelegationKey[];
  /** Default 1 for a new role (Notary's tools only ever write 1), unchanged for an existing one. */
  readonly threshold?: number | undefined;
  /** Path prefixes; default `[""]` (all) for a new role, added to an existing role's paths. */
  readonly paths?: readonly string[] | undefined;
  readonly targetsSigner: Signer;
}

/** `notary delegation add` / `docker trust signer add`: the delegation (keys, threshold, paths) in targets. */
export async function signerAdd(o: SignerAddOptions): Promise<PublishResult> {
  const roles = [...new Set((typeof o.role === 'string' ? [o.role] : o.role).map(delegationRoleName))];
  if (roles.length === 0) throw new PublishError('BAD_INPUT', 'signer add: no role given');
  if (o.keys.length === 0) throw new PublishError('BAD_INPUT', 'signer add: no keys given');
  if (o.threshold !== undefined && (!Number.isSafeInteger(o.threshold) || o.threshold < 1)) throw new PublishError('BAD_INPUT', `threshold ${o.threshold} must be an integer >= 1`);
  for (const r of roles) if (r.split('/').length !== 2) throw new PublishError('BAD_INPUT', `${r}: only roles delegated by targets (targets/<name>) can be added`);
  const newKeys = await Promise.all(o.keys.map(delegationKey));
  return publishFlow(o, { operation: 'signer-add', role: roles.join(','), keyUri: o.targetsSigner.displayUri, keys: { targets: o.targetsSigner.displayUri } }, async (st) => {
    const t = st.editable('targets');
    const d = delegationsOf(t);
    for (const k of newKeys) d.keys[k.id] = structuredClone(k.json);
    for (const role of roles) {
      let entry = d.roles.find((r) => r['name'] === role);
      if (!entry) {
        entry = { keyids: [], name: role, paths: [...(o.paths ?? [''])], threshold: o.threshold ?? 1 };
        d.roles.push(entry);
      } else {
        const paths = entry['paths'] as string[];
        for (const p of o.paths ?? []) if (!paths.includes(p)) paths.push(p);
        if (o.threshold !== undefined) entry['threshold'] = o.threshold;
      }
      const ids = entry['keyids'] as string[];
      for (const k of newKeys) if (!ids.includes(k.id)) ids.push(k.id);
      if ((entry['threshold'] as number) > ids.length) throw new PublishError('BAD_INPUT', `${role}: threshold ${String(entry['threshold'])} is more than its ${ids.length} key(s)`);
    }
    return { roles: new Map([['targets', { signed: t, signers: [o.targetsSigner] }]]) };
  });
}

export interface SignOptions extends PublishOptions {
  readonly tag: string;
  readonly target: TargetInput;
  /** One key, or several keys of the role when its threshold is above 1 (all sign the same document). */
  readonly signer: Signer | readonly Signer[];
  /**
   * The role(s) to sign into. Default, as `docker trust sign`: every role delegated by targets that lists one
   * of the signers' keys (targets/releases and the signer's own role), else `targets` for the targets key.
   */
  readonly role?: string | readonly string[] | undefined;
}

/** `notary add` / `docker trust sign`: the tag -> {digest, size} in the role(s), signed and published. */
export async function sign(o: SignOptions): Promise<PublishResult> {
  const signers = signerList(o.signer, 'sign');
  checkTag(o.tag);
  const entry = targetEntry(o.target);
  const digest = `sha256:${Buffer.from((entry['hashes'] as JsonObject)['sha256'] as string, 'base64').toString('hex')}`;
  const explicit = explicitRoles(o.role);
  return publishFlow(o, { operation: 'sign', role: explicit?.join(',') ?? '(auto)', keyUri: signers[0]!.displayUri, keys: {}, tag: o.tag, digest }, async (st, a) => {
    const chosen = await chooseRoles(st, signers, explicit, () => true);
    if (chosen.size === 0) throw new PublishError('NOT_A_KEY', `${signers.map((s) => s.displayUri).join(', ')} can sign no role of ${o.gun}`);
    recordChoice(a, chosen);
    const roles = new Map<string, RoleEdit>();
    for (const [role, ss] of chosen) {
      const doc = st.editable(role);
      (doc['targets'] as JsonObject)[o.tag] = structuredClone(entry);
      roles.set(role, { signed: doc, signers: ss });
    }
    return { roles, check: (set) => { for (const r of chosen.keys()) checkVisible(set, r, o.tag); } };
  });
}

export interface RevokeOptions extends PublishOptions {
  readonly tag: string;
  readonly signer: Signer | readonly Signer[];
  /** Default, as `docker trust revoke`: every role that lists the tag and that the signers can sign. */
  readonly role?: string | readonly string[] | undefined;
}

/** `notary remove` / `docker trust revoke <repo>:<tag>`: the tag out of the role(s), published. */
export async function revoke(o: RevokeOptions): Promise<PublishResult> {
  const signers = signerList(o.signer, 'revoke');
  checkTag(o.tag);
  const explicit = explicitRoles(o.role);
  return publishFlow(o, { operation: 'revoke', role: explicit?.join(',') ?? '(auto)', keyUri: signers[0]!.displayUri, keys: {}, tag: o.tag }, async (st, a) => {
    const chosen = await chooseRoles(st, signers, explicit, (role) => st.set.targetsIn(role).has(o.tag));
    if (chosen.size === 0) throw new PublishError('NOT_SIGNED', `${o.gun}:${o.tag} is not listed in any role ${signers.map((s) => s.displayUri).join(', ')} can sign`);
    recordChoice(a, chosen);
    const roles = new Map<string, RoleEdit>();
    for (const [role, ss] of chosen) {
      const doc = st.editable(role);
      const targets = doc['targets'] as JsonObject;
      const old = targets[o.tag];
      if (old === undefined) throw new PublishError('NOT_SIGNED', `${o.gun}:${o.tag} is not listed in ${role}`);
      const h = ((old as JsonObject)['hashes'] as JsonObject | undefined)?.['sha256'];
      if (typeof h === 'string') a.digest ??= `sha256:${Buffer.from(h, 'base64').toString('hex')}`;
      delete targets[o.tag];
      roles.set(role, { signed: doc, signers: ss });
    }
    return { roles };
  });
}

function signerList(signer: Signer | readonly Signer[], op: string): readonly Signer[] {
  const signers = Array.isArray(signer) ? (signer as readonly Signer[]) : [signer as Signer];
  if (signers.length === 0) throw new PublishError('BAD_INPUT', `${op}: no signer`);
  return signers;
}

function explicitRoles(role: string | readonly string[] | undefined): string[] | undefined {
  return role === undefined ? undefined : (typeof role === 'string' ? [role] : role).map(normaliseRole);
}

/** The audit line names the roles chosen and the keys that sign each. */
function recordChoice(a: AuditState, chosen: ReadonlyMap<string, readonly Signer[]>): void {
  a.role = [...chosen.keys()].join(',');
  a.keys = Object.fromEntries([...chosen].map(([r, ss]) => [r, ss.map((s) => s.displayUri).join(', ')]));
}

/**
 * Which roles to sign, and with which of the signers. Explicit roles: every signer must be a key of each.
 * Default: the delegations of targets that list a signer's key and pass `want`, else targets itself.
 */
async function chooseRoles(st: State, signers: readonly Signer[], explicit: readonly string[] | undefined, want: (role: string) => boolean): Promise<Map<string, Signer[]>> {
  const pubs = await Promise.all(signers.map((s) => s.publicKey()));
  const out = new Map<string, Signer[]>();
  if (explicit) {
    for (const role of explicit) {
      if (role !== 'targets' && !st.isDelegated(role)) throw new PublishError('NO_SUCH_ROLE', `${role} is not delegated in ${st.session.gun} (add it with signer add)`);
      signers.forEach((s, i) => {
        if (st.keyIdFor(role, pubs[i]!) === undefined) throw new PublishError('NOT_A_KEY', `${s.displayUri} is not a key of ${role} in ${st.session.gun}`);
      });
      if (want(role)) out.set(role, [...signers]);
    }
    return out;
  }
  const candidates = st.set.delegationsOf('targets').map((d) => d.role.name);
  for (const role of [...candidates, 'targets']) {
    if (role === 'targets' && out.size > 0) break;
    const mine = signers.filter((_, i) => st.keyIdFor(role, pubs[i]!) !== undefined);
    if (mine.length > 0 && want(role)) out.set(role, mine);
  }
  return out;
}

export interface KeyRotateOptions extends PublishOptions {
  /** `targets` and `root` need `newSigner`; `snapshot` takes `newSigner` (client-held) or `serverManaged`. */
  readonly role: 'root' | 'targets' | 'snapshot';
  readonly newSigner?: Signer | undefined;
  /** For `root`: the new root key's certificate (CN = GUN); default as for trustInit's rootCertificate. */
  readonly newRootCertificate?: X509Certificate | undefined;
  /** For `snapshot`: hand the snapshot key to the server (`notary key rotate <gun> snapshot -r`). */
  readonly serverManaged?: boolean | undefined;
  /** The current root key: signs the new root (with the new root key too when rotating root). */
  readonly rootSigner: Signer;
}

/** `notary key rotate <gun> targets|root|snapshot [-r]`: a new key in root v+1; old metadata still chains. */
export async function keyRotate(o: KeyRotateOptions): Promise<PublishResult> {
  if (o.role === 'snapshot' ? (o.serverManaged === true) === (o.newSigner !== undefined) : !o.newSigner) {
    throw new PublishError('BAD_INPUT', o.role === 'snapshot' ? 'snapshot rotation takes either newSigner or serverManaged' : `${o.role} rotation needs newSigner`);
  }
  const keys: Record<string, string> = { root: o.rootSigner.displayUri };
  if (o.newSigner) keys[o.role === 'root' ? 'root (new)' : o.role] = o.newSigner.displayUri;
  const snapshotSigner = o.role === 'snapshot' ? o.newSigner : o.snapshotSigner;
  return publishFlow({ ...o, snapshotSigner }, { operation: 'key-rotate', role: o.role, keyUri: (o.newSigner ?? o.rootSigner).displayUri, keys }, async (st) => {
    const now = st.now;
    const root = st.rootSigned();
    const oldRootId = st.keyIdInRoot('root', await o.rootSigner.publicKey());
    if (!oldRootId) throw new PublishError('NOT_A_KEY', `${o.rootSigner.displayUri} is not a root key of ${o.gun}`);
    let newKey: NotaryKey;
    let created: X509Certificate | undefined;
    if (o.role === 'root') ({ key: newKey, created } = await rootCertificateKey(o.newSigner!, o.newRootCertificate, o.gun, now));
    else if (o.role === 'snapshot' && o.serverManaged) newKey = await st.session.writer.serverKey(o.gun, 'snapshot');
    else newKey = await signerNotaryKey(o.newSigner!);
    const roles = root['roles'] as JsonObject;
    const keysObj = root['keys'] as JsonObject;
    keysObj[newKey.id] = structuredClone(newKey.json);
    roles[o.role] = { keyids: [newKey.id], threshold: 1 };
    pruneKeys(root);
    root['version'] = st.set.rootVersion + 1;
    root['expires'] = goTime(defaultExpiry('root', now));
    const rootSigners: KeyedSigner[] = [{ signer: o.rootSigner, keyid: oldRootId }];
    if (o.role === 'root') rootSigners.push({ signer: o.newSigner!, keyid: newKey.id });
    const roleEdits = new Map<string, RoleEdit>();
    // The targets document must be signed by a key the new root names for targets.
    if (o.role === 'targets') roleEdits.set('targets', { signed: st.editable('targets'), signers: [o.newSigner!] });
    return { root: { signed: root, signers: rootSigners }, roles: roleEdits, rootCertificate: created };
  });
}

// ------------------------------------------------------------------------------------------------ engine

interface RoleEdit {
  /** The role's new content; the engine sets version and expiry. */
  readonly signed: JsonObject;
  readonly signers: readonly Signer[];
}

interface Plan {
  /** A new root (content with version and expiry set) and who signs it. */
  readonly root?: { readonly signed: JsonObject; readonly signers: readonly KeyedSigner[] };
  readonly roles: ReadonlyMap<string, RoleEdit>;
  /** Extra checks on the verified new state (e.g. the signed tag is visible through the delegation paths). */
  readonly check?: (set: TrustedSet) => void;
  /** A root certificate made during planning, handed back to the caller. */
  readonly rootCertificate?: X509Certificate | undefined;
}

interface AuditState {
  operation: AuditOperation;
  role: string;
  keyUri: string | undefined;
  keys: Record<string, string>;
  tag?: string | undefined;
  digest?: string | undefined;
}

/** The verified current state, and editable copies of its documents. */
class State {
  constructor(readonly session: Session, readonly set: TrustedSet, readonly now: Date) {}

  rootSigned(): JsonObject {
    return plain(signedOf(this.set.documentBytes('root')!));
  }

  targetsRoles(): string[] {
    return this.set.loadedRoles().filter((r) => r === 'targets' || r.startsWith('targets/'));
  }

  /** Whether the role is delegated by its parent in the trusted state. */
  isDelegated(role: string): boolean {
    return this.#edge(role) !== undefined;
  }

  #edge(role: string) {
    const parent = role.slice(0, role.lastIndexOf('/'));
    return this.set.delegationsOf(parent).find((d) => d.role.name === role);
  }

  /** A copy of the trusted document to change; a delegated role without metadata yet starts empty. */
  editable(role: string): JsonObject {
    const bytes = this.set.documentBytes(role);
    if (bytes) return plain(signedOf(bytes));
    if (role === 'targets') throw new PublishError('NOT_INITIALISED', `${this.session.gun} has no trusted targets`);
    if (!this.isDelegated(role)) throw new PublishError('NO_SUCH_ROLE', `${role} is not delegated in ${this.session.gun} (add it with signer add)`);
    return targetsDocument({ version: 1, expires: defaultExpiry('targets', this.now) });
  }

  keyIdInRoot(role: 'root' | 'targets' | 'snapshot' | 'timestamp', pub: KeyObject): string | undefined {
    return findKeyId(pub, this.set.root.keys, this.set.root.roles.get(role)?.keyids ?? []);
  }

  /** The key ID under which the trusted state lets this key sign `role`. */
  keyIdFor(role: string, pub: KeyObject): string | undefined {
    if (role === 'targets') return this.keyIdInRoot('targets', pub);
    const e = this.#edge(role);
    return e ? findKeyId(pub, e.keys, e.role.keyids) : undefined;
  }

  /** The next version of a role: above both the trusted copy and the highest version ever trusted. */
  nextVersion(role: string): number {
    const cur = role === 'root' ? this.set.rootVersion : role === 'snapshot' ? this.set.snapshot?.env.version : this.set.targetsOf(role)?.env.version;
    return Math.max(cur ?? 0, this.set.highWater(role) ?? 0) + 1;
  }
}

class Session {
  readonly clock: Clock;
  readonly limits: TrustLimits;
  readonly client: NotaryClient;
  readonly writer: NotaryWriter;
  readonly store: MetadataStore;
  readonly #ownsStore: boolean;
  #updater: Updater | undefined;

  constructor(readonly o: PublishOptions) {
    this.clock = o.clock ?? systemClock;
    const http = {
      baseUrl: o.server.url,
      ...(o.server.ca !== undefined ? { ca: o.server.ca } : {}),
      ...(o.server.auth !== undefined ? { auth: o.server.auth } : {}),
      ...(o.server.timeoutMs !== undefined ? { timeoutMs: o.server.timeoutMs } : {}),
      ...(o.server.allowedTokenHosts !== undefined ? { allowedTokenHosts: o.server.allowedTokenHosts } : {}),
    };
    this.client = new NotaryClient(http);
    this.writer = new NotaryWriter(http);
    if (o.store) {
      this.store = o.store;
      this.#ownsStore = false;
    } else if (o.stateDir) {
      mkdirSync(o.stateDir, { recursive: true });
      this.store = LmdbMetadataStore.open(o.stateDir);
      this.#ownsStore = true;
    } else {
      this.store = new MemoryStore();
      this.#ownsStore = true;
    }
    this.limits = o.limits ?? defaultTrustLimits;
  }

  get gun(): string {
    return this.o.gun;
  }

  #newUpdater(initialRoot?: Buffer): Updater {
    return new Updater({
      dialect: 'notary', namespace: this.o.gun, gun: this.o.gun, store: this.store, fetcher: notaryFetcher(this.client, this.o.gun),
      clock: this.clock, ...(this.o.limits ? { limits: this.o.limits } : {}), initialRoot,
    });
  }

  /** The server's current state, verified (root chain, timestamp, snapshot, every reachable targets role). */
  async current(initialRoot?: Buffer): Promise<TrustedSet> {
    if (initialRoot || !this.#updater) this.#updater = this.#newUpdater(initialRoot);
    const u = this.#updater;
    try {
      await u.refresh();
      await u.listAll();
    } catch (e) {
      if (e instanceof TrustError && e.reason === 'NO_TRUST_DATA' && e.role === 'root') {
        throw new PublishError('NOT_INITIALISED', `${this.o.gun} has no trust data on ${this.o.server.url} (run trust init first)`, { cause: e });
      }
      throw e;
    }
    return (await u.trusted())!;
  }

  /** Drops what the store holds for the GUN (trust init makes a new repository). */
  async forget(): Promise<void> {
    const stored = await this.store.load(this.o.gun);
    const change: NamespaceChange = {
      remove: [...stored.documents.keys()],
      highWater: new Map([...stored.highWater.keys()].map((k) => [k, null])),
    };
    if ((change.remove?.length ?? 0) > 0 || (change.highWater?.size ?? 0) > 0) await this.store.commit(this.o.gun, change);
    this.#updater = undefined;
  }

  async close(): Promise<void> {
    await Promise.allSettled([this.client.close(), this.writer.close()]);
    if (this.#ownsStore) await this.store.close();
  }
}

async function audited(
  o: PublishOptions,
  a: AuditState,
  f: (s: Session, a: AuditState) => Promise<{ versions: Record<string, number>; uploaded: string[]; attempts?: number; rootCertificate?: X509Certificate | undefined }>,
): Promise<PublishResult> {
  const logger = o.audit ?? createAuditLogger();
  let s: Session | undefined;
  let attempts = 1;
  try {
    s = new Session(o);
    const r = await f(s, a);
    attempts = r.attempts ?? 1;
    writeAudit(logger, { ...a, gun: o.gun, server: o.server.url, versions: r.versions, outcome: 'published', attempts });
    return { gun: o.gun, versions: r.versions, uploaded: r.uploaded, attempts, ...(r.rootCertificate ? { rootCertificate: r.rootCertificate } : {}) };
  } catch (e) {
    const attemptsOf = (e as { attempts?: number }).attempts;
    writeAudit(logger, { ...a, gun: o.gun, server: o.server.url, versions: {}, outcome: 'failed', attempts: attemptsOf ?? attempts, error: (e as Error).message });
    throw e;
  } finally {
    await s?.close();
  }
}

/** Read (verified), change, sign, verify, upload, confirm; again on a version conflict. */
function publishFlow(o: PublishOptions, a: AuditState, plan: (st: State, a: AuditState) => Promise<Plan>): Promise<PublishResult> {
  const max = Math.max(1, o.maxAttempts ?? 3);
  return audited(o, a, async (s) => {
    for (let attempt = 1; ; attempt++) {
      const set = await s.current();
      const st = new State(s, set, s.clock());
      try {
        const p = await plan(st, a);
        const built = await build(st, p, o);
        await s.writer.upload(o.gun, built.files);
        confirm(await s.current(), built.files);
        return { versions: versionsOf(built.files), uploaded: [...built.files.keys()], attempts: attempt, rootCertificate: p.rootCertificate };
      } catch (e) {
        if (e instanceof NotaryUploadError && e.isVersionConflict && attempt < max) {
          await new Promise((r) => setTimeout(r, 50 * attempt + Math.floor(Math.random() * 100)));
          continue;
        }
        if (e instanceof Error) Object.assign(e, { attempts: attempt });
        throw e;
      }
    }
  });
}

async function build(st: State, plan: Plan, o: PublishOptions): Promise<{ files: Map<string, Buffer>; set: TrustedSet }> {
  const now = st.now;
  const files = new Map<string, Buffer>();
  const currentRoot = st.set.documentBytes('root')!;
  let rootBytes = currentRoot;
  let rootSigned = signedOf(currentRoot);
  if (plan.root) {
    rootSigned = plan.root.signed;
    rootBytes = await signDocument(plan.root.signed, plan.root.signers);
    files.set('root', rootBytes);
  }
  const rootKeys = rootSigned['keys'] as JsonObject;
  const rootRoles = rootSigned['roles'] as Record<string, { keyids: string[] }>;

  // Parents before children, so a child's keys come from its parent's new content.
  const roles = [...plan.roles.keys()].sort((x, y) => x.split('/').length - y.split('/').length);
  const newSigned = new Map<string, JsonObject>();
  for (const role of roles) {
    const edit = plan.roles.get(role)!;
    if (role !== 'targets') checkRoleName('notary', role, role.slice(0, role.lastIndexOf('/')));
    const signed = edit.signed;
    signed['version'] = st.nextVersion(role);
    signed['expires'] = goTime(defaultExpiry('targets', now));
    let keys: ReadonlyMap<string, JsonValue> | JsonObject;
    let keyids: readonly string[];
    if (role === 'targets') {
      keys = rootKeys;
      keyids = rootRoles['targets']?.keyids ?? [];
    } else {
      const parent = role.slice(0, role.lastIndexOf('/'));
      const p = newSigned.get(parent) ?? (st.set.documentBytes(parent) ? signedOf(st.set.documentBytes(parent)!) : undefined);
      const d = p?.['delegations'] as { keys?: JsonObject; roles?: { name: string; keyids: string[] }[] } | undefined;
      const edge = d?.roles?.find((r) => r.name === role);
      if (!edge) throw new PublishError('NO_SUCH_ROLE', `${role} is not delegated by ${parent}`);
      keys = d?.keys ?? {};
      keyids = edge.keyids;
    }
    const keyed: KeyedSigner[] = [];
    for (const signer of edit.signers) {
      const keyid = findKeyId(await signer.publicKey(), keys, keyids);
      if (!keyid) throw new PublishError('NOT_A_KEY', `${signer.displayUri} is not a key of ${role} in ${o.gun}`);
      keyed.push({ signer, keyid });
    }
    newSigned.set(role, signed);
    files.set(role, await signDocument(signed, keyed));
  }

  // Every targets role of the new state: the new documents over the trusted ones.
  const targets = new Map<string, Buffer>();
  for (const r of st.targetsRoles()) targets.set(r, st.set.documentBytes(r)!);
  for (const r of roles) targets.set(r, files.get(r)!);

  // The snapshot: ours when we hold its key, else the server makes it.
  let snapshot: Buffer | undefined;
  if (o.snapshotSigner) {
    const keyid = findKeyId(await o.snapshotSigner.publicKey(), rootKeys, rootRoles['snapshot']?.keyids ?? []);
    if (!keyid) throw new PublishError('NOT_A_KEY', `${o.snapshotSigner.displayUri} is not the snapshot key of ${o.gun}`);
    const trusted = st.set.snapshot ? plain(signedOf(st.set.snapshot.env.bytes)) : undefined;
    const meta = (trusted?.['meta'] as Record<string, JsonObject> | undefined) ?? {};
    meta['root'] = metaEntry(rootBytes);
    for (const r of roles) meta[r] = metaEntry(files.get(r)!);
    snapshot = await signDocument(snapshotDocument({ version: st.nextVersion('snapshot'), expires: defaultExpiry('snapshot', now), meta }), [{ signer: o.snapshotSigner, keyid }]);
    files.set('snapshot', snapshot);
  }

  const set = verifyPublication({
    gun: o.gun, now, root: rootBytes, previousRoot: plan.root ? currentRoot : undefined, snapshot, targets, mustReach: new Set(roles),
    ...(o.limits ? { limits: o.limits } : {}),
  });
  plan.check?.(set);
  return { files, set };
}

/** The server serves what we uploaded (or something newer, if another publisher followed at once). */
function confirm(set: TrustedSet, files: ReadonlyMap<string, Buffer>): void {
  for (const [role, bytes] of files) {
    const served = role === 'root' ? set.documentBytes('root') : role === 'snapshot' ? set.snapshot?.env.bytes : set.documentBytes(role);
    if (served?.equals(bytes)) continue;
    const mine = signedOf(bytes)['version'] as number;
    const theirs = role === 'root' ? set.rootVersion : role === 'snapshot' ? set.snapshot?.env.version : set.targetsOf(role)?.env.version;
    if (theirs !== undefined && theirs > mine) continue;
    throw new PublishError('NOT_CONFIRMED', `the server accepted ${role} v${mine} but serves ${theirs === undefined ? 'nothing' : `v${theirs}`} for it`);
  }
}

function versionsOf(files: ReadonlyMap<string, Buffer>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [role, bytes] of files) out[role] = signedOf(bytes)['version'] as number;
  return out;
}

// ------------------------------------------------------------------------------------------------ helpers

/**
 * The root key as an x509 certificate key (Notary requires it) with CN = GUN: the given certificate (which must
 * fit), else the one stored with the key if it fits, else a new self-signed one (Notary's 10 years).
 */
async function rootCertificateKey(signer: Signer, given: X509Certificate | undefined, gun: string, now: Date): Promise<{ key: NotaryKey; created?: X509Certificate }> {
  const pub = await signer.publicKey();
  const forKey = (c: X509Certificate) => c.publicKey.export({ type: 'spki', format: 'der' }).equals(pub.export({ type: 'spki', format: 'der' }));
  if (given) {
    if (!forKey(given)) throw new PublishError('BAD_INPUT', `${signer.displayUri}: the root certificate given is for another key`);
    const problem = certificateProblem(given, now, gun);
    if (problem) throw new PublishError('BAD_INPUT', `${signer.displayUri}: ${problem}`);
    return { key: notaryCertificateKey(given) };
  }
  const stored = await signer.certificate();
  if (stored && forKey(stored) && certificateProblem(stored, now, gun) === undefined) return { key: notaryCertificateKey(stored) };
  const made = await createSelfSignedCertificate(signer, gun, 3653, { now });
  return { key: notaryCertificateKey(made.certificate), created: made.certificate };
}

async function delegationKey(k: DelegationKey): Promise<NotaryKey> {
  if (k instanceof X509Certificate) return notaryCertificateKey(k);
  if ('sign' in k && typeof k.sign === 'function' && 'publicKey' in k) {
    const s = k as Signer;
    return (await s.certificate()) ? signerNotaryKey(s, { x509: true }) : signerNotaryKey(s);
  }
  return notaryPublicKey(k as KeyObject);
}

function delegationRoleName(role: string): string {
  const name = normaliseRole(role);
  if (name === 'targets') throw new PublishError('BAD_INPUT', 'signer add needs a delegation role (e.g. releases), not targets');
  return name;
}

/** `releases` -> `targets/releases`; `targets…` kept. Refuses names Notary would not accept. */
function normaliseRole(role: string): string {
  const name = role === 'targets' || role.startsWith('targets/') ? role : `targets/${role}`;
  if (name !== 'targets') {
    try {
      checkRoleName('notary', name, name.slice(0, name.lastIndexOf('/')));
    } catch (e) {
      throw new PublishError('BAD_INPUT', (e as Error).message);
    }
    if (!/^[A-Za-z0-9._/-]+$/.test(name)) throw new PublishError('BAD_INPUT', `role name ${JSON.stringify(role)} has characters Notary does not allow`);
  }
  return name;
}

function checkTag(tag: string): void {
  if (!/^[\w][\w.-]{0,127}$/.test(tag)) throw new PublishError('BAD_INPUT', `${JSON.stringify(tag)} is not an image tag`);
}

function delegationsOf(t: JsonObject): { keys: JsonObject; roles: JsonObject[] } {
  let d = t['delegations'] as { keys?: JsonObject; roles?: JsonObject[] } | null | undefined;
  if (!d || typeof d !== 'object') {
    d = { keys: {}, roles: [] };
    t['delegations'] = d as unknown as JsonObject;
  }
  d.keys ??= {};
  d.roles ??= [];
  return d as { keys: JsonObject; roles: JsonObject[] };
}

/** Drops root keys no role names any more (Notary keeps root's `keys` to the ones in use). */
function pruneKeys(root: JsonObject): void {
  const keys = root['keys'] as JsonObject;
  const used = new Set<string>();
  for (const r of Object.values(root['roles'] as Record<string, { keyids: string[] }>)) for (const id of r.keyids) used.add(id);
  for (const id of Object.keys(keys)) if (!used.has(id)) delete keys[id];
}

/** What a client resolving `tag` will find: the role we signed must be reached and speak for the tag. */
function checkVisible(set: TrustedSet, role: string, tag: string): void {
  if (!set.targetsIn(role).has(tag)) throw new PublishError('NOT_VISIBLE', `${role} would not list ${tag}`);
  for (let child = role; child !== 'targets'; child = child.slice(0, child.lastIndexOf('/'))) {
    const parent = child.slice(0, child.lastIndexOf('/'));
    if (!set.matchingDelegations(parent, tag).some((d) => d.role.name === child)) {
      throw new PublishError('NOT_VISIBLE', `${parent} does not let ${child} sign ${tag} (delegation paths): clients would ignore it`);
    }
  }
}

/** Parsed trusted JSON has null-prototype objects; edit plain copies. */
function plain(o: JsonObject): JsonObject {
  return JSON.parse(JSON.stringify(o)) as JsonObject;
}

/** The default store when none is given: trust state lives for the one operation. */
class MemoryStore implements MetadataStore {
  readonly #docs = new Map<string, Map<string, StoredDocument>>();
  readonly #hw = new Map<string, Map<string, number>>();
  async load(ns: string): Promise<StoredNamespace> {
    return { documents: new Map(this.#docs.get(ns) ?? []), highWater: new Map(this.#hw.get(ns) ?? []) };
  }
  async commit(ns: string, c: NamespaceChange): Promise<void> {
    const d = new Map(this.#docs.get(ns) ?? []);
    const h = new Map(this.#hw.get(ns) ?? []);
    for (const [k, v] of c.put ?? []) d.set(k, v);
    for (const k of c.remove ?? []) d.delete(k);
    for (const [k, v] of c.highWater ?? []) if (v === null) h.delete(k); else h.set(k, v);
    this.#docs.set(ns, d);
    this.#hw.set(ns, h);
  }
  async namespaces(): Promise<string[]> {
    return [...this.#docs.keys()];
  }
  async close(): Promise<void> {}
}

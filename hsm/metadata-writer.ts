// Building and signing Notary v1 metadata documents with Signers, and checking a state we are about to publish
// with the trust core before it leaves the machine. No HTTP here (trust/notary-upload.ts), no flows
// (notary-publisher.ts).
//
// The shapes are the ones notary-server 0.7 serves and the notary/docker clients write (see the lab's
// notary-samples): `_type` Root/Targets/Snapshot, Go RFC 3339 times with nanoseconds (trailing zeros trimmed),
// base64 sha256/sha512 hashes, Notary key objects {keytype, keyval:{private:null, public}} whose ID is the sha256
// of their canonical JSON, signatures over the Go canonical JSON of `signed`. The envelope bytes are what Go's
// json.Marshal writes for Notary's `Signed` struct: {"signed":<canonical signed>,"signatures":[{keyid,method,sig}]},
// with <, > and & escaped as \u003c \u003e \u0026 (as in the served samples; signatures do not cover that escaping).
import { createHash, generateKeyPairSync, sign as cryptoSign, X509Certificate, type KeyObject } from 'node:crypto';
import { TrustError } from '../trust/errors.js';
import { canonicalGo, type JsonObject, type JsonValue } from '../trust/json.js';
import { parseKey } from '../trust/keys.js';
import type { TrustLimits } from '../trust/limits.js';
import { TrustedSet } from '../trust/trusted-set.js';
import type { Signer } from './signer.js';

/** A key as Notary metadata lists it, with its computed ID. */
export interface NotaryKey {
  readonly id: string;
  /** `{keytype, keyval: {private: null, public}}` */
  readonly json: JsonObject;
}

export type TopRole = 'root' | 'targets' | 'snapshot' | 'timestamp';

/** Notary's default lifetimes (tuf/data DefaultExpires): root 10 y, targets and snapshot 3 y, timestamp 14 d. */
export function defaultExpiry(role: string, now: Date): Date {
  const d = new Date(now.getTime());
  if (role === 'root') d.setUTCFullYear(d.getUTCFullYear() + 10);
  else if (role === 'timestamp') d.setTime(d.getTime() + 14 * 86_400_000);
  else d.setUTCFullYear(d.getUTCFullYear() + 3); // targets, delegated roles, snapshot
  return d;
}

/** Go's time.RFC3339Nano in UTC: fraction digits only as needed ("2029-11-23T02:33:50.78Z", "…:50Z"). */
export function goTime(d: Date): string {
  if (Number.isNaN(d.getTime())) throw new TypeError('goTime: invalid date');
  const iso = d.toISOString();
  const frac = iso.slice(20, 23).replace(/0+$/, '');
  return `${iso.slice(0, 19)}${frac ? `.${frac}` : ''}Z`;
}

// ------------------------------------------------------------------------------------------------ keys

export function notaryKeyId(json: JsonObject): string {
  return createHash('sha256').update(canonicalGo(json)).digest('hex');
}

function keyObject(keytype: string, pub: string): NotaryKey {
  const json: JsonObject = { keytype, keyval: { private: null, public: pub } };
  return { id: notaryKeyId(json), json };
}

/** A bare public key: `ecdsa` / `rsa` (base64 DER SPKI) or `ed25519` (base64 of the raw 32 bytes). */
export function notaryPublicKey(key: KeyObject): NotaryKey {
  if (key.type !== 'public') throw new TypeError('notaryPublicKey: expected a public key');
  const spki = key.export({ type: 'spki', format: 'der' });
  switch (key.asymmetricKeyType) {
    case 'ec':
      if (key.asymmetricKeyDetails?.namedCurve !== 'prime256v1') throw new TypeError(`Notary accepts only P-256 ECDSA keys (got ${key.asymmetricKeyDetails?.namedCurve})`);
      return keyObject('ecdsa', spki.toString('base64'));
    case 'ed25519':
      return keyObject('ed25519', spki.subarray(spki.length - 32).toString('base64'));
    case 'rsa':
      return keyObject('rsa', spki.toString('base64'));
    default:
      throw new TypeError(`Notary has no key type for ${key.asymmetricKeyType} keys`);
  }
}

/** A certificate key: `ecdsa-x509` / `rsa-x509` (base64 of the PEM certificate). Notary has no ed25519-x509. */
export function notaryCertificateKey(cert: X509Certificate): NotaryKey {
  const kind = cert.publicKey.asymmetricKeyType;
  if (kind !== 'ec' && kind !== 'rsa') throw new TypeError(`Notary x509 keys are ECDSA or RSA (the certificate holds a ${kind} key)`);
  return keyObject(kind === 'ec' ? 'ecdsa-x509' : 'rsa-x509', Buffer.from(cert.toString(), 'utf8').toString('base64'));
}

/** The signer's key as Notary lists it: its certificate (`x509: true`, required) or its bare public key. */
export async function signerNotaryKey(signer: Signer, o: { x509?: boolean } = {}): Promise<NotaryKey> {
  if (o.x509) {
    const cert = await signer.certificate();
    if (!cert) throw new TypeError(`${signer.displayUri}: no certificate stored with the key (an x509 key is required here)`);
    if (!sameKey(cert.publicKey, await signer.publicKey())) throw new TypeError(`${signer.displayUri}: the stored certificate is for another key`);
    return notaryCertificateKey(cert);
  }
  return notaryPublicKey(await signer.publicKey());
}

export function sameKey(a: KeyObject, b: KeyObject): boolean {
  return a.export({ type: 'spki', format: 'der' }).equals(b.export({ type: 'spki', format: 'der' }));
}

/**
 * The ID under which `keyids` (looked up in `keys`) names this public key, whatever its representation (bare
 * key or certificate). Undefined when the role does not list it.
 */
export function findKeyId(pub: KeyObject, keys: ReadonlyMap<string, JsonValue> | JsonObject, keyids: readonly string[]): string | undefined {
  const material = pub.export({ type: 'spki', format: 'der' }).toString('hex');
  for (const id of keyids) {
    const json = keys instanceof Map ? keys.get(id) : (keys as JsonObject)[id];
    if (json === undefined) continue;
    try {
      if (parseKey(id, json, 'notary').material === material) return id;
    } catch {
      // a key we cannot parse is not ours
    }
  }
  return undefined;
}

// ------------------------------------------------------------------------------------------------ documents

export interface TargetInput {
  /** `sha256:<hex>` (or bare hex) of the manifest. */
  readonly digest: string;
  /** Its size in bytes. */
  readonly size: number;
  /** Hex sha512 of the manifest, when known (notary CLI writes both hashes; docker writes sha256 only). */
  readonly sha512?: string | undefined;
}

/** A targets entry: `{hashes: {sha256[, sha512]} (base64), length}`. */
export function targetEntry(t: TargetInput): JsonObject {
  const hex = t.digest.startsWith('sha256:') ? t.digest.slice(7) : t.digest;
  if (!/^[0-9a-f]{64}$/.test(hex)) throw new TypeError(`target digest ${JSON.stringify(t.digest)} is not sha256:<64 hex>`);
  if (!Number.isSafeInteger(t.size) || t.size < 0) throw new TypeError(`target size ${t.size} is not a byte count`);
  const hashes: JsonObject = { sha256: Buffer.from(hex, 'hex').toString('base64') };
  if (t.sha512 !== undefined) {
    if (!/^[0-9a-f]{128}$/.test(t.sha512)) throw new TypeError('target sha512 must be 128 hex digits');
    hashes['sha512'] = Buffer.from(t.sha512, 'hex').toString('base64');
  }
  return { hashes, length: t.size };
}

/** A targets entry for bytes we hold (both hashes, as `notary add` writes). */
export function targetEntryForBytes(bytes: Buffer): JsonObject {
  return metaEntry(bytes);
}

/** A snapshot/timestamp meta entry for exact bytes: `{hashes: {sha256, sha512}, length}`. */
export function metaEntry(bytes: Buffer): JsonObject {
  return {
    hashes: {
      sha256: createHash('sha256').update(bytes).digest('base64'),
      sha512: createHash('sha512').update(bytes).digest('base64'),
    },
    length: bytes.length,
  };
}

export interface RootContent {
  readonly version: number;
  readonly expires: Date;
  /** Keys per top-level role (threshold 1 each, as every Notary tool writes). */
  readonly roles: Readonly<Record<TopRole, readonly NotaryKey[]>>;
}

export function rootDocument(c: RootContent): JsonObject {
  const keys: JsonObject = {};
  const roles: JsonObject = {};
  for (const r of ['root', 'snapshot', 'targets', 'timestamp'] as const) {
    const ks = c.roles[r];
    if (ks.length === 0) throw new TypeError(`root: role ${r} has no keys`);
    for (const k of ks) keys[k.id] = structuredClone(k.json);
    roles[r] = { keyids: [...new Set(ks.map((k) => k.id))], threshold: 1 };
  }
  return { _type: 'Root', consistent_snapshot: false, expires: goTime(c.expires), keys, roles, version: c.version };
}

export interface DelegationRoleSpec {
  /** `targets/releases` */
  readonly name: string;
  readonly keyids: readonly string[];
  readonly threshold: number;
  /** Path prefixes the role may sign; `[""]` = everything. */
  readonly paths: readonly string[];
}

export interface TargetsContent {
  readonly version: number;
  readonly expires: Date;
  /** Target name (the tag) -> entry (see targetEntry). */
  readonly targets?: Readonly<Record<string, JsonObject>>;
  readonly delegations?: { readonly keys: Readonly<Record<string, JsonObject>>; readonly roles: readonly DelegationRoleSpec[] };
}

/** Top-level and delegated targets documents alike (Notary always writes `delegations`, even empty). */
export function targetsDocument(c: TargetsContent): JsonObject {
  const keys: JsonObject = {};
  for (const [id, k] of Object.entries(c.delegations?.keys ?? {})) keys[id] = structuredClone(k);
  const roles: JsonValue[] = (c.delegations?.roles ?? []).map((r) => ({ keyids: [...r.keyids], name: r.name, paths: [...r.paths], threshold: r.threshold }));
  const targets: JsonObject = {};
  for (const [n, t] of Object.entries(c.targets ?? {})) targets[n] = structuredClone(t);
  return { _type: 'Targets', delegations: { keys, roles }, expires: goTime(c.expires), targets, version: c.version };
}

export interface SnapshotContent {
  readonly version: number;
  readonly expires: Date;
  /** "root", "targets", "targets/releases"… -> meta entry (see metaEntry). */
  readonly meta: Readonly<Record<string, JsonObject>>;
}

export function snapshotDocument(c: SnapshotContent): JsonObject {
  const meta: JsonObject = {};
  for (const [n, m] of Object.entries(c.meta)) meta[n] = structuredClone(m);
  return { _type: 'Snapshot', expires: goTime(c.expires), meta, version: c.version };
}

export function timestampDocument(c: { version: number; expires: Date; snapshot: Buffer }): JsonObject {
  return { _type: 'Timestamp', expires: goTime(c.expires), meta: { snapshot: metaEntry(c.snapshot) }, version: c.version };
}

// ------------------------------------------------------------------------------------------------ signing

export interface EnvelopeSignature {
  readonly keyid: string;
  readonly method: string;
  /** base64 */
  readonly sig: string;
}

/** Someone who signs a document under a given key ID. */
export interface KeyedSigner {
  readonly signer: Pick<Signer, 'sign'>;
  readonly keyid: string;
}

/** Escapes what Go's json.Marshal escapes inside strings (it never occurs outside them in canonical JSON). */
function goEscape(text: string): string {
  return text.replace(/[<>&\u2028\u2029]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

/** The served bytes of a signed document. */
export function envelopeBytes(signed: JsonObject, signatures: readonly EnvelopeSignature[]): Buffer {
  const canonical = canonicalGo(signed).toString('utf8');
  // Go's canonical encoder writes control characters raw, which is not JSON: Notary itself cannot publish them.
  if (/[\u0000-\u001f]/.test(canonical)) throw new TypeError('metadata contains a control character (Notary cannot publish it)');
  const sigs = signatures.map((s) => `{"keyid":${JSON.stringify(s.keyid)},"method":${JSON.stringify(s.method)},"sig":${JSON.stringify(s.sig)}}`);
  return Buffer.from(`{"signed":${goEscape(canonical)},"signatures":[${sigs.join(',')}]}`, 'utf8');
}

/** Signs `signed` (over its Go canonical JSON) with every signer, in order, and returns the envelope bytes. */
export async function signDocument(signed: JsonObject, signers: readonly KeyedSigner[]): Promise<Buffer> {
  if (signers.length === 0) throw new TypeError('signDocument: no signers');
  const data = canonicalGo(signed);
  const signatures: EnvelopeSignature[] = [];
  const seen = new Set<string>();
  for (const s of signers) {
    if (seen.has(s.keyid)) continue; // one key signing twice is refused by verifiers
    seen.add(s.keyid);
    const r = await s.signer.sign(data);
    signatures.push({ keyid: s.keyid, method: r.method, sig: Buffer.from(r.sig).toString('base64') });
  }
  return envelopeBytes(signed, signatures);
}

/** The `signed` part of envelope bytes we produced or trust (not for untrusted input: use the trust core). */
export function signedOf(bytes: Buffer): JsonObject {
  return (JSON.parse(bytes.toString('utf8')) as { signed: JsonObject }).signed;
}

// ------------------------------------------------------------------------------------------------ preflight

export interface PublicationCheck {
  readonly gun: string;
  readonly now: Date;
  /** The root the published state will be under. */
  readonly root: Buffer;
  /** When the root changes: the currently trusted root. The new one must chain from it (spec 5.3). */
  readonly previousRoot?: Buffer | undefined;
  /** The snapshot we sign ourselves; absent when the server signs the snapshot. */
  readonly snapshot?: Buffer | undefined;
  /** Every targets role of the state after publishing, changed or not, by role name ("targets" required). */
  readonly targets: ReadonlyMap<string, Buffer>;
  /** Roles that must be reached from targets through delegations (default: every role in `targets`). */
  readonly mustReach?: ReadonlySet<string> | undefined;
  readonly limits?: TrustLimits | undefined;
}

/**
 * Runs a state we are about to publish through a fresh TrustedSet, as a client with no history would see it:
 * the root (self-signed by a threshold of its root keys, x509 root certificates with CN = GUN and valid now; or
 * the rotation rules against the previous root), then our snapshot if we sign one, every targets role against
 * the keys its delegator lists, in delegation order, with expiry, `_type`, role names and well-formedness.
 *
 * The server signs the timestamp (and maybe the snapshot), which cannot exist before the upload. For the check
 * they are stood in for by documents signed with a throw-away key that a copy of the root names for the
 * server's roles only; the keys of every role we sign are the real root's (which is itself checked unmodified).
 * Returns the TrustedSet so the caller can ask it what a client will see. Throws the trust core's TrustError.
 */
export function verifyPublication(c: PublicationCheck): TrustedSet {
  const opts = { dialect: 'notary' as const, gun: c.gun, ...(c.limits ? { limits: c.limits } : {}) };
  if (c.previousRoot) TrustedSet.fromRoot(c.previousRoot, opts, c.now, true).updateRoot(c.root, c.now);
  else TrustedSet.fromRoot(c.root, opts, c.now);

  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
  const standIn = notaryPublicKey(publicKey);
  const signSync = (signed: JsonObject): Buffer => {
    const sig = cryptoSign('sha256', canonicalGo(signed), { key: privateKey, dsaEncoding: 'ieee-p1363' });
    return envelopeBytes(signed, [{ keyid: standIn.id, method: 'ecdsa', sig: sig.toString('base64') }]);
  };

  const shadow = structuredClone(signedOf(c.root));
  const keys = shadow['keys'] as JsonObject;
  const roles = shadow['roles'] as JsonObject;
  keys[standIn.id] = standIn.json;
  const only = { keyids: [standIn.id], threshold: 1 };
  roles['root'] = structuredClone(only);
  roles['timestamp'] = structuredClone(only);
  if (!c.snapshot) roles['snapshot'] = structuredClone(only);
  const set = TrustedSet.fromRoot(signSync(shadow), opts, c.now);

  const targets = c.targets.get('targets');
  if (!targets) throw new TypeError('verifyPublication: the state has no targets document');
  let snapshot = c.snapshot;
  if (!snapshot) {
    const meta: Record<string, JsonObject> = { root: metaEntry(c.root) };
    for (const [role, bytes] of c.targets) meta[role] = metaEntry(bytes);
    snapshot = signSync(snapshotDocument({ version: 1, expires: new Date(c.now.getTime() + 86_400_000), meta }));
  }
  set.updateTimestamp(signSync(timestampDocument({ version: 1, expires: new Date(c.now.getTime() + 86_400_000), snapshot })), c.now);
  set.updateSnapshot(snapshot, c.now);
  set.updateTargets(targets, c.now);
  const reached = new Set(['targets']);
  let frontier = ['targets'];
  while (frontier.length > 0) {
    const next: string[] = [];
    for (const parent of frontier) {
      for (const d of set.delegationsOf(parent)) {
        const bytes = c.targets.get(d.role.name);
        if (!bytes || reached.has(d.role.name)) continue;
        set.updateDelegated(bytes, d.role.name, parent, c.now);
        reached.add(d.role.name);
        next.push(d.role.name);
      }
    }
    frontier = next;
  }
  for (const role of c.mustReach ?? c.targets.keys()) {
    if (!reached.has(role)) throw new TrustError('DELEGATION', `${role} would be published, but no role delegates to it`, role);
  }
  return set;
}

/** Whether `data` is a certificate valid at `now` for this CN (for early, readable errors before the trust core). */
export function certificateProblem(cert: X509Certificate, now: Date, cn?: string): string | undefined {
  const from = new Date(cert.validFrom);
  const to = new Date(cert.validTo);
  if (now < from || now > to) return `certificate is valid from ${from.toISOString()} to ${to.toISOString()}, not now (${now.toISOString()})`;
  if (cn !== undefined) {
    const got = cert.subject.split('\n').find((l) => l.startsWith('CN='))?.slice(3);
    if (got !== cn) return `certificate CN is "${got ?? ''}", but Notary requires the GUN "${cn}" for root keys`;
  }
  return undefined;
}

// Parsing of signed metadata documents into typed values, for both dialects. Parsing is not trusting: only
// TrustedSet turns a parsed document into trusted state, after its signatures, versions and hashes check out.
import { createHash } from 'node:crypto';
import { TrustError } from './errors.js';
import { canonicalGo, canonicalOlpc, parseUntrustedJson, type JsonObject, type JsonValue } from './json.js';
import { decodeBase64Strict, decodeHexStrict, type Dialect } from './keys.js';

export type TopRole = 'root' | 'timestamp' | 'snapshot' | 'targets';

export interface Signature {
  readonly keyid: string;
  readonly method: string | undefined;
  readonly sig: string;
}

/** A document parsed from untrusted bytes: what was signed, and the claimed signatures. */
export interface Envelope {
  readonly bytes: Buffer;
  readonly signed: JsonObject;
  /** The exact bytes the signatures cover (canonical JSON of `signed` in the dialect's flavour). */
  readonly signedBytes: Buffer;
  readonly signatures: readonly Signature[];
  readonly version: number;
  readonly expires: Date;
}

export interface RoleKeys {
  readonly keyids: readonly string[];
  readonly threshold: number;
}

export interface RootInfo {
  readonly consistentSnapshot: boolean;
  /** Key objects by ID, unparsed: keys are parsed with the verification context (time, GUN) when used. */
  readonly keys: ReadonlyMap<string, JsonValue>;
  readonly roles: ReadonlyMap<TopRole, RoleKeys>;
}

export type Hashes = ReadonlyMap<string, Buffer>;

export interface MetaFile {
  readonly version: number | undefined;
  readonly length: number | undefined;
  readonly hashes: Hashes | undefined;
}

export interface TimestampInfo {
  readonly snapshot: MetaFile;
}

export interface SnapshotInfo {
  /** By role name ("targets", "targets/releases", or TUF "releases"), whatever the dialect's key spelling. */
  readonly meta: ReadonlyMap<string, MetaFile>;
}

export interface TargetFile {
  readonly length: number;
  readonly hashes: Hashes;
  readonly custom: JsonValue | undefined;
}

export interface DelegatedRole extends RoleKeys {
  readonly name: string;
  readonly terminating: boolean;
  readonly paths: readonly string[] | undefined;
  readonly pathHashPrefixes: readonly string[] | undefined;
}

export interface SuccinctRoles extends RoleKeys {
  readonly bitLength: number;
  readonly namePrefix: string;
}

export interface Delegations {
  readonly keys: ReadonlyMap<string, JsonValue>;
  readonly roles: readonly DelegatedRole[];
  readonly succinct: SuccinctRoles | undefined;
}

export interface TargetsInfo {
  readonly targets: ReadonlyMap<string, TargetFile>;
  readonly delegations: Delegations | undefined;
}

const TYPE_NAMES: Record<Dialect, Record<TopRole, string>> = {
  notary: { root: 'Root', timestamp: 'Timestamp', snapshot: 'Snapshot', targets: 'Targets' },
  tuf: { root: 'root', timestamp: 'timestamp', snapshot: 'snapshot', targets: 'targets' },
};

export const SUPPORTED_HASHES = new Set(['sha256', 'sha512']);

function malformed(what: string, msg: string): never {
  throw new TrustError('MALFORMED', `${what}: ${msg}`);
}

function obj(v: JsonValue | undefined, what: string): JsonObject {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) malformed(what, 'must be an object');
  return v;
}

function str(v: JsonValue | undefined, what: string): string {
  if (typeof v !== 'string') malformed(what, 'must be a string');
  return v;
}

function uint(v: JsonValue | undefined, what: string, min = 0): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min) malformed(what, `must be an integer >= ${min}`);
  return v;
}

function arr(v: JsonValue | undefined, what: string): JsonValue[] {
  if (!Array.isArray(v)) malformed(what, 'must be an array');
  return v;
}

function strings(v: JsonValue | undefined, what: string): string[] {
  return arr(v, what).map((x, i) => str(x, `${what}[${i}]`));
}

function map<T>(v: JsonValue | undefined, what: string, f: (k: string, v: JsonValue, what: string) => T): Map<string, T> {
  const o = obj(v, what);
  const out = new Map<string, T>();
  for (const k of Object.keys(o)) out.set(k, f(k, o[k]!, `${what}.${k}`));
  return out;
}

const RFC3339 = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(\.\d+)?(Z|[+-]\d{2}:\d{2})$/;

export function parseExpires(v: JsonValue | undefined, what: string): Date {
  const s = str(v, what);
  const m = RFC3339.exec(s);
  if (!m) malformed(what, `"${s}" is not an RFC 3339 time`);
  // Notary writes nanoseconds; Date keeps milliseconds. Truncating can only make expiry earlier, never later.
  const frac = m[7] ? m[7].slice(0, 4).padEnd(4, '0') : '';
  const d = new Date(`${m[1]}-${m[2]}-${m[3]}T${m[4]}:${m[5]}:${m[6]}${frac}${m[8]}`);
  if (Number.isNaN(d.getTime())) malformed(what, `"${s}" is not a valid time`);
  return d;
}

export function parseHashes(v: JsonValue | undefined, what: string, dialect: Dialect): Hashes {
  const out = new Map<string, Buffer>();
  const o = obj(v, what);
  for (const alg of Object.keys(o)) {
    const text = str(o[alg], `${what}.${alg}`);
    out.set(alg, dialect === 'notary' ? decodeBase64Strict(text, `${what}.${alg}`) : decodeHexStrict(text, `${what}.${alg}`));
  }
  if (out.size === 0) malformed(what, 'lists no hashes');
  return out;
}

/**
 * Checks bytes against a length and hash set from trusted metadata (spec 5.4.2, 5.5.2, 5.6.2: the arbitrary
 * software and mix-and-match attacks). Every listed algorithm must be known and match, and at least one known
 * algorithm must be listed: an unknown one could be a downgrade to nothing.
 */
export function checkLengthAndHashes(bytes: Uint8Array, length: number | undefined, hashes: Hashes | undefined, what: string): void {
  if (length !== undefined && bytes.byteLength !== length) {
    throw new TrustError('DIGEST_MISMATCH', `${what}: ${bytes.byteLength} bytes, but trusted metadata says ${length}`);
  }
  if (hashes === undefined) return;
  for (const [alg, want] of hashes) {
    if (!SUPPORTED_HASHES.has(alg)) throw new TrustError('DIGEST_MISMATCH', `${what}: unsupported hash algorithm ${alg}`);
    const got = createHash(alg).update(bytes).digest();
    if (!got.equals(want)) throw new TrustError('DIGEST_MISMATCH', `${what}: ${alg} does not match trusted metadata`);
  }
}

export interface EnvelopeOptions {
  readonly dialect: Dialect;
  readonly role: TopRole;
  /** For messages: "targets/releases from https://…". */
  readonly what: string;
  readonly maxBytes: number;
  readonly maxDepth: number;
}

/** Parses an envelope and checks its `_type` against the role it was fetched as. */
export function parseEnvelope(bytes: Buffer, o: EnvelopeOptions): Envelope {
  const doc = obj(parseUntrustedJson(bytes, { maxBytes: o.maxBytes, maxDepth: o.maxDepth, what: o.what }), o.what);
  for (const k of Object.keys(doc)) if (k !== 'signed' && k !== 'signatures') malformed(o.what, `unexpected top-level field "${k}"`);
  const signed = obj(doc['signed'], `${o.what}: signed`);
  const type = str(signed['_type'], `${o.what}: signed._type`);
  // Wrong type: a timestamp served as root (or a Notary document fed to a TUF client) is refused by name.
  if (type !== TYPE_NAMES[o.dialect][o.role]) {
    throw new TrustError('WRONG_TYPE', `${o.what}: _type is "${type}", expected "${TYPE_NAMES[o.dialect][o.role]}"`, o.role);
  }
  if (o.dialect === 'tuf') {
    const sv = str(signed['spec_version'], `${o.what}: signed.spec_version`);
    // python-tuf's rule: same major version only.
    if (!/^1\.\d+(\.\d+)?$/.test(sv)) malformed(o.what, `unsupported spec_version ${sv}`);
  }
  const signatures = arr(doc['signatures'], `${o.what}: signatures`).map((s, i) => {
    const so = obj(s, `${o.what}: signatures[${i}]`);
    return {
      keyid: str(so['keyid'], `${o.what}: signatures[${i}].keyid`),
      method: o.dialect === 'notary' ? str(so['method'], `${o.what}: signatures[${i}].method`) : undefined,
      sig: str(so['sig'], `${o.what}: signatures[${i}].sig`),
    };
  });
  const signedBytes = o.dialect === 'notary' ? canonicalGo(signed) : canonicalOlpc(signed);
  return {
    bytes,
    signed,
    signedBytes,
    signatures,
    version: uint(signed['version'], `${o.what}: signed.version`, 1),
    expires: parseExpires(signed['expires'], `${o.what}: signed.expires`),
  };
}

function roleKeys(v: JsonValue | undefined, what: string): RoleKeys {
  const o = obj(v, what);
  const keyids = strings(o['keyids'], `${what}.keyids`);
  if (new Set(keyids).size !== keyids.length) malformed(what, 'lists a key ID twice');
  return { keyids, threshold: uint(o['threshold'], `${what}.threshold`, 1) };
}

export function parseRoot(env: Envelope, what: string): RootInfo {
  const s = env.signed;
  const keys = map(s['keys'], `${what}: keys`, (_k, v) => v);
  const rolesObj = obj(s['roles'], `${what}: roles`);
  const roles = new Map<TopRole, RoleKeys>();
  for (const r of ['root', 'timestamp', 'snapshot', 'targets'] as const) {
    const rk = roleKeys(rolesObj[r], `${what}: roles.${r}`);
    for (const id of rk.keyids) if (!keys.has(id)) malformed(what, `role ${r} names key ${id}, which the root does not define`);
    roles.set(r, rk);
  }
  const cs = s['consistent_snapshot'];
  if (cs !== undefined && typeof cs !== 'boolean') malformed(what, 'consistent_snapshot must be a boolean');
  return { consistentSnapshot: cs === true, keys, roles };
}

function metaFile(v: JsonValue, what: string, dialect: Dialect): MetaFile {
  const o = obj(v, what);
  return {
    version: o['version'] === undefined ? undefined : uint(o['version'], `${what}.version`, 1),
    length: o['length'] === undefined ? undefined : uint(o['length'], `${what}.length`),
    hashes: o['hashes'] === undefined ? undefined : parseHashes(o['hashes'], `${what}.hashes`, dialect),
  };
}

export function parseTimestamp(env: Envelope, what: string, dialect: Dialect): TimestampInfo {
  const meta = obj(env.signed['meta'], `${what}: meta`);
  const key = dialect === 'notary' ? 'snapshot' : 'snapshot.json';
  if (Object.keys(meta).length !== 1 || meta[key] === undefined) malformed(what, `meta must list exactly "${key}"`);
  const snapshot = metaFile(meta[key]!, `${what}: meta.${key}`, dialect);
  if (dialect === 'notary' && (snapshot.length === undefined || snapshot.hashes === undefined)) {
    malformed(what, 'Notary timestamps must give the snapshot length and hashes');
  }
  if (dialect === 'tuf' && snapshot.version === undefined) malformed(what, 'meta.snapshot.json.version is required');
  return { snapshot };
}

export function parseSnapshot(env: Envelope, what: string, dialect: Dialect): SnapshotInfo {
  const out = new Map<string, MetaFile>();
  const meta = obj(env.signed['meta'], `${what}: meta`);
  for (const k of Object.keys(meta)) {
    const mf = metaFile(meta[k]!, `${what}: meta.${k}`, dialect);
    if (dialect === 'tuf') {
      if (!k.endsWith('.json')) malformed(what, `meta key "${k}" must end in .json`);
      if (mf.version === undefined) malformed(what, `meta.${k}.version is required`);
      out.set(k.slice(0, -'.json'.length), mf);
    } else {
      if (mf.length === undefined || mf.hashes === undefined) malformed(what, `Notary snapshots must give length and hashes for ${k}`);
      out.set(k, mf);
    }
  }
  return { meta: out };
}

function delegatedRole(v: JsonValue, what: string, dialect: Dialect): DelegatedRole {
  const o = obj(v, what);
  const name = str(o['name'], `${what}.name`);
  const rk = roleKeys(o, what);
  const paths = o['paths'] === undefined ? undefined : strings(o['paths'], `${what}.paths`);
  const prefixes = o['path_hash_prefixes'] === undefined ? undefined : strings(o['path_hash_prefixes'], `${what}.path_hash_prefixes`);
  if (dialect === 'tuf' && (paths === undefined) === (prefixes === undefined)) {
    malformed(what, 'exactly one of paths and path_hash_prefixes is required');
  }
  if (prefixes && prefixes.some((p) => !/^[0-9a-f]*$/.test(p))) malformed(what, 'path_hash_prefixes must be lower-case hex');
  const t = o['terminating'];
  if (t !== undefined && typeof t !== 'boolean') malformed(what, 'terminating must be a boolean');
  return { ...rk, name, terminating: t === true, paths, pathHashPrefixes: prefixes };
}

export function parseTargets(env: Envelope, what: string, dialect: Dialect): TargetsInfo {
  const targets = map(env.signed['targets'], `${what}: targets`, (_k, v, w) => {
    const o = obj(v, w);
    return {
      length: uint(o['length'], `${w}.length`),
      hashes: parseHashes(o['hashes'], `${w}.hashes`, dialect),
      custom: o['custom'],
    };
  });
  let delegations: Delegations | undefined;
  const d = env.signed['delegations'];
  if (d !== undefined && d !== null) {
    const dobj = obj(d, `${what}: delegations`);
    const keys = map(dobj['keys'], `${what}: delegations.keys`, (_k, v) => v);
    let roles: DelegatedRole[] = [];
    let succinct: SuccinctRoles | undefined;
    if (dobj['succinct_roles'] !== undefined) {
      if (dobj['roles'] !== undefined) malformed(what, 'delegations may not have both roles and succinct_roles');
      const so = obj(dobj['succinct_roles'], `${what}: delegations.succinct_roles`);
      const bitLength = uint(so['bit_length'], `${what}: succinct_roles.bit_length`, 1);
      if (bitLength > 32) malformed(what, 'succinct_roles.bit_length must be at most 32');
      succinct = { ...roleKeys(so, `${what}: succinct_roles`), bitLength, namePrefix: str(so['name_prefix'], `${what}: succinct_roles.name_prefix`) };
    } else {
      roles = arr(dobj['roles'], `${what}: delegations.roles`).map((r, i) => delegatedRole(r, `${what}: delegations.roles[${i}]`, dialect));
    }
    const names = new Set<string>();
    for (const r of roles) {
      if (names.has(r.name)) malformed(what, `delegation ${r.name} is listed twice`);
      names.add(r.name);
      for (const id of r.keyids) if (!keys.has(id)) malformed(what, `delegation ${r.name} names key ${id}, which is not defined`);
    }
    if (succinct) for (const id of succinct.keyids) if (!keys.has(id)) malformed(what, `succinct_roles names key ${id}, which is not defined`);
    delegations = { keys, roles, succinct };
  }
  return { targets, delegations };
}

/** The version a stored document claims (for stores that keep only the bytes). Throws MALFORMED. */
export function versionOfDocument(bytes: Buffer, maxBytes = 64 * 1024 * 1024): number {
  const doc = obj(parseUntrustedJson(bytes, { maxBytes, what: 'stored metadata' }), 'stored metadata');
  return uint(obj(doc['signed'], 'stored metadata: signed')['version'], 'stored metadata: signed.version', 1);
}

// What a Notary repository's verified trust data says, in the shapes `notary list` and `docker trust inspect`
// present. Built only from an Updater's verified view; formatting for humans lives in the CLI.
import { createHash } from 'node:crypto';
import { canonicalGo, type JsonValue } from './json.js';
import { parseKey } from './keys.js';
import type { Updater } from './updater.js';

export interface ListedTarget {
  readonly name: string;
  /** Hex sha256 of the target (the manifest digest without "sha256:"). */
  readonly digest: string;
  readonly size: number;
  readonly role: string;
}

export interface TrustTagRow {
  readonly SignedTag: string;
  readonly Digest: string;
  readonly Signers: string[];
}

export interface TrustSigner {
  readonly Name: string;
  readonly Keys: { ID: string }[];
}

/** The JSON `docker trust inspect` prints for one repository (same field names, same grouping rules). */
export interface TrustInspection {
  readonly Name: string;
  readonly SignedTags: TrustTagRow[];
  readonly Signers: TrustSigner[];
  readonly AdministrativeKeys: TrustSigner[];
}

/** Roles whose signature makes a tag "released" for Docker Content Trust. */
const RELEASE_ROLES = new Set(['targets', 'targets/releases']);
const REPO_ADMIN = 'Repo Admin';

function sha256Hex(t: { hashes: ReadonlyMap<string, Buffer> }): string {
  return t.hashes.get('sha256')?.toString('hex') ?? '';
}

/**
 * `notary list`: one row per target name, from the first role in the pre-order walk that may sign it
 * (targets before its delegations), sorted by name.
 */
export async function listTargets(u: Updater, o: { offline?: boolean } = {}): Promise<ListedTarget[]> {
  const seen = new Map<string, ListedTarget>();
  for (const r of await u.listAll(o)) {
    for (const [name, t] of r.targets) {
      if (!seen.has(name)) seen.set(name, { name, digest: sha256Hex(t), size: t.length, role: r.role });
    }
  }
  return [...seen.values()].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

/**
 * Docker's tag order (natural order: runs of digits compare by value, digits sort before other characters, and
 * of two equal numbers the one with fewer leading zeros comes first; anything else compares by code unit).
 */
export function naturalCompare(a: string, b: string): number {
  const isDigit = (c: number) => c >= 48 && c <= 57;
  let i = 0;
  let j = 0;
  while (i < a.length && j < b.length) {
    const ca = a.charCodeAt(i);
    const cb = b.charCodeAt(j);
    const da = isDigit(ca);
    const db = isDigit(cb);
    if (da !== db) return da ? -1 : 1;
    if (!da) {
      if (ca !== cb) return ca - cb;
      i++;
      j++;
      continue;
    }
    const zi = i;
    const zj = j;
    while (i < a.length && a.charCodeAt(i) === 48) i++;
    while (j < b.length && b.charCodeAt(j) === 48) j++;
    const si = i;
    const sj = j;
    while (i < a.length && isDigit(a.charCodeAt(i))) i++;
    while (j < b.length && isDigit(b.charCodeAt(j))) j++;
    const na = a.slice(si, i);
    const nb = b.slice(sj, j);
    if (na.length !== nb.length) return na.length - nb.length;
    if (na !== nb) return na < nb ? -1 : 1;
    if (si - zi !== sj - zj) return si - zi - (sj - zj);
  }
  return a.length - i - (b.length - j);
}

/**
 * The key ID Notary shows to people for a key: for a certificate key ("ecdsa-x509", "rsa-x509") the ID of the
 * bare public key it certifies, otherwise the metadata's own ID.
 */
export function canonicalKeyId(id: string, json: JsonValue | undefined): string {
  const k = parseKey(id, json, 'notary');
  if (k.keytype !== 'ecdsa-x509' && k.keytype !== 'rsa-x509') return id;
  const pub = Buffer.from(k.material, 'hex').toString('base64');
  const keytype = k.keytype === 'ecdsa-x509' ? 'ecdsa' : 'rsa';
  return createHash('sha256').update(canonicalGo({ keytype, keyval: { private: null, public: pub } })).digest('hex');
}

/**
 * `docker trust inspect` (docker CLI 20.10), checked field by field against the real CLI:
 * - a (tag, digest) row exists when "targets" or "targets/releases" signs it; its Signers are the other roles that
 *   sign the same (tag, digest) ("targets/" stripped), in breadth-first walk order, or just "Repo Admin" when none;
 * - rows in natural tag order (v2 before v10);
 * - Signers: every delegation except targets/releases, by name descending, keys in metadata order with canonical
 *   key IDs (a delegation certificate shows as its public key's ID, as `notary delegation list` does);
 * - AdministrativeKeys: "Root" then "Repository", key IDs exactly as root.json lists them (an x509 root key keeps
 *   its certificate key ID);
 * - Name is the reference asked for, with its tag.
 */
export async function inspectRepository(u: Updater, name: string, tag?: string, o: { offline?: boolean } = {}): Promise<TrustInspection> {
  // listAll walks depth-first; a stable sort by depth gives the breadth-first order Notary's walk reports in.
  const roles = (await u.listAll(o)).map((r, i) => ({ r, i })).sort((a, b) => a.r.path.length - b.r.path.length || a.i - b.i).map((x) => x.r);
  const set = (await u.trusted())!;
  const rows = new Map<string, { tag: string; digest: string; signers: string[] }>();
  const key = (t: string, d: string) => `${t}\u0000${d}`;
  for (const r of roles) {
    if (!RELEASE_ROLES.has(r.role)) continue;
    for (const [n, t] of r.targets) {
      if (tag !== undefined && n !== tag) continue;
      rows.set(key(n, sha256Hex(t)), { tag: n, digest: sha256Hex(t), signers: [] });
    }
  }
  for (const r of roles) {
    if (RELEASE_ROLES.has(r.role)) continue;
    for (const [n, t] of r.targets) rows.get(key(n, sha256Hex(t)))?.signers.push(r.role.replace(/^targets\//, ''));
  }
  const SignedTags = [...rows.values()]
    .sort((a, b) => naturalCompare(a.tag, b.tag) || (a.digest < b.digest ? -1 : a.digest > b.digest ? 1 : 0))
    .map((r) => ({ SignedTag: r.tag, Digest: r.digest, Signers: r.signers.length > 0 ? r.signers : [REPO_ADMIN] }));

  const Signers: TrustSigner[] = [];
  const seen = new Set<string>();
  for (const r of roles) {
    for (const d of set.delegationsOf(r.role)) {
      if (d.role.name === 'targets/releases' || seen.has(d.role.name)) continue;
      seen.add(d.role.name);
      Signers.push({ Name: d.role.name.replace(/^targets\//, ''), Keys: d.role.keyids.map((id) => ({ ID: canonicalKeyId(id, d.keys.get(id)) })) });
    }
  }
  Signers.sort((a, b) => (a.Name > b.Name ? -1 : a.Name < b.Name ? 1 : 0));
  const asIs = (ids: readonly string[]) => ids.map((ID) => ({ ID }));
  const AdministrativeKeys: TrustSigner[] = [
    { Name: 'Root', Keys: asIs(set.root.roles.get('root')!.keyids) },
    { Name: 'Repository', Keys: asIs(set.root.roles.get('targets')!.keyids) },
  ];
  return { Name: tag !== undefined ? `${name}:${tag}` : name, SignedTags, Signers, AdministrativeKeys };
}

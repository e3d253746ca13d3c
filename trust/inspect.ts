// What a Notary repository's verified trust data says, in the shapes `notary list` and `docker trust inspect`
// present. Built only from an Updater's verified view; formatting for humans lives in the CLI.
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
 * `docker trust inspect`: a tag is shown when "targets" or "targets/releases" signs it; every role that signs
 * the same (tag, digest) is listed as a signer ("Repo Admin" for those two roles, else the role's last part).
 */
export async function inspectRepository(u: Updater, name: string, tag?: string, o: { offline?: boolean } = {}): Promise<TrustInspection> {
  const roles = await u.listAll(o);
  const set = (await u.trusted())!;
  const rows = new Map<string, { tag: string; digest: string; signers: Set<string> }>();
  const key = (t: string, d: string) => `${t}\u0000${d}`;
  for (const r of roles) {
    if (!RELEASE_ROLES.has(r.role)) continue;
    for (const [n, t] of r.targets) {
      if (tag !== undefined && n !== tag) continue;
      rows.set(key(n, sha256Hex(t)), { tag: n, digest: sha256Hex(t), signers: new Set() });
    }
  }
  for (const r of roles) {
    for (const [n, t] of r.targets) {
      const row = rows.get(key(n, sha256Hex(t)));
      if (row) row.signers.add(RELEASE_ROLES.has(r.role) ? REPO_ADMIN : r.role.replace(/^targets\//, ''));
    }
  }
  const SignedTags = [...rows.values()]
    .sort((a, b) => (a.tag < b.tag ? -1 : a.tag > b.tag ? 1 : a.digest < b.digest ? -1 : 1))
    .map((r) => ({ SignedTag: r.tag, Digest: r.digest, Signers: [...r.signers].sort() }));

  const sortedKeys = (ids: readonly string[]) => [...ids].sort().map((ID) => ({ ID }));
  const Signers: TrustSigner[] = [];
  for (const r of roles) {
    for (const d of set.delegationsOf(r.role)) {
      if (d.role.name === 'targets/releases') continue;
      Signers.push({ Name: d.role.name.replace(/^targets\//, ''), Keys: sortedKeys(d.role.keyids) });
    }
  }
  Signers.sort((a, b) => (a.Name < b.Name ? -1 : a.Name > b.Name ? 1 : 0));
  const AdministrativeKeys: TrustSigner[] = [
    { Name: 'Repository', Keys: sortedKeys(set.root.roles.get('targets')!.keyids) },
    { Name: 'Root', Keys: sortedKeys(set.root.roles.get('root')!.keyids) },
  ];
  return { Name: name, SignedTags, Signers, AdministrativeKeys };
}

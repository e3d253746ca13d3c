// Answers "which digest does the trust data sign for this tag?" for one Notary repository, under a rule's
// signer requirements. The only producer of SignedTarget: a proxy that serves bytes holds one of these.
import { TrustError } from './errors.js';
import type { TargetFile } from './metadata.js';
import type { Updater } from './updater.js';

export interface SignedTarget {
  readonly __brand: 'SignedTarget';
  readonly tag: string;
  /** "sha256:<hex>". */
  readonly digest: string;
  readonly length: number;
  /** Every role that signs this tag with this digest. */
  readonly roles: readonly string[];
  /** Earliest expiry of the metadata this answer rests on. */
  readonly validUntil: Date;
}

export interface SignerRequirement {
  /** Roles of which `threshold` must sign the tag with the same digest. Absent: Docker Content Trust's rule. */
  readonly signers?: readonly string[] | undefined;
  readonly threshold?: number | undefined;
}

/** Docker Content Trust looks in targets/releases first, then targets. */
const DCT_ROLES = ['targets/releases', 'targets'];

function hexOf(t: TargetFile): string {
  const h = t.hashes.get('sha256');
  if (!h) throw new TrustError('MALFORMED', 'signed target has no sha256 hash');
  return h.toString('hex');
}

export async function resolveSignedTag(u: Updater, tag: string, req: SignerRequirement, o: { offline?: boolean } = {}): Promise<SignedTarget> {
  const roles = await u.listAll(o);
  const set = (await u.trusted())!;
  const byRole = new Map<string, { t: TargetFile; path: string[] }>();
  for (const r of roles) {
    const t = r.targets.get(tag);
    if (t) byRole.set(r.role, { t, path: r.path });
  }
  const result = (t: TargetFile, signing: string[]): SignedTarget => {
    const digest = `sha256:${hexOf(t)}`;
    const all = [...byRole].filter(([, v]) => hexOf(v.t) === hexOf(t)).map(([k]) => k);
    const paths = signing.flatMap((r) => byRole.get(r)!.path);
    return { __brand: 'SignedTarget', tag, digest, length: t.length, roles: all, validUntil: set.validUntil([...new Set(paths)]) };
  };
  if (!req.signers || req.signers.length === 0) {
    for (const role of DCT_ROLES) {
      const hit = byRole.get(role);
      if (hit) return result(hit.t, [role]);
    }
    throw new TrustError('NOT_SIGNED', `tag ${tag} is not signed in ${DCT_ROLES.join(' or ')}`);
  }
  const threshold = req.threshold ?? 1;
  // Group the required roles' signatures by digest: N of M must agree on one.
  const votes = new Map<string, string[]>();
  for (const role of req.signers) {
    const hit = byRole.get(role);
    if (!hit) continue;
    const d = hexOf(hit.t);
    votes.set(d, [...(votes.get(d) ?? []), role]);
  }
  if (votes.size === 0) throw new TrustError('NOT_SIGNED', `tag ${tag} is not signed by ${req.signers.join(', ')}`);
  const [best] = [...votes.values()].sort((a, b) => b.length - a.length);
  if (best!.length < threshold) {
    const why = votes.size > 1 ? 'signers disagree on the digest' : `only ${best!.join(', ')} signed`;
    throw new TrustError('THRESHOLD', `tag ${tag} needs ${threshold} of ${req.signers.join(', ')}: ${why}`);
  }
  return result(byRole.get(best![0]!)!.t, best!);
}

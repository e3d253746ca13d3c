// The trust engine alone, in this process (no server, no network): a generated Notary v1 repository with 10,000
// targets in 100 delegations (test/fixtures/repo-builder.ts signs it with node:crypto), verified by
// trust/updater.ts against an in-memory store and fetcher:
//   - cold: a new Updater on an empty store, refresh() (root, timestamp, snapshot, targets) + listAll() (all 100
//     delegations fetched and verified, every target indexed), i.e. everything a first tag decision needs;
//   - timestamp-only refresh: the publisher re-signs only the timestamp; refresh() of the warm Updater;
//   - a tag decision on warm trust data: resolveSignedTag() with a `signers` rule (what the gate runs for a tag it
//     has no cached decision for);
// and signature verifications per second per key type through trust/keys.ts verifySignature (the loop of
// bench/verify-speed.mjs, on the engine's own code path with KeyObjects parsed once).
import { MemoryMetadataStore } from '../../test/fixtures/memory-store.js';
import { RepoBuilder, type KeyType } from '../../test/fixtures/repo-builder.js';
import { parseKey, verifySignature } from '../../trust/keys.js';
import { resolveSignedTag } from '../../trust/signed-tag.js';
import { Updater } from '../../trust/updater.js';

export interface TrustEngineResult {
  readonly repo: { readonly delegations: number; readonly targets: number; readonly generateMs: number; readonly metadataBytes: number };
  /** ms per run */
  readonly coldMs: number[];
  readonly timestampRefreshMs: number[];
  /** Files fetched by one timestamp-only refresh. */
  readonly timestampRefreshFetches: string[];
  readonly decisionMs: number[];
  /** verifications per second */
  readonly verifyPerSec: Record<string, number>;
}

const pad = (n: number) => String(n).padStart(3, '0');

function rate(f: () => boolean, ms: number): number {
  for (let i = 0; i < 50; i++) if (!f()) throw new Error('signature did not verify');
  let n = 0;
  const t0 = performance.now();
  while (performance.now() - t0 < ms) {
    for (let i = 0; i < 20; i++) f();
    n += 20;
  }
  return n / ((performance.now() - t0) / 1000);
}

export const MANY_SIGNERS_GUN = 'docker.io/library/many-signers';

/** The generated repository: `delegations` roles under targets, each signing `perDelegation` tags of its own prefix. */
export function buildManySignersRepo(D = 100, T = 100): RepoBuilder {
  const b = new RepoBuilder({ dialect: 'notary', gun: MANY_SIGNERS_GUN, start: new Date() });
  for (let d = 0; d < D; d++) {
    const role = `targets/team${pad(d)}`;
    b.delegate('targets', role, { paths: [`r${pad(d)}-`] });
    for (let t = 0; t < T; t++) b.addTarget(`r${pad(d)}-t${pad(t)}`, `manifest bytes of ${d}/${t}`, role);
  }
  b.publish();
  return b;
}

/** Cold: a new Updater on an empty store; refresh() + listAll() verify every role. Returns the targets seen. */
export async function verifyCold(b: RepoBuilder): Promise<{ u: Updater; targets: number }> {
  const u = new Updater({ dialect: 'notary', namespace: MANY_SIGNERS_GUN, gun: MANY_SIGNERS_GUN, store: new MemoryMetadataStore(), fetcher: b.fetcher, clock: b.clock });
  await u.refresh();
  const roles = await u.listAll();
  return { u, targets: roles.reduce((a, r) => a + r.targets.size, 0) };
}

export async function trustEngineBench(o: { reps: number; verifyMs: number; delegations?: number; perDelegation?: number }): Promise<TrustEngineResult> {
  const D = o.delegations ?? 100;
  const T = o.perDelegation ?? 100;
  const t0 = performance.now();
  const b = buildManySignersRepo(D, T);
  const generateMs = performance.now() - t0;
  let metadataBytes = 0;
  for (const role of ['root', 'timestamp', 'snapshot', ...b.targetsRoles()]) metadataBytes += b.bytes(role).length;

  const coldMs: number[] = [];
  let u: Updater | undefined;
  let targets = 0;
  for (let i = 0; i < o.reps; i++) {
    const s = performance.now();
    const r = await verifyCold(b);
    coldMs.push(performance.now() - s);
    u = r.u;
    targets = r.targets;
  }
  if (targets !== D * T) throw new Error(`trust engine: verified ${targets} targets, want ${D * T}`);

  const timestampRefreshMs: number[] = [];
  let fetches: string[] = [];
  for (let i = 0; i < o.reps; i++) {
    b.advance(1000);
    const published = b.publish();
    if (Object.keys(published).join() !== 'timestamp') throw new Error(`expected a timestamp-only publish, got ${Object.keys(published).join()}`);
    b.fetcher.clearLog();
    const s = performance.now();
    await u!.refresh();
    timestampRefreshMs.push(performance.now() - s);
    fetches = [...b.fetcher.requests];
  }

  const decisionMs: number[] = [];
  for (let i = 0; i < o.reps; i++) {
    const d = (i * 37) % D;
    const s = performance.now();
    const t = await resolveSignedTag(u!, `r${pad(d)}-t${pad(i % T)}`, { signers: [`targets/team${pad(d)}`] });
    decisionMs.push(performance.now() - s);
    if (!t.roles.includes(`targets/team${pad(d)}`)) throw new Error('trust engine: resolved to the wrong role');
  }

  // Signature verifications per key type, the engine's code path.
  const data = b.bytes('timestamp'); // a small document, as in bench/verify-speed.mjs
  const verifyPerSec: Record<string, number> = {};
  for (const [label, type] of [['ecdsa P-256', 'ecdsa'], ['ed25519', 'ed25519'], ['rsa-pss 2048', 'rsa']] as const) {
    const k = b.newKey({ type: type as KeyType });
    const pk = parseKey(k.id, k.json, 'notary');
    const sig = k.sign(data) as { method: string; sig: string };
    verifyPerSec[label] = rate(() => verifySignature(pk, sig.method, data, sig.sig, 'notary'), o.verifyMs);
  }
  return {
    repo: { delegations: D, targets, generateMs, metadataBytes },
    coldMs,
    timestampRefreshMs,
    timestampRefreshFetches: fetches,
    decisionMs,
    verifyPerSec,
  };
}

// The real Sigstore public-good TUF repository (root v1 -> v15, timestamp v762, snapshot v165, targets v14,
// the registry.npmjs.org delegation) verified end to end by the TUF 1.0 updater. Facts about the files:
// /work/shared/lab/cosign-samples/README.md §6.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { fixedClock, systemClock } from '../../trust/clock.js';
import { TrustError } from '../../trust/errors.js';
import { checkLengthAndHashes } from '../../trust/metadata.js';
import { Updater, type MetadataFetcher } from '../../trust/updater.js';
import { MemoryMetadataStore } from '../fixtures/memory-store.js';

const REPO = join(import.meta.dirname, '../../../shared/lab/cosign-samples/tuf/sigstore-root-signing');
const METADATA = join(REPO, 'metadata');
const INSIDE = '2026-08-22T00:00:00Z';
const ROOT_V15_EXPIRES = '2026-11-20T13:58:18Z';
const NS = 'tuf-repo-cdn.sigstore.dev';

class FolderFetcher implements MetadataFetcher {
  readonly requests: string[] = [];
  async fetch(name: string, maxBytes: number): Promise<Buffer | null> {
    this.requests.push(name);
    try {
      return readFileSync(join(METADATA, decodeURIComponent(name))).subarray(0, maxBytes + 1);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw e;
    }
  }
}

function updater(at: string | Date, store = new MemoryMetadataStore()) {
  const fetcher = new FolderFetcher();
  const clock = at instanceof Date ? () => new Date(at.getTime()) : fixedClock(at);
  const u = new Updater({ dialect: 'tuf', namespace: NS, store, fetcher, clock, initialRoot: readFileSync(join(METADATA, '1.root.json')) });
  return { u, store, fetcher };
}

describe('real Sigstore root-signing TUF repository', () => {
  it('walks root v1 -> v15 and refreshes timestamp, snapshot and targets', async () => {
    const { u, store, fetcher } = updater(INSIDE);
    const set = await u.refresh();
    expect(set.rootVersion).toBe(15);
    expect(set.root.consistentSnapshot).toBe(true);
    expect(set.timestamp?.env.version).toBe(762);
    expect(set.snapshot?.env.version).toBe(165);
    expect(set.targetsOf('targets')?.env.version).toBe(14);
    // the chain is walked one version at a time until the server has no next root
    const roots = fetcher.requests.filter((r) => r.endsWith('.root.json'));
    expect(roots).toEqual([...Array.from({ length: 15 }, (_, i) => `${i + 2}.root.json`)]);
    // consistent snapshot: versioned names for snapshot and targets
    expect(fetcher.requests).toContain('165.snapshot.json');
    expect(fetcher.requests).toContain('14.targets.json');
    const stored = store.docs.get(NS)!;
    expect([...stored.keys()].sort()).toEqual(['root', 'snapshot', 'targets', 'timestamp']);
    expect(stored.get('root')!.version).toBe(15);
  });

  it('finds trusted_root.json, whose bytes on disk match the signed length and hashes', async () => {
    const { u } = updater(INSIDE);
    await u.refresh();
    const found = await u.findTarget('trusted_root.json');
    expect(found).toBeDefined();
    expect(found!.role).toBe('targets');
    expect(found!.target.length).toBe(6787);
    const sha256 = found!.target.hashes.get('sha256')!.toString('hex');
    expect(sha256).toBe('6494e21ea73fa7ee769f85f57d5a3e6a08725eae1e38c755fc3517c9e6bc0b66');
    // consistent_snapshot: the target is served as <sha256>.<name>
    const bytes = readFileSync(join(REPO, 'targets', `${sha256}.trusted_root.json`));
    expect(() => checkLengthAndHashes(bytes, found!.target.length, found!.target.hashes, 'trusted_root.json')).not.toThrow();
    // and a tampered copy is refused
    const tampered = Buffer.from(bytes);
    tampered[100] = tampered[100]! ^ 1;
    expect(() => checkLengthAndHashes(tampered, found!.target.length, found!.target.hashes, 'trusted_root.json')).toThrow(TrustError);
    // the validity of the decision is bounded by the earliest expiry on the chain (timestamp v762)
    expect(found!.validUntil.toISOString()).toBe('2026-08-28T19:25:56.000Z');
  });

  it('signing_config.v0.2.json matches too', async () => {
    const { u } = updater(INSIDE);
    await u.refresh();
    const found = await u.findTarget('signing_config.v0.2.json');
    expect(found).toBeDefined();
    const sha256 = found!.target.hashes.get('sha256')!.toString('hex');
    const bytes = readFileSync(join(REPO, 'targets', `${sha256}.signing_config.v0.2.json`));
    checkLengthAndHashes(bytes, found!.target.length, found!.target.hashes, 'signing_config.v0.2.json');
  });

  it('the registry.npmjs.org delegation is walked for its paths (terminating) and loads version 8', async () => {
    const { u, fetcher } = updater(INSIDE);
    await u.refresh();
    const found = await u.findTarget('registry.npmjs.org/no-such-key.json');
    expect(found).toBeUndefined();
    expect(fetcher.requests).toContain('8.registry.npmjs.org.json');
    const all = await u.listAll();
    expect(all.map((r) => r.role)).toEqual(['targets', 'registry.npmjs.org']);
    const npm = all[1]!;
    expect([...npm.targets.keys()].length).toBeGreaterThan(0);
    for (const name of npm.targets.keys()) expect(name.startsWith('registry.npmjs.org/')).toBe(true);
    const first = [...npm.targets.keys()][0]!;
    expect((await u.findTarget(first))?.role).toBe('registry.npmjs.org');
  });

  it('a second refresh from the store fetches only the next root and the timestamp', async () => {
    const store = new MemoryMetadataStore();
    await updater(INSIDE, store).u.refresh();
    const before = store.snapshot(NS);
    const { u, fetcher } = updater(INSIDE, store);
    await u.refresh();
    expect(fetcher.requests).toEqual(['16.root.json', 'timestamp.json']);
    expect(store.snapshot(NS)).toBe(before);
  });

  it(`at the real clock (after ${ROOT_V15_EXPIRES}) the same refresh fails EXPIRED`, async () => {
    const now = new Date(Math.max(systemClock().getTime(), Date.parse(ROOT_V15_EXPIRES) + 1000));
    const { u } = updater(now);
    const err = await u.refresh().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TrustError);
    expect((err as TrustError).reason).toBe('EXPIRED');
  });

  it('just after the timestamp expires (2026-08-28T19:25:56Z) the refresh fails EXPIRED on the timestamp', async () => {
    const { u } = updater('2026-08-29T00:00:00Z');
    const err = await u.refresh().catch((e: unknown) => e);
    expect((err as TrustError).reason).toBe('EXPIRED');
    expect((err as TrustError).role).toBe('timestamp');
  });
});

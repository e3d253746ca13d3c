// The attacks TUF exists to stop, run against the updater for both dialects with repositories signed
// in-process (test/fixtures/repo-builder.ts). Each test makes its attack the only thing wrong with what the
// server offers (everything else is validly signed by the right keys, unexpired and consistent), asserts the
// specific TrustError reason, and checks that the refused document changed nothing in the store.
//
// Store checks: `store.snapshot(ns)` is compared whole where the attacked document is the first thing the refresh
// would accept. Where the attack sits below honest, newer metadata (a new timestamp pointing at a rolled-back
// snapshot, say), the honest part is accepted and committed, as the spec requires (a verified newer timestamp
// raises the rollback floor); those roles are named and excluded, and everything else must be unchanged.
import { createHash } from 'node:crypto';
import { beforeAll, describe, expect, it } from 'vitest';
import { TrustError, type TrustReason } from '../../trust/errors.js';
import type { JsonObject } from '../../trust/json.js';
import { defaultTrustLimits, type TrustLimits } from '../../trust/limits.js';
import { checkLengthAndHashes } from '../../trust/metadata.js';
import { Updater } from '../../trust/updater.js';
import { MemoryMetadataStore } from '../fixtures/memory-store.js';
import { RepoBuilder, warmKeyPool, type KeyType, type RepoBuilderOptions } from '../fixtures/repo-builder.js';

const START = new Date('2030-01-01T00:00:00Z');
const MINUTE = 60_000;
const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;
const NS = 'repo';

type Dialect = 'notary' | 'tuf';

beforeAll(() => {
  warmKeyPool('ec', 12);
  warmKeyPool('ed25519', 12);
});

interface Setup {
  b: RepoBuilder;
  store: MemoryMetadataStore;
  /** The delegated role of the standard repository ("targets/releases" / "releases"). */
  rel: string;
  /** The client that did the good refresh. */
  u: Updater;
  /** A new client on the same store (a restart). */
  fresh(limits?: Partial<TrustLimits>): Updater;
}

interface SetupOptions extends Partial<Pick<RepoBuilderOptions, 'keyType' | 'metaHashes'>> {
  /** Changes to the repository before its first publication. */
  configure?: (b: RepoBuilder, rel: string) => void;
  /** Extra publications after the first (so older versions exist to roll back to). */
  republish?: number;
  limits?: Partial<TrustLimits>;
}

/**
 * The standard repository: `app.txt` in targets, a delegation to `rel` for `releases/` with `releases/r1.txt`.
 * Published, then refreshed by a client that also loads the delegated role: the good state every attack starts from.
 */
async function setup(dialect: Dialect, o: SetupOptions = {}): Promise<Setup> {
  const b = new RepoBuilder({ dialect, start: START, keyType: o.keyType, metaHashes: o.metaHashes });
  const rel = dialect === 'notary' ? 'targets/releases' : 'releases';
  b.addTarget('app.txt', 'app v1');
  b.delegate('targets', rel, { paths: [dialect === 'notary' ? 'releases/' : 'releases/*'] });
  b.addTarget('releases/r1.txt', 'release 1', rel);
  o.configure?.(b, rel);
  b.publish();
  for (let i = 0; i < (o.republish ?? 0); i++) {
    b.addTarget('app.txt', `app v${i + 2}`);
    b.addTarget('releases/r1.txt', `release 1, build ${i + 2}`, rel);
    b.publish();
  }
  const store = new MemoryMetadataStore();
  const initialRoot = b.bytes('root', 1);
  const fresh = (limits: Partial<TrustLimits> = o.limits ?? {}) =>
    new Updater({ dialect, namespace: NS, gun: b.gun, store, fetcher: b.fetcher, clock: b.clock, initialRoot, limits: { ...defaultTrustLimits, ...limits } });
  const u = fresh();
  await u.refresh();
  expect((await u.findTarget('releases/r1.txt'))?.role).toBe(rel);
  b.fetcher.clearLog();
  return { b, store, rel, u, fresh };
}

/** Runs the attacked operation and checks it fails with exactly this reason (and role, when given). */
async function refused(op: Promise<unknown>, reason: TrustReason, role?: string): Promise<TrustError> {
  const e = await op.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(e, 'the attack must be refused').toBeInstanceOf(TrustError);
  const te = e as TrustError;
  const got = { reason: te.reason, ...(role === undefined ? {} : { role: te.role }) };
  expect(got, te.message).toEqual({ reason, ...(role === undefined ? {} : { role }) });
  return te;
}

interface Baseline {
  readonly full: string;
  readonly docs: Map<string, { bytes: Buffer; version: number }>;
  readonly hw: Map<string, number>;
}

function baseline(store: MemoryMetadataStore): Baseline {
  return { full: store.snapshot(NS), docs: new Map(store.docs.get(NS) ?? []), hw: new Map(store.hw.get(NS) ?? []) };
}

function view(docs: Baseline['docs'], hw: Baseline['hw'], except: readonly string[]): string {
  const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
  return JSON.stringify({
    d: [...docs].filter(([k]) => !except.includes(k)).sort().map(([k, v]) => `${k}@${v.version}:${sha(v.bytes)}`),
    h: [...hw].filter(([k]) => !except.includes(k)).sort().map(([k, v]) => `${k}=${v}`),
  });
}

/**
 * The store holds what it held before the attacked operation; `honest` names roles the same refresh legitimately
 * accepted before it reached the attacked document.
 */
function expectStoreUnchanged(store: MemoryMetadataStore, before: Baseline, honest: readonly string[] = []): void {
  if (honest.length === 0) {
    expect(store.snapshot(NS)).toBe(before.full);
    return;
  }
  expect(view(new Map(store.docs.get(NS) ?? []), new Map(store.hw.get(NS) ?? []), honest)).toBe(view(before.docs, before.hw, honest));
}

const refreshAndFind = async (u: Updater, name: string) => {
  await u.refresh();
  return u.findTarget(name);
};

const metaKey = (dialect: Dialect, role: string) => (dialect === 'notary' ? role : `${role}.json`);

describe.each<Dialect>(['notary', 'tuf'])('attacks on a %s repository', (dialect) => {
  const tuf = dialect === 'tuf';
  const notary = dialect === 'notary';
  const client = (s: Setup, restart: boolean) => (restart ? s.fresh() : s.u);

  // ------------------------------------------------------------------------------------------ rollback

  describe.each([false, true])('rollback (restart: %s)', (restart) => {
    it('rollback of root: an older root offered as the next version', async () => {
      const s = await setup(dialect, { configure: (b) => b.touch('root') });
      s.b.touch('root');
      s.b.publish(); // root v2
      await s.u.refresh();
      expect((await s.u.trusted())!.rootVersion).toBe(2);
      const before = baseline(s.store);
      s.b.serveOverride('3.root.json', s.b.bytes('root', 1));
      await refused(client(s, restart).refresh(), 'ROLLBACK', 'root');
      expectStoreUnchanged(s.store, before);
      // and the current root replayed as the next one
      s.b.serveOverride('3.root.json', s.b.bytes('root', 2));
      await refused(client(s, restart).refresh(), 'ROLLBACK', 'root');
      expectStoreUnchanged(s.store, before);
    });

    it('rollback of timestamp: an older, validly signed, unexpired timestamp', async () => {
      const s = await setup(dialect, { republish: 1 });
      const before = baseline(s.store);
      expect(s.b.version('timestamp')).toBe(2);
      s.b.serveOverride('timestamp.json', s.b.bytes('timestamp', 1));
      await refused(client(s, restart).refresh(), 'ROLLBACK', 'timestamp');
      expectStoreUnchanged(s.store, before);
    });

    it('rollback of snapshot: a new timestamp naming an older snapshot', async () => {
      const s = await setup(dialect, { republish: 1 });
      const before = baseline(s.store);
      const old = s.b.version('snapshot') - 1;
      s.b.resign('timestamp', (t) => {
        t['version'] = s.b.version('timestamp') + 1;
        t['meta'] = { [metaKey(dialect, 'snapshot')]: s.b.metaEntry(s.b.bytes('snapshot', old), old) };
      }, { publish: true });
      // TUF names snapshot versions in the timestamp, so the timestamp itself is refused; Notary names bytes only,
      // so the snapshot is refused by its version against the high-water mark.
      await refused(client(s, restart).refresh(), 'ROLLBACK', tuf ? 'timestamp' : 'snapshot');
      expectStoreUnchanged(s.store, before, tuf ? [] : ['timestamp']);
    });

    it('rollback of targets: a new snapshot naming older targets', async () => {
      const s = await setup(dialect, { republish: 1 });
      const before = baseline(s.store);
      const old = s.b.version('targets') - 1;
      s.b.resign('snapshot', (sn) => {
        sn['version'] = s.b.version('snapshot') + 1;
        (sn['meta'] as JsonObject)[metaKey(dialect, 'targets')] = s.b.metaEntry(s.b.bytes('targets', old), old);
      }, { publish: true });
      await refused(client(s, restart).refresh(), 'ROLLBACK', tuf ? 'snapshot' : 'targets');
      expectStoreUnchanged(s.store, before, tuf ? ['timestamp'] : ['timestamp', 'snapshot']);
    });

    it('rollback of a delegated role: a new snapshot naming an older delegated role', async () => {
      const s = await setup(dialect, { republish: 1 });
      const old = s.b.version(s.rel) - 1;
      s.b.resign('snapshot', (sn) => {
        sn['version'] = s.b.version('snapshot') + 1;
        (sn['meta'] as JsonObject)[metaKey(dialect, s.rel)] = s.b.metaEntry(s.b.bytes(s.rel, old), old);
      }, { publish: true });
      const u = client(s, restart);
      if (tuf) {
        // the snapshot may not list a role at a lower version than the trusted snapshot did
        const before = baseline(s.store);
        await refused(u.refresh(), 'ROLLBACK', 'snapshot');
        expectStoreUnchanged(s.store, before, ['timestamp']);
      } else {
        // Notary snapshots carry no versions: the delegated role is refused when it is loaded
        await u.refresh();
        const before = baseline(s.store);
        await refused(u.findTarget('releases/r1.txt'), 'ROLLBACK', s.rel);
        expectStoreUnchanged(s.store, before);
      }
    });

    it('replayed old timestamp: the first timestamp after several newer ones, and a fork of the current version', async () => {
      const s = await setup(dialect, { republish: 3 });
      const before = baseline(s.store);
      s.b.serveOverride('timestamp.json', s.b.bytes('timestamp', 1));
      await refused(client(s, restart).refresh(), 'ROLLBACK', 'timestamp');
      expectStoreUnchanged(s.store, before);
      // same version, different bytes (a replay of another branch, or an equivocating server)
      s.b.serveOverride('timestamp.json', s.b.resign('timestamp', (t) => { t['expires'] = s.b.time(2 * HOUR); }));
      await refused(client(s, restart).refresh(), 'ROLLBACK', 'timestamp');
      expectStoreUnchanged(s.store, before);
    });

    it('freeze: a frozen server (no new timestamp) is refused once the clock passes the timestamp expiry', async () => {
      const s = await setup(dialect);
      const before = baseline(s.store);
      s.b.advance(DAY - MINUTE);
      await client(s, restart).refresh(); // still fresh
      s.b.advance(2 * MINUTE);
      await refused(client(s, restart).refresh(), 'EXPIRED', 'timestamp');
      // and no lookup answers from the frozen state either
      await refused(client(s, restart).findTarget('app.txt'), 'EXPIRED', 'timestamp');
      expectStoreUnchanged(s.store, before);
    });

    it('expired root: the clock passes the trusted root expiry (no newer root)', async () => {
      const s = await setup(dialect, { configure: (b) => b.setExpiry('root', 2 * HOUR) });
      const before = baseline(s.store);
      s.b.advance(3 * HOUR);
      s.b.publish(); // an honest new timestamp: only the root is stale
      await refused(client(s, restart).refresh(), 'EXPIRED', 'root');
      expectStoreUnchanged(s.store, before);
    });

    it('expired snapshot: the clock passes the snapshot expiry (the timestamp is still fresh)', async () => {
      const s = await setup(dialect, { configure: (b) => { b.setExpiry('snapshot', 2 * HOUR); b.setExpiry('timestamp', 5 * HOUR); } });
      const before = baseline(s.store);
      s.b.advance(3 * HOUR);
      await refused(client(s, restart).refresh(), 'EXPIRED', 'snapshot');
      expectStoreUnchanged(s.store, before);
    });

    it('expired targets: the clock passes the targets expiry', async () => {
      const s = await setup(dialect, { configure: (b) => b.setExpiry('targets', 2 * HOUR) });
      const before = baseline(s.store);
      s.b.advance(3 * HOUR);
      await refused(client(s, restart).refresh(), 'EXPIRED', 'targets');
      expectStoreUnchanged(s.store, before);
    });

    it('expired delegation: the clock passes a delegated role expiry', async () => {
      const s = await setup(dialect, { configure: (b, rel) => b.setExpiry(rel, 2 * HOUR) });
      const before = baseline(s.store);
      s.b.advance(3 * HOUR);
      const u = client(s, restart);
      await u.refresh();
      expect((await u.findTarget('app.txt'))?.role).toBe('targets'); // not under the expired role
      await refused(u.findTarget('releases/r1.txt'), 'EXPIRED', s.rel);
      expectStoreUnchanged(s.store, before);
    });
  });

  // ------------------------------------------------------------------------------------------ freeze

  it('freeze: an expired timestamp, validly signed and newer', async () => {
    const s = await setup(dialect);
    const before = baseline(s.store);
    s.b.resign('timestamp', (t) => {
      t['version'] = s.b.version('timestamp') + 1;
      t['expires'] = s.b.time(new Date(s.b.now.getTime() - MINUTE));
    }, { publish: true });
    await refused(s.u.refresh(), 'EXPIRED', 'timestamp');
    expectStoreUnchanged(s.store, before);
  });

  it('freeze: an expired snapshot behind a fresh timestamp', async () => {
    const s = await setup(dialect);
    const before = baseline(s.store);
    s.b.resign('snapshot', (sn) => {
      sn['version'] = s.b.version('snapshot') + 1;
      sn['expires'] = s.b.time(new Date(s.b.now.getTime() - MINUTE));
    }, { publish: true });
    await refused(s.u.refresh(), 'EXPIRED', 'snapshot');
    expectStoreUnchanged(s.store, before, ['timestamp']);
  });

  it('freeze: an expired targets role behind a fresh snapshot', async () => {
    const s = await setup(dialect);
    const before = baseline(s.store);
    s.b.resign('targets', (t) => {
      t['version'] = s.b.version('targets') + 1;
      t['expires'] = s.b.time(new Date(s.b.now.getTime() - MINUTE));
    }, { publish: true });
    await refused(s.u.refresh(), 'EXPIRED', 'targets');
    expectStoreUnchanged(s.store, before, ['timestamp', 'snapshot']);
  });

  it('expired root: a new root that is already expired stops the refresh', async () => {
    const s = await setup(dialect);
    s.b.setExpiry('root', new Date(s.b.now.getTime() - MINUTE));
    s.b.publish();
    const before = baseline(s.store);
    await refused(s.u.refresh(), 'EXPIRED', 'root');
    // the new root is validly chained and kept (spec 5.3.10 refuses to go on, not to remember it); nothing else moved
    expectStoreUnchanged(s.store, before, ['root']);
  });

  // ------------------------------------------------------------------------------------------ mix and match

  it('mix-and-match: the snapshot the timestamp names is replaced by another version', async () => {
    const s = await setup(dialect);
    const oldSnap = s.b.bytes('snapshot');
    s.b.addTarget('new.txt');
    s.b.publish();
    const before = baseline(s.store);
    s.b.serveOverride(s.b.fetchName('snapshot'), oldSnap);
    await refused(s.u.refresh(), 'MIX_AND_MATCH', 'snapshot');
    expectStoreUnchanged(s.store, before, ['timestamp']);
  });

  it('mix-and-match: a snapshot of the right version but other bytes (hashes in the timestamp)', async () => {
    const s = await setup(dialect, { metaHashes: true });
    s.b.addTarget('new.txt');
    s.b.publish();
    const before = baseline(s.store);
    // validly signed by the snapshot key, same version, but not the bytes the timestamp hashes
    const other = s.b.resign('snapshot', (sn) => { sn['expires'] = s.b.time(5 * DAY); });
    s.b.serveOverride(s.b.fetchName('snapshot'), other);
    await refused(s.u.refresh(), 'MIX_AND_MATCH', 'snapshot');
    expectStoreUnchanged(s.store, before, ['timestamp']);
  });

  it('mix-and-match: the targets the snapshot names are replaced by another version', async () => {
    const s = await setup(dialect);
    const oldTargets = s.b.bytes('targets');
    s.b.addTarget('new.txt');
    s.b.publish();
    const before = baseline(s.store);
    s.b.serveOverride(s.b.fetchName('targets'), oldTargets);
    await refused(s.u.refresh(), 'MIX_AND_MATCH', 'targets');
    expectStoreUnchanged(s.store, before, ['timestamp', 'snapshot']);
  });

  // ------------------------------------------------------------------------------------------ arbitrary software

  it('arbitrary software: target bytes that do not match the signed hashes or length', async () => {
    const s = await setup(dialect);
    for (const [name, role] of [['app.txt', 'targets'], ['releases/r1.txt', s.rel]] as const) {
      const found = await s.u.findTarget(name);
      expect(found?.role).toBe(role);
      const good = s.b.targetBytes(name, role);
      checkLengthAndHashes(good, found!.target.length, found!.target.hashes, name);
      const flipped = Buffer.from(good);
      flipped[0] = flipped[0]! ^ 0x20; // same length, other content
      expect(() => checkLengthAndHashes(flipped, found!.target.length, found!.target.hashes, name)).toThrow(expect.objectContaining({ reason: 'DIGEST_MISMATCH' }));
      const shorter = good.subarray(0, good.length - 1);
      expect(() => checkLengthAndHashes(shorter, found!.target.length, found!.target.hashes, name)).toThrow(expect.objectContaining({ reason: 'DIGEST_MISMATCH' }));
    }
  });

  // ------------------------------------------------------------------------------------------ endless data

  it('endless data: an oversize timestamp (validly signed, padded past the limit)', async () => {
    const s = await setup(dialect);
    const before = baseline(s.store);
    const big = s.b.resign('timestamp', (t) => {
      t['version'] = s.b.version('timestamp') + 1;
      t['x-padding'] = 'x'.repeat(defaultTrustLimits.timestampMaxBytes);
    });
    s.b.serveOverride('timestamp.json', big);
    await refused(s.u.refresh(), 'ENDLESS_DATA', 'timestamp');
    // and a stream that never ends (the fetcher stops one byte past the limit)
    s.b.serveOverride('timestamp.json', Buffer.alloc(64 * 1024 * 1024, 0x20));
    await refused(s.u.refresh(), 'ENDLESS_DATA', 'timestamp');
    expectStoreUnchanged(s.store, before);
  });

  it('endless data: an oversize next root', async () => {
    const s = await setup(dialect);
    const before = baseline(s.store);
    const big = s.b.resign('root', (r) => {
      r['version'] = 2;
      r['x-padding'] = 'x'.repeat(defaultTrustLimits.rootMaxBytes);
    });
    s.b.serveOverride('2.root.json', big);
    await refused(s.u.refresh(), 'ENDLESS_DATA');
    expectStoreUnchanged(s.store, before);
  });

  it('endless data: a snapshot longer than the length the timestamp signs', async () => {
    const s = await setup(dialect, { metaHashes: true });
    s.b.addTarget('new.txt');
    s.b.publish();
    const before = baseline(s.store);
    const name = s.b.fetchName('snapshot');
    s.b.serveOverride(name, Buffer.concat([s.b.bytes('snapshot'), Buffer.alloc(1024 * 1024, 0x20)]));
    await refused(s.u.refresh(), 'ENDLESS_DATA', 'snapshot');
    expectStoreUnchanged(s.store, before, ['timestamp']);
  });

  it('endless data: an oversize snapshot, validly signed and named by the timestamp, beyond the snapshot limit', async () => {
    const limits = { snapshotMaxBytes: 8 * 1024 };
    const s = await setup(dialect, { limits });
    const before = baseline(s.store);
    s.b.resign('snapshot', (sn) => {
      sn['version'] = s.b.version('snapshot') + 1;
      sn['x-padding'] = 'x'.repeat(limits.snapshotMaxBytes);
    }, { publish: true });
    await refused(s.u.refresh(), 'ENDLESS_DATA', 'snapshot');
    expectStoreUnchanged(s.store, before, ['timestamp']);
  });

  it('endless data: oversize targets and delegated metadata beyond the targets limit', async () => {
    const limits = { targetsMaxBytes: 8 * 1024 };
    const s = await setup(dialect, { limits });
    let before = baseline(s.store);
    s.b.resign('targets', (t) => {
      t['version'] = s.b.version('targets') + 1;
      t['x-padding'] = 'x'.repeat(limits.targetsMaxBytes);
    }, { publish: true });
    await refused(s.u.refresh(), 'ENDLESS_DATA', 'targets');
    expectStoreUnchanged(s.store, before, ['timestamp', 'snapshot']);

    const s2 = await setup(dialect, { limits });
    s2.b.resign(s2.rel, (t) => {
      t['version'] = s2.b.version(s2.rel) + 1;
      t['x-padding'] = 'x'.repeat(limits.targetsMaxBytes);
    }, { publish: true });
    await s2.u.refresh();
    before = baseline(s2.store);
    await refused(s2.u.findTarget('releases/r1.txt'), 'ENDLESS_DATA', s2.rel);
    expectStoreUnchanged(s2.store, before);
  });

  it('endless data: oversize target bytes fail the signed length before any hashing matters', async () => {
    const s = await setup(dialect);
    const found = (await s.u.findTarget('app.txt'))!;
    const good = s.b.targetBytes('app.txt');
    // a downloader reads at most length + 1 bytes; whatever arrives beyond the length is refused
    const endless = Buffer.concat([good, Buffer.alloc(found.target.length + 1)]).subarray(0, found.target.length + 1);
    expect(() => checkLengthAndHashes(endless, found.target.length, found.target.hashes, 'app.txt')).toThrow(
      expect.objectContaining({ reason: 'DIGEST_MISMATCH', message: expect.stringMatching(/bytes, but trusted metadata says/) }),
    );
  });

  // ------------------------------------------------------------------------------------------ wrong type

  it('wrong _type: a timestamp served as the snapshot (with the hashes the timestamp signs)', async () => {
    const s = await setup(dialect);
    const before = baseline(s.store);
    const decoy = s.b.bytes('timestamp');
    const v = s.b.version('snapshot') + 1;
    s.b.resign('timestamp', (t) => {
      t['version'] = s.b.version('timestamp') + 1;
      t['meta'] = { [metaKey(dialect, 'snapshot')]: s.b.metaEntry(decoy, v) };
    }, { publish: true });
    s.b.serveOverride(s.b.fetchName('snapshot', { version: v, bytes: decoy }), decoy);
    await refused(s.u.refresh(), 'WRONG_TYPE', 'snapshot');
    expectStoreUnchanged(s.store, before, ['timestamp']);
  });

  it('wrong _type: a root served as the timestamp', async () => {
    const s = await setup(dialect);
    const before = baseline(s.store);
    s.b.serveOverride('timestamp.json', s.b.bytes('root'));
    await refused(s.u.refresh(), 'WRONG_TYPE', 'timestamp');
    expectStoreUnchanged(s.store, before);
  });

  // ------------------------------------------------------------------------------------------ thresholds

  const twoTimestampKeys = (b: RepoBuilder) => {
    b.addKey('timestamp');
    b.setThreshold('timestamp', 2);
  };

  it('duplicate signatures: one key signing twice does not make a threshold of two', async () => {
    const s = await setup(dialect, { configure: twoTimestampKeys });
    const before = baseline(s.store);
    const [k1] = s.b.keys('timestamp');
    s.b.resign('timestamp', (t) => { t['version'] = s.b.version('timestamp') + 1; }, { keys: [k1!, k1!], publish: true });
    await refused(s.u.refresh(), 'THRESHOLD', 'timestamp');
    expectStoreUnchanged(s.store, before);
  });

  it('duplicate signatures: one key signing twice is refused even where one signature would do', async () => {
    const s = await setup(dialect);
    const before = baseline(s.store);
    const [k1] = s.b.keys('timestamp');
    s.b.resign('timestamp', (t) => { t['version'] = s.b.version('timestamp') + 1; }, { keys: [k1!, k1!], publish: true });
    await refused(s.u.refresh(), 'THRESHOLD', 'timestamp');
    expectStoreUnchanged(s.store, before);
  });

  it.runIf(tuf)('duplicate keys: one key listed under two key IDs in a root with threshold 2 counts once', async () => {
    const s = await setup(dialect);
    const before = baseline(s.store);
    const [k] = s.b.keys('root');
    const aliasId = createHash('sha256').update('the same key, another name').digest('hex');
    const alias = s.b.aliasKey(k!, aliasId);
    const bytes = s.b.resign('root', (r) => {
      r['version'] = 2;
      (r['keys'] as JsonObject)[aliasId] = (r['keys'] as JsonObject)[k!.id]!;
      (r['roles'] as JsonObject)['root'] = { keyids: [k!.id, aliasId], threshold: 2 };
    }, { keys: [k!, alias] });
    s.b.serveOverride('2.root.json', bytes);
    await refused(s.u.refresh(), 'THRESHOLD', 'root');
    expectStoreUnchanged(s.store, before);
  });

  it('threshold not met: one of two required timestamp signatures', async () => {
    const s = await setup(dialect, { configure: twoTimestampKeys });
    const before = baseline(s.store);
    const [k1] = s.b.keys('timestamp');
    s.b.resign('timestamp', (t) => { t['version'] = s.b.version('timestamp') + 1; }, { keys: [k1!], publish: true });
    await refused(s.u.refresh(), 'THRESHOLD', 'timestamp');
    expectStoreUnchanged(s.store, before);
  });

  it('threshold not met: signed by a key the role does not list', async () => {
    const s = await setup(dialect);
    const before = baseline(s.store);
    s.b.resign('timestamp', (t) => { t['version'] = s.b.version('timestamp') + 1; }, { keys: [s.b.keys('snapshot')[0]!], publish: true });
    await refused(s.u.refresh(), 'THRESHOLD', 'timestamp');
    s.b.resign('timestamp', (t) => { t['version'] = s.b.version('timestamp') + 1; }, { keys: [s.b.newKey()], publish: true });
    await refused(s.u.refresh(), 'THRESHOLD', 'timestamp');
    expectStoreUnchanged(s.store, before);
  });

  it('threshold not met: a signature that does not cover the content (edited after signing)', async () => {
    const s = await setup(dialect);
    const before = baseline(s.store);
    const signed = JSON.parse(s.b.resign('timestamp', (t) => { t['version'] = s.b.version('timestamp') + 1; }).toString()) as { signed: JsonObject };
    signed.signed['expires'] = s.b.time(30 * DAY);
    s.b.serveOverride('timestamp.json', Buffer.from(JSON.stringify(signed)));
    await refused(s.u.refresh(), 'THRESHOLD', 'timestamp');
    expectStoreUnchanged(s.store, before);
  });

  // ------------------------------------------------------------------------------------------ root rotation

  it('root rotation where the new keys do not sign the new root', async () => {
    const s = await setup(dialect);
    const before = baseline(s.store);
    s.b.rotateKeys('root');
    s.b.publish({ rootSigners: 'old' });
    await refused(s.u.refresh(), 'THRESHOLD', 'root');
    expectStoreUnchanged(s.store, before);
  });

  it('root rotation where the old keys do not sign the new root', async () => {
    const s = await setup(dialect);
    const before = baseline(s.store);
    s.b.rotateKeys('root');
    s.b.publish({ rootSigners: 'new' });
    await refused(s.u.refresh(), 'THRESHOLD', 'root');
    expectStoreUnchanged(s.store, before);
  });

  it('root rotation signed by only one of two required old keys', async () => {
    const s = await setup(dialect, { configure: (b) => { b.addKey('root', { type: b.keys('root')[0]!.type }); b.setThreshold('root', 2); } });
    const before = baseline(s.store);
    const [old1] = s.b.keys('root');
    const fresh = s.b.rotateKeys('root');
    s.b.setThreshold('root', 1);
    s.b.publish({ rootSigners: [old1!, ...fresh] });
    await refused(s.u.refresh(), 'THRESHOLD', 'root');
    expectStoreUnchanged(s.store, before);
  });

  // ------------------------------------------------------------------------------------------ delegations

  it('delegation outside its paths: a delegated role cannot speak for targets its delegation does not cover', async () => {
    const s = await setup(dialect, {
      configure: (b, rel) => {
        b.addTarget('other/evil.txt', 'evil', rel);
        b.addTarget('releases-evil.txt', 'evil', rel); // a prefix of the path, but not under it (TUF); Notary prefixes are literal
      },
    });
    expect(await s.u.findTarget('other/evil.txt')).toBeUndefined();
    const all = await s.u.listAll();
    const relTargets = [...all.find((r) => r.role === s.rel)!.targets.keys()].sort();
    expect(relTargets).toEqual(['releases/r1.txt']);
    expect(all.flatMap((r) => [...r.targets.keys()])).not.toContain('other/evil.txt');
    expect(await s.u.findTarget('releases-evil.txt')).toBeUndefined();
  });

  it.runIf(notary)('key ID mismatch: a root key listed under an ID that is not the sha256 of the key', async () => {
    const s = await setup(dialect);
    const before = baseline(s.store);
    const [k] = s.b.keys('root');
    const wrongId = createHash('sha256').update('not this key').digest('hex');
    const bytes = s.b.resign('root', (r) => {
      r['version'] = 2;
      const keys = r['keys'] as JsonObject;
      keys[wrongId] = keys[k!.id]!;
      delete keys[k!.id];
      (r['roles'] as JsonObject)['root'] = { keyids: [wrongId], threshold: 1 };
    }, { keys: [k!, s.b.aliasKey(k!, wrongId)] });
    s.b.serveOverride('2.root.json', bytes);
    await refused(s.u.refresh(), 'KEYID_MISMATCH', 'root');
    expectStoreUnchanged(s.store, before);
  });

  it.runIf(notary)('key ID mismatch: a delegation key listed under an ID that is not the sha256 of the key', async () => {
    const s = await setup(dialect);
    const [k] = s.b.keys(s.rel);
    const wrongId = createHash('sha256').update('not this key either').digest('hex');
    s.b.resign('targets', (t) => {
      t['version'] = s.b.version('targets') + 1;
      const d = t['delegations'] as JsonObject;
      const keys = d['keys'] as JsonObject;
      keys[wrongId] = keys[k!.id]!;
      delete keys[k!.id];
      (d['roles'] as JsonObject[])[0]!['keyids'] = [wrongId];
    }, { publish: true });
    s.b.resign(s.rel, (t) => { t['version'] = s.b.version(s.rel) + 1; }, { keys: [s.b.aliasKey(k!, wrongId)], publish: true });
    await s.u.refresh();
    const before = baseline(s.store);
    await refused(s.u.findTarget('releases/r1.txt'), 'KEYID_MISMATCH', s.rel);
    expectStoreUnchanged(s.store, before);
  });

  it.runIf(tuf)('key IDs are taken as given in TUF 1.0 (no recomputation)', async () => {
    const s = await setup(dialect);
    const [k] = s.b.keys('root');
    const otherId = createHash('sha256').update('an ID chosen by the repository').digest('hex');
    const bytes = s.b.resign('root', (r) => {
      r['version'] = 2;
      const keys = r['keys'] as JsonObject;
      keys[otherId] = keys[k!.id]!;
      delete keys[k!.id];
      (r['roles'] as JsonObject)['root'] = { keyids: [otherId], threshold: 1 };
    }, { keys: [k!, s.b.aliasKey(k!, otherId)] });
    s.b.serveOverride('2.root.json', bytes);
    expect((await s.u.refresh()).rootVersion).toBe(2);
  });

  it.runIf(tuf)('key ID reuse: a new root that maps an existing key ID to another key retires the old key', async () => {
    const s = await setup(dialect);
    const [oldKey] = s.b.keys('timestamp');
    const newKey = s.b.newKey();
    s.b.serveOverride('2.root.json', s.b.resign('root', (r) => {
      r['version'] = 2;
      (r['keys'] as JsonObject)[oldKey!.id] = newKey.json; // same ID, other key
    }));
    const next = s.b.version('timestamp') + 1;
    // signed by the retired key under its old ID: refused, and nothing of it is stored
    s.b.serveOverride('timestamp.json', s.b.resign('timestamp', (t) => { t['version'] = next; }, { keys: [oldKey!] }));
    await refused(s.u.refresh(), 'THRESHOLD', 'timestamp');
    // (root v2 is accepted; its timestamp key changed, so the old timestamp is forgotten: fast-forward recovery)
    expect(s.store.docs.get(NS)?.get('root')?.version).toBe(2);
    expect(s.store.docs.get(NS)?.has('timestamp')).toBe(false);
    // signed by the new key under the reused ID: accepted, also by a restarted client
    s.b.serveOverride('timestamp.json', s.b.resign('timestamp', (t) => { t['version'] = next; }, { keys: [s.b.aliasKey(newKey, oldKey!.id)] }));
    expect((await s.u.refresh()).timestamp?.env.version).toBe(next);
    expect((await s.fresh().refresh()).timestamp?.env.version).toBe(next);
  });

  it('deep delegation chain: deeper than the limit is refused, without hanging', async () => {
    const names: string[] = [];
    const s = await setup(dialect, {
      configure: (b) => {
        let parent = 'targets';
        for (let i = 1; i <= 12; i++) {
          const name = notary ? `${parent}/d${i}` : `d${i}`;
          b.delegate(parent, name, { paths: [notary ? 'deep' : 'deep*'] });
          names.push(name);
          parent = name;
        }
        b.addTarget('deep-3.txt', 'three', names[2]);
        b.addTarget('deep-12.txt', 'twelve', names[11]);
      },
    });
    expect((await s.u.findTarget('deep-3.txt'))?.path).toEqual(['targets', ...names.slice(0, 3)]);
    const t0 = Date.now();
    const e = await refused(s.u.findTarget('deep-12.txt'), 'DELEGATION');
    expect(e.message).toMatch(/deeper than 8/);
    expect(Date.now() - t0).toBeLessThan(5000);
    await refused(s.u.listAll(), 'DELEGATION');
    // roles past the limit were never fetched
    const tooDeep = names.slice(8).map((r) => s.b.fetchName(r));
    expect(s.b.fetcher.requests.filter((r) => tooDeep.includes(r))).toEqual([]);
    expect(s.b.fetcher.requests).toContain(s.b.fetchName(names[7]!));
  });

  it.runIf(tuf)('cyclic delegation graph: a -> b -> a (and a -> a) terminates', async () => {
    const s = await setup(dialect, {
      configure: (b) => {
        b.delegate('targets', 'a', { paths: ['cyc/*'] });
        b.delegate('a', 'b', { paths: ['cyc/*'] });
        b.delegate('b', 'a', { paths: ['cyc/*'] });
        b.delegate('a', 'a', { paths: ['cyc/*'] });
        b.addTarget('cyc/in-b.txt', 'b', 'b');
      },
    });
    expect(await s.u.findTarget('cyc/missing.txt')).toBeUndefined();
    expect((await s.u.findTarget('cyc/in-b.txt'))?.path).toEqual(['targets', 'a', 'b']);
    const roles = (await s.u.listAll()).map((r) => r.role);
    expect(roles).toEqual(['targets', 'releases', 'a', 'b']);
    const fetchedA = s.b.fetcher.requests.filter((r) => r === s.b.fetchName('a'));
    expect(fetchedA).toHaveLength(1);
  });

  it('wide delegation graph: more delegated roles than the visit limit is refused', async () => {
    const s = await setup(dialect, {
      configure: (b) => {
        for (let i = 0; i < defaultTrustLimits.maxDelegations + 4; i++) b.delegate('targets', notary ? `targets/w${i}` : `w${i}`, { paths: [notary ? 'wide/' : 'wide/*'] });
      },
    });
    await refused(s.u.findTarget('wide/missing.txt'), 'DELEGATION');
  });

  // ------------------------------------------------------------------------------------------ fast-forward recovery

  it('fast-forward recovery: after the timestamp key rotates, a lower timestamp version signed by the new key is accepted', async () => {
    const s = await setup(dialect, { republish: 3 });
    expect(s.b.version('timestamp')).toBe(4);
    s.b.rotateKeys('timestamp');
    s.b.setVersion('timestamp', 1);
    s.b.addTarget('after-rotation.txt');
    s.b.publish();
    const set = await s.u.refresh();
    expect(set.rootVersion).toBe(2);
    expect(set.timestamp?.env.version).toBe(1);
    expect(s.store.hw.get(NS)?.get('timestamp')).toBe(1);
    expect((await s.u.findTarget('after-rotation.txt'))?.role).toBe('targets');
    // and after a restart the new, lower floor holds
    await s.fresh().refresh();
    s.b.serveOverride('timestamp.json', s.b.bytes('timestamp', 4)); // the old key's timestamp is no longer valid
    await refused(s.fresh().refresh(), 'THRESHOLD', 'timestamp');
  });

  it('fast-forward recovery: after the snapshot key rotates, lower snapshot and timestamp versions are accepted', async () => {
    const s = await setup(dialect, { republish: 2 });
    s.b.rotateKeys('snapshot');
    s.b.setVersion('snapshot', 1);
    s.b.setVersion('timestamp', 1);
    s.b.publish();
    const set = await s.u.refresh();
    expect(set.snapshot?.env.version).toBe(1);
    expect(set.timestamp?.env.version).toBe(1);
  });

  it('without a key rotation a lower timestamp version stays a rollback', async () => {
    const s = await setup(dialect, { republish: 2 });
    const before = baseline(s.store);
    s.b.setVersion('timestamp', 1);
    s.b.touch('root');
    s.b.publish();
    await refused(s.u.refresh(), 'ROLLBACK', 'timestamp');
    expectStoreUnchanged(s.store, before, ['root']);
  });

  // ------------------------------------------------------------------------------------------ x509 (Notary)

  describe.runIf(notary)('x509 root certificates', () => {
    const validity = (from: number, to: number) => ({ notBefore: new Date(START.getTime() + from), notAfter: new Date(START.getTime() + to) });

    it('a new root whose root certificate has expired is refused (CERTIFICATE)', async () => {
      const s = await setup(dialect);
      const before = baseline(s.store);
      s.b.rotateKeys('root', { type: 'ecdsa-x509', certValidity: validity(-10 * DAY, -DAY) });
      s.b.publish();
      await refused(s.u.refresh(), 'CERTIFICATE', 'root');
      expectStoreUnchanged(s.store, before);
    });

    it('a new root whose certificate is not valid yet is refused (CERTIFICATE)', async () => {
      const s = await setup(dialect);
      const before = baseline(s.store);
      s.b.rotateKeys('root', { type: 'ecdsa-x509', certValidity: validity(DAY, 10 * DAY) });
      s.b.publish();
      await refused(s.u.refresh(), 'CERTIFICATE', 'root');
      expectStoreUnchanged(s.store, before);
    });

    it('a new root whose certificate is issued for another GUN is refused (CERTIFICATE)', async () => {
      const s = await setup(dialect);
      const before = baseline(s.store);
      s.b.rotateKeys('root', { type: 'ecdsa-x509', commonName: 'registry.example/library/other' });
      s.b.publish();
      await refused(s.u.refresh(), 'CERTIFICATE', 'root');
      expectStoreUnchanged(s.store, before);
    });

    it('trust on first use of a root whose certificate has expired is refused (CERTIFICATE)', async () => {
      const b = new RepoBuilder({ dialect, start: START, keyType: 'ecdsa-x509' });
      b.rotateKeys('root', { type: 'ecdsa-x509', certValidity: validity(-10 * DAY, -DAY) });
      b.addTarget('app.txt');
      b.publish();
      const store = new MemoryMetadataStore();
      const u = new Updater({ dialect, namespace: NS, gun: b.gun, store, fetcher: b.fetcher, clock: b.clock });
      await refused(u.refresh(), 'CERTIFICATE', 'root');
      expect(b.fetcher.requests).toEqual(['root.json']);
      expect(store.docs.size).toBe(0);
    });

    it.each([false, true])('a root whose certificate has expired can still rotate to a new root key (restart: %s)', async (restart) => {
      const s = await setup(dialect, { configure: (b) => b.rotateKeys('root', { type: 'ecdsa-x509', certValidity: validity(-DAY, 2 * DAY) }) });
      s.b.advance(3 * DAY);
      // the new root is signed by the old key (certificate expired: it still vouches, as in notary's ValidateRoot)
      // and by the new key, whose certificate must be valid
      s.b.rotateKeys('root', { type: 'ecdsa-x509', certValidity: validity(2 * DAY, 400 * DAY) });
      s.b.publish();
      const set = await client(s, restart).refresh();
      expect(set.rootVersion).toBe(2);
      expect(s.store.docs.get(NS)?.get('root')?.version).toBe(2);
    });

    it.each([false, true])('the trusted root certificate expires while the root metadata is still valid (restart: %s)', async (restart) => {
      const s = await setup(dialect, { configure: (b) => b.rotateKeys('root', { type: 'ecdsa-x509', certValidity: validity(-DAY, 2 * DAY) }) });
      const before = baseline(s.store);
      s.b.advance(3 * DAY);
      s.b.publish(); // an honest, fresh timestamp: only the root key's certificate is out of date
      await refused(client(s, restart).refresh(), 'CERTIFICATE', 'root');
      expectStoreUnchanged(s.store, before);
    });
  });

  // ------------------------------------------------------------------------------------------ positive

  it('root key rotation across several versions with changing key types', async () => {
    const types: KeyType[] = notary ? ['ecdsa-x509', 'ed25519', 'rsa', 'ecdsa', 'rsa-x509', 'ecdsa-x509'] : ['ed25519', 'ecdsa', 'rsa', 'ed25519'];
    const s = await setup(dialect, { keyType: types[0] });
    for (const [i, type] of types.slice(1).entries()) {
      s.b.rotateKeys('root', { type });
      if (i === 1) {
        // one version with two root keys and threshold 2
        s.b.addKey('root', { type });
        s.b.setThreshold('root', 2);
      }
      if (i === 2) s.b.setThreshold('root', 1);
      s.b.rotateKeys('timestamp', { type: type.replace('-x509', '') as KeyType });
      s.b.publish();
    }
    const restarted = s.fresh();
    const set = await s.u.refresh();
    expect(set.rootVersion).toBe(types.length);
    expect(s.b.fetcher.requests.filter((r) => r.endsWith('.root.json'))).toEqual(types.map((_, i) => `${i + 2}.root.json`));
    expect((await s.u.findTarget('releases/r1.txt'))?.role).toBe(s.rel);
    // a client that starts over from root v1 walks the same chain
    const store2 = new MemoryMetadataStore();
    const u2 = new Updater({ dialect, namespace: NS, gun: s.b.gun, store: store2, fetcher: s.b.fetcher, clock: s.b.clock, initialRoot: s.b.bytes('root', 1) });
    expect((await u2.refresh()).rootVersion).toBe(types.length);
    for (const role of ['root', 'timestamp', 'snapshot', 'targets']) {
      expect(store2.docs.get(NS)?.get(role)?.bytes.equals(s.store.docs.get(NS)!.get(role)!.bytes)).toBe(true);
    }
    expect((await restarted.refresh()).rootVersion).toBe(types.length);
  });

  it('incremental refresh: nothing new fetches only the next root and the timestamp', async () => {
    const s = await setup(dialect);
    const before = baseline(s.store);
    await s.u.refresh();
    expect(s.b.fetcher.requests).toEqual(['2.root.json', 'timestamp.json']);
    expectStoreUnchanged(s.store, before);
    // after a restart too: everything else comes from the store
    s.b.fetcher.clearLog();
    await s.fresh().refresh();
    expect(s.b.fetcher.requests).toEqual(['2.root.json', 'timestamp.json']);
    // a new timestamp over the same snapshot: only the timestamp changes
    s.b.fetcher.clearLog();
    s.b.publish();
    await s.u.refresh();
    expect(s.b.fetcher.requests).toEqual(['2.root.json', 'timestamp.json']);
    expect(s.store.docs.get(NS)?.get('timestamp')?.version).toBe(2);
    // a new top-level target: timestamp, snapshot and targets, not the delegated role
    s.b.fetcher.clearLog();
    s.b.addTarget('new.txt');
    s.b.publish();
    await s.u.refresh();
    expect(s.b.fetcher.requests).toEqual(['2.root.json', 'timestamp.json', s.b.fetchName('snapshot'), s.b.fetchName('targets')]);
    expect(await s.u.findTarget('releases/r1.txt')).toBeDefined();
    expect(s.b.fetcher.requests).toHaveLength(4);
  });

  it('file names: consistent snapshots fetch versioned (TUF) or hash-named (Notary) metadata', async () => {
    const s = await setup(dialect, { republish: 1 });
    const u = new Updater({ dialect, namespace: 'other', gun: s.b.gun, store: new MemoryMetadataStore(), fetcher: s.b.fetcher, clock: s.b.clock, initialRoot: s.b.bytes('root', 1) });
    await u.refresh();
    await u.findTarget('releases/r1.txt');
    const r = s.b.fetcher.requests;
    if (tuf) {
      expect(r).toEqual(['2.root.json', 'timestamp.json', '2.snapshot.json', '2.targets.json', '2.releases.json']);
    } else {
      expect(r[2]).toMatch(/^snapshot\.[0-9a-f]{64}\.json$/);
      expect(r[3]).toMatch(/^targets\.[0-9a-f]{64}\.json$/);
      expect(r[4]).toMatch(/^targets\/releases\.[0-9a-f]{64}\.json$/);
      expect(r.slice(2)).toEqual([s.b.fetchName('snapshot'), s.b.fetchName('targets'), s.b.fetchName(s.rel)]);
    }
  });

  it.runIf(tuf)('file names: without consistent_snapshot the unversioned names are fetched', async () => {
    const b = new RepoBuilder({ dialect, start: START, consistentSnapshot: false });
    b.addTarget('app.txt');
    b.delegate('targets', 'releases', { paths: ['releases/*'] });
    b.addTarget('releases/r1.txt', 'r1', 'releases');
    b.publish();
    b.publish();
    const u = new Updater({ dialect, namespace: NS, store: new MemoryMetadataStore(), fetcher: b.fetcher, clock: b.clock, initialRoot: b.bytes('root', 1) });
    await u.refresh();
    await u.findTarget('releases/r1.txt');
    expect(b.fetcher.requests).toEqual(['2.root.json', 'timestamp.json', 'snapshot.json', 'targets.json', 'releases.json']);
  });
});

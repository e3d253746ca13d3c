// The contract every MetadataStore keeps, as one suite run against each implementation.
// Documents used here are small JSON texts whose version is `signed.version`, so stores that read the version
// from the bytes (FileMetadataStore) can take `versionFromTestDocument` as their `versionOf`.

import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { MetadataStore, NamespaceChange, StoredDocument, StoredNamespace } from '../../cache/metadata-store.js';

export interface MetadataStoreCapabilities {
  /** High-water marks are kept independently of documents (set, keep, clear, outlive a removed document). */
  readonly persistsHighWater: boolean;
  /** Different namespaces hold different contents (false: one repository per store, namespace ignored). */
  readonly isolatesNamespaces: boolean;
}

export interface MetadataStoreHarness {
  /** A new store instance over the same underlying storage each time it is called (used to prove reopen). */
  open(): Promise<MetadataStore>;
  /** Removes the underlying storage. Called after every test, once the stores opened are closed. */
  cleanup(): Promise<void>;
}

/** Test documents: deliberately odd spacing, non-ASCII and a trailing newline, so byte-exactness shows. */
export function testDocument(name: string, version: number, note = ''): StoredDocument {
  const text = `{"signed" : {"_type":${JSON.stringify(name)},  "version":${version}},\n "note":${JSON.stringify(`✓ ${note}`)}}\n`;
  return { bytes: Buffer.from(text, 'utf8'), version };
}

export function versionFromTestDocument(_name: string, bytes: Buffer): number {
  const parsed = JSON.parse(bytes.toString('utf8')) as { signed?: { version?: unknown } };
  const version = parsed.signed?.version;
  if (typeof version !== 'number') throw new Error('test document without signed.version');
  return version;
}

function puts(...docs: Array<[string, StoredDocument]>): ReadonlyMap<string, StoredDocument> {
  return new Map(docs);
}

function snapshotOf(ns: StoredNamespace): { documents: Record<string, [number, string]>; highWater: Record<string, number> } {
  const documents: Record<string, [number, string]> = {};
  for (const [name, doc] of [...ns.documents].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
    documents[name] = [doc.version, doc.bytes.toString('base64')];
  }
  const highWater: Record<string, number> = {};
  for (const [name, mark] of [...ns.highWater].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) highWater[name] = mark;
  return { documents, highWater };
}

export function describeMetadataStore(
  label: string,
  makeHarness: () => Promise<MetadataStoreHarness>,
  caps: MetadataStoreCapabilities,
): void {
  describe(`MetadataStore conformance: ${label}`, () => {
    let harness: MetadataStoreHarness;
    let opened: MetadataStore[];

    async function open(): Promise<MetadataStore> {
      const store = await harness.open();
      opened.push(store);
      return store;
    }

    beforeEach(async () => {
      harness = await makeHarness();
      opened = [];
    });

    afterEach(async () => {
      for (const store of opened) await store.close();
      await harness.cleanup();
    });

    const NS = '127.0.0.1:5000/library/demo';

    it('an unknown namespace loads as empty maps and no namespace is listed', async () => {
      const store = await open();
      const ns = await store.load(NS);
      expect(ns.documents.size).toBe(0);
      expect(ns.highWater.size).toBe(0);
      expect(await store.namespaces()).toEqual([]);
    });

    it('put then load returns the exact bytes and versions', async () => {
      const store = await open();
      const root = testDocument('root', 1);
      const targets = testDocument('targets', 7, 'é\u0000\t');
      await store.commit(NS, { put: puts(['root', root], ['targets', targets]) });
      const ns = await store.load(NS);
      expect([...ns.documents.keys()].sort()).toEqual(['root', 'targets']);
      expect(ns.documents.get('root')?.version).toBe(1);
      expect(ns.documents.get('root')?.bytes.equals(root.bytes)).toBe(true);
      expect(ns.documents.get('targets')?.version).toBe(7);
      expect(ns.documents.get('targets')?.bytes.equals(targets.bytes)).toBe(true);
      expect(Buffer.isBuffer(ns.documents.get('targets')?.bytes)).toBe(true);
    });

    it('keeps delegated and hostile names apart: slashes, dot-dot, percent, unicode', async () => {
      const store = await open();
      const names = ['targets/releases', 'targets%2Freleases', '../x', '..', '.', 'a\\b', 'délégué/ü', 'x y+z'];
      const change = new Map(names.map((name, i) => [name, testDocument(name, i + 1)] as const));
      await store.commit(NS, { put: change });
      const ns = await (await open()).load(NS);
      expect([...ns.documents.keys()].sort()).toEqual([...names].sort());
      for (const [i, name] of names.entries()) {
        expect(ns.documents.get(name)?.version).toBe(i + 1);
        expect(ns.documents.get(name)?.bytes.equals(change.get(name)!.bytes)).toBe(true);
      }
    });

    it('a put replaces the previous copy', async () => {
      const store = await open();
      await store.commit(NS, { put: puts(['timestamp', testDocument('timestamp', 1)]) });
      const v2 = testDocument('timestamp', 2, 'second');
      await store.commit(NS, { put: puts(['timestamp', v2]) });
      const doc = (await store.load(NS)).documents.get('timestamp');
      expect(doc?.version).toBe(2);
      expect(doc?.bytes.equals(v2.bytes)).toBe(true);
    });

    it('remove deletes only the named documents; removing an absent one is a no-op', async () => {
      const store = await open();
      await store.commit(NS, {
        put: puts(
          ['root', testDocument('root', 1)],
          ['timestamp', testDocument('timestamp', 3)],
          ['snapshot', testDocument('snapshot', 3)],
        ),
      });
      await store.commit(NS, { remove: ['timestamp', 'snapshot', 'never-there'] });
      const ns = await store.load(NS);
      expect([...ns.documents.keys()]).toEqual(['root']);
    });

    it('refuses a change that both puts and removes the same name', async () => {
      const store = await open();
      await expect(
        store.commit(NS, { put: puts(['root', testDocument('root', 1)]), remove: ['root'] }),
      ).rejects.toThrow();
      expect((await store.load(NS)).documents.size).toBe(0);
    });

    if (caps.persistsHighWater) {
      it('high water: set, kept when unlisted, cleared by null, independent of documents', async () => {
        const store = await open();
        await store.commit(NS, {
          put: puts(['timestamp', testDocument('timestamp', 5)]),
          highWater: new Map([
            ['timestamp', 5],
            ['snapshot', 9],
          ]),
        });
        let ns = await store.load(NS);
        expect(Object.fromEntries(ns.highWater)).toEqual({ timestamp: 5, snapshot: 9 });

        // unlisted names keep their marks; the mark outlives the document
        await store.commit(NS, { remove: ['timestamp'], highWater: new Map([['targets', 0]]) });
        ns = await store.load(NS);
        expect(ns.documents.size).toBe(0);
        expect(Object.fromEntries(ns.highWater)).toEqual({ timestamp: 5, snapshot: 9, targets: 0 });

        // null clears; the store does not enforce monotonicity (the trust core decides)
        await store.commit(NS, {
          highWater: new Map<string, number | null>([
            ['snapshot', null],
            ['timestamp', 2],
            ['absent', null],
          ]),
        });
        ns = await store.load(NS);
        expect(Object.fromEntries(ns.highWater)).toEqual({ timestamp: 2, targets: 0 });
      });

      it('accepts the largest safe integer as a version and a mark', async () => {
        const store = await open();
        const max = Number.MAX_SAFE_INTEGER;
        await store.commit(NS, {
          put: puts(['root', testDocument('root', max)]),
          highWater: new Map([['root', max]]),
        });
        const ns = await (await open()).load(NS);
        expect(ns.documents.get('root')?.version).toBe(max);
        expect(ns.highWater.get('root')).toBe(max);
      });
    } else {
      it('high water is the version of the document present (no separate memory)', async () => {
        const store = await open();
        await store.commit(NS, {
          put: puts(['timestamp', testDocument('timestamp', 5)], ['root', testDocument('root', 2)]),
          highWater: new Map([
            ['timestamp', 5],
            ['snapshot', 9],
          ]),
        });
        let ns = await store.load(NS);
        expect(Object.fromEntries(ns.highWater)).toEqual({ timestamp: 5, root: 2 });
        await store.commit(NS, { remove: ['timestamp'], highWater: new Map([['root', null]]) });
        ns = await store.load(NS);
        expect(Object.fromEntries(ns.highWater)).toEqual({ root: 2 });
      });
    }

    if (caps.isolatesNamespaces) {
      it('namespaces are isolated, including one that is a prefix of another', async () => {
        const store = await open();
        const other = '127.0.0.1:5000/library/demo2';
        const prefix = '127.0.0.1:5000/library';
        await store.commit(NS, { put: puts(['root', testDocument('root', 1)]), highWater: new Map([['root', 1]]) });
        await store.commit(other, { put: puts(['root', testDocument('root', 2)]), highWater: new Map([['x', 4]]) });
        await store.commit(prefix, { highWater: new Map([['snapshot', 3]]) });
        const a = await store.load(NS);
        const b = await store.load(other);
        const c = await store.load(prefix);
        expect(a.documents.get('root')?.version).toBe(1);
        expect(Object.fromEntries(a.highWater)).toEqual({ root: 1 });
        expect(b.documents.get('root')?.version).toBe(2);
        expect(Object.fromEntries(b.highWater)).toEqual({ x: 4 });
        expect(c.documents.size).toBe(0);
        expect(Object.fromEntries(c.highWater)).toEqual({ snapshot: 3 });
        expect((await store.load('elsewhere')).documents.size).toBe(0);
        expect(await store.namespaces()).toEqual([prefix, NS, other].sort());

        await store.commit(other, { remove: ['root'], highWater: new Map([['x', null]]) });
        expect(await store.namespaces()).toEqual([prefix, NS].sort());
        expect((await store.load(NS)).documents.get('root')?.version).toBe(1);
      });
    } else {
      it('one repository per store: namespaces() lists one entry once something is stored', async () => {
        const store = await open();
        await store.commit(NS, { put: puts(['root', testDocument('root', 1)]) });
        const listed = await store.namespaces();
        expect(listed).toHaveLength(1);
        await store.commit(NS, { remove: ['root'] });
        expect(await store.namespaces()).toEqual([]);
      });
    }

    it('close and reopen keeps everything', async () => {
      const first = await open();
      const root = testDocument('root', 3);
      const delegated = testDocument('targets/releases', 12);
      await first.commit(NS, {
        put: puts(['root', root], ['targets/releases', delegated]),
        highWater: new Map([
          ['root', 3],
          ['targets/releases', 12],
        ]),
      });
      const before = snapshotOf(await first.load(NS));
      await first.close();
      const second = await open();
      const after = await second.load(NS);
      expect(snapshotOf(after)).toEqual(before);
      expect(after.documents.get('targets/releases')?.bytes.equals(delegated.bytes)).toBe(true);
      expect(after.highWater.get('root')).toBe(3);
    });

    it('a loaded namespace is a snapshot: later commits and mutations of returned bytes do not leak', async () => {
      const store = await open();
      const root = testDocument('root', 1);
      await store.commit(NS, { put: puts(['root', root]) });
      const loaded = await store.load(NS);
      loaded.documents.get('root')!.bytes.fill(0x20);
      await store.commit(NS, { put: puts(['timestamp', testDocument('timestamp', 1)]) });
      expect(loaded.documents.has('timestamp')).toBe(false);
      const again = await store.load(NS);
      expect(again.documents.get('root')?.bytes.equals(root.bytes)).toBe(true);
    });

    it('concurrent commits each land whole; the last one issued wins', async () => {
      const store = await open();
      const names = ['root', 'timestamp', 'snapshot', 'targets'];
      const commits: Promise<void>[] = [];
      for (let n = 1; n <= 10; n++) {
        commits.push(
          store.commit(NS, {
            put: new Map(names.map((name) => [name, testDocument(name, n)] as const)),
            highWater: new Map(names.map((name) => [name, n] as const)),
          }),
        );
      }
      await Promise.all(commits);
      const ns = await store.load(NS);
      for (const name of names) {
        expect(ns.documents.get(name)?.version).toBe(10);
        expect(ns.highWater.get(name)).toBe(10);
      }
    });

    describe('invalid input is refused and changes nothing', () => {
      const valid = (): Array<[string, StoredDocument]> => [['snapshot', testDocument('snapshot', 2)]];
      const cases: Array<[string, string, NamespaceChange]> = [
        ['NUL in a put name', NS, { put: puts(...valid(), ['bad\u0000name', testDocument('bad', 1)]) }],
        ['NUL in a removed name', NS, { put: puts(...valid()), remove: ['root\u0000'] }],
        ['NUL in a high-water name', NS, { put: puts(...valid()), highWater: new Map([['t\u0000', 1]]) }],
        ['NUL in the namespace', `${NS}\u0000x`, { put: puts(...valid()) }],
        ['an empty name', NS, { put: puts(...valid(), ['', testDocument('x', 1)]) }],
        ['an empty namespace', '', { put: puts(...valid()) }],
        ['a lone surrogate in a name', NS, { put: puts(...valid(), ['bad\uD800', testDocument('x', 1)]) }],
        ['a negative version', NS, { put: puts(...valid(), ['targets', testDocument('targets', -1)]) }],
        ['a fractional version', NS, { put: puts(...valid(), ['targets', testDocument('targets', 1.5)]) }],
        [
          'an unsafe version',
          NS,
          { put: puts(...valid(), ['targets', { ...testDocument('targets', 1), version: 2 ** 53 }]) },
        ],
        [
          'a NaN version',
          NS,
          { put: puts(...valid(), ['targets', { ...testDocument('targets', 1), version: Number.NaN }]) },
        ],
        ['a negative high water', NS, { put: puts(...valid()), highWater: new Map([['snapshot', -1]]) }],
        ['an infinite high water', NS, { put: puts(...valid()), highWater: new Map([['snapshot', Infinity]]) }],
        [
          'bytes that are not a Buffer',
          NS,
          {
            put: puts(...valid(), [
              'targets',
              { version: 1, bytes: 'not bytes' as unknown as Buffer },
            ]),
          },
        ],
      ];

      for (const [what, namespace, change] of cases) {
        it(`refuses ${what}`, async () => {
          const store = await open();
          await store.commit(NS, {
            put: puts(['root', testDocument('root', 1)], ['snapshot', testDocument('snapshot', 1)]),
            highWater: new Map([
              ['root', 1],
              ['snapshot', 1],
            ]),
          });
          const before = snapshotOf(await store.load(NS));
          await expect(store.commit(namespace, change)).rejects.toThrow();
          expect(snapshotOf(await store.load(NS))).toEqual(before);
          expect(snapshotOf(await (await open()).load(NS))).toEqual(before);
        });
      }

      it('refuses to load a namespace containing NUL', async () => {
        const store = await open();
        await expect(store.load('a\u0000b')).rejects.toThrow();
      });
    });

    it('a closed store refuses further use', async () => {
      const store = await open();
      await store.close();
      await expect(store.load(NS)).rejects.toThrow();
      await expect(store.commit(NS, { put: puts(['root', testDocument('root', 1)]) })).rejects.toThrow();
    });
  });
}

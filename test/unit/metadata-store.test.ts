import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FileMetadataStore } from '../../cache/file-metadata-store.js';
import { LmdbEnv } from '../../cache/lmdb-env.js';
import { LmdbMetadataStore } from '../../cache/lmdb-metadata-store.js';
import { describeMetadataStore, testDocument, versionFromTestDocument } from './metadata-store.conformance.js';

async function tempDir(): Promise<string> {
  return mkdtemp(join(tmpdir(), 'portcullis-mstore-'));
}

describeMetadataStore(
  'LmdbMetadataStore',
  async () => {
    const dir = await tempDir();
    return {
      open: async () => LmdbMetadataStore.open(dir),
      cleanup: () => rm(dir, { recursive: true, force: true }),
    };
  },
  { persistsHighWater: true, isolatesNamespaces: true },
);

describeMetadataStore(
  'FileMetadataStore',
  async () => {
    const dir = join(await tempDir(), 'metadata');
    return {
      open: () => FileMetadataStore.open(dir, { versionOf: versionFromTestDocument }),
      cleanup: () => rm(join(dir, '..'), { recursive: true, force: true }),
    };
  },
  { persistsHighWater: false, isolatesNamespaces: false },
);

describe('LmdbEnv and LmdbMetadataStore specifics', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await tempDir();
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('lives in <stateDir>/portcullis.lmdb and shares the env with other named databases', async () => {
    const env = LmdbEnv.open(dir);
    try {
      expect(env.path).toBe(join(dir, 'portcullis.lmdb'));
      const store = new LmdbMetadataStore(env);
      const other = env.db('decisions');
      env.transaction(() => other.putSync('k', Buffer.from('v')));
      await store.commit('g', { put: new Map([['root', testDocument('root', 1)]]) });
      await store.close(); // does not own the env
      expect(env.closed).toBe(false);
      expect(other.get('k')?.toString()).toBe('v');
      expect((await readdir(env.path)).sort()).toEqual(['data.mdb', 'lock.mdb']);
    } finally {
      await env.close();
    }
  });

  it('an env transaction is all or nothing, and refuses asynchronous callbacks', async () => {
    const env = LmdbEnv.open(dir);
    try {
      const db = env.db('scratch');
      expect(() =>
        env.transaction(() => {
          db.putSync('a', Buffer.from('1'));
          throw new Error('boom');
        }),
      ).toThrow('boom');
      expect(db.get('a')).toBeUndefined();
      expect(() => env.transaction(() => Promise.resolve(db.putSync('b', Buffer.from('2'))))).toThrow(/synchronous/);
      expect(db.get('b')).toBeUndefined();
      expect(env.transaction(() => (db.putSync('c', Buffer.from('3')), 42))).toBe(42);
      expect(db.get('c')?.toString()).toBe('3');
      expect(() => env.db('scratch', { encoding: 'json' })).toThrow(/already opened/);
    } finally {
      await env.close();
    }
  });

  it('two handles on one env (as two processes would have) see each other’s commits', async () => {
    const a = LmdbMetadataStore.open(dir);
    const b = LmdbMetadataStore.open(dir);
    try {
      await a.commit('g', { put: new Map([['root', testDocument('root', 4)]]), highWater: new Map([['root', 4]]) });
      const seen = await b.load('g');
      expect(seen.documents.get('root')?.version).toBe(4);
      expect(seen.highWater.get('root')).toBe(4);
    } finally {
      await a.close();
      await b.close();
    }
  });

  it('refuses a key longer than the documented limit without writing anything', async () => {
    const store = LmdbMetadataStore.open(dir);
    try {
      const long = 'r'.repeat(2000);
      await expect(
        store.commit('g', { put: new Map([['root', testDocument('root', 1)], [long, testDocument(long, 1)]]) }),
      ).rejects.toThrow(/too long/);
      expect((await store.load('g')).documents.size).toBe(0);
    } finally {
      await store.close();
    }
  });
});

describe('FileMetadataStore specifics (the --metadata-dir contract)', () => {
  let base: string;
  let dir: string;
  beforeEach(async () => {
    base = await tempDir();
    dir = join(base, 'metadata');
  });
  afterEach(async () => {
    await rm(base, { recursive: true, force: true });
  });

  const open = (namespace?: string) =>
    FileMetadataStore.open(dir, { versionOf: versionFromTestDocument, ...(namespace ? { namespace } : {}) });

  it('the directory holds exactly <encoded name>.json files, byte-for-byte', async () => {
    const store = await open();
    const docs = new Map([
      ['root', testDocument('root', 1)],
      ['timestamp', testDocument('timestamp', 2)],
      ['snapshot', testDocument('snapshot', 2)],
      ['targets', testDocument('targets', 3)],
      ['targets/releases', testDocument('targets/releases', 1)],
      ['../x', testDocument('../x', 1)],
    ]);
    await store.commit('repo', { put: docs });
    await store.close();
    expect((await readdir(dir)).sort()).toEqual(
      ['..%2Fx.json', 'root.json', 'snapshot.json', 'targets%2Freleases.json', 'targets.json', 'timestamp.json'].sort(),
    );
    expect((await readdir(base)).sort()).toEqual(['metadata']); // nothing escaped the directory
    for (const [name, doc] of docs) {
      expect((await readFile(join(dir, FileMetadataStore.fileNameOf(name)))).equals(doc.bytes)).toBe(true);
    }
  });

  it('loads a directory provisioned by hand (a trusted root.json) and ignores foreign files', async () => {
    await mkdir(join(dir, 'sub.json'), { recursive: true });
    const root = testDocument('root', 1);
    await writeFile(join(dir, 'root.json'), root.bytes);
    await writeFile(join(dir, 'notes.txt'), 'hello');
    await writeFile(join(dir, 'not canonical.json'), 'x'); // would be "not%20canonical.json"
    await writeFile(join(dir, 'bad%zz.json'), 'x');
    await writeFile(join(dir, '.json'), 'x');
    const store = await open();
    const ns = await store.load('anything');
    expect([...ns.documents.keys()]).toEqual(['root']);
    expect(ns.documents.get('root')?.bytes.equals(root.bytes)).toBe(true);
    expect(Object.fromEntries(ns.highWater)).toEqual({ root: 1 });
    await store.close();
  });

  it('refuses a put whose stated version disagrees with its bytes', async () => {
    const store = await open();
    await expect(
      store.commit('repo', { put: new Map([['root', { ...testDocument('root', 2), version: 3 }]]) }),
    ).rejects.toThrow(/bytes say 2/);
    expect((await store.load('repo')).documents.size).toBe(0);
    await store.close();
  });

  it('a file whose version cannot be read fails the load loudly', async () => {
    const store = await open();
    await mkdir(dir, { recursive: true });
    await writeFile(join(dir, 'timestamp.json'), '{not json');
    await expect(store.load('repo')).rejects.toThrow(/timestamp\.json/);
    await store.close();
  });

  it('stale temp files from an interrupted commit are ignored and cleaned on open', async () => {
    const first = await open();
    await first.commit('repo', { put: new Map([['root', testDocument('root', 1)]]) });
    await first.close();
    await writeFile(join(dir, '.tmp-0123abcd.partial'), testDocument('root', 9).bytes);
    const peek = new FileMetadataStore(dir, { versionOf: versionFromTestDocument });
    expect((await peek.load('repo')).documents.get('root')?.version).toBe(1);
    await peek.close();
    const second = await open();
    expect(await readdir(dir)).toEqual(['root.json']);
    await second.close();
  });

  it('a store bound to a namespace refuses any other', async () => {
    const store = await open('repo');
    await store.commit('repo', { put: new Map([['root', testDocument('root', 1)]]) });
    expect(await store.namespaces()).toEqual(['repo']);
    await expect(store.load('other')).rejects.toThrow(/holds namespace/);
    await expect(store.commit('other', { remove: ['root'] })).rejects.toThrow(/holds namespace/);
    expect((await store.load('repo')).documents.size).toBe(1);
    await store.close();
  });

  it('renames happen in the order of the put map, removals after', async () => {
    // make the second rename fail (its target is a non-empty directory): the documented prefix property says
    // the first put landed, the rest of the puts and the removal did not
    const store = await open();
    await mkdir(join(dir, 'snapshot.json'), { recursive: true });
    await writeFile(join(dir, 'snapshot.json', 'occupied'), 'x');
    await store.commit('repo', { put: new Map([['root', testDocument('root', 1)]]) });
    await expect(
      store.commit('repo', {
        put: new Map([
          ['timestamp', testDocument('timestamp', 5)],
          ['snapshot', testDocument('snapshot', 5)],
          ['targets', testDocument('targets', 5)],
        ]),
        remove: ['root'],
      }),
    ).rejects.toThrow();
    const files = (await readdir(dir)).sort();
    // the prefix before the failure landed; nothing after it did; no temp files remain
    expect(files).toEqual(['root.json', 'snapshot.json', 'timestamp.json']);
    await store.close();
  });
});

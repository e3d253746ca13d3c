import { randomBytes } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, writeFile, mkdir, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import type { Readable } from 'node:stream';
import fc from 'fast-check';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  BlobDigestMismatch,
  BlobSizeMismatch,
  BlobStore,
  BlobWriterStateError,
  type BlobEntry,
} from '../../cache/blob-store.js';
import {
  DigestError,
  digestAlgorithm,
  digestHex,
  digestOf,
  isDigest,
  parseDigest,
  sha256Digest,
  type Digest,
} from '../../cache/digest.js';

let dir: string;
let store: BlobStore;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'portcullis-blobs-'));
  store = await BlobStore.open(dir, { fsync: false });
});

afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** Every regular file below `root`, relative to it. */
async function filesUnder(root: string): Promise<string[]> {
  const out: string[] = [];
  async function walk(d: string): Promise<void> {
    for (const e of await readdir(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) await walk(p);
      else out.push(relative(root, p));
    }
  }
  await walk(root);
  return out.sort();
}

async function readStream(s: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of s) parts.push(c as Buffer);
  return Buffer.concat(parts);
}

/** Byte equality without vitest's element-wise deep compare (which takes seconds on megabytes). */
function sameBytes(actual: Uint8Array, expected: Uint8Array): void {
  const a = Buffer.from(actual.buffer, actual.byteOffset, actual.byteLength);
  if (a.equals(expected)) return;
  let i = 0;
  while (i < a.length && i < expected.length && a[i] === expected[i]) i++;
  expect.fail(`bytes differ at ${i} (lengths ${a.length} / ${expected.length})`);
}

function chunked(data: Buffer, cuts: number[]): Buffer[] {
  const points = [...new Set(cuts.map((c) => c % (data.length + 1)))].sort((a, b) => a - b);
  const out: Buffer[] = [];
  let prev = 0;
  for (const p of [...points, data.length]) {
    out.push(data.subarray(prev, p));
    prev = p;
  }
  return out;
}

describe('digests', () => {
  it('malformed digests are refused', async () => {
    const hex = 'a'.repeat(64);
    const bad = [
      '',
      hex,
      `sha256:${'A'.repeat(64)}`,
      `sha256:${hex.slice(0, 63)}`,
      `sha256:${hex}0`,
      `SHA256:${hex}`,
      ` sha256:${hex}`,
      `sha256:${hex} `,
      `sha256:${hex}\n`,
      `sha256: ${hex.slice(1)}`,
      `sha256:${hex.slice(0, 60)}/../`,
      `sha256:../../../../etc/passwd`,
      `sha256:${hex.slice(0, 63)}\0`,
      `sha384:${'a'.repeat(96)}`,
      `md5:${'a'.repeat(32)}`,
      `sha512:${hex}`,
      `sha256+b64:${hex}`,
      `sha256:${hex}:${hex}`,
      `sha256:${'g'.repeat(64)}`,
    ];
    for (const s of bad) {
      expect(() => parseDigest(s), JSON.stringify(s)).toThrow(DigestError);
      expect(isDigest(s)).toBe(false);
      // A cast string cannot reach the file system either.
      expect(() => store.path(s as Digest), JSON.stringify(s)).toThrow(DigestError);
      expect(() => store.createWriter(s as Digest), JSON.stringify(s)).toThrow(DigestError);
      await expect(store.stat(s as Digest)).rejects.toThrow(DigestError);
    }
    expect(() => parseDigest(`sha256:${'A'.repeat(64)}`)).toThrow(/lowercase/);
    expect(() => parseDigest(`sha384:${'a'.repeat(96)}`)).toThrow(/unsupported algorithm/);
    expect(() => parseDigest(`sha256:${hex.slice(1)}`)).toThrow(/64 hex characters, got 63/);
    expect(() => parseDigest(42 as unknown as string)).toThrow(DigestError);
    // Huge inputs are cut short in the message.
    const e = (() => {
      try {
        parseDigest('x'.repeat(1_000_000));
      } catch (err) {
        return err as DigestError;
      }
      throw new Error('accepted');
    })();
    expect(e.message.length).toBeLessThan(300);
  });

  it('accepts sha256 and sha512 and splits them', () => {
    const bytes = Buffer.from('hello');
    const d = sha256Digest(bytes);
    expect(d).toBe('sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824');
    expect(parseDigest(d)).toBe(d);
    expect(digestAlgorithm(d)).toBe('sha256');
    expect(digestHex(d)).toHaveLength(64);
    const d512 = digestOf('sha512', bytes);
    expect(parseDigest(d512)).toBe(d512);
    expect(digestAlgorithm(d512)).toBe('sha512');
    expect(digestHex(d512)).toHaveLength(128);
  });
});

describe('BlobStore', () => {
  it('stores through a writer and reads back', async () => {
    const data = randomBytes(300_000);
    const d = sha256Digest(data);
    const w = store.createWriter(d, data.length);
    for (const c of chunked(data, [1, 70_000, 70_001, 200_000])) void w.write(c);
    const r = await w.commit();
    expect(r).toEqual({ digest: d, size: data.length, alreadyPresent: false });
    expect(await store.stat(d)).toEqual({ size: data.length });
    sameBytes(await readStream(store.openRead(d)), data);
    sameBytes(await readFile(store.path(d)), data);
    expect(relative(dir, store.path(d))).toBe(join('blobs', 'sha256', digestHex(d).slice(0, 2), digestHex(d)));
    expect(await store.verify(d)).toEqual({ status: 'ok', size: data.length });
  });

  it('temp files never appear under blobs/', async () => {
    const data = randomBytes(100_000);
    const d = sha256Digest(data);

    // In progress: the bytes are in tmp/, nothing under blobs/.
    const w = store.createWriter(d, data.length);
    await w.write(data.subarray(0, 50_000));
    expect(await filesUnder(join(dir, 'blobs'))).toEqual([]);
    expect(await filesUnder(join(dir, 'tmp'))).toHaveLength(1);
    expect(await store.stat(d)).toBeNull();
    await w.write(data.subarray(50_000));
    // Complete but not committed: still invisible.
    expect(await filesUnder(join(dir, 'blobs'))).toEqual([]);
    await w.commit();
    expect(await filesUnder(join(dir, 'blobs'))).toEqual([relative(join(dir, 'blobs'), store.path(d))]);
    expect(await filesUnder(join(dir, 'tmp'))).toEqual([]);

    // Cancelled: gone from tmp/, never in blobs/.
    const other = randomBytes(1000);
    const w2 = store.createWriter(sha256Digest(other));
    await w2.write(other);
    await w2.cancel();
    expect(await filesUnder(join(dir, 'tmp'))).toEqual([]);
    expect(await store.stat(sha256Digest(other))).toBeNull();

    // Mismatch: likewise.
    const w3 = store.createWriter(sha256Digest(other));
    await w3.write(Buffer.from('not it'));
    await expect(w3.commit()).rejects.toBeInstanceOf(BlobDigestMismatch);
    expect(await filesUnder(join(dir, 'tmp'))).toEqual([]);
    expect(await filesUnder(join(dir, 'blobs'))).toHaveLength(1);
  });

  it('a digest mismatch throws BlobDigestMismatch naming both digests and stores nothing', async () => {
    const data = randomBytes(10_000);
    const d = sha256Digest(data);
    const bad = Buffer.from(data);
    bad[5000] = bad[5000]! ^ 1;
    const w = store.createWriter(d);
    await w.write(bad);
    const err = await w.commit().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BlobDigestMismatch);
    expect((err as BlobDigestMismatch).digest).toBe(d);
    expect((err as BlobDigestMismatch).actual).toBe(sha256Digest(bad));
    expect(await store.stat(d)).toBeNull();
    await expect(w.write(data)).rejects.toBeInstanceOf(BlobWriterStateError);
    await w.cancel(); // harmless after a failed commit
  });

  it('size is enforced: a short blob fails at commit, a long one at the first excess write', async () => {
    const data = randomBytes(1000);
    const d = sha256Digest(data);
    const short = store.createWriter(d, 1001);
    await short.write(data);
    await expect(short.commit()).rejects.toBeInstanceOf(BlobSizeMismatch);

    const long = store.createWriter(d, 999);
    await expect(long.write(data)).rejects.toBeInstanceOf(BlobSizeMismatch);
    expect(long.failure).toBeInstanceOf(BlobSizeMismatch);
    expect(long.bytesReceived).toBe(0);
    await expect(long.commit()).rejects.toBeInstanceOf(BlobSizeMismatch);
    expect(await filesUnder(dir)).toEqual([]);
    expect(() => store.createWriter(d, -1)).toThrow(RangeError);
  });

  it('a second writer for a stored digest commits as a no-op', async () => {
    const data = randomBytes(5000);
    const d = sha256Digest(data);
    await store.put(d, [data]);
    const before = await stat(store.path(d));
    const again = store.createWriter(d, data.length);
    await again.write(data);
    expect(await again.commit()).toEqual({ digest: d, size: data.length, alreadyPresent: true });
    expect((await stat(store.path(d))).ino).toBe(before.ino);
    expect(await filesUnder(join(dir, 'tmp'))).toEqual([]);
    // A wrong second copy is still refused and leaves the stored one alone.
    const wrong = store.createWriter(d);
    await wrong.write(randomBytes(5000));
    await expect(wrong.commit()).rejects.toBeInstanceOf(BlobDigestMismatch);
    sameBytes(await readFile(store.path(d)), data);
  });

  it('empty blobs round-trip', async () => {
    const d = sha256Digest(new Uint8Array(0));
    const w = store.createWriter(d, 0);
    await w.commit();
    expect(await store.stat(d)).toEqual({ size: 0 });
    expect((await readStream(store.openRead(d))).length).toBe(0);
    const blob = (await store.open(d))!;
    expect((await readStream(blob.stream())).length).toBe(0);
  });

  it('ranges are served from the stored file', async () => {
    const data = randomBytes(3 * 1024 * 1024 + 17);
    const d = sha256Digest(data);
    await store.put(d, chunked(data, [65_536, 1_000_000]), data.length);

    sameBytes(await readStream(store.openRead(d, { start: 10, end: 19 })), data.subarray(10, 20));
    sameBytes(await readStream(store.openRead(d, { start: 0, end: data.length - 1 }, { highWaterMark: 4 << 20 })), data);

    const blob = (await store.open(d))!;
    expect(blob.size).toBe(data.length);
    expect(blob.path).toBe(store.path(d));
    expect(() => blob.stream({ start: 0, end: data.length })).toThrow(RangeError);
    expect(() => blob.stream({ start: 5, end: 4 })).toThrow(RangeError);
    const tailStart = data.length - 1_500_000;
    sameBytes(await readStream(blob.stream({ start: tailStart, end: data.length - 1 })), data.subarray(tailStart));
    expect(() => blob.stream()).toThrow(/once/);

    const blob2 = (await store.open(d))!;
    sameBytes(await blob2.readAll({ start: 1_048_570, end: 1_048_600 }), data.subarray(1_048_570, 1_048_601));

    // Opened before an eviction deletes it: the read still completes from the same file.
    const blob3 = (await store.open(d))!;
    expect(await store.delete(d)).toBe(true);
    expect(await store.stat(d)).toBeNull();
    sameBytes(await readStream(blob3.stream({ start: 100, end: 199 })), data.subarray(100, 200));
    expect(await store.open(d)).toBeNull();
    expect(await store.delete(d)).toBe(false);

    await expect(readStream(store.openRead(d))).rejects.toMatchObject({ code: 'ENOENT' });
    expect(() => store.openRead(d, { start: -1, end: 3 })).toThrow(RangeError);
  });

  it('lists blobs with sizes, skipping strangers', async () => {
    const blobs = [randomBytes(10), randomBytes(20), randomBytes(30)];
    for (const b of blobs) await store.put(sha256Digest(b), [b]);
    const b512 = randomBytes(40);
    await store.put(digestOf('sha512', b512), [b512]);
    await writeFile(join(dir, 'blobs', 'sha256', 'README'), 'x');
    await mkdir(join(dir, 'blobs', 'sha256', 'zz'), { recursive: true });
    await writeFile(join(dir, 'blobs', 'sha256', 'zz', 'junk'), 'x');
    const listed: BlobEntry[] = [];
    for await (const e of store.list()) listed.push(e);
    const expected = [...blobs.map((b) => ({ digest: sha256Digest(b), size: b.length })), { digest: digestOf('sha512', b512), size: 40 }];
    expect(listed.map(({ digest, size }) => ({ digest, size })).sort((a, b) => a.digest.localeCompare(b.digest))).toEqual(
      expected.sort((a, b) => a.digest.localeCompare(b.digest)),
    );
    for (const e of listed) expect(e.mtimeMs).toBeGreaterThan(0);
  });

  it('reads trust the rename; verify() finds corruption on disk', async () => {
    const data = randomBytes(4096);
    const d = sha256Digest(data);
    await store.put(d, [data]);
    const rotten = Buffer.from(data);
    rotten[100] = rotten[100]! ^ 0xff;
    await writeFile(store.path(d), rotten);
    sameBytes(await readStream(store.openRead(d)), rotten);
    expect(await store.verify(d)).toEqual({ status: 'corrupt', size: 4096, actual: sha256Digest(rotten) });
    expect(await store.verify(sha256Digest(randomBytes(1)))).toEqual({ status: 'missing' });
  });

  it('opening a store removes stale temp files', async () => {
    const w = store.createWriter(sha256Digest(Buffer.from('x')));
    await w.write(Buffer.from('half'));
    await writeFile(join(dir, 'tmp', 'left-over.part'), 'junk');
    const reopened = await BlobStore.open(dir);
    expect(reopened.staleTempFilesRemoved).toBe(2);
    expect(await readdir(join(dir, 'tmp'))).toEqual([]);
    await w.cancel(); // the "crashed" writer's handle
  });

  it('random chunkings store exactly the bytes, and one flipped byte stores nothing', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.uint8Array({ minLength: 0, maxLength: 20_000 }),
        fc.array(fc.nat(), { maxLength: 20 }),
        fc.option(fc.nat(), { nil: undefined }),
        fc.boolean(),
        async (bytes, cuts, flipAt, giveSize) => {
          const data = Buffer.from(bytes);
          const d = sha256Digest(data);
          const sent = Buffer.from(data);
          const corrupt = flipAt !== undefined && data.length > 0;
          if (corrupt) sent[flipAt % data.length] = sent[flipAt % data.length]! ^ 0x01;
          const w = store.createWriter(d, giveSize ? data.length : undefined);
          // Unawaited writes: order must still hold.
          const writes = chunked(sent, cuts).map((c) => w.write(c));
          if (corrupt) {
            await expect(w.commit()).rejects.toBeInstanceOf(BlobDigestMismatch);
            await Promise.allSettled(writes);
            expect(await store.stat(d)).toBeNull();
          } else {
            await w.commit();
            await Promise.all(writes);
            sameBytes(await readFile(store.path(d)), data);
            await store.delete(d);
          }
          expect(await readdir(join(dir, 'tmp'))).toEqual([]);
        },
      ),
      { numRuns: 60 },
    );
  });
});

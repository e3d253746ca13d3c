// Content-addressed blob storage on one directory:
//
//   <root>/blobs/<alg>/<first 2 hex>/<hex>   complete, verified blobs (only ever appear by rename)
//   <root>/tmp/<…>.part                      writes in progress (wiped when the store is opened)
//
// The store knows digests and bytes, nothing else. A blob becomes visible under blobs/ only after its bytes
// were hashed on the way in, matched the digest (and the expected size, when given), were fsynced and then
// renamed into place; the containing directory is fsynced after the rename. Reads trust that rename and do not
// re-hash (verify() exists for an fsck).
//
// One BlobStore per root per process: opening a store removes every temp file, including another live
// instance's.

import { createHash, randomBytes, type Hash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import * as fsp from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { Readable } from 'node:stream';
import { digestAlgorithm, digestHex, isDigest, parseDigest, type Digest, type DigestAlgorithm } from './digest.js';

/** Default chunk size for reads: 64 KiB (Node's default) halves throughput against 1 MiB on a local socket. */
export const DEFAULT_READ_HIGH_WATER_MARK = 1024 * 1024;

/** Inclusive byte range, as in HTTP Range and fs.createReadStream. */
export interface ByteRange {
  readonly start: number;
  readonly end: number;
}

export interface ReadOptions {
  /** Bytes per read(2) and per chunk handed to the consumer. Default DEFAULT_READ_HIGH_WATER_MARK. */
  readonly highWaterMark?: number;
}

export interface BlobStat {
  readonly size: number;
}

export interface BlobEntry {
  readonly digest: Digest;
  readonly size: number;
  readonly mtimeMs: number;
}

export type VerifyResult =
  | { readonly status: 'ok'; readonly size: number }
  | { readonly status: 'missing' }
  | { readonly status: 'corrupt'; readonly size: number; readonly actual: Digest };

export interface CommitResult {
  readonly digest: Digest;
  readonly size: number;
  /** True when the blob was already stored and this writer's (identical, verified) bytes were discarded. */
  readonly alreadyPresent: boolean;
}

export interface BlobStoreOptions {
  /** fsync blob files and directories on commit. Default true; tests may turn it off for speed. */
  readonly fsync?: boolean;
}

/** An open stored blob: the handle pins the file, so a concurrent delete (eviction) cannot cut a read short. */
export interface OpenBlob {
  readonly digest: Digest;
  readonly size: number;
  /** The path it was opened from (may since have been deleted). */
  readonly path: string;
  readonly handle: FileHandle;
  /**
   * A stream over the whole blob or one range. Takes ownership of the handle: it is closed when the stream
   * ends or is destroyed. May be called once. Throws RangeError for a range outside [0, size).
   */
  stream(range?: ByteRange, options?: ReadOptions): Readable;
  /** Reads the whole blob (or a range) into one Buffer, then closes the handle. */
  readAll(range?: ByteRange): Promise<Buffer>;
  /** Closes the handle if no stream took it. Idempotent. */
  close(): Promise<void>;
}

export class BlobStoreError extends Error {
  override name = 'BlobStoreError';
}

/** The bytes written do not match what was promised: base of the two mismatches. */
export class BlobIntegrityError extends BlobStoreError {
  override name = 'BlobIntegrityError';
  constructor(
    message: string,
    readonly digest: Digest,
  ) {
    super(message);
  }
}

export class BlobDigestMismatch extends BlobIntegrityError {
  override name = 'BlobDigestMismatch';
  constructor(
    digest: Digest,
    readonly actual: Digest,
    readonly size: number,
  ) {
    super(`blob content does not match its digest: expected ${digest}, got ${actual} (${size} bytes)`, digest);
  }
}

export class BlobSizeMismatch extends BlobIntegrityError {
  override name = 'BlobSizeMismatch';
  constructor(
    digest: Digest,
    readonly expectedSize: number,
    /** Bytes seen; for an overrun this is where writing stopped, not the upstream's total. */
    readonly actualSize: number,
    overrun: boolean,
  ) {
    super(
      overrun
        ? `blob ${digest} is longer than the expected ${expectedSize} bytes (refused at ${actualSize})`
        : `blob ${digest} has ${actualSize} bytes, expected ${expectedSize}`,
      digest,
    );
  }
}

export class BlobWriterStateError extends BlobStoreError {
  override name = 'BlobWriterStateError';
}

const ALGORITHMS: readonly DigestAlgorithm[] = ['sha256', 'sha512'];
/** Keeps each writev(2) well under IOV_MAX. */
const MAX_IOVECS = 256;
const SHARD_RE = /^[0-9a-f]{2}$/;

/** Marks a promise as handled (a caller that ignores it causes no unhandled rejection) and returns it. */
function handled<T>(p: Promise<T>): Promise<T> {
  p.catch(() => {});
  return p;
}

function isErrno(e: unknown, code: string): boolean {
  return typeof e === 'object' && e !== null && (e as { code?: unknown }).code === code;
}

function checkRange(range: ByteRange | undefined, size?: number): void {
  if (range === undefined) return;
  const { start, end } = range;
  if (!Number.isSafeInteger(start) || !Number.isSafeInteger(end) || start < 0 || end < start) {
    throw new RangeError(`invalid byte range ${start}-${end}`);
  }
  if (size !== undefined && end >= size) {
    throw new RangeError(`byte range ${start}-${end} outside a blob of ${size} bytes`);
  }
}

async function fsyncDir(path: string): Promise<void> {
  const fh = await fsp.open(path, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

async function writeAll(fh: FileHandle, chunks: Buffer[]): Promise<void> {
  let i = 0;
  while (i < chunks.length) {
    let batch = chunks.slice(i, i + MAX_IOVECS);
    i += batch.length;
    let want = 0;
    for (const b of batch) want += b.length;
    // Short writes on regular files are rare (ENOSPC half-way, signals): continue where it stopped.
    for (;;) {
      const { bytesWritten } = batch.length === 1 ? await fh.write(batch[0]!) : await fh.writev(batch);
      if (bytesWritten >= want) break;
      if (bytesWritten === 0) throw new BlobStoreError('write made no progress');
      want -= bytesWritten;
      let skip = bytesWritten;
      const rest: Buffer[] = [];
      for (const b of batch) {
        if (skip >= b.length) {
          skip -= b.length;
          continue;
        }
        rest.push(skip > 0 ? b.subarray(skip) : b);
        skip = 0;
      }
      batch = rest;
    }
  }
}

export class BlobStore {
  readonly root: string;
  readonly blobsDir: string;
  readonly tmpDir: string;
  readonly fsync: boolean;
  /** How many leftover temp files open() removed. */
  staleTempFilesRemoved = 0;

  private constructor(root: string, options: BlobStoreOptions) {
    this.root = root;
    this.blobsDir = join(root, 'blobs');
    this.tmpDir = join(root, 'tmp');
    this.fsync = options.fsync ?? true;
  }

  /** Creates the layout if needed and removes temp files left by an earlier process. */
  static async open(root: string, options: BlobStoreOptions = {}): Promise<BlobStore> {
    const store = new BlobStore(root, options);
    for (const alg of ALGORITHMS) await fsp.mkdir(join(store.blobsDir, alg), { recursive: true });
    await fsp.mkdir(store.tmpDir, { recursive: true });
    for (const name of await fsp.readdir(store.tmpDir)) {
      await fsp.rm(join(store.tmpDir, name), { force: true, recursive: true });
      store.staleTempFilesRemoved++;
    }
    return store;
  }

  /** Where the blob lives (or would live). Re-validates the digest: a cast string cannot escape the root. */
  path(d: Digest): string {
    const digest = parseDigest(d);
    const hex = digestHex(digest);
    return join(this.blobsDir, digestAlgorithm(digest), hex.slice(0, 2), hex);
  }

  async stat(d: Digest): Promise<BlobStat | null> {
    try {
      const st = await fsp.stat(this.path(d));
      return st.isFile() ? { size: st.size } : null;
    } catch (e) {
      if (isErrno(e, 'ENOENT')) return null;
      throw e;
    }
  }

  async has(d: Digest): Promise<boolean> {
    return (await this.stat(d)) !== null;
  }

  /**
   * A stream over a stored blob or one inclusive range of it, read with a large highWaterMark. A missing blob
   * surfaces as an ENOENT 'error' on the stream; use open() to know before sending headers.
   */
  openRead(d: Digest, range?: ByteRange, options: ReadOptions = {}): Readable {
    checkRange(range);
    return createReadStream(this.path(d), {
      highWaterMark: options.highWaterMark ?? DEFAULT_READ_HIGH_WATER_MARK,
      ...(range ? { start: range.start, end: range.end } : {}),
    });
  }

  /** Opens a stored blob, or returns null when it is absent. The caller must stream() or close() it. */
  async open(d: Digest): Promise<OpenBlob | null> {
    const path = this.path(d);
    let handle: FileHandle;
    try {
      handle = await fsp.open(path, 'r');
    } catch (e) {
      if (isErrno(e, 'ENOENT')) return null;
      throw e;
    }
    let size: number;
    try {
      size = (await handle.stat()).size;
    } catch (e) {
      await handle.close().catch(() => {});
      throw e;
    }
    return new OpenBlobImpl(parseDigest(d), size, path, handle);
  }

  /** Starts writing a blob; nothing is visible under blobs/ until commit() succeeds. */
  createWriter(d: Digest, expectedSize?: number): BlobWriter {
    if (expectedSize !== undefined && (!Number.isSafeInteger(expectedSize) || expectedSize < 0)) {
      throw new RangeError(`invalid expected size ${expectedSize}`);
    }
    const digest = parseDigest(d);
    const tmpName = `${digestHex(digest).slice(0, 16)}.${process.pid}.${randomBytes(8).toString('hex')}.part`;
    return new BlobWriter(this, digest, expectedSize, join(this.tmpDir, tmpName));
  }

  /** Writes a whole blob from a stream of chunks and commits it. On any failure nothing is stored. */
  async put(d: Digest, source: AsyncIterable<Uint8Array> | Iterable<Uint8Array>, expectedSize?: number): Promise<CommitResult> {
    const writer = this.createWriter(d, expectedSize);
    try {
      let last: Promise<void> | undefined;
      for await (const chunk of source) {
        last = writer.write(chunk);
        if (writer.failure) throw writer.failure;
        if (writer.pendingBytes > 8 * 1024 * 1024) await last;
      }
      return await writer.commit();
    } catch (e) {
      await writer.cancel();
      throw e;
    }
  }

  /** Removes a blob. Readers that already opened it keep reading. Returns false when it was absent. */
  async delete(d: Digest): Promise<boolean> {
    try {
      await fsp.unlink(this.path(d));
      return true;
    } catch (e) {
      if (isErrno(e, 'ENOENT')) return false;
      throw e;
    }
  }

  /** Every stored blob with its size and mtime (for eviction). Unknown files under blobs/ are skipped. */
  async *list(): AsyncGenerator<BlobEntry> {
    for (const alg of ALGORITHMS) {
      const algDir = join(this.blobsDir, alg);
      let shards: string[];
      try {
        shards = (await fsp.readdir(algDir)).filter((s) => SHARD_RE.test(s)).sort();
      } catch (e) {
        if (isErrno(e, 'ENOENT')) continue;
        throw e;
      }
      for (const shard of shards) {
        let names: string[];
        try {
          names = (await fsp.readdir(join(algDir, shard))).sort();
        } catch (e) {
          if (isErrno(e, 'ENOENT') || isErrno(e, 'ENOTDIR')) continue;
          throw e;
        }
        for (const name of names) {
          const candidate = `${alg}:${name}`;
          if (!name.startsWith(shard) || !isDigest(candidate)) continue;
          try {
            const st = await fsp.stat(join(algDir, shard, name));
            if (st.isFile()) yield { digest: candidate, size: st.size, mtimeMs: st.mtimeMs };
          } catch (e) {
            if (!isErrno(e, 'ENOENT')) throw e;
          }
        }
      }
    }
  }

  /** Re-hashes a stored blob (for fsck; normal reads trust the rename). */
  async verify(d: Digest): Promise<VerifyResult> {
    const digest = parseDigest(d);
    const alg = digestAlgorithm(digest);
    const hash = createHash(alg);
    let size = 0;
    try {
      for await (const chunk of createReadStream(this.path(digest), { highWaterMark: DEFAULT_READ_HIGH_WATER_MARK })) {
        hash.update(chunk as Buffer);
        size += (chunk as Buffer).length;
      }
    } catch (e) {
      if (isErrno(e, 'ENOENT')) return { status: 'missing' };
      throw e;
    }
    const actual = `${alg}:${hash.digest('hex')}` as Digest;
    return actual === digest ? { status: 'ok', size } : { status: 'corrupt', size, actual };
  }

  /** Moves a verified temp file into place (called by BlobWriter.commit). */
  async install(tempPath: string, d: Digest): Promise<boolean> {
    const finalPath = this.path(d);
    const shardDir = dirname(finalPath);
    if ((await this.stat(d)) !== null) {
      await fsp.rm(tempPath, { force: true });
      return false;
    }
    const created = await fsp.mkdir(shardDir, { recursive: true });
    await fsp.rename(tempPath, finalPath);
    if (this.fsync) {
      await fsyncDir(shardDir);
      if (created !== undefined) await fsyncDir(dirname(shardDir));
    }
    return true;
  }
}

class OpenBlobImpl implements OpenBlob {
  private owned = false;
  private closed = false;

  constructor(
    readonly digest: Digest,
    readonly size: number,
    readonly path: string,
    readonly handle: FileHandle,
  ) {}

  stream(range?: ByteRange, options: ReadOptions = {}): Readable {
    if (this.owned || this.closed) throw new BlobStoreError('OpenBlob.stream() may be called once, before close()');
    checkRange(range, this.size);
    this.owned = true;
    const start = range?.start ?? 0;
    const end = range?.end ?? this.size - 1;
    // An empty blob: end = -1 would read to EOF, which is also empty; pass no end at all.
    return this.handle.createReadStream({
      highWaterMark: options.highWaterMark ?? DEFAULT_READ_HIGH_WATER_MARK,
      start,
      ...(end >= start ? { end } : {}),
      autoClose: true,
    });
  }

  async readAll(range?: ByteRange): Promise<Buffer> {
    if (this.owned || this.closed) throw new BlobStoreError('OpenBlob already streamed or closed');
    checkRange(range, this.size);
    const start = range?.start ?? 0;
    const length = range ? range.end - range.start + 1 : this.size;
    const buf = Buffer.allocUnsafe(length);
    try {
      let off = 0;
      while (off < length) {
        const { bytesRead } = await this.handle.read(buf, off, length - off, start + off);
        if (bytesRead === 0) throw new BlobStoreError(`blob ${this.digest} shorter than its recorded size`);
        off += bytesRead;
      }
      return buf;
    } finally {
      await this.close();
    }
  }

  async close(): Promise<void> {
    if (this.owned || this.closed) return;
    this.closed = true;
    await this.handle.close();
  }
}

type WriterState = 'open' | 'committing' | 'committed' | 'failed' | 'cancelled';

/**
 * Receives one blob's bytes. write() may be called without awaiting (writes are queued in order and coalesced
 * into writev calls); its promise settles once that chunk reached the file. An ignored write() promise never
 * becomes an unhandled rejection: every failure also shows in `failure` and is thrown again by commit(). Chunks must not be mutated after
 * they were passed in. Exactly one of commit() / cancel() ends the writer; a failed commit already cleaned up.
 */
export class BlobWriter {
  private readonly hash: Hash;
  private state: WriterState = 'open';
  private fh: FileHandle | undefined;
  private opening: Promise<void> | undefined;
  private received = 0;
  private written = 0;
  private queue: Buffer[] = [];
  private queueWaiters: Array<{ resolve: () => void; reject: (e: unknown) => void }> = [];
  private queuedBytes = 0;
  private pumping: Promise<void> | undefined;
  private error: Error | undefined;
  private committing: Promise<CommitResult> | undefined;

  constructor(
    private readonly store: BlobStore,
    readonly digest: Digest,
    readonly expectedSize: number | undefined,
    readonly tempPath: string,
  ) {
    this.hash = createHash(digestAlgorithm(digest));
  }

  /** Bytes accepted (hashed and counted) so far. */
  get bytesReceived(): number {
    return this.received;
  }

  /** Bytes that reached the temp file (readable through another handle on tempPath). */
  get bytesWritten(): number {
    return this.written;
  }

  /** Accepted but not yet written. */
  get pendingBytes(): number {
    return this.received - this.written;
  }

  /** Set once the writer cannot succeed any more (size overrun, I/O error): stop feeding it. */
  get failure(): Error | undefined {
    return this.error;
  }

  /** Creates the temp file (idempotent; write() and commit() call it). */
  open(): Promise<void> {
    this.opening ??= (async () => {
      this.fh = await fsp.open(this.tempPath, 'wx', 0o644);
    })();
    return this.opening;
  }

  write(chunk: Uint8Array): Promise<void> {
    if (this.state !== 'open') return handled(Promise.reject(new BlobWriterStateError(`write after ${this.state}`)));
    if (this.error) return handled(Promise.reject(this.error));
    if (chunk.length === 0) return Promise.resolve();
    const buf = Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    if (this.expectedSize !== undefined && this.received + buf.length > this.expectedSize) {
      this.error = new BlobSizeMismatch(this.digest, this.expectedSize, this.received + buf.length, true);
      return handled(Promise.reject(this.error));
    }
    this.hash.update(buf);
    this.received += buf.length;
    this.queue.push(buf);
    this.queuedBytes += buf.length;
    const p = new Promise<void>((resolve, reject) => this.queueWaiters.push({ resolve, reject }));
    this.pumping ??= this.pump();
    return handled(p);
  }

  private async pump(): Promise<void> {
    try {
      await this.open();
      while (this.queue.length > 0) {
        const batch = this.queue;
        const waiters = this.queueWaiters;
        const bytes = this.queuedBytes;
        this.queue = [];
        this.queueWaiters = [];
        this.queuedBytes = 0;
        try {
          await writeAll(this.fh!, batch);
        } catch (e) {
          this.error ??= e instanceof Error ? e : new BlobStoreError(String(e));
          for (const w of waiters) w.reject(this.error);
          for (const w of this.queueWaiters) w.reject(this.error);
          this.queue = [];
          this.queueWaiters = [];
          this.queuedBytes = 0;
          return;
        }
        this.written += bytes;
        for (const w of waiters) w.resolve();
      }
    } catch (e) {
      // open() failed
      this.error ??= e instanceof Error ? e : new BlobStoreError(String(e));
      for (const w of this.queueWaiters) w.reject(this.error);
      this.queue = [];
      this.queueWaiters = [];
      this.queuedBytes = 0;
    } finally {
      this.pumping = undefined;
    }
  }

  /** Waits until every queued chunk reached the file (or the writer failed). */
  private async flush(): Promise<void> {
    while (this.pumping) await this.pumping;
  }

  /**
   * Checks size and digest; on a match fsyncs and renames into place (a no-op success when the blob is already
   * stored). On a mismatch throws BlobSizeMismatch / BlobDigestMismatch and deletes the temp file.
   */
  commit(): Promise<CommitResult> {
    if (this.state !== 'open') return handled(Promise.reject(new BlobWriterStateError(`commit after ${this.state}`)));
    this.state = 'committing';
    this.committing = this.doCommit();
    return this.committing;
  }

  private async doCommit(): Promise<CommitResult> {
    try {
      await this.open();
      await this.flush();
      if (this.error) throw this.error;
      if (this.expectedSize !== undefined && this.received !== this.expectedSize) {
        throw new BlobSizeMismatch(this.digest, this.expectedSize, this.received, false);
      }
      const actual = `${digestAlgorithm(this.digest)}:${this.hash.digest('hex')}` as Digest;
      if (actual !== this.digest) throw new BlobDigestMismatch(this.digest, actual, this.received);
      const fh = this.fh!;
      this.fh = undefined;
      try {
        if (this.store.fsync) await fh.sync();
      } finally {
        await fh.close();
      }
      const installed = await this.store.install(this.tempPath, this.digest);
      this.state = 'committed';
      return { digest: this.digest, size: this.received, alreadyPresent: !installed };
    } catch (e) {
      this.state = 'failed';
      this.error ??= e instanceof Error ? e : new BlobStoreError(String(e));
      await this.discard();
      throw e;
    }
  }

  /**
   * Abandons the blob and deletes the temp file. Safe to call at any time, also after a failed commit; while a
   * commit runs it waits for it (a blob that made it into place stays there).
   */
  async cancel(): Promise<void> {
    if (this.state === 'committing') {
      await this.committing?.catch(() => {});
      return;
    }
    if (this.state === 'committed' || this.state === 'cancelled') return;
    if (this.state === 'open') this.state = 'cancelled';
    this.error ??= new BlobWriterStateError('writer cancelled');
    await this.discard();
  }

  private async discard(): Promise<void> {
    await this.opening?.catch(() => {});
    await this.flush();
    const fh = this.fh;
    this.fh = undefined;
    await fh?.close().catch(() => {});
    if (this.opening) await fsp.rm(this.tempPath, { force: true });
  }
}

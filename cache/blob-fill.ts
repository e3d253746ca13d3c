// Pull-through fills: one upstream fetch per digest, however many clients ask, fanned out to every client.
//
// Per digest at most one Fill runs. A Fill first looks in the store; if the blob is there every subscriber
// reads the stored file. Otherwise it calls openUpstream once and pumps the body into a BlobWriter at upstream
// speed, while subscribers read:
//
//   - from memory: the most recent bytes (memoryWindowBytes) are kept as the chunks that arrived, so clients
//     that keep up get them without a copy or a disk read;
//   - from the temp file: anything older (a late joiner starts at byte 0; a slow client falls behind the
//     window) is read with positional reads on one read handle the Fill opened on the temp file. That handle
//     stays valid across the rename into blobs/, so a client that is mid-way when the fill commits goes on
//     reading the very same inode.
//
// Backpressure (the distribution-like choice): subscribers never slow the fill. Each subscriber is a pull
// Readable that only reads when its consumer wants more, so its own buffer is bounded by its highWaterMark;
// a slow client simply falls behind the memory window and continues from the file. The only thing that pauses
// the upstream is the disk: when more than maxUnwrittenBytes were received but not yet written.
// Memory per fill is therefore about memoryWindowBytes + maxUnwrittenBytes + one chunk, plus each
// subscriber's highWaterMark.
//
// Integrity: a subscriber's stream ends cleanly only after the writer verified the digest (and size) and the
// blob was renamed into place. When the expected size is known, the last byte is withheld until then, so a
// response with Content-Length can never look complete before verification. Any failure (digest or size
// mismatch, upstream error, I/O error) destroys every subscriber with that error and nothing is stored.
//
// A client that disconnects only detaches its own stream; the fill carries on for the others and the cache,
// even when every client left (the bytes are already paid for). A stalled upstream stalls the fill: give the
// upstream body its own timeout (e.g. undici's bodyTimeout), its error then fails the fill like any other.
//
// Use one BlobFill per BlobStore: the single-flight map lives in the BlobFill instance.

import * as fsp from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { BlobSizeMismatch, type BlobStore } from './blob-store.js';
import { parseDigest, type Digest } from './digest.js';

/** The upstream body: a Readable (or any async iterable of byte chunks). Chunks must not be reused. */
export type UpstreamBody = AsyncIterable<Uint8Array>;
export type OpenUpstream = () => Promise<UpstreamBody> | UpstreamBody;

export interface FillOptions {
  /** Most recent bytes kept in memory per fill for clients that keep up. Default 2 MiB. */
  readonly memoryWindowBytes?: number;
  /** Received-but-not-yet-written bytes before the upstream is paused. Default 8 MiB. */
  readonly maxUnwrittenBytes?: number;
  /** Each subscriber stream's highWaterMark, also its read size from the file. Default 1 MiB. */
  readonly subscriberHighWaterMark?: number;
}

export interface FillReady {
  /** Stored size on a cache hit, else the expected size the fill was started with (may be unknown). */
  readonly size: number | undefined;
  /** True when the blob was already in the store and no upstream fetch happens. */
  readonly cached: boolean;
}

export interface FillOutcome {
  readonly digest: Digest;
  readonly size: number;
  /** True when this fill fetched from upstream; false on a cache hit. */
  readonly fetched: boolean;
}

export interface FillHandle {
  /** This client's bytes from 0. Ends cleanly only once the blob is verified and stored; otherwise errors. */
  readonly stream: Readable;
  /**
   * Settles once the fill knows its source: resolves on a cache hit or when openUpstream returned; rejects
   * with openUpstream's error (so the HTTP layer can answer 404/502 before sending any header).
   */
  readonly ready: Promise<FillReady>;
  /** Resolves once the blob is in the store; rejects if the fill failed. Shared by every joiner. */
  readonly done: Promise<FillOutcome>;
  /** True when this call joined a fill that was already running (no new upstream fetch). */
  readonly joined: boolean;
}

export interface FillSnapshot {
  readonly state: FillState;
  readonly received: number;
  readonly written: number;
  /** Bytes currently held in the memory window. */
  readonly windowBytes: number;
  readonly subscribers: number;
}

export type FillState = 'starting' | 'filling' | 'committed' | 'failed';

const MiB = 1024 * 1024;

function asError(e: unknown): Error {
  return e instanceof Error ? e : new Error(String(e));
}

function toBuffer(chunk: Uint8Array | string): Buffer {
  if (Buffer.isBuffer(chunk)) return chunk;
  if (typeof chunk === 'string') throw new TypeError('upstream body yielded a string; byte chunks expected');
  return Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
}

/** Closes an upstream body we stop reading (without an error: nobody may be listening for one any more). */
function destroyBody(body: unknown): void {
  const d = (body as { destroy?: () => void } | null)?.destroy;
  if (typeof d === 'function') {
    try {
      d.call(body);
    } catch {
      /* already gone */
    }
  }
}

/**
 * An upstream Readable that errors while nobody iterates it (between chunks we await the disk, or after we
 * stopped) would otherwise crash the process with an unhandled 'error'. The iterator still sees the error.
 */
function guardErrors(body: unknown): void {
  const on = (body as { on?: (ev: string, fn: () => void) => void } | null)?.on;
  if (typeof on === 'function') on.call(body, 'error', () => {});
}

function checkSize(expectedSize: number | undefined): void {
  if (expectedSize !== undefined && (!Number.isSafeInteger(expectedSize) || expectedSize < 0)) {
    throw new RangeError(`invalid expected size ${expectedSize}`);
  }
}

export class BlobFill {
  private readonly fills = new Map<Digest, Fill>();
  private readonly windowBytes: number;
  private readonly maxUnwritten: number;
  private readonly subscriberHwm: number;

  constructor(
    readonly store: BlobStore,
    options: FillOptions = {},
  ) {
    this.windowBytes = options.memoryWindowBytes ?? 2 * MiB;
    this.maxUnwritten = options.maxUnwrittenBytes ?? 8 * MiB;
    this.subscriberHwm = options.subscriberHighWaterMark ?? MiB;
  }

  /** Distinct digests with a fill running. */
  get inFlight(): number {
    return this.fills.size;
  }

  /**
   * Serves `d` to one client: joins the running fill for `d`, or starts one (which serves from the store when
   * the blob is already there, and otherwise calls openUpstream exactly once). `expectedSize` is this client's
   * expectation: its stream errors rather than ends when the blob turns out to have another size.
   */
  fill(d: Digest, expectedSize: number | undefined, openUpstream: OpenUpstream): FillHandle {
    const digest = parseDigest(d);
    checkSize(expectedSize);
    const { fill, joined } = this.getOrStart(digest, expectedSize, openUpstream);
    const stream = fill.subscribe(expectedSize, this.subscriberHwm);
    return { stream, ready: fill.ready, done: fill.done, joined };
  }

  /** Makes sure `d` is stored (single-flighted with fill()), without a client stream. */
  ensure(d: Digest, expectedSize: number | undefined, openUpstream: OpenUpstream): Promise<FillOutcome> {
    const digest = parseDigest(d);
    checkSize(expectedSize);
    return this.getOrStart(digest, expectedSize, openUpstream).fill.done;
  }

  /** Diagnostics for a running fill (tests, metrics); null when none runs for `d`. */
  snapshot(d: Digest): FillSnapshot | null {
    return this.fills.get(d)?.snapshot() ?? null;
  }

  private getOrStart(digest: Digest, expectedSize: number | undefined, openUpstream: OpenUpstream): { fill: Fill; joined: boolean } {
    const running = this.fills.get(digest);
    if (running) return { fill: running, joined: true };
    const fill = new Fill(this.store, digest, expectedSize, openUpstream, this.windowBytes, this.maxUnwritten, () => {
      if (this.fills.get(digest) === fill) this.fills.delete(digest);
    });
    this.fills.set(digest, fill);
    void fill.run();
    return { fill, joined: false };
  }
}

class Fill {
  state: FillState = 'starting';
  error: Error | undefined;
  /** Final size, once committed. */
  size = 0;
  /** Bytes received from upstream (all of them hashed by the writer). */
  received = 0;
  /** Bytes that reached the file readFh reads. */
  written = 0;
  /** The memory window covers [windowStart, received): chunks[head..] starting at starts[head..]. */
  windowStart = 0;
  private chunks: Array<Buffer | undefined> = [];
  private starts: number[] = [];
  private head = 0;
  readFh: FileHandle | undefined;
  private readonly subscribers = new Set<FillReader>();
  private finished = false;
  private released = false;

  readonly ready: Promise<FillReady>;
  readonly done: Promise<FillOutcome>;
  private resolveReady!: (r: FillReady) => void;
  private rejectReady!: (e: Error) => void;
  private resolveDone!: (r: FillOutcome) => void;
  private rejectDone!: (e: Error) => void;

  constructor(
    private readonly store: BlobStore,
    readonly digest: Digest,
    readonly expectedSize: number | undefined,
    private readonly openUpstream: OpenUpstream,
    private readonly windowBytes: number,
    private readonly maxUnwritten: number,
    private readonly onSettled: () => void,
  ) {
    this.ready = new Promise<FillReady>((resolve, reject) => {
      this.resolveReady = resolve;
      this.rejectReady = reject;
    });
    this.done = new Promise<FillOutcome>((resolve, reject) => {
      this.resolveDone = resolve;
      this.rejectDone = reject;
    });
    // Callers may ignore either promise; a failed fill must not become an unhandled rejection.
    this.ready.catch(() => {});
    this.done.catch(() => {});
  }

  async run(): Promise<void> {
    // 1. Already stored? Serve the file. Opening (not stat-ing) pins it against a concurrent delete.
    try {
      const blob = await this.store.open(this.digest);
      if (blob) {
        this.readFh = blob.handle;
        this.size = this.received = this.written = this.windowStart = blob.size;
        this.state = 'committed';
        this.resolveReady({ size: blob.size, cached: true });
        this.settle({ digest: this.digest, size: blob.size, fetched: false });
        return;
      }
    } catch (e) {
      this.fail(asError(e));
      return;
    }

    // 2. Fetch once. The temp file is ready before the upstream is opened, so the body is iterated (and its
    //    errors listened to) from the moment it exists.
    const writer = this.store.createWriter(this.digest, this.expectedSize);
    let body: UpstreamBody | undefined;
    try {
      await writer.open();
      this.readFh = await fsp.open(writer.tempPath, 'r');
      body = await this.openUpstream();
      guardErrors(body);
      this.state = 'filling';
      this.resolveReady({ size: this.expectedSize, cached: false });
      const onWritten = (): void => {
        this.written = writer.bytesWritten;
        this.trim();
      };
      for await (const raw of body) {
        const chunk = toBuffer(raw as Uint8Array);
        if (chunk.length === 0) continue;
        const wrote = writer.write(chunk);
        wrote.then(onWritten, () => {});
        if (writer.failure) throw writer.failure; // e.g. longer than expected: the excess is never served
        this.append(chunk);
        this.wakeWaiting();
        if (writer.pendingBytes > this.maxUnwritten) await wrote; // only the disk slows the upstream down
      }
      const result = await writer.commit();
      this.size = this.received = this.written = result.size;
      this.state = 'committed';
      this.settle({ digest: this.digest, size: result.size, fetched: true });
    } catch (e) {
      if (body !== undefined) destroyBody(body);
      await writer.cancel().catch(() => {});
      this.fail(asError(e));
    }
  }

  private append(chunk: Buffer): void {
    this.chunks.push(chunk);
    this.starts.push(this.received);
    this.received += chunk.length;
  }

  /** Drops chunks that are on disk and older than the memory window. */
  private trim(): void {
    while (this.head < this.chunks.length) {
      const chunk = this.chunks[this.head]!;
      const end = this.starts[this.head]! + chunk.length;
      if (end > this.written || this.received - end < this.windowBytes) break;
      this.chunks[this.head] = undefined;
      this.head++;
      this.windowStart = end;
    }
    if (this.head > 1024 && this.head * 2 > this.chunks.length) {
      this.chunks = this.chunks.slice(this.head);
      this.starts = this.starts.slice(this.head);
      this.head = 0;
    }
  }

  /** The window chunk holding `pos`, cut to end before `end`. Requires windowStart <= pos < end <= received. */
  sliceAt(pos: number, end: number): Buffer {
    let lo = this.head;
    let hi = this.chunks.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >>> 1;
      if (this.starts[mid]! <= pos) lo = mid;
      else hi = mid - 1;
    }
    const start = this.starts[lo]!;
    const chunk = this.chunks[lo]!;
    return chunk.subarray(pos - start, Math.min(chunk.length, end - start));
  }

  /** How far a subscriber expecting `expectedSize` may read right now. */
  servableEnd(expectedSize: number | undefined): number {
    if (this.state === 'committed') return this.size;
    const expected = expectedSize ?? this.expectedSize;
    // Withhold the last byte until verified: a Content-Length response must not complete early.
    return expected === undefined ? this.received : Math.max(0, Math.min(this.received, expected - 1));
  }

  subscribe(expectedSize: number | undefined, highWaterMark: number): Readable {
    const reader = new FillReader(this, expectedSize, highWaterMark);
    if (this.state === 'failed') {
      reader.destroy(this.error);
      return reader;
    }
    this.subscribers.add(reader);
    return reader;
  }

  detach(reader: FillReader): void {
    if (this.subscribers.delete(reader)) this.maybeRelease();
  }

  private wakeWaiting(): void {
    for (const s of this.subscribers) if (s.waiting) s.pump();
  }

  private settle(outcome: FillOutcome): void {
    this.finished = true;
    this.onSettled();
    this.resolveDone(outcome);
    this.wakeWaiting();
    this.maybeRelease();
  }

  private fail(err: Error): void {
    this.state = 'failed';
    this.error = err;
    this.finished = true;
    this.onSettled();
    this.rejectReady(err);
    this.rejectDone(err);
    for (const s of [...this.subscribers]) s.destroy(err);
    this.maybeRelease();
  }

  private maybeRelease(): void {
    if (!this.finished || this.subscribers.size > 0 || this.released) return;
    this.released = true;
    this.chunks = [];
    this.starts = [];
    this.head = 0;
    const fh = this.readFh;
    this.readFh = undefined;
    fh?.close().catch(() => {});
  }

  snapshot(): FillSnapshot {
    let windowBytes = 0;
    for (let i = this.head; i < this.chunks.length; i++) windowBytes += this.chunks[i]?.length ?? 0;
    return { state: this.state, received: this.received, written: this.written, windowBytes, subscribers: this.subscribers.size };
  }
}

/** One client's view of a Fill: a pull stream that reads from the memory window or the file. */
class FillReader extends Readable {
  private pos = 0;
  /** Waiting for the fill to receive more bytes (woken by the fill). */
  waiting = false;
  private reading = false;
  private pumping = false;
  private again = false;
  private ended = false;

  constructor(
    private readonly fill: Fill,
    private readonly expectedSize: number | undefined,
    private readonly chunkSize: number,
  ) {
    super({ highWaterMark: chunkSize });
  }

  override _read(): void {
    this.pump();
  }

  override _destroy(err: Error | null, cb: (e?: Error | null) => void): void {
    this.fill.detach(this);
    cb(err);
  }

  pump(): void {
    if (this.pumping) {
      this.again = true;
      return;
    }
    this.pumping = true;
    try {
      do {
        this.again = false;
        this.step();
      } while (this.again && !this.destroyed);
    } finally {
      this.pumping = false;
    }
  }

  private step(): void {
    this.waiting = false;
    const f = this.fill;
    while (!this.destroyed && !this.reading && !this.ended) {
      if (f.state === 'failed') {
        this.destroy(f.error);
        return;
      }
      if (f.state === 'committed' && this.expectedSize !== undefined && this.expectedSize !== f.size) {
        this.destroy(new BlobSizeMismatch(f.digest, this.expectedSize, f.size, false));
        return;
      }
      const end = f.servableEnd(this.expectedSize);
      if (this.pos >= end) {
        if (f.state === 'committed') {
          this.ended = true;
          f.detach(this);
          this.push(null);
        } else {
          this.waiting = true;
        }
        return;
      }
      if (this.pos >= f.windowStart) {
        const slice = f.sliceAt(this.pos, end);
        this.pos += slice.length;
        if (!this.push(slice)) return;
        continue;
      }
      this.readFile(Math.min(end, f.written));
      return;
    }
  }

  private readFile(limit: number): void {
    const fh = this.fill.readFh;
    if (!fh) {
      this.destroy(new Error(`blob fill for ${this.fill.digest}: no file to read from`));
      return;
    }
    const want = Math.min(this.chunkSize, limit - this.pos);
    const buf = Buffer.allocUnsafe(want);
    this.reading = true;
    fh.read(buf, 0, want, this.pos).then(
      ({ bytesRead }) => {
        this.reading = false;
        if (this.destroyed) return;
        if (bytesRead === 0) {
          this.destroy(new Error(`blob fill for ${this.fill.digest}: file shorter than the bytes written`));
          return;
        }
        this.pos += bytesRead;
        if (this.push(bytesRead === want ? buf : buf.subarray(0, bytesRead))) this.pump();
      },
      (e: unknown) => {
        this.reading = false;
        this.destroy(asError(e));
      },
    );
  }
}

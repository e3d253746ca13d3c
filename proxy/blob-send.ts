// Sends a stored blob (or one range of it) to an HTTP response from its open file descriptor: read(2) into a
// buffer, write it to the socket, and hand the buffer back to a small pool once the socket is done with it, so
// a warm blob costs no allocation per chunk. Measured against `handle.createReadStream()` piped to the response
// (bench/, 50 MiB blob over loopback, 2 cores): ~1.2-1.5x the throughput and ~30% less CPU per GiB, because the
// stream allocated a fresh 1 MiB chunk per read (20% of the time went to the garbage collector) and went through
// the promise-based FileHandle.read.
//
// At most one read is in flight per transfer and a new read starts only when the socket accepted the last chunk
// ('drain'), so a transfer holds at most two chunks. The pool never makes a transfer wait: when it is empty (or a
// slow client still holds its buffers) a new buffer is allocated, and the pool keeps at most `maxFree` idle ones.
import { read } from 'node:fs';
import type { ServerResponse } from 'node:http';

/** 256 KiB: as fast as 1 MiB here (bench), and a quarter of the memory per transfer. */
export const SEND_CHUNK = 256 * 1024;

export class BufferPool {
  readonly #free: Buffer[] = [];

  constructor(
    readonly chunk = SEND_CHUNK,
    readonly maxFree = 64,
  ) {}

  take(): Buffer {
    return this.#free.pop() ?? Buffer.allocUnsafeSlow(this.chunk);
  }

  /** Only for a buffer nothing else references any more (its socket write completed without error). */
  give(b: Buffer): void {
    if (b.length === this.chunk && this.#free.length < this.maxFree) this.#free.push(b);
  }

  get idle(): number {
    return this.#free.length;
  }
}

const defaultPool = new BufferPool();

/**
 * Writes bytes [start, end] (inclusive) of `fd` to `res` (whose head is already set) and ends it. Resolves when
 * the response ended or was closed, and no read is in flight any more: only then may the caller close `fd`. A
 * read error or a file shorter than `end` destroys the response, so the client sees a broken transfer.
 */
export function sendFileRange(res: ServerResponse, fd: number, start: number, end: number, pool: BufferPool = defaultPool): Promise<void> {
  return new Promise<void>((resolve) => {
    let pos = start;
    let reading = false;
    let stopped = false;
    const finish = (): void => {
      if (reading) return; // the read's callback comes back here
      res.off('close', onClose);
      res.off('drain', pump);
      resolve();
    };
    const stop = (): void => {
      stopped = true;
      finish();
    };
    const onClose = (): void => stop();
    function pump(): void {
      if (stopped || reading) return;
      if (res.destroyed) return stop();
      if (pos > end) {
        res.end();
        return stop();
      }
      const buf = pool.take();
      reading = true;
      read(fd, buf, 0, Math.min(buf.length, end - pos + 1), pos, (err, n) => {
        reading = false;
        if (stopped || res.destroyed) {
          pool.give(buf);
          return stop();
        }
        if (err || n === 0) {
          pool.give(buf);
          res.destroy(err ?? new Error(`file ended at byte ${pos}, before byte ${end}`));
          return stop();
        }
        pos += n;
        const ok = res.write(n === buf.length ? buf : buf.subarray(0, n), (e) => {
          if (!e) pool.give(buf);
        });
        if (ok) pump();
        else res.once('drain', pump);
      });
    }
    res.on('close', onClose);
    pump();
  });
}

// Counts what the servers under test asked the upstream registry for, from the upstream's own access log
// (distribution writes one combined-log line per request once it is answered): the same count for all three
// servers, whatever their own statistics say.
import { closeSync, openSync, readSync, statSync } from 'node:fs';

export interface UpstreamCounts {
  readonly blobGet: number;
  readonly blobHead: number;
  readonly manifestGet: number;
  readonly manifestHead: number;
  readonly other: number;
  /** Blob GETs per digest (only digests fetched more than once). */
  readonly repeatedBlobs: number;
}

const LINE = /"(GET|HEAD) (\/v2\/[^ "]*) HTTP\/1\.[01]" (\d{3})/;

export class UpstreamLog {
  constructor(readonly file: string) {}

  offset(): number {
    try {
      return statSync(this.file).size;
    } catch {
      return 0;
    }
  }

  /** Waits until the log has not grown for `quietMs` (an in-flight upstream transfer is logged when it ends). */
  async settle(quietMs = 300, maxMs = 15_000): Promise<void> {
    const deadline = Date.now() + maxMs;
    let size = this.offset();
    let since = Date.now();
    while (Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 50));
      const s = this.offset();
      if (s !== size) {
        size = s;
        since = Date.now();
      } else if (Date.now() - since >= quietMs) {
        return;
      }
    }
  }

  countSince(offset: number): UpstreamCounts {
    const end = this.offset();
    const len = Math.max(0, end - offset);
    const buf = Buffer.alloc(len);
    const fd = openSync(this.file, 'r');
    try {
      readSync(fd, buf, 0, len, offset);
    } finally {
      closeSync(fd);
    }
    let blobGet = 0;
    let blobHead = 0;
    let manifestGet = 0;
    let manifestHead = 0;
    let other = 0;
    const perBlob = new Map<string, number>();
    for (const line of buf.toString('utf8').split('\n')) {
      const m = LINE.exec(line);
      if (!m) continue;
      const [, method, path] = m as unknown as [string, string, string];
      const blob = /\/blobs\/(sha256:[0-9a-f]{64})$/.exec(path);
      if (blob) {
        if (method === 'GET') {
          blobGet++;
          perBlob.set(blob[1]!, (perBlob.get(blob[1]!) ?? 0) + 1);
        } else blobHead++;
      } else if (path.includes('/manifests/')) {
        if (method === 'GET') manifestGet++;
        else manifestHead++;
      } else other++;
    }
    return { blobGet, blobHead, manifestGet, manifestHead, other, repeatedBlobs: [...perBlob.values()].filter((n) => n > 1).length };
  }
}

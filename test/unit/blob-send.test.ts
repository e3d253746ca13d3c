// proxy/blob-send.ts: a stored blob's bytes from its descriptor through pooled buffers, whole or one range, and
// what happens when the client goes away or the file is shorter than promised.
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import * as fsp from 'node:fs/promises';
import { createServer, request, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BufferPool, sendFileRange } from '../../proxy/blob-send.js';

const dir = mkdtempSync(join(tmpdir(), 'portcullis-blob-send-'));
const data = randomBytes(3 * 64 * 1024 + 123);
const file = join(dir, 'blob');
writeFileSync(file, data);
const pool = new BufferPool(64 * 1024, 4);

let server: Server;
let port = 0;
/** What each handler saw: resolved once sendFileRange resolved and the handle was closed. */
const finished: Array<Promise<{ closedAfterSend: boolean }>> = [];

async function handler(req: IncomingMessage, res: ServerResponse): Promise<{ closedAfterSend: boolean }> {
  const u = new URL(req.url!, 'http://x');
  const start = Number(u.searchParams.get('start') ?? 0);
  const end = Number(u.searchParams.get('end') ?? data.length - 1);
  const claimed = Number(u.searchParams.get('claim') ?? end - start + 1);
  const h = await fsp.open(file, 'r');
  res.writeHead(200, { 'Content-Length': claimed });
  await sendFileRange(res, h.fd, start, start + claimed - 1, pool);
  await h.close();
  return { closedAfterSend: true };
}

beforeAll(async () => {
  server = createServer({ keepAlive: true }, (req, res) => {
    finished.push(handler(req, res));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  port = (server.address() as AddressInfo).port;
});

afterAll(async () => {
  server.closeAllConnections();
  await new Promise((r) => server.close(r));
  rmSync(dir, { recursive: true, force: true });
});

function get(path: string): Promise<{ body: Buffer; complete: boolean }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      let done = false;
      const end = (complete: boolean) => {
        if (done) return;
        done = true;
        resolve({ body: Buffer.concat(chunks), complete });
      };
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => end(res.complete));
      res.on('aborted', () => end(false));
      res.on('error', () => end(false));
    });
    req.on('error', reject);
    req.end();
  });
}

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

describe('sendFileRange', () => {
  it('sends the whole file, then again with the buffers it pooled', async () => {
    for (let i = 0; i < 3; i++) {
      const r = await get('/');
      expect(r.complete).toBe(true);
      expect(sha(r.body)).toBe(sha(data));
    }
    await Promise.all(finished);
    expect(pool.idle).toBeGreaterThan(0);
    expect(pool.idle).toBeLessThanOrEqual(4);
  });

  it('sends an inclusive range, including one shorter than a chunk and one byte', async () => {
    for (const [s, e] of [[0, 0], [5, 17], [64 * 1024 - 3, 2 * 64 * 1024 + 9], [data.length - 1, data.length - 1]] as const) {
      const r = await get(`/?start=${s}&end=${e}`);
      expect(r.complete).toBe(true);
      expect(r.body.equals(data.subarray(s, e + 1))).toBe(true);
    }
  });

  it('breaks the transfer when the file is shorter than the length it promised', async () => {
    const r = await get(`/?start=0&claim=${data.length + 1000}`);
    expect(r.complete).toBe(false);
    expect(r.body.length).toBe(data.length);
    const seen = await finished[finished.length - 1];
    expect(seen?.closedAfterSend).toBe(true);
  });

  it('settles (so the descriptor can be closed) when the client goes away mid-transfer', async () => {
    const big = join(dir, 'big');
    writeFileSync(big, randomBytes(32 * 1024 * 1024));
    const before = finished.length;
    const r = await new Promise<{ complete: boolean }>((resolve) => {
      const srv = createServer(async (_req, res) => {
        const h = await fsp.open(big, 'r');
        res.writeHead(200, { 'Content-Length': 32 * 1024 * 1024 });
        await sendFileRange(res, h.fd, 0, 32 * 1024 * 1024 - 1, pool);
        await h.close();
        srv.close();
        resolve({ complete: res.writableFinished });
      });
      srv.listen(0, '127.0.0.1', () => {
        const p = (srv.address() as AddressInfo).port;
        const req = request({ host: '127.0.0.1', port: p, path: '/', agent: false }, (res) => {
          let n = 0;
          res.on('data', (c: Buffer) => {
            n += c.length;
            if (n > 256 * 1024) req.destroy();
          });
          res.on('error', () => {});
        });
        req.on('error', () => {});
        req.end();
      });
    });
    expect(r.complete).toBe(false);
    expect(finished.length).toBe(before);
  });
});

// A fake upstream in front of a real registry, for the faults a real registry cannot produce on demand: bytes that
// change in transit (a flipped bit in a blob, a manifest that no longer hashes to its digest) and a slow link.
// Everything else is forwarded to the real registry untouched, so the mirror still talks to distribution 2.8.
import { createServer, request as httpRequest, type IncomingHttpHeaders, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';

export interface SlowBlob {
  readonly digest: string;
  /** Bytes written per tick. */
  readonly chunkBytes: number;
  /** Milliseconds between ticks. */
  readonly intervalMs: number;
}

/** Which responses to tamper with; change the fields at any time, the next request sees the new value. */
export interface FakeUpstreamFaults {
  /** GET /v2/<repo>/blobs/<digest>: one byte in the middle is flipped (same length, same headers). */
  corruptBlob?: string | undefined;
  /** GET /v2/<repo>/manifests/<digest>: one byte near the end is changed (same length, same headers). */
  alterManifest?: string | undefined;
  /** GET /v2/<repo>/blobs/<digest>: sent in small chunks with pauses in between. */
  slowBlob?: SlowBlob | undefined;
}

export interface FakeUpstream {
  /** `http://127.0.0.1:<port>` */
  readonly url: string;
  readonly faults: FakeUpstreamFaults;
  /** `METHOD path` of every request received, in order. */
  readonly requests: string[];
  /** How many responses were tampered with (corrupted or altered). */
  readonly tampered: { count: number };
  stop(): Promise<void>;
}

const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'transfer-encoding', 'upgrade', 'proxy-connection', 'te', 'trailer']);

function forwardHeaders(h: IncomingHttpHeaders): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  for (const [k, v] of Object.entries(h)) if (v !== undefined && !HOP_BY_HOP.has(k)) out[k] = v;
  return out;
}

function readAll(s: IncomingMessage): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    s.on('data', (c: Buffer) => chunks.push(c));
    s.on('end', () => resolve(Buffer.concat(chunks)));
    s.on('error', reject);
  });
}

/** Starts the fake on a free loopback port, forwarding to `targetUrl` (an origin such as the lab registry's). */
export async function startFakeUpstream(targetUrl: string): Promise<FakeUpstream> {
  const target = new URL(targetUrl);
  const faults: FakeUpstreamFaults = {};
  const requests: string[] = [];
  const tampered = { count: 0 };
  const sockets = new Set<Socket>();

  const handle = (req: IncomingMessage, res: ServerResponse): void => {
    const path = req.url ?? '/';
    const method = req.method ?? 'GET';
    requests.push(`${method} ${path}`);
    const headers = forwardHeaders(req.headers);
    headers.host = target.host;
    const up = httpRequest({ host: target.hostname, port: target.port, path, method, headers, agent: false }, (ur) => {
      const status = ur.statusCode ?? 502;
      const h = forwardHeaders(ur.headers);
      const blob = /^\/v2\/.+\/blobs\/(sha256:[0-9a-f]{64})$/.exec(path)?.[1];
      const manifest = /^\/v2\/.+\/manifests\/(sha256:[0-9a-f]{64})$/.exec(path)?.[1];
      const corrupt = method === 'GET' && status === 200 && blob !== undefined && blob === faults.corruptBlob;
      const alter = method === 'GET' && status === 200 && manifest !== undefined && manifest === faults.alterManifest;
      const slow = method === 'GET' && status === 200 && blob !== undefined && blob === faults.slowBlob?.digest ? faults.slowBlob : undefined;
      if (!corrupt && !alter && !slow) {
        res.writeHead(status, h);
        ur.pipe(res);
        return;
      }
      readAll(ur).then(
        (body) => {
          if (corrupt && body.length > 0) {
            const i = body.length >> 1;
            body[i] = body[i]! ^ 0x01;
            tampered.count++;
          }
          if (alter && body.length > 2) {
            // A hex digit of the last descriptor's digest (or whatever sits there): same length, other bytes.
            const i = body.lastIndexOf('"') - 1;
            const at = i > 0 ? i : body.length - 2;
            body[at] = body[at] === 0x30 ? 0x31 : 0x30;
            tampered.count++;
          }
          h['content-length'] = String(body.length);
          res.writeHead(status, h);
          if (!slow) {
            res.end(body);
            return;
          }
          let pos = 0;
          const tick = (): void => {
            if (res.destroyed) return;
            const next = Math.min(body.length, pos + slow.chunkBytes);
            res.write(body.subarray(pos, next));
            pos = next;
            if (pos >= body.length) res.end();
            else setTimeout(tick, slow.intervalMs);
          };
          tick();
        },
        (e: unknown) => res.destroy(e as Error),
      );
    });
    up.on('error', (e) => {
      if (!res.headersSent) {
        res.writeHead(502, { 'content-type': 'text/plain' });
        res.end(`fake upstream: ${e.message}\n`);
      } else {
        res.destroy(e);
      }
    });
    req.pipe(up);
  };

  const server: Server = createServer(handle);
  server.on('connection', (s: Socket) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });
  const a = server.address();
  if (a === null || typeof a !== 'object') throw new Error('fake upstream: no address');
  let stopped: Promise<void> | undefined;
  return {
    url: `http://127.0.0.1:${a.port}`,
    faults,
    requests,
    tampered,
    stop() {
      stopped ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const s of sockets) s.destroy();
      });
      return stopped;
    },
  };
}

// Warm-blob serving throughput over a local node:http server, by read strategy. Prints figures; asserts nothing.
//
//   npx tsc -p tsconfig.json && node bench/blob-store-throughput.mjs [sizeMiB=200] [runs=5]
//
// The client runs in a worker thread (its own event loop) so it does not share the server's; `curl` is also
// used when present, as a client that costs next to nothing.

import { randomFillSync } from 'node:crypto';
import { execFile, execFileSync } from 'node:child_process';
import { promisify } from 'node:util';
import { createReadStream } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { Worker } from 'node:worker_threads';

import { BlobStore } from '../dist/cache/blob-store.js';
import { BlobFill } from '../dist/cache/blob-fill.js';
import { sha256Digest } from '../dist/cache/digest.js';

const WORKER = `
const { parentPort, workerData } = require('node:worker_threads');
const http = require('node:http');
const agent = new http.Agent({ keepAlive: true });
function one(url) {
  return new Promise((resolve, reject) => {
    http.get(url, { agent }, (res) => {
      let n = 0;
      res.on('data', (c) => { n += c.length; });
      res.on('end', () => resolve(n));
      res.on('error', reject);
    }).on('error', reject);
  });
}
parentPort.on('message', async ({ url, parallel }) => {
  try {
    const got = await Promise.all(Array.from({ length: parallel }, () => one(url)));
    parentPort.postMessage({ got });
  } catch (e) {
    parentPort.postMessage({ error: String(e) });
  }
});
`;
let worker;

const MiB = 1024 * 1024;
const sizeMiB = Number(process.argv[2] ?? 200);
const runs = Number(process.argv[3] ?? 5);
const size = sizeMiB * MiB;

const root = await mkdtemp(join(tmpdir(), 'portcullis-bench-'));
try {
  const store = await BlobStore.open(root);
  const data = Buffer.allocUnsafe(size);
  for (let off = 0; off < size; off += 64 * MiB) randomFillSync(data, off, Math.min(64 * MiB, size - off));
  const digest = sha256Digest(data);

  // Write path: hash + write + fsync + rename, fed in 64 KiB chunks like a socket would.
  {
    const t0 = process.hrtime.bigint();
    const w = store.createWriter(digest, size);
    let last;
    for (let off = 0; off < size; off += 64 * 1024) {
      last = w.write(data.subarray(off, off + 64 * 1024));
      if (w.pendingBytes > 8 * MiB) await last;
    }
    await w.commit();
    report('store write (sha256 + write + fsync + rename)', size, process.hrtime.bigint() - t0);
  }
  const path = store.path(digest);

  const routes = {
    'createReadStream hwm 64 KiB (default)': (res) => pipeline(createReadStream(path, { highWaterMark: 64 * 1024 }), res),
    'createReadStream hwm 1 MiB': (res) => pipeline(createReadStream(path, { highWaterMark: MiB }), res),
    'createReadStream hwm 4 MiB': (res) => pipeline(createReadStream(path, { highWaterMark: 4 * MiB }), res),
    'store.open().stream() (1 MiB)': async (res) => {
      const blob = await store.open(digest);
      await pipeline(blob.stream(), res);
    },
    'readFile into one Buffer, res.end(buf)': async (res) => res.end(await readFile(path)),
    'Buffer already in memory, res.end(buf) (ceiling)': (res) => res.end(data),
  };
  const names = Object.keys(routes);

  const server = http.createServer((req, res) => {
    const i = Number(new URL(req.url, 'http://x').searchParams.get('v'));
    if (req.url.startsWith('/fill')) {
      serveFill(res);
      return;
    }
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': size });
    Promise.resolve(routes[names[i]](res)).catch(() => res.destroy());
  });
  // Cold path: each request is a fresh fill from an in-memory upstream into a fresh store directory.
  let fillStore;
  let fills;
  function serveFill(res) {
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': size });
    const h = fills.fill(digest, size, () => Readable.from(chunks(data, 64 * 1024)));
    pipeline(h.stream, res).catch(() => res.destroy());
  }
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const port = server.address().port;

  const hasCurl = (() => {
    try {
      execFileSync('curl', ['--version'], { stdio: 'ignore' });
      return true;
    } catch {
      return false;
    }
  })();

  console.log(`\nserving a ${sizeMiB} MiB stored blob over http://127.0.0.1 (${runs} runs each; best / median)`);
  for (const [i, name] of names.entries()) {
    const url = `http://127.0.0.1:${port}/?v=${i}`;
    await measure(`${name} | node client`, () => nodeClient(url, 1));
    if (hasCurl) await measure(`${name} | curl`, () => curlClient(url));
  }
  {
    const i = names.indexOf('store.open().stream() (1 MiB)');
    await measure('store.open().stream() (1 MiB) | 4 parallel node clients', () => nodeClient(`http://127.0.0.1:${port}/?v=${i}`, 4), 4);
    const j = names.indexOf('createReadStream hwm 64 KiB (default)');
    await measure('createReadStream hwm 64 KiB | 4 parallel node clients', () => nodeClient(`http://127.0.0.1:${port}/?v=${j}`, 4), 4);
  }

  console.log(`\ncold fill from an in-memory upstream (hash + temp write + fsync + rename + fan-out)`);
  for (const clients of [1, 4]) {
    const times = [];
    for (let r = 0; r < runs; r++) {
      if (fillStore) await rm(fillStore.root, { recursive: true, force: true });
      fillStore = await BlobStore.open(await mkdtemp(join(tmpdir(), 'portcullis-bench-fill-')));
      fills = new BlobFill(fillStore);
      const t0 = process.hrtime.bigint();
      await nodeClient(`http://127.0.0.1:${port}/fill`, clients);
      times.push(process.hrtime.bigint() - t0);
    }
    summarize(`fill, ${clients} concurrent client(s)`, size * clients, times);
  }
  if (fillStore) await rm(fillStore.root, { recursive: true, force: true });
  server.close();
} finally {
  await rm(root, { recursive: true, force: true });
}

function* chunks(buf, n) {
  for (let off = 0; off < buf.length; off += n) yield buf.subarray(off, off + n);
}

async function measure(label, once, parallel = 1) {
  await once(); // warm-up (page cache, JIT)
  const times = [];
  for (let r = 0; r < runs; r++) {
    const t0 = process.hrtime.bigint();
    await once();
    times.push(process.hrtime.bigint() - t0);
  }
  summarize(label, size * parallel, times);
}

function summarize(label, bytes, times) {
  const sorted = [...times].sort((a, b) => (a < b ? -1 : 1));
  const best = sorted[0];
  const median = sorted[Math.floor(sorted.length / 2)];
  const gbs = (ns) => (bytes / Number(ns)).toFixed(2);
  console.log(`  ${label.padEnd(62)} ${gbs(best)} / ${gbs(median)} GB/s`);
}

function report(label, bytes, ns) {
  console.log(`${label}: ${(bytes / Number(ns)).toFixed(2)} GB/s (${(Number(ns) / 1e6).toFixed(0)} ms for ${bytes / MiB} MiB)`);
}

// Async: the server lives in this process, a synchronous exec would block it.
function curlClient(url) {
  return promisify(execFile)('curl', ['-s', '-o', '/dev/null', '--fail', url]);
}

function nodeClient(url, parallel) {
  worker ??= new Worker(WORKER, { eval: true });
  worker.unref();
  return new Promise((resolve, reject) => {
    worker.once('message', (m) => {
      if (m.error) reject(new Error(m.error));
      else if (m.got.some((n) => n !== size)) reject(new Error(`short read: ${m.got}`));
      else resolve();
    });
    worker.postMessage({ url, parallel });
  });
}

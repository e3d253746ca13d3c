// The bench's load generator: a separate process (started by bench/run.ts in its own session, with an IPC channel)
// that drives HTTP/1.1 keep-alive load at a server and reports what it measured. It never runs inside a server.
//
// The client is a minimal HTTP/1.1 reader over node:net (Content-Length and chunked bodies, no pipelining): on
// these 2-core machines undici's body stream costs more CPU than the server under test at > 1 GB/s (measured:
// ~1.2-1.4 GB/s vs 2-2.9 GB/s against the same bare server), and every cycle the client burns is taken from the
// server it is measuring.
//
// Operations (IPC message { id, op, args } -> { id, ok, result | error }):
//   window    N connections GET one URL in a loop; bytes counted in a time window after a ramp-up
//   pull      C clients each pull a list of tags like a container engine (manifest, index -> amd64 manifest,
//             config + layers, `parallel` blob downloads at once per client), optionally sha256-checking everything
//   manifests N connections GET manifests by tag (cycling through a tag list); latency percentiles and req/s
//   get       one GET on a fresh connection (first-request latency)
import { createHash } from 'node:crypto';
import net from 'node:net';

const CRLF2 = Buffer.from('\r\n\r\n');
const now = () => performance.now();
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

class HttpError extends Error {}

/** One keep-alive HTTP/1.1 connection, one request at a time. */
class Conn {
  constructor(host, port) {
    this.host = host;
    this.port = port;
    this.sock = undefined;
    this.cur = undefined;
    this.destroyed = false;
  }

  #connect() {
    const s = net.connect({ host: this.host, port: this.port, noDelay: true });
    this.sock = s;
    s.on('data', (c) => this.#onData(c));
    const fail = (err) => {
      if (this.sock === s) this.sock = undefined;
      const cur = this.cur;
      if (cur) {
        this.cur = undefined;
        // A body delimited by the connection's end is complete when it ends.
        if (!err && cur.state === 'close') this.#finish(cur);
        else cur.reject(err ?? new HttpError('connection closed'));
      }
    };
    s.on('error', (e) => fail(e));
    s.on('close', () => fail(undefined));
  }

  destroy() {
    this.destroyed = true;
    this.sock?.destroy();
    this.sock = undefined;
    const cur = this.cur;
    this.cur = undefined;
    cur?.reject(new HttpError('aborted'));
  }

  /**
   * GET/HEAD `path`. `o.collect` keeps the body, `o.hash` sha256-hashes it, `o.onBytes(n)` sees each chunk's size.
   * Resolves { status, headers, bytes, body?, sha256? }.
   */
  request(path, o = {}) {
    if (this.destroyed) return Promise.reject(new HttpError('aborted'));
    if (this.cur) return Promise.reject(new Error('Conn: one request at a time'));
    if (!this.sock) this.#connect();
    const method = o.method ?? 'GET';
    let head = `${method} ${path} HTTP/1.1\r\nHost: ${this.host}:${this.port}\r\nUser-Agent: portcullis-bench\r\n`;
    for (const [k, v] of Object.entries(o.headers ?? {})) head += `${k}: ${v}\r\n`;
    head += '\r\n';
    return new Promise((resolve, reject) => {
      this.cur = {
        resolve, reject, method, o,
        state: 'head', headBufs: [], headLen: 0,
        status: 0, headers: {}, remaining: 0, bytes: 0,
        chunks: o.collect ? [] : undefined,
        hash: o.hash ? createHash('sha256') : undefined,
        chunkState: 'size', sizeLine: '',
      };
      this.sock.write(head);
    });
  }

  #body(cur, buf) {
    cur.bytes += buf.length;
    if (cur.chunks) cur.chunks.push(buf);
    if (cur.hash) cur.hash.update(buf);
    if (cur.o.onBytes) cur.o.onBytes(buf.length);
  }

  #abort(cur, err) {
    if (this.cur === cur) this.cur = undefined;
    this.sock?.destroy();
    this.sock = undefined;
    cur.reject(err);
  }

  #finish(cur) {
    if (this.cur === cur) this.cur = undefined;
    if (cur.headers['connection'] === 'close') {
      this.sock?.destroy();
      this.sock = undefined;
    }
    cur.resolve({
      status: cur.status,
      headers: cur.headers,
      bytes: cur.bytes,
      body: cur.chunks ? Buffer.concat(cur.chunks) : undefined,
      sha256: cur.hash ? cur.hash.digest('hex') : undefined,
    });
  }

  #onData(c) {
    let cur = this.cur;
    while (cur && c.length > 0) {
      if (cur.state === 'head') {
        cur.headBufs.push(c);
        cur.headLen += c.length;
        const all = cur.headBufs.length === 1 ? c : Buffer.concat(cur.headBufs);
        const i = all.indexOf(CRLF2);
        if (i < 0) {
          if (cur.headLen > 64 * 1024) return this.#abort(cur, new HttpError('response header too large'));
          return;
        }
        const lines = all.subarray(0, i).toString('latin1').split('\r\n');
        const m = /^HTTP\/1\.[01] (\d{3})/.exec(lines[0]);
        if (!m) return this.#abort(cur, new HttpError(`bad status line ${JSON.stringify(lines[0])}`));
        cur.status = Number(m[1]);
        for (const l of lines.slice(1)) {
          const k = l.indexOf(':');
          if (k > 0) cur.headers[l.slice(0, k).trim().toLowerCase()] = l.slice(k + 1).trim();
        }
        c = all.subarray(i + 4);
        const cl = cur.headers['content-length'];
        if (cur.method === 'HEAD' || cur.status === 204 || cur.status === 304) {
          cur.state = 'done';
        } else if (/chunked/i.test(cur.headers['transfer-encoding'] ?? '')) {
          cur.state = 'chunked';
        } else if (cl !== undefined) {
          cur.remaining = Number(cl);
          cur.state = cur.remaining === 0 ? 'done' : 'body';
        } else {
          cur.state = 'close';
          cur.headers['connection'] = 'close';
        }
        if (cur.state === 'done') {
          this.#finish(cur);
          cur = this.cur;
        }
        continue;
      }
      if (cur.state === 'body') {
        const take = Math.min(cur.remaining, c.length);
        this.#body(cur, take === c.length ? c : c.subarray(0, take));
        cur.remaining -= take;
        c = c.subarray(take);
        if (cur.remaining === 0) {
          this.#finish(cur);
          cur = this.cur;
        }
        continue;
      }
      if (cur.state === 'close') {
        this.#body(cur, c);
        return;
      }
      // chunked
      if (cur.chunkState === 'size' || cur.chunkState === 'trailer' || cur.chunkState === 'crlf') {
        const nl = c.indexOf(10);
        if (nl < 0) {
          cur.sizeLine += c.toString('latin1');
          return;
        }
        const line = (cur.sizeLine + c.subarray(0, nl).toString('latin1')).replace(/\r$/, '');
        cur.sizeLine = '';
        c = c.subarray(nl + 1);
        if (cur.chunkState === 'crlf') {
          cur.chunkState = 'size';
        } else if (cur.chunkState === 'trailer') {
          if (line === '') {
            this.#finish(cur);
            cur = this.cur;
          }
        } else {
          const n = parseInt(line.split(';')[0], 16);
          if (!Number.isFinite(n)) return this.#abort(cur, new HttpError(`bad chunk size ${JSON.stringify(line)}`));
          if (n === 0) cur.chunkState = 'trailer';
          else {
            cur.remaining = n;
            cur.chunkState = 'data';
          }
        }
        continue;
      }
      const take = Math.min(cur.remaining, c.length);
      this.#body(cur, c.subarray(0, take));
      cur.remaining -= take;
      c = c.subarray(take);
      if (cur.remaining === 0) cur.chunkState = 'crlf';
    }
  }
}

function target(url) {
  const u = new URL(url);
  return { host: u.hostname, port: Number(u.port || 80), path: u.pathname + u.search };
}

function percentiles(sorted) {
  const at = (p) => (sorted.length === 0 ? NaN : sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]);
  let sum = 0;
  for (const x of sorted) sum += x;
  return {
    n: sorted.length,
    min: sorted[0] ?? NaN,
    p50: at(50),
    p90: at(90),
    p99: at(99),
    p999: at(99.9),
    max: sorted[sorted.length - 1] ?? NaN,
    mean: sum / Math.max(1, sorted.length),
  };
}

// ------------------------------------------------------------------------------------------------ operations

/** `conc` connections GET `url` in a loop; bytes received in [rampMs, rampMs + ms] give the rate. */
async function window({ url, conc, rampMs, ms }) {
  const t = target(url);
  let bytes = 0;
  let completed = 0;
  let stop = false;
  const errors = [];
  const conns = [];
  const onBytes = (n) => { bytes += n; };
  const loops = Array.from({ length: conc }, async () => {
    const c = new Conn(t.host, t.port);
    conns.push(c);
    while (!stop) {
      try {
        const r = await c.request(t.path, { onBytes });
        if (r.status !== 200) errors.push(`HTTP ${r.status}`);
        else completed++;
        if (errors.length > 20) stop = true;
      } catch (e) {
        if (!stop) errors.push(String(e.message ?? e));
      }
    }
  });
  const t0 = now();
  await sleep(rampMs);
  const b0 = bytes;
  const t1 = now();
  await sleep(ms);
  const b1 = bytes;
  const t2 = now();
  stop = true;
  for (const c of conns) c.destroy();
  await Promise.all(loops);
  const windowMs = t2 - t1;
  return {
    windowBytes: b1 - b0,
    windowMs,
    mibps: (b1 - b0) / (1024 * 1024) / (windowMs / 1000),
    totalBytes: bytes,
    totalMs: t2 - t0,
    completed,
    errors: errors.slice(0, 5),
    errorCount: errors.length,
  };
}

const ACCEPT = [
  'application/vnd.oci.image.index.v1+json',
  'application/vnd.oci.image.manifest.v1+json',
  'application/vnd.docker.distribution.manifest.list.v2+json',
  'application/vnd.docker.distribution.manifest.v2+json',
].join(', ');

/** One client pulling `tags` of `repo` like a container engine does; `expect` maps tag -> manifest digest. */
async function pullOne(base, repo, tags, parallel, verify, expect) {
  const t = target(base);
  const conns = Array.from({ length: parallel }, () => new Conn(t.host, t.port));
  let bytes = 0;
  let manifests = 0;
  let blobs = 0;
  const getManifest = async (ref, want) => {
    const r = await conns[0].request(`/v2/${repo}/manifests/${ref}`, { headers: { Accept: ACCEPT }, collect: true, hash: true });
    if (r.status !== 200) throw new HttpError(`manifest ${repo}:${ref}: HTTP ${r.status} ${r.body.toString('utf8').slice(0, 300)}`);
    bytes += r.bytes;
    manifests++;
    if (verify && want && `sha256:${r.sha256}` !== want) throw new HttpError(`manifest ${repo}:${ref}: got sha256:${r.sha256}, want ${want}`);
    return JSON.parse(r.body.toString('utf8'));
  };
  try {
    for (const tag of tags) {
      let doc = await getManifest(tag, expect?.[tag]);
      if (Array.isArray(doc.manifests)) {
        const d = doc.manifests.find((m) => m.platform?.architecture === 'amd64' && m.platform?.os === 'linux') ?? doc.manifests[0];
        doc = await getManifest(d.digest, d.digest);
      }
      const list = [doc.config, ...doc.layers];
      let next = 0;
      await Promise.all(conns.map(async (c) => {
        while (next < list.length) {
          const b = list[next++];
          const r = await c.request(`/v2/${repo}/blobs/${b.digest}`, { hash: verify });
          if (r.status !== 200) throw new HttpError(`blob ${b.digest}: HTTP ${r.status}`);
          if (r.bytes !== b.size) throw new HttpError(`blob ${b.digest}: ${r.bytes} bytes, want ${b.size}`);
          if (verify && `sha256:${r.sha256}` !== b.digest) throw new HttpError(`blob ${b.digest}: content hashes to sha256:${r.sha256}`);
          bytes += r.bytes;
          blobs++;
        }
      }));
    }
  } finally {
    for (const c of conns) c.destroy();
  }
  return { bytes, manifests, blobs };
}

async function pull({ base, repo, tags, clients, parallel = 3, verify = false, expect }) {
  const t0 = now();
  const per = await Promise.all(Array.from({ length: clients }, async () => {
    const s = now();
    const r = await pullOne(base, repo, tags, parallel, verify, expect);
    return { ...r, ms: now() - s };
  }));
  const ms = now() - t0;
  const bytes = per.reduce((a, r) => a + r.bytes, 0);
  return {
    ms,
    bytes,
    mibps: bytes / (1024 * 1024) / (ms / 1000),
    manifests: per.reduce((a, r) => a + r.manifests, 0),
    blobs: per.reduce((a, r) => a + r.blobs, 0),
    clientMs: per.map((r) => r.ms),
  };
}

/** `requests` manifest GETs by tag over `conc` keep-alive connections (stopping early at `capMs`). */
async function manifests({ base, repo, tags, conc, requests, capMs, offset = 0 }) {
  const t = target(base);
  const lat = new Float64Array(requests);
  let issued = 0;
  let n = 0;
  const statuses = {};
  const errors = [];
  const deadline = now() + capMs;
  let capped = false;
  const conns = [];
  const t0 = now();
  await Promise.all(Array.from({ length: conc }, async () => {
    const c = new Conn(t.host, t.port);
    conns.push(c);
    for (;;) {
      if (issued >= requests) break;
      if (now() > deadline) { capped = true; break; }
      const i = issued++;
      const tag = tags[(offset + i) % tags.length];
      const s = now();
      try {
        const r = await c.request(`/v2/${repo}/manifests/${tag}`, { headers: { Accept: ACCEPT } });
        lat[n++] = now() - s;
        statuses[r.status] = (statuses[r.status] ?? 0) + 1;
      } catch (e) {
        errors.push(String(e.message ?? e));
        if (errors.length > 20) break;
      }
    }
  }));
  const ms = now() - t0;
  for (const c of conns) c.destroy();
  const sorted = Array.from(lat.subarray(0, n)).sort((a, b) => a - b);
  return { ms, rps: n / (ms / 1000), capped, statuses, errors: errors.slice(0, 5), errorCount: errors.length, latencyMs: percentiles(sorted) };
}

/** One GET on a fresh connection. */
async function get({ url, accept = true }) {
  const t = target(url);
  const c = new Conn(t.host, t.port);
  const s = now();
  try {
    const r = await c.request(t.path, { headers: accept ? { Accept: ACCEPT } : {}, collect: true });
    return { ms: now() - s, status: r.status, bytes: r.bytes, body: r.status === 200 ? undefined : r.body.toString('utf8').slice(0, 500) };
  } finally {
    c.destroy();
  }
}

const ops = { window, pull, manifests, get };

process.on('message', async (msg) => {
  try {
    const f = ops[msg.op];
    if (!f) throw new Error(`unknown op ${msg.op}`);
    process.send({ id: msg.id, ok: true, result: await f(msg.args) });
  } catch (e) {
    process.send({ id: msg.id, ok: false, error: String(e?.stack ?? e) });
  }
});
// The parent is gone (or done): nothing left to measure.
process.on('disconnect', () => process.exit(0));
process.send?.({ ready: true });

// `portcullis tuf …`: the TUF client command contract, over HTTP, on repositories the tests generate and sign
// (RepoBuilder), including key rotations, consistent snapshots and expiry with an injected clock.
import { createHash } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { main } from '../../daemon/cli.js';
import { RepoBuilder } from '../fixtures/repo-builder.js';

const T0 = new Date('2026-11-25T00:00:00Z');

interface Env { dir: string; repo: RepoBuilder; server: Server; base: string; targets: Map<string, Buffer>; targetGets: string[] }
let env: Env;

async function start(consistentSnapshot: boolean): Promise<Env> {
  const repo = new RepoBuilder({ dialect: 'tuf', start: T0, consistentSnapshot });
  const targets = new Map<string, Buffer>();
  const targetGets: string[] = [];
  const server = createServer((req, res) => {
    const path = decodeURIComponent((req.url ?? '/').split('?')[0]!);
    const meta = path.startsWith('/metadata/') ? repo.server.get(path.slice('/metadata/'.length)) : undefined;
    const tgt = path.startsWith('/targets/') ? targets.get(path.slice('/targets/'.length)) : undefined;
    if (tgt) targetGets.push(path);
    const body = meta ?? tgt;
    res.writeHead(body ? 200 : 404).end(body);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const port = (server.address() as { port: number }).port;
  return { dir: mkdtempSync(join(tmpdir(), 'portcullis-tuf-cli-')), repo, server, base: `http://127.0.0.1:${port}`, targets, targetGets };
}

/** Publishes a target file under every name a client may ask for (plain and hash-prefixed). */
function addTarget(name: string, content: string): Buffer {
  const bytes = env.repo.addTarget(name, content);
  const slash = name.lastIndexOf('/');
  env.targets.set(name, bytes);
  for (const alg of ['sha256', 'sha512']) {
    env.targets.set(`${name.slice(0, slash + 1)}${createHash(alg).update(bytes).digest('hex')}.${name.slice(slash + 1)}`, bytes);
  }
  return bytes;
}

async function cli(args: string[], at = env.repo.now): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const code = await main(args, { out: (s) => (out += s), err: (s) => (err += s) }, () => new Date(at.getTime()));
  return { code, out, err };
}

const md = () => join(env.dir, 'metadata');
const td = () => join(env.dir, 'targets');
const g = () => ['tuf', '--metadata-dir', md(), '--metadata-url', `${env.base}/metadata/`];

async function init(): Promise<void> {
  const rootFile = join(env.dir, 'root.json');
  writeFileSync(rootFile, env.repo.server.get('1.root.json')!);
  const ri = await cli([...g(), "init", rootFile]);
  expect(ri.code, ri.err).toBe(0);
}

describe.each([true, false])('tuf command contract (consistent_snapshot: %s)', (consistent) => {
  beforeEach(async () => {
    env = await start(consistent);
    addTarget('file1.txt', 'one');
    addTarget('dir/file2.txt', 'two');
    env.repo.publish();
  });
  afterEach(async () => {
    await new Promise((r) => env.server.close(r));
    rmSync(env.dir, { recursive: true, force: true });
  });

  it('init + refresh: exit 0, and the metadata dir holds only the trusted top-level files', async () => {
    await init();
    expect(readdirSync(md()).sort()).toEqual(['root.json']);
    const r = await cli([...g(), 'refresh']);
    expect(r.code, r.err).toBe(0);
    expect(readdirSync(md()).sort()).toEqual(['root.json', 'snapshot.json', 'targets.json', 'timestamp.json']);
    expect(readFileSync(join(md(), 'timestamp.json'))).toEqual(env.repo.server.get('timestamp.json'));
  });

  it('global options may come before the command word, and download verifies and stores targets in order', async () => {
    await init();
    const r = await cli([...g(), 'download', '--target-name', 'file1.txt', '--target-name', 'dir/file2.txt', '--target-base-url', `${env.base}/targets/`, '--target-dir', td()]);
    expect(r.code, r.err).toBe(0);
    expect(readFileSync(join(td(), 'file1.txt')).toString()).toBe('one');
    expect(readFileSync(join(td(), encodeURIComponent('dir/file2.txt'))).toString()).toBe('two');
    if (consistent) expect(env.targetGets.every((p) => /\/[0-9a-f]{64,128}\.[^/]+$/.test(p))).toBe(true);
  });

  it('a verified copy already in the target dir is not fetched again', async () => {
    await init();
    const args = [...g(), 'download', '--target-name', 'file1.txt', '--target-base-url', `${env.base}/targets/`, '--target-dir', td()];
    expect((await cli(args)).code).toBe(0);
    const n = env.targetGets.length;
    expect((await cli(args)).code).toBe(0);
    expect(env.targetGets.length).toBe(n);
  });

  it.each([
    ['arbitrary target: same length, other bytes', 'bad', /DIGEST_MISMATCH/],
    ['endless data: a target longer than signed', 'evil and endless', /ENDLESS_DATA/],
  ])('%s is refused, exit 1, nothing stored', async (_name, content, reason) => {
    await init();
    for (const k of [...env.targets.keys()]) if (k.endsWith('file1.txt')) env.targets.set(k, Buffer.from(content));
    const r = await cli([...g(), 'download', '--target-name', 'file1.txt', '--target-base-url', `${env.base}/targets/`, '--target-dir', td()]);
    expect(r.code).toBe(1);
    expect(r.err).toMatch(reason);
    expect(existsSync(join(td(), 'file1.txt'))).toBe(false);
  });

  it('the first failing --target-name stops the rest', async () => {
    await init();
    const r = await cli([...g(), 'download', '--target-name', 'missing.txt', '--target-name', 'file1.txt', '--target-base-url', `${env.base}/targets/`, '--target-dir', td()]);
    expect(r.code).toBe(1);
    expect(existsSync(join(td(), 'file1.txt'))).toBe(false);
  });

  it('root and targets key rotations are followed across refreshes', async () => {
    await init();
    expect((await cli([...g(), 'refresh'])).code).toBe(0);
    env.repo.rotateKeys('root');
    env.repo.publish();
    env.repo.rotateKeys('targets');
    env.repo.rotateKeys('timestamp');
    addTarget('file3.txt', 'three');
    env.repo.publish();
    const r = await cli([...g(), 'download', '--target-name', 'file3.txt', '--target-base-url', `${env.base}/targets/`, '--target-dir', td()]);
    expect(r.code, r.err).toBe(0);
    expect(JSON.parse(readFileSync(join(md(), 'root.json'), 'utf8')).signed.version).toBe(3);
  });

  it('freeze: once the timestamp expires (injected clock), refresh fails with exit 1 and the trusted files stay', async () => {
    await init();
    expect((await cli([...g(), 'refresh'])).code).toBe(0);
    const before = readdirSync(md()).map((f) => readFileSync(join(md(), f)).toString('base64')).join();
    const r = await cli([...g(), 'refresh'], new Date(T0.getTime() + 2 * 86_400_000));
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/EXPIRED/);
    expect(readdirSync(md()).map((f) => readFileSync(join(md(), f)).toString('base64')).join()).toBe(before);
  });

  it('refresh without init fails with exit 1 and a clear message', async () => {
    const r = await cli([...g(), 'refresh']);
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/no trusted root/);
  });
});

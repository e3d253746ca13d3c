// `portcullis trust list` / `portcullis trust inspect` against the real peers: rows equal to `notary list`, JSON and
// pretty output equal to what the real docker CLI 20.10 prints for `docker trust inspect`, through changes made on
// the live Notary server with the real notary CLI (new tags, removal, targets key rotation, a new delegation), with
// the trusted state kept in one --state-dir across fresh `main()` calls and answered again with --offline.
import { readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { main } from '../../daemon/cli.js';
import { certPublicKeyId, dockerTrust, type DockerTrust, type TrustInspection as Inspection } from '../harness/docker-trust.js';
import { parseNotaryList, startLab, type Lab, type NotaryListEntry } from '../harness/lab.js';
import { makeTempDir, run } from '../harness/process.js';
import { makeCa, selfSignedCert, type KeyPair } from '../harness/tls.js';

const ROOT = resolve(import.meta.dirname, '../..');

let lab: Lab;
let docker: DockerTrust;
let work: string;
let stateDir: string;
const timings: Record<string, number> = {};

async function timed<T>(name: string, f: () => Promise<T>): Promise<T> {
  const t = performance.now();
  try {
    return await f();
  } finally {
    timings[name] = Math.round(performance.now() - t);
  }
}

beforeAll(async () => {
  lab = await timed('lab start', () => startLab({ withSigned: true }));
  work = makeTempDir('portcullis-trust-inspect');
  stateDir = join(work, 'state');
  docker = dockerTrust(lab.notaryUrl, lab.caPem, join(work, 'docker-config'));
});

afterAll(async () => {
  await lab?.stop();
  console.log('trust-inspect timings (ms):', { ...timings, lab: lab?.timings });
});

// ------------------------------------------------------------------------------------------ helpers

interface CliResult {
  code: number;
  out: string;
  err: string;
}

/** One in-process `portcullis` run: a fresh main(), so a fresh LMDB open of the state dir every time. */
async function cli(...args: string[]): Promise<CliResult> {
  let out = '';
  let err = '';
  const code = await main(args, { out: (s) => void (out += s), err: (s) => void (err += s) });
  return { code, out, err };
}

function server(dir = stateDir): string[] {
  return ['-s', lab.notaryUrl, '--tlscacert', lab.caPath, '--state-dir', dir];
}

async function ok(...args: string[]): Promise<string> {
  const r = await cli(...args);
  expect(r.code, `portcullis ${args.join(' ')} failed: ${r.err}`).toBe(0);
  expect(r.err).toBe('');
  return r.out;
}

async function dockerInspect(ref: string, pretty = false): Promise<string> {
  const r = await docker.inspect(ref, { pretty });
  expect(r.code, `docker trust inspect ${ref}: ${r.stderr}`).toBe(0);
  return r.stdout;
}


/**
 * docker sorts rows by tag only (Go's sort.Slice, not stable): the order of two rows for one tag with different
 * digests is unspecified, so such runs are put in digest order. Everything else is compared in docker's order.
 */
function normalize(json: string): Inspection[] {
  const repos = JSON.parse(json) as Inspection[];
  for (const r of repos) {
    const rows = r.SignedTags;
    for (let i = 0; i < rows.length; ) {
      let j = i + 1;
      while (j < rows.length && rows[j]!.SignedTag === rows[i]!.SignedTag) j++;
      rows.splice(i, j - i, ...rows.slice(i, j).sort((a, b) => (a.Digest < b.Digest ? -1 : 1)));
      i = j;
    }
  }
  return repos;
}

/** Line for line, modulo whitespace (runs of blanks collapsed, ends trimmed). */
function lines(s: string): string[] {
  return s.split('\n').map((l) => l.trim().replace(/\s+/g, ' '));
}

interface Checked {
  notary: NotaryListEntry[];
  docker: Inspection;
}

/**
 * The equality checks, run after every change on the server:
 *  - `trust list` (table and --json) equals `notary list`;
 *  - `trust inspect --json` equals `docker trust inspect` for the repository and for each listed tag (plus an
 *    unsigned and a missing tag);
 *  - the pretty output (default and --pretty) equals `docker trust inspect --pretty`;
 *  - restart: fresh main() calls on the same --state-dir answer the same, online and with --offline.
 */
async function checkAgainstPeers(step: string): Promise<Checked> {
  const t0 = performance.now();
  const gun = lab.gun;

  // notary list
  const notaryRows = await lab.notaryList();
  const listOut = await ok('trust', 'list', ...server(), gun);
  expect(parseNotaryList(listOut), `${step}: trust list vs notary list`).toEqual(notaryRows);
  const listJson = await ok('trust', 'list', '--json', ...server(), gun);
  expect(JSON.parse(listJson)).toEqual(notaryRows);

  // docker trust inspect --json, the repository and single tags
  const refs = [gun, ...new Set([...notaryRows.map((r) => r.name), 'v2', 'no-such-tag'])].map((t, i) => (i === 0 ? t : `${gun}:${t}`));
  const ours = new Map<string, string>();
  let dockerRepo: Inspection | undefined;
  for (const ref of refs) {
    const theirs = await dockerInspect(ref);
    const mine = await ok('trust', 'inspect', '--json', ...server(), ref);
    expect(normalize(mine), `${step}: inspect --json ${ref}`).toEqual(normalize(theirs));
    ours.set(ref, mine);
    if (ref === gun) dockerRepo = normalize(theirs)[0];
  }

  // --pretty / default against docker --pretty
  for (const ref of [gun, `${gun}:${notaryRows[0]?.name ?? 'v1'}`]) {
    const theirs = await dockerInspect(ref, true);
    const byDefault = await ok('trust', 'inspect', ...server(), ref);
    const pretty = await ok('trust', 'inspect', '--pretty', ...server(), ref);
    expect(lines(byDefault), `${step}: inspect ${ref} (pretty) vs docker --pretty`).toEqual(lines(theirs));
    expect(pretty).toBe(byDefault);
    // not required, but true today: byte for byte, tabwriter columns included
    expect(byDefault).toBe(theirs);
    ours.set(`pretty ${ref}`, byDefault);
  }

  // restart: new main() calls with the same state dir, online and --offline, answer the same
  expect(await ok('trust', 'inspect', '--json', ...server(), gun)).toBe(ours.get(gun));
  for (const ref of refs) expect(await ok('trust', 'inspect', '--json', '--offline', ...server(), ref), `${step}: --offline ${ref}`).toBe(ours.get(ref));
  expect(await ok('trust', 'inspect', '--offline', ...server(), gun)).toBe(ours.get(`pretty ${gun}`));
  expect(await ok('trust', 'list', '--offline', ...server(), gun)).toBe(listOut);
  // --offline needs no server at all
  expect(await ok('trust', 'list', '--offline', '--state-dir', stateDir, gun)).toBe(listOut);

  timings[`check: ${step}`] = Math.round(performance.now() - t0);
  return { notary: notaryRows, docker: dockerRepo! };
}

function manifestFile(name: string, bytes: Buffer): string {
  const p = join(work, `${name}.json`);
  writeFileSync(p, bytes);
  return p;
}

async function notaryOk(...args: string[]): Promise<void> {
  const r = await lab.notary(...args);
  expect(r.code, `notary ${args.join(' ')}: ${r.stderr}`).toBe(0);
}

const tagsOf = (c: Checked) => c.docker.SignedTags.map((r) => r.SignedTag);
const repositoryKeys = (i: Inspection) => i.AdministrativeKeys.find((a) => a.Name === 'Repository')!.Keys.map((k) => k.ID);

// ------------------------------------------------------------------------------------------ the tests

describe('portcullis trust list / inspect against notary and docker (live server)', () => {
  it('the lab as signed: equal to notary list and docker trust inspect', async () => {
    const c = await timed('step: initial', () => checkAgainstPeers('initial'));
    expect(c.notary.map((r) => [r.name, r.role])).toEqual([['multi', 'targets/releases'], ['v1', 'targets']]);
    expect(tagsOf(c)).toEqual(['multi', 'v1']);
    expect(c.docker.SignedTags.every((r) => r.Signers.join() === 'Repo Admin')).toBe(true);
    // targets/releases is not a "signer" for docker
    expect(c.docker.Signers).toEqual([]);
    expect(c.docker.AdministrativeKeys.map((a) => a.Name)).toEqual(['Root', 'Repository']);
  });

  it('notary add (new tags) + publish', async () => {
    await timed('step: add', async () => {
      await notaryOk('add', lab.gun, 'v2', manifestFile('v2', lab.images.v2.bytes));
      await notaryOk('add', lab.gun, 'v10', manifestFile('v1-oci', lab.images['v1-oci'].bytes));
      await notaryOk('publish', lab.gun);
    });
    const c = await checkAgainstPeers('after add');
    expect(c.notary.map((r) => r.name)).toEqual(['multi', 'v1', 'v10', 'v2']);
    // docker's natural order: v2 before v10
    expect(tagsOf(c)).toEqual(['multi', 'v1', 'v2', 'v10']);
  });

  it('notary remove + publish', async () => {
    await timed('step: remove', async () => {
      await notaryOk('remove', lab.gun, 'v1');
      await notaryOk('publish', lab.gun);
    });
    const c = await checkAgainstPeers('after remove');
    expect(c.notary.map((r) => r.name)).toEqual(['multi', 'v10', 'v2']);
    expect(tagsOf(c)).toEqual(['multi', 'v2', 'v10']);
  });

  it('notary key rotate <gun> targets + publish: the cached client follows the new targets key', async () => {
    const before = repositoryKeys((await checkAgainstPeers('before rotation')).docker);
    await timed('step: rotate targets', async () => {
      await notaryOk('key', 'rotate', lab.gun, 'targets');
      await notaryOk('publish', lab.gun);
    });
    const c = await checkAgainstPeers('after targets rotation');
    const after = repositoryKeys(c.docker);
    expect(after).toHaveLength(1);
    expect(after).not.toEqual(before);
    // tags signed with the old key were re-signed with the new one and are still trusted
    expect(tagsOf(c)).toEqual(['multi', 'v2', 'v10']);
  });

  it('a new delegation targets/qa (two certificate keys) and tags signed there', async () => {
    const [carol, dave] = await Promise.all([selfSignedCert(join(work, 'qa'), 'carol'), selfSignedCert(join(work, 'qa'), 'dave')]);
    const id = (k: KeyPair) => certPublicKeyId(readFileSync(k.certPath, 'utf8'));
    // list the keys with the larger public-key ID first, so metadata order and sorted order differ
    const [first, second] = id(carol) > id(dave) ? [carol, dave] : [dave, carol];
    await timed('step: delegation', async () => {
      await notaryOk('delegation', 'add', lab.gun, 'targets/qa', first.certPath, second.certPath, '--all-paths');
      await notaryOk('key', 'import', carol.keyPath, '--role', 'targets/qa');
      await notaryOk('publish', lab.gun);
      // same digest as the released v10: qa becomes its signer; v2 with another digest: no row, no signer
      await notaryOk('add', lab.gun, 'v10', manifestFile('v1-oci', lab.images['v1-oci'].bytes), '--roles', 'targets/qa');
      await notaryOk('add', lab.gun, 'v2', manifestFile('v1', lab.images.v1.bytes), '--roles', 'targets/qa');
      await notaryOk('add', lab.gun, 'qa-only', manifestFile('v1', lab.images.v1.bytes), '--roles', 'targets/qa');
      await notaryOk('publish', lab.gun);
    });
    const c = await checkAgainstPeers('after delegation');
    expect(c.notary.find((r) => r.name === 'qa-only')?.role).toBe('targets/qa');
    expect(tagsOf(c)).toEqual(['multi', 'v2', 'v10']);
    const signers = Object.fromEntries(c.docker.SignedTags.map((r) => [r.SignedTag, r.Signers]));
    expect(signers).toEqual({ multi: ['Repo Admin'], v2: ['Repo Admin'], v10: ['qa'] });
    // docker shows the public-key IDs of the certificates, in metadata order
    expect(c.docker.Signers).toEqual([{ Name: 'qa', Keys: [{ ID: id(first) }, { ID: id(second) }] }]);
  });

  it('a fresh state dir trusts the current data too (first use after all the changes)', async () => {
    const fresh = join(work, 'fresh-state');
    const theirs = await dockerInspect(lab.gun);
    expect(normalize(await ok('trust', 'inspect', '--json', ...server(fresh), lab.gun))).toEqual(normalize(theirs));
    expect(parseNotaryList(await ok('trust', 'list', ...server(fresh), lab.gun))).toEqual(await lab.notaryList());
  });
});

describe('failures: exit 1 and one clear line', () => {
  it('--offline with an empty state dir', async () => {
    const r = await cli('trust', 'inspect', '--offline', ...server(join(work, 'empty-state')), lab.gun);
    expect(r.code).toBe(1);
    expect(r.out).toBe('');
    expect(r.err).toMatch(/^portcullis: refused \(NO_TRUST_DATA\): no trusted metadata for .*library\/demo\n$/);
    const l = await cli('trust', 'list', '--offline', '--state-dir', join(work, 'empty-state'), lab.gun);
    expect(l.code).toBe(1);
    expect(l.err).toMatch(/NO_TRUST_DATA/);
  });

  it('a GUN the server has no trust data for', async () => {
    const gun = `${lab.registryHost}/library/nothing-here`;
    // docker agrees there is nothing
    const d = await docker.inspect(gun);
    expect(d.code).toBe(1);
    expect(d.stderr).toMatch(/No signatures or cannot access/);
    for (const cmd of [['inspect', '--json'], ['inspect'], ['list']]) {
      const r = await cli('trust', ...cmd, ...server(join(work, 'unknown-gun-state')), gun);
      expect(r.code, cmd.join(' ')).toBe(1);
      expect(r.out).toBe('');
      expect(r.err).toMatch(/^portcullis: refused \(NO_TRUST_DATA\): .*does not exist on the server\n$/);
    }
  });

  it('a CA that did not issue the server certificate', async () => {
    const other = await makeCa(join(work, 'other-ca'), 'some other CA');
    const r = await cli('trust', 'list', '-s', lab.notaryUrl, '--tlscacert', other.certPath, '--state-dir', join(work, 'wrong-ca-state'), lab.gun);
    expect(r.code).toBe(1);
    expect(r.out).toBe('');
    expect(r.err).toContain(lab.notaryUrl);
    expect(r.err).toMatch(/^portcullis: refused \(TRUST_UNAVAILABLE\): .*(certificate|verify)/i);
    expect(r.err.trimEnd().split('\n')).toHaveLength(1);
  });
});

describe('bin/portcullis', () => {
  it('runs the compiled CLI as one path: trust list against the lab', async () => {
    const build = await timed('tsc build', () =>
      run(process.execPath, [join(ROOT, 'node_modules/typescript/bin/tsc'), '-p', 'tsconfig.json'], { cwd: ROOT, timeoutMs: 180_000 }),
    );
    expect(build.code, build.stdout + build.stderr).toBe(0);
    const r = await timed('bin trust list', () =>
      run(join(ROOT, 'bin/portcullis'), ['trust', 'list', ...server(join(work, 'bin-state')), lab.gun], { cwd: work }),
    );
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toBe('');
    const rows = parseNotaryList(r.stdout);
    expect(rows.length).toBeGreaterThan(0);
    expect(rows).toEqual(await lab.notaryList());
    const i = await run(join(ROOT, 'bin/portcullis'), ['trust', 'inspect', '--json', ...server(join(work, 'bin-state')), lab.gun], { cwd: work });
    expect(i.code, i.stderr).toBe(0);
    expect(normalize(i.stdout)).toEqual(normalize(await dockerInspect(lab.gun)));
  });
});

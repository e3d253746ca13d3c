// The signing command line end to end (issue 5), driven through `main()` (and once through bin/portcullis) with keys
// on real SoftHSM2 tokens, publishing to the real notary-server/notary-signer over TLS, checked with the real
// `notary` CLI, the real `docker trust inspect`, a Docker Content Trust pull through a real dockerd, and Portcullis'
// own mirror gate with an N-of-M policy rule. No mocks: the tokens live in a SoftHSM token directory under this
// test's temp dir (SOFTHSM2_CONF), chosen by label (SoftHSM slot numbers are random).
import { createHash } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LmdbMetadataStore } from '../../cache/lmdb-metadata-store.js';
import { main } from '../../daemon/cli.js';
import { pkcs11Unavailable } from '../../hsm/pkcs11-signer.js';
import { defaultTrustLimits as L } from '../../trust/limits.js';
import { NotaryClient } from '../../trust/notary-client.js';
import { startDockerd, type Dockerd } from '../harness/clients.js';
import { dockerTrust, type DockerTrust, type TrustInspection as Inspection } from '../harness/docker-trust.js';
import { ACCEPT_ALL, pushDemoImages, type DemoTag, type PushedManifest } from '../harness/images.js';
import { parseNotaryList, startLab, type Lab, type NotaryListEntry } from '../harness/lab.js';
import { startMirror, type Mirror } from '../harness/mirror.js';
import { makeTempDir, run } from '../harness/process.js';
import { createSoftHsmDir, softhsmUnavailable, type SoftHsmDir, type SoftHsmToken } from '../harness/softhsm.js';

const ROOT = resolve(import.meta.dirname, '../..');
const unavailable = pkcs11Unavailable() ?? softhsmUnavailable();

let lab: Lab;
let hsm: SoftHsmDir;
let dockerd: Dockerd;
let docker: DockerTrust;
let mirror: Mirror;
let client: NotaryClient;
let work: string;
/** The CLI's publishing state (`--state-dir`), shared by every command here as one build host would. */
let stateDir: string;
/** A separate state dir used only by `portcullis trust inspect`, to show a cached client following rotations. */
let inspectDir: string;
/** Added to the mirror's clock, so a refresh right after a publication is not folded into the previous one. */
let clockSkewMs = 0;

let tokens: { root: SoftHsmToken; build01: SoftHsmToken; build02: SoftHsmToken };
let images: { app: Record<DemoTag, PushedManifest>; pair: Record<DemoTag, PushedManifest> };
let gunApp: string;
let gunPair: string;

/** pkcs11: URI of a key on a token: `pin-source=file:` (mode 0600) and `module-path=` the SoftHSM module. */
const key = (t: SoftHsmToken, object: string, query = '') => hsm.uri(t, `object=${object}`, query);

// keys on the tokens (labels as a build host would name them)
const K = {
  rootApp: () => key(tokens.root, 'root-app'),
  rootPair: () => key(tokens.root, 'root-pair'),
  targetsApp: () => key(tokens.build01, 'targets-app'),
  targets2027: () => key(tokens.build01, 'targets-2027'),
  targetsPair: () => key(tokens.build01, 'targets-pair'),
  release: () => key(tokens.build01, 'release-2026'), // the build host's signing key ("ci"; "alice" on team/pair)
  bob: () => key(tokens.build02, 'release-2026'), // the same label on another token
};

beforeAll(async () => {
  if (unavailable) return;
  // every token exists before the first signer opens (SoftHSM scans its token directory in C_Initialize)
  hsm = createSoftHsmDir();
  tokens = {
    root: hsm.addToken('offline-root', '2468-root'),
    build01: hsm.addToken('build01'),
    build02: hsm.addToken('build02', '1357-bob'),
  };
  work = makeTempDir('portcullis-signing-cli');
  stateDir = join(work, 'state');
  inspectDir = join(work, 'inspect-state');
  const [l, d] = await Promise.all([startLab({ withSigned: false }), startDockerd({})]);
  lab = l;
  dockerd = d;
  gunApp = `${lab.registryHost}/team/app`;
  gunPair = `${lab.registryHost}/team/pair`;
  images = {
    app: await pushDemoImages(lab.registry, join(work, 'oci-app'), 'team/app'),
    pair: await pushDemoImages(lab.registry, join(work, 'oci-pair'), 'team/pair'),
  };
  docker = dockerTrust(lab.notaryUrl, lab.caPem, join(work, 'docker-config'));
  client = new NotaryClient({ baseUrl: lab.notaryUrl, ca: lab.caPem });
  mirror = await startMirror(lab, {
    rules: [`- { match: "${lab.registryHost}/team/pair", trust: notary, signers: [targets/alice, targets/bob], threshold: 2 }`],
    clock: () => new Date(Date.now() + clockSkewMs),
  });
});

afterAll(async () => {
  await client?.close();
  await mirror?.stop();
  await Promise.allSettled([dockerd?.stop(), lab?.stop()]);
  hsm?.dispose();
});

// ------------------------------------------------------------------------------------------ helpers

interface CliResult {
  code: number;
  out: string;
  err: string;
  /** The audit lines (NDJSON) on stderr. */
  audit: Record<string, unknown>[];
  /** stderr without the audit lines. */
  errText: string;
}

/** `portcullis …` in-process, stdout and stderr captured. */
async function cli(...argv: string[]): Promise<CliResult> {
  let out = '';
  let err = '';
  const code = await main(argv, { out: (s) => void (out += s), err: (s) => void (err += s) });
  return splitErr(code, out, err);
}

function splitErr(code: number, out: string, err: string): CliResult {
  const lines = err.split('\n').filter((l) => l !== '');
  const audit = lines.filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Record<string, unknown>);
  return { code, out, err, audit, errText: lines.filter((l) => !l.startsWith('{')).join('\n') };
}

async function ok(...argv: string[]): Promise<CliResult> {
  const r = await cli(...argv);
  expect(r.code, `portcullis ${argv.join(' ')}\n${r.err}`).toBe(0);
  return r;
}

/** The Notary server, TLS CA and the CLI's state dir. */
const srv = () => ['-s', lab.notaryUrl, '--tlscacert', lab.caPath, '--state-dir', stateDir];

async function notaryList(gun: string, role?: string): Promise<NotaryListEntry[]> {
  const r = await lab.notary('-s', lab.notaryUrl, 'list', gun, ...(role ? ['--roles', role] : []));
  expect(r.code, `notary list ${gun}: ${r.stderr}`).toBe(0);
  return parseNotaryList(r.stdout);
}


const dockerInspect = (gun: string): Promise<Inspection> => docker.inspectOne(gun);

const adminKey = (i: Inspection, name: 'Root' | 'Repository') => i.AdministrativeKeys.find((a) => a.Name === name)!.Keys.map((k) => k.ID);

/**
 * What the server holds for a GUN: every role's bytes (sha256) and the timestamp's version (the server re-signs
 * the timestamp itself, but only when the snapshot changes or it nears expiry).
 */
async function serverState(gun: string, delegations: readonly string[]): Promise<Record<string, string>> {
  const state: Record<string, string> = {};
  for (const role of ['root', 'targets', 'snapshot', ...delegations]) {
    const b = await client.fetchMetadata(gun, `${role}.json`, 1 << 20);
    state[role] = b ? createHash('sha256').update(b).digest('hex') : '-';
  }
  const ts = await client.fetchMetadata(gun, 'timestamp.json', L.timestampMaxBytes);
  state['timestamp'] = ts ? `v${(JSON.parse(ts.toString('utf8')) as { signed: { version: number } }).signed.version}` : '-';
  return state;
}

/** GET a manifest through the mirror in explicit prefix mode. */
async function mirrorManifest(repo: string, tag: string): Promise<{ status: number; digest: string | null; body: Buffer }> {
  const r = await fetch(`${mirror.url}/v2/${repo}/manifests/${tag}`, { headers: { accept: ACCEPT_ALL } });
  return { status: r.status, digest: r.headers.get('docker-content-digest'), body: Buffer.from(await r.arrayBuffer()) };
}

const sha256 = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

/** Key IDs `key generate` printed, by key. */
const keyIds: Record<string, string> = {};

// ------------------------------------------------------------------------------------------ the tests

describe.skipIf(unavailable !== undefined)(`portcullis key / trust / sign with SoftHSM tokens${unavailable ? ` (skipped: ${unavailable})` : ''}`, () => {
  it('key generate + key list on the token; trust init, signer add, sign (digest from the registry, and given); notary list, docker trust inspect and the audit line agree', async () => {
    // keys on the tokens
    for (const [name, uri] of Object.entries({ rootApp: K.rootApp(), rootPair: K.rootPair(), targetsApp: K.targetsApp(), targets2027: K.targets2027(), targetsPair: K.targetsPair(), release: K.release(), bob: K.bob() })) {
      // bob's public key also goes to a PEM file: the repository admin adds his signer without his token
      const pemOut = name === 'bob' ? ['--public-key-out', join(work, 'bob.pub.pem')] : [];
      const g = await ok('key', 'generate', '--token', uri, '--type', 'ecdsa-p256', '--json', ...pemOut);
      const j = JSON.parse(g.out) as { uri: string; label: string; idHex: string; algorithm: string; keyId: string; publicKeyPem: string };
      expect(j.algorithm).toBe('ecdsa-p256');
      expect(j.keyId).toMatch(/^[0-9a-f]{64}$/);
      expect(uri).toContain(`;object=${j.label}?`);
      expect(j.uri).toContain(`;object=${j.label};id=%${j.idHex.match(/../g)!.join('%')}?`);
      expect(j.publicKeyPem).toContain('BEGIN PUBLIC KEY');
      keyIds[name] = j.keyId;
    }
    // the human form too
    const human = await ok('key', 'generate', '--token', key(tokens.build01, 'scratch'), '--type', 'ecdsa-p256');
    expect(human.out).toMatch(/^generated ecdsa-p256 key [0-9a-f]{64}\n {2}key: {2}pkcs11:token=build01;object=scratch;id=(%[0-9a-f]{2})+\?pin-source=file:/);
    // a second key with the same label is refused, the token is unchanged
    const dup = await cli('key', 'generate', '--token', K.release());
    expect(dup.code).toBe(1);
    expect(dup.err).toMatch(/^portcullis: key error \(OBJECT_EXISTS\): .*release-2026/);
    expect(await ok('key', 'delete', '--token', key(tokens.build01, 'scratch')).then((r) => r.out)).toMatch(/^deleted pkcs11:token=build01;object=scratch.*: 1 private key, 1 public key\(s\), 0 certificate\(s\)\n$/);

    const list = await ok('key', 'list', '--token', hsm.uri(tokens.build01));
    const header = list.out.split('\n')[0]!;
    expect(header.split(/\s{2,}/)).toEqual(['LABEL', 'ID', 'ALGORITHM', 'NOTARY KEY ID', 'CERTIFICATE', 'URI']);
    const rows = list.out.trim().split('\n').slice(1).map((l) => l.split(/\s+/));
    expect(rows.map((r) => r[0]).sort()).toEqual(['release-2026', 'targets-2027', 'targets-app', 'targets-pair']);
    const releaseRow = rows.find((r) => r[0] === 'release-2026')!;
    expect(releaseRow.slice(2, 5)).toEqual(['ecdsa-p256', keyIds['release']!, 'no']);
    const listJson = JSON.parse((await ok('key', 'list', '--token', hsm.uri(tokens.build02), '--json')).out) as { label: string; keyId: string; certificate: boolean }[];
    expect(listJson).toMatchObject([{ label: 'release-2026', keyId: keyIds['bob'], certificate: false }]);

    // trust init: root key on the offline token, targets key on the build token, snapshot/timestamp on the server
    const init = await ok('trust', 'init', gunApp, '--root-key', K.rootApp(), '--targets-key', K.targetsApp(), ...srv());
    expect(init.out).toBe(
      `initialised ${gunApp}: root v1, targets v1 (snapshot and timestamp keys on the server)\n` +
      `stored the root certificate (CN=${gunApp}) on the token next to the key\n`,
    );
    expect(init.audit).toMatchObject([{ operation: 'trust-init', outcome: 'published', gun: gunApp, role: 'root', versions: { root: 1, targets: 1 } }]);
    const rootRow = JSON.parse((await ok('key', 'list', '--token', K.rootApp(), '--json')).out) as { label: string; certificate: boolean; certificateKeyId?: string }[];
    expect(rootRow).toMatchObject([{ label: 'root-app', certificate: true }]);
    keyIds['rootAppCertificate'] = rootRow[0]!.certificateKeyId!;

    // signer add, as `docker trust signer add ci <gun> --key …`: targets/ci and targets/releases
    const add = await ok('trust', 'signer', 'add', 'ci', gunApp, '--key', K.release(), '--targets-key', K.targetsApp(), ...srv());
    expect(add.out).toBe(`added 1 key(s) to targets/ci, targets/releases of ${gunApp}: targets v2\n`);
    expect(add.audit).toMatchObject([{ operation: 'signer-add', outcome: 'published', role: 'targets/ci,targets/releases', versions: { targets: 2 } }]);

    // sign v1: digest and size read from the real registry
    const v1 = images.app.v1;
    const s1 = await ok('sign', `${gunApp}:v1`, '--key', K.release(), '--registry-url', lab.registryUrl, ...srv());
    expect(s1.out).toBe(`signed ${gunApp}:v1 ${v1.digest} (${v1.size} bytes): targets/ci v1, targets/releases v1\n`);
    expect(s1.errText).toBe('');
    expect(s1.audit).toHaveLength(1);
    const line = s1.audit[0]!;
    expect(line).toMatchObject({
      name: 'portcullis-audit', event: 'notary-publish', operation: 'sign', outcome: 'published', gun: gunApp, tag: 'v1',
      digest: v1.digest, role: 'targets/ci,targets/releases', versions: { 'targets/ci': 1, 'targets/releases': 1 }, attempts: 1,
      server: lab.notaryUrl,
    });
    expect(String(line['keyUri'])).toMatch(/^pkcs11:token=build01;object=release-2026\?pin-source=file:.*&module-path=/);
    expect(s1.err).not.toContain(tokens.build01.pin);

    // sign multi (an OCI index) with the default registry URL: http://<registry host of the GUN>
    const sm = await ok('sign', `${gunApp}:multi`, '--key', K.release(), '--insecure-registry', ...srv());
    expect(sm.out).toBe(`signed ${gunApp}:multi ${images.app.multi.digest} (${images.app.multi.size} bytes): targets/ci v2, targets/releases v2\n`);

    // sign v1-oci with digest and size given, through the compiled binary (bin/portcullis -> dist/)
    const build = await run(process.execPath, [join(ROOT, 'node_modules/typescript/bin/tsc'), '-p', 'tsconfig.json'], { cwd: ROOT, timeoutMs: 300_000 });
    expect(build.code, build.stdout + build.stderr).toBe(0);
    const oci = images.app['v1-oci'];
    const bin = await run(join(ROOT, 'bin/portcullis'), ['sign', `${gunApp}:v1-oci`, '--key', K.release(), '--digest', oci.digest, '--size', String(oci.size), ...srv()], {
      cwd: work, env: { ...process.env, SOFTHSM2_CONF: hsm.conf }, timeoutMs: 120_000,
    });
    expect(bin.code, bin.stderr).toBe(0);
    expect(bin.stdout).toBe(`signed ${gunApp}:v1-oci ${oci.digest} (${oci.size} bytes): targets/ci v3, targets/releases v3\n`);
    const binAudit = splitErr(0, bin.stdout, bin.stderr);
    expect(binAudit.errText).toBe('');
    expect(binAudit.audit).toMatchObject([{ operation: 'sign', tag: 'v1-oci', digest: oci.digest, versions: { 'targets/ci': 3, 'targets/releases': 3 } }]);

    // the real notary CLI: tags with their digests and sizes (it prints one role per tag: here targets/ci)…
    const expected = [['multi', images.app.multi], ['v1', v1], ['v1-oci', oci]] as const;
    expect(await notaryList(gunApp)).toEqual(expected.map(([name, m]) => ({ name, digest: m.sha256Hex, size: m.size, role: 'targets/ci' })));
    // …and the same in targets/releases, the role docker content trust reads
    expect(await notaryList(gunApp, 'targets/releases')).toEqual(expected.map(([name, m]) => ({ name, digest: m.sha256Hex, size: m.size, role: 'targets/releases' })));

    // the real docker CLI (no daemon): the tag, its signer "ci" with the token key's Notary key ID, the admin keys
    const d = await dockerInspect(gunApp);
    expect(d.SignedTags).toContainEqual({ SignedTag: 'v1', Digest: v1.sha256Hex, Signers: ['ci'] });
    expect(d.Signers).toEqual([{ Name: 'ci', Keys: [{ ID: keyIds['release'] }] }]);
    expect(adminKey(d, 'Repository')).toEqual([keyIds['targetsApp']]);
    // the root key is listed by the ID of its certificate (the one trust init stored on the token), as Notary does
    expect(adminKey(d, 'Root')).toEqual([keyIds['rootAppCertificate']]);

    // and Portcullis' own trust inspect, caching this state in its own state dir (used again after the rotation)
    const mine = JSON.parse((await ok('trust', 'inspect', '--json', '-s', lab.notaryUrl, '--tlscacert', lab.caPath, '--state-dir', inspectDir, gunApp)).out) as Inspection[];
    expect(mine[0]!.SignedTags).toEqual(d.SignedTags);
    expect(mine[0]!.AdministrativeKeys).toEqual(d.AdministrativeKeys);
  });

  it('Docker Content Trust: docker pull through a real dockerd succeeds for the signed tag and fails for unsigned ones', async () => {
    // the docker CLI finds the Notary CA in <DOCKER_CONFIG>/tls/<host:port>/ca.crt (dockerTrust wrote it there)
    const env = { DOCKER_CONTENT_TRUST: '1', DOCKER_CONTENT_TRUST_SERVER: lab.notaryUrl, DOCKER_CONFIG: docker.configDir };
    const v1 = images.app.v1;
    const good = await dockerd.pull(`${gunApp}:v1`, { env });
    expect(good.code, good.combined).toBe(0);
    expect(good.stdout).toContain(`Pull (1 of 1): ${gunApp}:v1@${v1.digest}`);
    expect(good.stderr).toContain(`Tagging ${gunApp}@${v1.digest} as ${gunApp}:v1`);
    expect(await dockerd.repoDigests(`${gunApp}:v1`)).toEqual([`${gunApp}@${v1.digest}`]);

    // v2 is in the registry but not signed
    const unsigned = await dockerd.pull(`${gunApp}:v2`, { env });
    expect(unsigned.code).not.toBe(0);
    expect(unsigned.stderr).toMatch(/No valid trust data for v2/);
    expect(await dockerd.repoDigests(`${gunApp}:v2`)).toEqual([]);

    // a repository with no trust data at all
    const none = await dockerd.pull(`${gunPair}:v1`, { env });
    expect(none.code).not.toBe(0);
    expect(none.stderr).toMatch(/does not have trust data for .*team\/pair/);

    // without DCT the same daemon pulls the unsigned tag: the refusal above came from the trust check
    const plain = await dockerd.pull(`${gunApp}:v2`, { env: { DOCKER_CONFIG: docker.configDir } });
    expect(plain.code, plain.combined).toBe(0);
  });

  it('threshold 2 across two token signers: the mirror gate refuses a tag signed by one (403 THRESHOLD) and serves it pinned once both signed', async () => {
    await ok('trust', 'init', gunPair, '--root-key', K.rootPair(), '--targets-key', K.targetsPair(), ...srv());
    // one role per build host (threshold 1 each, only in that role): alice on build01, bob on build02 (added from
    // the public key PEM `key generate --public-key-out` wrote: the admin never touches bob's token)
    await ok('trust', 'signer', 'add', 'alice', gunPair, '--key', K.release(), '--targets-key', K.targetsPair(), '--no-releases', ...srv());
    const addBob = await ok('trust', 'signer', 'add', 'bob', gunPair, '--key', join(work, 'bob.pub.pem'), '--targets-key', K.targetsPair(), '--no-releases', ...srv());
    expect(addBob.out).toBe(`added 1 key(s) to targets/bob of ${gunPair}: targets v3\n`);
    const deleg = await lab.notary('-s', lab.notaryUrl, 'delegation', 'list', gunPair);
    expect(deleg.stdout).toMatch(new RegExp(`targets/bob\\s.*${keyIds['bob']}`));

    const v1 = images.pair.v1;
    const repo = `${lab.registryHost}/team/pair`;
    // no signature yet
    const none = await mirrorManifest(repo, 'v1');
    expect(none.status).toBe(403);

    // alice signs (explicit role)
    const a = await ok('sign', `${gunPair}:v1`, '--key', K.release(), '--role', 'targets/alice', '--registry-url', lab.registryUrl, ...srv());
    expect(a.out).toBe(`signed ${gunPair}:v1 ${v1.digest} (${v1.size} bytes): targets/alice v1\n`);
    clockSkewMs += 5_000;
    const one = await mirrorManifest(repo, 'v1');
    expect(one.status).toBe(403);
    const e = (JSON.parse(one.body.toString('utf8')) as { errors: { code: string; message: string; detail: { reason: string } }[] }).errors[0]!;
    expect(e.code).toBe('DENIED');
    expect(e.detail.reason).toBe('THRESHOLD');
    expect(e.message).toContain(`tag v1 of ${repo} has no valid Notary trust data (targets/alice, targets/bob)`);

    // bob signs on the other token (default role: every delegation his key signs for = targets/bob)
    const b = await ok('sign', `${gunPair}:v1`, '--key', K.bob(), '--registry-url', lab.registryUrl, ...srv());
    expect(b.out).toBe(`signed ${gunPair}:v1 ${v1.digest} (${v1.size} bytes): targets/bob v1\n`);
    expect(b.audit).toMatchObject([{ operation: 'sign', role: 'targets/bob', keyUri: expect.stringContaining('token=build02;object=release-2026') }]);
    clockSkewMs += 5_000;
    const both = await mirrorManifest(repo, 'v1');
    expect(both.status).toBe(200);
    expect(both.digest).toBe(v1.digest);
    expect(sha256(both.body)).toBe(v1.digest);
    // v2: signed by bob only -> refused
    await ok('sign', `${gunPair}:v2`, '--key', K.bob(), '--insecure-registry', ...srv());
    clockSkewMs += 5_000;
    expect((await mirrorManifest(repo, 'v2')).status).toBe(403);

    // one role with both keys and threshold 2: notary-server needs both signatures in ONE upload, so the CLI
    // refuses to publish with one key (the trust core's threshold check, before any upload) and takes both at once
    await ok('trust', 'signer', 'add', 'pair', gunPair, '--key', K.release(), '--key', K.bob(), '--threshold', '2', '--targets-key', K.targetsPair(), '--no-releases', ...srv());
    const before = await serverState(gunPair, ['targets/alice', 'targets/bob', 'targets/pair']);
    const short = await cli('sign', `${gunPair}:multi`, '--key', K.release(), '--role', 'targets/pair', '--insecure-registry', ...srv());
    expect(short.code).toBe(1);
    expect(short.errText).toMatch(/^portcullis: refused \(THRESHOLD\): .*targets\/pair/);
    expect(short.errText.split('\n')).toHaveLength(1);
    expect(await serverState(gunPair, ['targets/alice', 'targets/bob', 'targets/pair'])).toEqual(before);
    const full = await ok('sign', `${gunPair}:multi`, '--key', K.release(), '--key', K.bob(), '--role', 'targets/pair', '--insecure-registry', ...srv());
    expect(full.out).toBe(`signed ${gunPair}:multi ${images.pair.multi.digest} (${images.pair.multi.size} bytes): targets/pair v1\n`);
    expect((await notaryList(gunPair)).map((r) => [r.name, r.role])).toEqual([['multi', 'targets/pair'], ['v1', expect.stringMatching(/^targets\/(alice|bob)$/)], ['v2', 'targets/bob']]);
  });

  it('wrong PIN, missing token, missing object, unknown URI attribute, pin-value without --allow-pin-value: one clear line, exit 1, nothing changed on the server', async () => {
    // (A locked token is not reachable from the CLI here: SoftHSM never locks a user PIN. The unit test in
    // test/unit/signers.test.ts simulates CKR_PIN_LOCKED through the module; the CLI prints it like the others.)
    const roles = ['targets/ci', 'targets/releases'];
    const stateBefore = await serverState(gunApp, roles);
    const listBefore = await notaryList(gunApp);
    const target = ['--digest', images.app.v2.digest, '--size', String(images.app.v2.size)];
    const wrongPin = join(work, 'wrong.pin');
    writeFileSync(wrongPin, '0000\n', { mode: 0o600 });
    const withPin = (attrs: string, query: string) => `pkcs11:${attrs}?${query}&module-path=${hsm.module}`;
    const pinFile = `pin-source=file:${tokens.build01.pinFile}`;

    const cases: Array<{ what: string; key: string; args?: string[]; expect: RegExp; secret?: string }> = [
      { what: 'wrong PIN', key: withPin('token=build01;object=release-2026', `pin-source=file:${wrongPin}`), expect: /^portcullis: key error \(PIN_INCORRECT\): token 'build01' .*refused the PIN from pin-source=file:.*wrong\.pin \(CKR_PIN_INCORRECT\)/ },
      { what: 'missing token', key: withPin('token=build09;object=release-2026', pinFile), expect: /^portcullis: key error \(TOKEN_NOT_FOUND\): no token matches token='build09' .*tokens present: .*'build01'/ },
      { what: 'missing object', key: withPin('token=build01;object=release-2099', pinFile), expect: /^portcullis: key error \(OBJECT_NOT_FOUND\): no private key object='release-2099' on token 'build01'; keys present: .*'release-2026'/ },
      { what: 'unknown attribute', key: withPin('token=build01;object=release-2026;foo=bar', pinFile), expect: /^portcullis: key error \(BAD_URI\): unknown attribute 'foo' in pkcs11 URI$/ },
      { what: 'pin-value refused', key: withPin('token=build01;object=release-2026', `pin-value=${tokens.build01.pin}`), expect: /^portcullis: key error \(BAD_URI\): pin-value in a pkcs11 URI is refused .*use pin-source=file:\/path or pin-source=env:NAME$/, secret: tokens.build01.pin },
      { what: 'no PIN source (not a terminal)', key: `pkcs11:token=build01;object=release-2026?module-path=${hsm.module}`, expect: /^portcullis: key error \(PIN_MISSING\): no PIN for token 'build01'/ },
    ];
    for (const c of cases) {
      const r = await cli('sign', `${gunApp}:v2`, '--key', c.key, ...target, ...srv());
      expect(r.code, c.what).toBe(1);
      expect(r.out, c.what).toBe('');
      expect(r.err.trimEnd(), c.what).toMatch(c.expect);
      expect(r.err.trimEnd().split('\n'), `${c.what}: one line`).toHaveLength(1);
      if (c.secret) expect(r.err, c.what).not.toContain(c.secret);
    }
    // the same on the other publishing commands: revoke with a wrong PIN, signer add with a missing key
    const rv = await cli('trust', 'revoke', `${gunApp}:v1`, '--key', withPin('token=build01;object=release-2026', `pin-source=file:${wrongPin}`), ...srv());
    expect([rv.code, rv.err]).toEqual([1, expect.stringMatching(/^portcullis: key error \(PIN_INCORRECT\)/)]);
    const sa = await cli('trust', 'signer', 'add', 'qa', gunApp, '--key', key(tokens.build02, 'qa-2026'), '--targets-key', K.targetsApp(), ...srv());
    expect([sa.code, sa.err]).toEqual([1, expect.stringMatching(/^portcullis: key error \(OBJECT_NOT_FOUND\): no private key object='qa-2026' on token 'build02'/)]);

    expect(await serverState(gunApp, roles)).toEqual(stateBefore);
    expect(await notaryList(gunApp)).toEqual(listBefore);
    expect(listBefore.map((r) => r.name)).not.toContain('v2');

    // trust init with a wrong root PIN: the GUN stays uninitialised
    const fresh = `${lab.registryHost}/team/never`;
    const ti = await cli('trust', 'init', fresh, '--root-key', withPin('token=offline-root;object=root-app', `pin-source=file:${wrongPin}`), '--targets-key', K.targetsApp(), ...srv());
    expect(ti.code).toBe(1);
    expect(ti.err).toMatch(/^portcullis: key error \(PIN_INCORRECT\): token 'offline-root'/);
    expect(await client.fetchMetadata(fresh, 'root.json', L.rootMaxBytes)).toBeNull();
    const nl = await lab.notary('-s', lab.notaryUrl, 'list', fresh);
    expect(nl.code).not.toBe(0);
    expect(nl.stderr + nl.stdout).toMatch(/does not have trust data/);

    // with --allow-pin-value the same URI is accepted, and the PIN shows nowhere (key list: changes nothing)
    const allowed = await ok('key', 'list', '--token', withPin('token=build01;object=release-2026', `pin-value=${tokens.build01.pin}`), '--allow-pin-value');
    expect(allowed.out).toContain(keyIds['release']);
    expect(allowed.out + allowed.err).not.toContain(tokens.build01.pin);
    // pin-source=env:NAME reads the PIN from the environment
    process.env['PORTCULLIS_TEST_BOB_PIN'] = tokens.build02.pin;
    try {
      const env = await ok('key', 'list', '--token', `pkcs11:token=build02?pin-source=env:PORTCULLIS_TEST_BOB_PIN&module-path=${hsm.module}`);
      expect(env.out).toContain(keyIds['bob']);
    } finally {
      delete process.env['PORTCULLIS_TEST_BOB_PIN'];
    }
  });

  it('trust key rotate targets to a new token key: sign with it works, notary list and docker follow, and a trust inspect state dir cached before the rotation follows', async () => {
    const rot = await ok('trust', 'key', 'rotate', gunApp, 'targets', '--root-key', K.rootApp(), '--key', K.targets2027(), ...srv());
    expect(rot.out).toBe(`rotated the targets key of ${gunApp}: root v2, targets v3\n`);
    expect(rot.audit).toMatchObject([{ operation: 'key-rotate', outcome: 'published', role: 'targets', versions: { root: 2, targets: 3 }, keyUri: expect.stringContaining('object=targets-2027') }]);

    // the new targets key signs v2 straight into targets
    const v2 = images.app.v2;
    const s = await ok('sign', `${gunApp}:v2`, '--key', K.targets2027(), '--role', 'targets', '--registry-url', lab.registryUrl, ...srv());
    expect(s.out).toBe(`signed ${gunApp}:v2 ${v2.digest} (${v2.size} bytes): targets v4\n`);
    // the old one no longer does
    const old = await cli('sign', `${gunApp}:v2`, '--key', K.targetsApp(), '--role', 'targets', '--registry-url', lab.registryUrl, ...srv());
    expect(old.code).toBe(1);
    expect(old.errText).toMatch(/^portcullis: not published \(NOT_A_KEY\): pkcs11:token=build01;object=targets-app\?.* is not a key of targets in /);

    // the notary CLI (its trust dir cached root v1 in the first test) still lists everything
    const rows = await notaryList(gunApp);
    expect(rows.map((r) => [r.name, r.role])).toEqual([['multi', 'targets/ci'], ['v1', 'targets/ci'], ['v1-oci', 'targets/ci'], ['v2', 'targets']]);
    expect(rows.find((r) => r.name === 'v2')).toMatchObject({ digest: v2.sha256Hex, size: v2.size });
    // docker trust inspect (its cache too) shows the new repository key
    const d = await dockerInspect(gunApp);
    expect(adminKey(d, 'Repository')).toEqual([keyIds['targets2027']]);
    expect(d.SignedTags).toContainEqual({ SignedTag: 'v2', Digest: v2.sha256Hex, Signers: ['Repo Admin'] });

    // portcullis trust inspect with the state dir that trusted root v1 / the old targets key
    const inspected = JSON.parse((await ok('trust', 'inspect', '--json', '-s', lab.notaryUrl, '--tlscacert', lab.caPath, '--state-dir', inspectDir, gunApp)).out) as Inspection[];
    expect(adminKey(inspected[0]!, 'Repository')).toEqual([keyIds['targets2027']]);
    expect(inspected[0]!.SignedTags).toEqual(d.SignedTags);
    const offline = await ok('trust', 'list', '--offline', '--state-dir', inspectDir, gunApp);
    expect(parseNotaryList(offline.out)).toEqual(rows);
    const store = LmdbMetadataStore.open(inspectDir);
    try {
      const stored = await store.load(gunApp);
      expect(stored.documents.get('root')!.version).toBe(2);
      expect(stored.documents.get('targets')!.version).toBe(4);
    } finally {
      await store.close();
    }

    // and a DCT pull of the newly signed tag through dockerd
    const pull = await dockerd.pull(`${gunApp}:v2`, { env: { DOCKER_CONTENT_TRUST: '1', DOCKER_CONTENT_TRUST_SERVER: lab.notaryUrl, DOCKER_CONFIG: docker.configDir } });
    expect(pull.code, pull.combined).toBe(0);
    expect(pull.stdout).toContain(`${gunApp}:v2@${v2.digest}`);
  });

  it('trust revoke removes the tag: notary list, docker trust inspect and a DCT pull no longer see it', async () => {
    const r = await ok('trust', 'revoke', `${gunApp}:v1`, '--key', K.release(), ...srv());
    expect(r.out).toBe(`revoked ${gunApp}:v1: targets/ci v4, targets/releases v4\n`);
    expect(r.audit).toMatchObject([{ operation: 'revoke', outcome: 'published', tag: 'v1', digest: images.app.v1.digest, role: 'targets/ci,targets/releases' }]);
    expect((await notaryList(gunApp)).map((x) => x.name)).toEqual(['multi', 'v1-oci', 'v2']);
    expect((await dockerInspect(gunApp)).SignedTags.map((t) => t.SignedTag)).toEqual(['multi', 'v1-oci', 'v2']);
    const pull = await dockerd.pull(`${gunApp}:v1`, { env: { DOCKER_CONTENT_TRUST: '1', DOCKER_CONTENT_TRUST_SERVER: lab.notaryUrl, DOCKER_CONFIG: docker.configDir } });
    expect(pull.code).not.toBe(0);
    expect(pull.stderr).toMatch(/No valid trust data for v1/);
    // revoking again: nothing to revoke, nothing published
    const again = await cli('trust', 'revoke', `${gunApp}:v1`, '--key', K.release(), ...srv());
    expect(again.code).toBe(1);
    expect(again.errText).toMatch(/^portcullis: not published \(NOT_SIGNED\): .*:v1 is not listed in any role/);
  });
});

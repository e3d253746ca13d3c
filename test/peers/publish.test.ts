// Publishing to the real notary-server 0.7 (TLS, remote notary-signer) with Signers whose keys never leave them:
// trust init, signer add, sign, revoke, key rotation; checked with the real `notary` CLI, the real
// `docker trust inspect` (no daemon) and Portcullis' own trust core. Keys here are in-test Signers over
// node:crypto key objects (the PKCS#11 and file signers implement the same interface).
import { createHash, generateKeyPairSync, sign as cryptoSign, constants, X509Certificate, type KeyObject } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createAuditLogger } from '../../hsm/audit.js';
import { FileSigner, generateKeyFile } from '../../hsm/file-signer.js';
import { openSigner } from '../../hsm/open-signer.js';
import { pkcs11Unavailable } from '../../hsm/pkcs11-signer.js';
import { generateKey } from '../../hsm/token-keys.js';
import { signDocument, signedOf, targetEntry, targetsDocument, defaultExpiry } from '../../hsm/metadata-writer.js';
import {
  keyRotate, PublishError, revoke, sign, signerAdd, trustInit, type NotaryServer, type PublishOptions,
} from '../../hsm/notary-publisher.js';
import type { Signer } from '../../hsm/signer.js';
import { systemClock } from '../../trust/clock.js';
import { TrustError } from '../../trust/errors.js';
import { defaultTrustLimits as L } from '../../trust/limits.js';
import { NotaryClient, notaryFetcher } from '../../trust/notary-client.js';
import { NotaryUploadError, NotaryWriter } from '../../trust/notary-upload.js';
import { resolveSignedTag } from '../../trust/signed-tag.js';
import { Updater } from '../../trust/updater.js';
import { LmdbMetadataStore } from '../../cache/lmdb-metadata-store.js';
import { MemoryMetadataStore } from '../fixtures/memory-store.js';
import { selfSignedCertificate } from '../fixtures/repo-builder.js';
import { dockerTrust, type DockerTrust, type TrustInspection as Inspection } from '../harness/docker-trust.js';
import { parseNotaryList, startLab, type Lab, type NotaryListEntry } from '../harness/lab.js';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { makeTempDir, runChecked } from '../harness/process.js';

// ------------------------------------------------------------------------------------------ in-test signers

interface TestSigner extends Signer {
  readonly pub: KeyObject;
  /** Makes the next sign() calls fail, as a token pulled out of its slot would. */
  failAfter(n: number): void;
  readonly signatures: number;
}

const DAY = 86_400_000;

function testSigner(name: string, o: { cn?: string; kind?: 'ec' | 'ed25519' | 'rsa'; displayUri?: string; beforeSign?: () => Promise<void> } = {}): TestSigner {
  const kind = o.kind ?? 'ec';
  const pair = kind === 'ec' ? generateKeyPairSync('ec', { namedCurve: 'prime256v1' }) : kind === 'ed25519' ? generateKeyPairSync('ed25519') : generateKeyPairSync('rsa', { modulusLength: 2048 });
  const cert = o.cn
    ? new X509Certificate(selfSignedCertificate(pair, o.cn, { notBefore: new Date(Date.now() - DAY), notAfter: new Date(Date.now() + 3650 * DAY) }))
    : undefined;
  let budget = Infinity;
  let count = 0;
  return {
    displayUri: o.displayUri ?? `test:${name}`,
    algorithm: kind === 'ec' ? 'ecdsa-p256' : kind === 'ed25519' ? 'ed25519' : 'rsa-2048',
    pub: pair.publicKey,
    get signatures() { return count; },
    failAfter(n: number) { budget = count + n; },
    publicKey: async () => pair.publicKey,
    certificate: async () => cert,
    async sign(data: Buffer) {
      if (count >= budget) throw new Error(`${name}: token removed (CKR_DEVICE_REMOVED)`);
      await o.beforeSign?.();
      count++;
      if (kind === 'ed25519') return { method: 'eddsa', sig: cryptoSign(null, data, pair.privateKey) };
      if (kind === 'rsa') return { method: 'rsapss', sig: cryptoSign('sha256', data, { key: pair.privateKey, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 }) };
      return { method: 'ecdsa', sig: cryptoSign('sha256', data, { key: pair.privateKey, dsaEncoding: 'ieee-p1363' }) };
    },
    close: async () => {},
  };
}

/** Resolves for everyone once `n` have arrived (later arrivals pass at once). */
function barrier(n: number): () => Promise<void> {
  let count = 0;
  let release!: () => void;
  const all = new Promise<void>((r) => (release = r));
  return async () => {
    if (++count >= n) release();
    await all;
  };
}

/** Notary's ID of a bare public key, computed here independently of hsm/ and trust/. */
function bareKeyId(pub: KeyObject): string {
  const der = pub.export({ type: 'spki', format: 'der' });
  const [keytype, b64] = pub.asymmetricKeyType === 'ed25519' ? ['ed25519', der.subarray(der.length - 32).toString('base64')] : [pub.asymmetricKeyType === 'ec' ? 'ecdsa' : 'rsa', der.toString('base64')];
  return createHash('sha256').update(`{"keytype":"${keytype}","keyval":{"private":null,"public":"${b64}"}}`).digest('hex');
}

// ------------------------------------------------------------------------------------------ the lab

let lab: Lab;
let docker: DockerTrust;
let server: NotaryServer;
let client: NotaryClient;
const auditLines: Record<string, unknown>[] = [];
const audit = createAuditLogger({ write: (s: string) => void auditLines.push(JSON.parse(s) as Record<string, unknown>) });

beforeAll(async () => {
  lab = await startLab({ withSigned: false });
  docker = dockerTrust(lab.notaryUrl, lab.caPem, makeTempDir('portcullis-publish-docker'));
  server = { url: lab.notaryUrl, ca: lab.caPem, timeoutMs: 20_000 };
  client = new NotaryClient({ baseUrl: lab.notaryUrl, ca: lab.caPem });
});

afterAll(async () => {
  await client?.close();
  await lab?.stop();
});

const base = (gun: string, extra: Partial<PublishOptions> = {}): PublishOptions => ({ server, gun, audit, ...extra });
const v1 = () => ({ digest: lab.images.v1.digest, size: lab.images.v1.size });
const v2 = () => ({ digest: lab.images.v2.digest, size: lab.images.v2.size });

function updater(gun: string, store = new MemoryMetadataStore(), initialRoot?: Buffer): Updater {
  return new Updater({ dialect: 'notary', namespace: gun, gun, store, fetcher: notaryFetcher(client, gun), clock: systemClock, initialRoot });
}

async function notaryList(gun: string): Promise<NotaryListEntry[]> {
  const r = await lab.notary('list', gun);
  if (r.code !== 0 && /No targets present|does not have trust data/.test(r.stderr + r.stdout)) return [];
  expect(r.code, `notary list ${gun}: ${r.stderr}`).toBe(0);
  return parseNotaryList(r.stdout);
}


const dockerInspect = (gun: string): Promise<Inspection> => docker.inspectOne(gun);

/** What the server holds for a GUN, byte for byte (timestamp excluded: the server re-signs it on its own). */
async function serverState(gun: string): Promise<string> {
  const parts: string[] = [];
  for (const name of ['root.json', 'targets.json', 'snapshot.json', 'targets/releases.json', 'targets/carol.json']) {
    const b = await client.fetchMetadata(gun, name, 1 << 20);
    parts.push(`${name}:${b ? createHash('sha256').update(b).digest('hex') : '-'}`);
  }
  return parts.join(' ');
}

async function rejection(p: Promise<unknown>): Promise<Error> {
  const e = await p.then(() => undefined, (x: unknown) => x);
  expect(e, 'expected a rejection').toBeInstanceOf(Error);
  return e as Error;
}

const lastAudit = (op: string) => [...auditLines].reverse().find((l) => l['operation'] === op)!;

// ------------------------------------------------------------------------------------------ shared keys

const signers = {} as Record<'root' | 'targets' | 'carol' | 'alice', TestSigner>;
let gunApp: string;

describe('publishing to notary-server with Signers', () => {
  it('trust init + signer add (docker layout) + sign: notary list, docker trust inspect and the trust core agree', async () => {
    gunApp = `${lab.registryHost}/team/app`;
    signers.root = testSigner('root', { cn: gunApp });
    signers.targets = testSigner('targets');
    // a PIN in the URI the signer reports must not reach the audit log
    signers.carol = testSigner('carol', { displayUri: 'pkcs11:token=build01;object=carol?pin-value=123456' });

    const init = await trustInit({ ...base(gunApp), rootSigner: signers.root, targetsSigner: signers.targets });
    expect(init.uploaded).toEqual(['root', 'targets']); // timestamp and snapshot: the server's keys
    expect(init.versions).toEqual({ root: 1, targets: 1 });

    const added = await signerAdd({ ...base(gunApp), role: ['carol', 'releases'], keys: [signers.carol], targetsSigner: signers.targets });
    expect(added.versions).toEqual({ targets: 2 });

    const signed = await sign({ ...base(gunApp), tag: 'v1', target: v1(), signer: signers.carol });
    expect(signed.versions).toEqual({ 'targets/carol': 1, 'targets/releases': 1 });

    // the real notary CLI
    const rows = await notaryList(gunApp);
    expect(rows.map((r) => [r.name, r.digest, r.size])).toEqual([['v1', lab.images.v1.sha256Hex, lab.images.v1.size]]);

    // the real docker CLI: the tag, its signer and the keys
    const d = await dockerInspect(gunApp);
    expect(d.SignedTags).toEqual([{ SignedTag: 'v1', Digest: lab.images.v1.sha256Hex, Signers: ['carol'] }]);
    expect(d.Signers).toEqual([{ Name: 'carol', Keys: [{ ID: bareKeyId(signers.carol.pub) }] }]);
    expect(d.AdministrativeKeys.find((a) => a.Name === 'Repository')!.Keys).toEqual([{ ID: bareKeyId(signers.targets.pub) }]);

    // Portcullis' gate (DCT rule: targets/releases first)
    const u = updater(gunApp);
    await u.refresh();
    const t = await resolveSignedTag(u, 'v1', {});
    expect(t.digest).toBe(lab.images.v1.digest);
    expect(t.length).toBe(lab.images.v1.size);
    expect([...t.roles].sort()).toEqual(['targets/carol', 'targets/releases']);

    // one audit line per operation, PIN redacted
    const line = lastAudit('sign');
    expect(line).toMatchObject({
      event: 'notary-publish', outcome: 'published', gun: gunApp, tag: 'v1', digest: lab.images.v1.digest,
      role: 'targets/carol,targets/releases', versions: { 'targets/carol': 1, 'targets/releases': 1 }, attempts: 1,
    });
    expect(line['keyUri']).toBe('pkcs11:token=build01;object=carol?pin-value=[redacted]');
    expect(JSON.stringify(auditLines)).not.toContain('123456');
    expect(lastAudit('trust-init')).toMatchObject({ outcome: 'published', versions: { root: 1, targets: 1 }, keys: { root: 'test:root', targets: 'test:targets' } });
    expect(lastAudit('signer-add')).toMatchObject({ outcome: 'published', role: 'targets/carol,targets/releases', versions: { targets: 2 } });
  });

  it('client-held snapshot key (notary init without -p), ed25519 and RSA keys, signing straight into targets', async () => {
    const gun = `${lab.registryHost}/team/solo`;
    const root = testSigner('solo-root', { kind: 'rsa' }); // no certificate: trustInit makes one (CN = GUN), as notary init does
    const targets = testSigner('solo-targets', { kind: 'ed25519' });
    const snapshot = testSigner('solo-snapshot');
    // the trusted state in an LMDB state dir, as the CLI keeps it (and `portcullis trust inspect --state-dir` reads it)
    const stateDir = makeTempDir('portcullis-publish-state');
    const init = await trustInit({ ...base(gun, { stateDir }), rootSigner: root, targetsSigner: targets, snapshotSigner: snapshot });
    expect(init.uploaded).toEqual(['root', 'targets', 'snapshot']);
    expect(init.rootCertificate!.subject).toBe(`CN=${gun}`);
    expect(init.rootCertificate!.verify(await root.publicKey())).toBe(true); // self-signed by the root key
    const r = await sign({ ...base(gun, { snapshotSigner: snapshot, stateDir }), tag: 'v2', target: v2(), signer: targets });
    expect(r.versions).toEqual({ targets: 2, snapshot: 2 });
    const store = LmdbMetadataStore.open(stateDir);
    try {
      const stored = await store.load(gun);
      expect(stored.documents.get('targets')!.version).toBe(2);
      expect(stored.documents.get('root')!.bytes.equals((await client.fetchMetadata(gun, 'root.json', L.rootMaxBytes))!)).toBe(true);
    } finally {
      await store.close();
    }
    expect(await notaryList(gun)).toEqual([{ name: 'v2', digest: lab.images.v2.sha256Hex, size: lab.images.v2.size, role: 'targets' }]);
    // the snapshot the clients see is the one we signed
    const u = updater(gun);
    const set = await u.refresh();
    expect(set.snapshot!.env.signatures.map((s) => s.keyid)).toEqual([bareKeyId(snapshot.pub)]);

    // `notary key rotate <gun> snapshot -r`: the server takes the snapshot key over; signing needs no snapshot key
    const rot = await keyRotate({ ...base(gun, { stateDir }), role: 'snapshot', serverManaged: true, rootSigner: root });
    expect(rot.uploaded).toEqual(['root']);
    await sign({ ...base(gun, { stateDir }), tag: 'v1', target: v1(), signer: targets });
    expect((await notaryList(gun)).map((x) => x.name)).toEqual(['v1', 'v2']);
    const after = await u.refresh(); // the cached client follows the snapshot key rotation (fast-forward recovery)
    expect(after.rootVersion).toBe(2);
    expect(after.snapshot!.env.signatures.map((s) => s.keyid)).not.toContain(bareKeyId(snapshot.pub));
    expect((await resolveSignedTag(u, 'v1', {})).digest).toBe(lab.images.v1.digest);
  });

  it('a delegation with two signers: signed by one, then by the other', async () => {
    const gun = `${lab.registryHost}/team/duo`;
    const root = testSigner('duo-root', { cn: gun });
    const targets = testSigner('duo-targets');
    signers.alice = testSigner('alice', { cn: 'alice' }); // a certificate: listed as ecdsa-x509, as `notary delegation add` does
    // bob's key is an encrypted key file (hsm/file-signer.ts), no certificate: listed as a bare ecdsa key, as
    // `docker trust signer add` does
    const bobFile = join(makeTempDir('portcullis-publish-keys'), 'bob.key');
    await generateKeyFile(bobFile, 'ecdsa-p256', 'bob-passphrase', { role: 'targets/releases', gun });
    const bobSigner = await FileSigner.open(bobFile, { passphrase: 'bob-passphrase' });
    const bob = { signer: bobSigner, pub: await bobSigner.publicKey() };
    await trustInit({ ...base(gun), rootSigner: root, targetsSigner: targets });
    await signerAdd({ ...base(gun), role: 'releases', keys: [signers.alice, bob.signer], targetsSigner: targets });

    expect((await sign({ ...base(gun), tag: 'v1', target: v1(), signer: signers.alice })).versions).toEqual({ 'targets/releases': 1 });
    expect((await sign({ ...base(gun), tag: 'v2', target: v2(), signer: bob.signer })).versions).toEqual({ 'targets/releases': 2 });

    expect((await notaryList(gun)).map((r) => [r.name, r.digest, r.role])).toEqual([
      ['v1', lab.images.v1.sha256Hex, 'targets/releases'],
      ['v2', lab.images.v2.sha256Hex, 'targets/releases'],
    ]);
    const deleg = await lab.notary('delegation', 'list', gun);
    expect(deleg.code).toBe(0);
    expect(deleg.stdout).toContain(bareKeyId(signers.alice.pub)); // notary shows a certificate by its public key's ID
    expect(deleg.stdout).toContain(bareKeyId(bob.pub));

    // bob's publication re-signed the whole role: his is the one signature on it now
    const u = updater(gun);
    await u.refresh();
    await u.listAll();
    const set = (await u.trusted())!;
    expect(set.targetsOf('targets/releases')!.env.signatures.map((s) => s.keyid)).toEqual([bareKeyId(bob.pub)]);
    const d = await dockerInspect(gun);
    expect(d.SignedTags.map((r) => r.SignedTag)).toEqual(['v1', 'v2']);

    // revoke: v1 leaves notary list, v2 stays
    const rv = await revoke({ ...base(gun), tag: 'v1', signer: signers.alice });
    expect(rv.versions).toEqual({ 'targets/releases': 3 });
    expect(lastAudit('revoke')).toMatchObject({ outcome: 'published', tag: 'v1', digest: lab.images.v1.digest, role: 'targets/releases' });
    expect((await notaryList(gun)).map((r) => r.name)).toEqual(['v2']);
    const again = await rejection(revoke({ ...base(gun), tag: 'v1', signer: signers.alice }));
    expect(again).toBeInstanceOf(PublishError);
    expect((again as PublishError).code).toBe('NOT_SIGNED');
    // the audit names the key file
    expect(auditLines.some((l) => l['gun'] === gun && l['keyUri'] === bobFile && l['operation'] === 'sign')).toBe(true);
    await bobSigner.close();
  });

  it('threshold 2: the server takes the delegation and enforces it; N-of-M across roles is enforced by the policy rule', async () => {
    const gun = `${lab.registryHost}/team/pair`;
    const root = testSigner('pair-root', { cn: gun });
    const targets = testSigner('pair-targets');
    const alice = testSigner('pair-alice', { cn: 'alice' });
    const bob = testSigner('pair-bob');
    await trustInit({ ...base(gun), rootSigner: root, targetsSigner: targets });

    // What notary-server 0.7 does with threshold 2 (Notary's own tools only ever write 1): it ACCEPTS the delegation…
    const added = await signerAdd({ ...base(gun), role: 'pair', keys: [alice, bob], threshold: 2, targetsSigner: targets });
    expect(added.versions).toEqual({ targets: 2 });
    const deleg = await lab.notary('delegation', 'list', gun);
    expect(deleg.stdout).toMatch(/targets\/pair\s.*\s2\s*$/m);

    // …we refuse to publish a role one signature short (the trust core's threshold check, before any upload)…
    const before = await serverState(gun);
    const short = await rejection(sign({ ...base(gun), tag: 'v1', target: v1(), signer: alice, role: 'pair' }));
    expect(short).toBeInstanceOf(TrustError);
    expect((short as TrustError).reason).toBe('THRESHOLD');
    expect(await serverState(gun)).toBe(before);

    // …and so does the server, when sent one anyway: 400 INVALID_UPDATE, ErrBadTargets
    const writer = new NotaryWriter({ baseUrl: lab.notaryUrl, ca: lab.caPem });
    try {
      const doc = targetsDocument({ version: 1, expires: defaultExpiry('targets', new Date()), targets: { v1: targetEntry(v1()) } });
      const aliceId = Object.entries((signedOf((await client.fetchMetadata(gun, 'targets.json', L.targetsMaxBytes))!)['delegations'] as { keys: Record<string, unknown> }).keys)
        .map(([id]) => id).find((id) => id !== bareKeyId(bob.pub))!;
      const bytes = await signDocument(doc, [{ signer: alice, keyid: aliceId }]);
      const e = await rejection(writer.upload(gun, new Map([['targets/pair', bytes]])));
      expect(e).toBeInstanceOf(NotaryUploadError);
      const u = e as NotaryUploadError;
      expect([u.status, u.code]).toEqual([400, 'INVALID_UPDATE']);
      expect(u.message).toContain('valid signatures did not meet threshold for targets/pair');
      expect(u.detail).toMatchObject({ Name: 'ErrBadTargets' });
      console.log('notary-server 0.7 on a threshold-2 role signed once:', u.message);
    } finally {
      await writer.close();
    }
    expect(await serverState(gun)).toBe(before);

    // Both keys in one publication: accepted by us, the server and the notary CLI.
    expect((await sign({ ...base(gun), tag: 'v1', target: v1(), signer: [alice, bob], role: 'pair' })).versions).toEqual({ 'targets/pair': 1 });
    expect((await notaryList(gun)).map((r) => [r.name, r.role])).toEqual([['v1', 'targets/pair']]);

    // Build hosts that sign separately: one role per signer (threshold 1), N-of-M in Portcullis' policy rule.
    await signerAdd({ ...base(gun), role: 'alice', keys: [alice], targetsSigner: targets });
    await signerAdd({ ...base(gun), role: 'bob', keys: [bob], targetsSigner: targets });
    const rule = { signers: ['targets/alice', 'targets/bob'], threshold: 2 };
    await sign({ ...base(gun), tag: 'v2', target: v2(), signer: alice, role: 'alice' });
    const u1 = updater(gun);
    await u1.refresh();
    const one = await rejection(resolveSignedTag(u1, 'v2', rule));
    expect((one as TrustError).reason).toBe('THRESHOLD');
    await sign({ ...base(gun), tag: 'v2', target: v2(), signer: bob, role: 'bob' });
    await u1.refresh();
    const both = await resolveSignedTag(u1, 'v2', rule);
    expect(both.digest).toBe(lab.images.v2.digest);
    expect([...both.roles].sort()).toEqual(['targets/alice', 'targets/bob']);
  });

  it('key rotate targets, then root: notary list still works and a cached Updater from before follows', async () => {
    const gun = gunApp;
    const store = new MemoryMetadataStore();
    const cached = updater(gun, store);
    await cached.refresh();
    await cached.listAll();
    expect((await cached.trusted())!.rootVersion).toBe(1);
    const pinned = (await client.fetchMetadata(gun, '1.root.json', L.rootMaxBytes))!;
    expect(await notaryList(gun)).toHaveLength(1); // the CLI caches this GUN's metadata before the rotation

    const targets2 = testSigner('targets-2');
    const rot = await keyRotate({ ...base(gun), role: 'targets', newSigner: targets2, rootSigner: signers.root });
    expect(rot.versions).toEqual({ root: 2, targets: 3 }); // targets re-signed with the new key
    expect(lastAudit('key-rotate')).toMatchObject({ outcome: 'published', role: 'targets', keyUri: 'test:targets-2', versions: { root: 2, targets: 3 } });

    expect((await notaryList(gun)).map((r) => [r.name, r.digest])).toEqual([['v1', lab.images.v1.sha256Hex]]);
    const d = await dockerInspect(gun);
    expect(d.AdministrativeKeys.find((a) => a.Name === 'Repository')!.Keys).toEqual([{ ID: bareKeyId(targets2.pub) }]);

    const set = await cached.refresh();
    expect(set.rootVersion).toBe(2);
    expect((await resolveSignedTag(cached, 'v1', {})).digest).toBe(lab.images.v1.digest);

    // the old targets key is out; the new one signs
    const old = await rejection(sign({ ...base(gun), tag: 'v2', target: v2(), signer: signers.targets, role: 'targets' }));
    expect((old as PublishError).code).toBe('NOT_A_KEY');
    expect((await sign({ ...base(gun), tag: 'v2', target: v2(), signer: targets2, role: 'targets' })).versions).toEqual({ targets: 4 });

    // root rotation: root v3 signed by the old and the new root keys
    const root2 = testSigner('root-2', { cn: gun });
    expect((await keyRotate({ ...base(gun), role: 'root', newSigner: root2, rootSigner: signers.root })).versions).toEqual({ root: 3 });
    expect((await notaryList(gun)).map((r) => r.name)).toEqual(['v1', 'v2']);
    expect((await cached.refresh()).rootVersion).toBe(3);
    // a client pinned to root v1 walks 2.root.json, 3.root.json
    const fromV1 = updater(gun, new MemoryMetadataStore(), pinned);
    expect((await fromV1.refresh()).rootVersion).toBe(3);
    expect((await resolveSignedTag(fromV1, 'v2', {})).digest).toBe(lab.images.v2.digest);
    // the retired root key can no longer rotate anything
    const retired = await rejection(keyRotate({ ...base(gun), role: 'targets', newSigner: testSigner('x'), rootSigner: signers.root }));
    expect((retired as PublishError).code).toBe('NOT_A_KEY');
    signers.root = root2;
    signers.targets = targets2;
  });

  it('failures in the middle leave the server as it was', async () => {
    const gun = `${lab.registryHost}/team/faults`;
    const root = testSigner('f-root', { cn: gun });
    const targets = testSigner('f-targets');
    const snapshot = testSigner('f-snapshot');
    const carol = testSigner('f-carol');
    await trustInit({ ...base(gun), rootSigner: root, targetsSigner: targets, snapshotSigner: snapshot });
    const withSnap = base(gun, { snapshotSigner: snapshot });
    await signerAdd({ ...withSnap, role: ['carol', 'releases'], keys: [carol], targetsSigner: targets });
    await sign({ ...withSnap, tag: 'v1', target: v1(), signer: carol });
    const rows = await notaryList(gun);
    expect(rows.map((r) => r.name)).toEqual(['v1']);
    const state = await serverState(gun);
    const failedBefore = auditLines.filter((l) => l['outcome'] === 'failed').length;

    // a key that is not a key of the role: refused before anything is signed
    const mallory = testSigner('mallory');
    const e1 = await rejection(sign({ ...withSnap, tag: 'v2', target: v2(), signer: mallory, role: 'releases' }));
    expect((e1 as PublishError).code).toBe('NOT_A_KEY');
    expect(mallory.signatures).toBe(0);

    // the server refuses: no snapshot key given, and the server does not hold this GUN's snapshot key
    const e2 = await rejection(sign({ ...base(gun), tag: 'v2', target: v2(), signer: carol }));
    expect(e2).toBeInstanceOf(NotaryUploadError);
    expect((e2 as NotaryUploadError).status).toBe(400);
    console.log('notary-server without a snapshot for a client-held snapshot key:', e2.message);

    // the token goes away between the two roles docker's layout signs
    carol.failAfter(1);
    const e3 = await rejection(sign({ ...withSnap, tag: 'v2', target: v2(), signer: carol }));
    expect(e3.message).toContain('token removed');

    // the server refuses a whole update when one part of it is bad: a valid targets v+1 with a snapshot signed by
    // a key that is not the snapshot key changes nothing
    const writer = new NotaryWriter({ baseUrl: lab.notaryUrl, ca: lab.caPem });
    try {
      const cur = signedOf((await client.fetchMetadata(gun, 'targets.json', L.targetsMaxBytes))!);
      const next = { ...cur, version: (cur['version'] as number) + 1 };
      const targetsBytes = await signDocument(next, [{ signer: targets, keyid: bareKeyId(targets.pub) }]);
      const snap = signedOf((await client.fetchMetadata(gun, 'snapshot.json', L.snapshotMaxBytes))!);
      const badSnap = await signDocument({ ...snap, version: (snap['version'] as number) + 1 }, [{ signer: mallory, keyid: bareKeyId(mallory.pub) }]);
      const e4 = await rejection(writer.upload(gun, new Map([['targets', targetsBytes], ['snapshot', badSnap]])));
      expect((e4 as NotaryUploadError).status).toBe(400);
    } finally {
      await writer.close();
    }

    // init on an initialised GUN
    const e5 = await rejection(trustInit({ ...base(gun), rootSigner: testSigner('r2', { cn: gun }), targetsSigner: targets }));
    expect((e5 as PublishError).code).toBe('ALREADY_INITIALISED');

    // a root certificate for another GUN
    const r3 = testSigner('r3', { cn: gun });
    const e6 = await rejection(trustInit({ ...base(`${gun}-x`), rootSigner: r3, rootCertificate: (await r3.certificate())!, targetsSigner: targets }));
    expect((e6 as PublishError).code).toBe('BAD_INPUT');
    expect(e6.message).toContain('CN');

    expect(await serverState(gun)).toBe(state);
    expect(await notaryList(gun)).toEqual(rows);
    expect(await client.fetchMetadata(`${gun}-x`, 'root.json', L.rootMaxBytes)).toBeNull();
    // every failed operation left its audit line
    expect(auditLines.filter((l) => l['outcome'] === 'failed').length - failedBefore).toBe(5);
  });

  it('a version conflict (two publishers at once) is re-read and re-applied', async () => {
    const gun = `${lab.registryHost}/team/race`;
    const root = testSigner('race-root', { cn: gun });
    const targets = testSigner('race-targets');
    // both publishers read the state before either uploads: the signers wait for each other on their first signature
    const meet = barrier(2);
    const k1 = testSigner('race-1', { beforeSign: meet });
    const k2 = testSigner('race-2', { beforeSign: meet });
    await trustInit({ ...base(gun), rootSigner: root, targetsSigner: targets });
    await signerAdd({ ...base(gun), role: 'releases', keys: [k1, k2], targetsSigner: targets });
    const [a, b] = await Promise.all([
      sign({ ...base(gun), tag: 'v1', target: v1(), signer: k1, maxAttempts: 5 }),
      sign({ ...base(gun), tag: 'v2', target: v2(), signer: k2, maxAttempts: 5 }),
    ]);
    expect([a.attempts, b.attempts].sort()).toEqual([1, 2]);
    expect(new Set([a.versions['targets/releases'], b.versions['targets/releases']])).toEqual(new Set([1, 2]));
    expect((await notaryList(gun)).map((r) => r.name)).toEqual(['v1', 'v2']);
    expect(auditLines.filter((l) => l['gun'] === gun && l['operation'] === 'sign').map((l) => l['attempts']).sort()).toEqual([1, 2]);

    // without retries the loser sees the server's answer: 400 VERSION, and its tag is not published
    const meet2 = barrier(2);
    const k3 = Object.assign(Object.create(k1) as TestSigner, { sign: async (d: Buffer) => { await meet2(); return k1.sign(d); } });
    const k4 = Object.assign(Object.create(k2) as TestSigner, { sign: async (d: Buffer) => { await meet2(); return k2.sign(d); } });
    const results = await Promise.allSettled([
      sign({ ...base(gun), tag: 'v3', target: v1(), signer: k3, maxAttempts: 1 }),
      sign({ ...base(gun), tag: 'v4', target: v2(), signer: k4, maxAttempts: 1 }),
    ]);
    const lost = results.filter((x): x is PromiseRejectedResult => x.status === 'rejected');
    expect(lost).toHaveLength(1);
    expect(lost[0]!.reason).toBeInstanceOf(NotaryUploadError);
    expect((lost[0]!.reason as NotaryUploadError).isVersionConflict).toBe(true);
    console.log('notary-server on a concurrent publish:', (lost[0]!.reason as Error).message);
    const won = results[0]!.status === 'fulfilled' ? 'v3' : 'v4';
    expect((await notaryList(gun)).map((r) => r.name)).toEqual(['v1', 'v2', won]);
  });

  const SOFTHSM = '/usr/lib/softhsm/libsofthsm2.so';
  const noToken = pkcs11Unavailable() ?? (existsSync(SOFTHSM) ? undefined : `${SOFTHSM} not installed`);

  it.skipIf(noToken !== undefined)('keys on a SoftHSM token: trust init + signer add + sign, the root key never leaves the token', async () => {
    const dir = makeTempDir('portcullis-publish-softhsm');
    mkdirSync(join(dir, 'tokens'));
    const conf = join(dir, 'softhsm2.conf');
    writeFileSync(conf, `directories.tokendir = ${join(dir, 'tokens')}\nobjectstore.backend = file\nlog.level = ERROR\n`);
    process.env['SOFTHSM2_CONF'] = conf; // read by the module at C_Initialize
    await runChecked('softhsm2-util', ['--init-token', '--free', '--label', 'build01', '--so-pin', '87654321', '--pin', '1234'], { env: { ...process.env, SOFTHSM2_CONF: conf } });
    const pinFile = join(dir, 'pin');
    writeFileSync(pinFile, '1234\n', { mode: 0o600 });
    const opts = { module: SOFTHSM };
    const uri = (object: string) => `pkcs11:token=build01;object=${object}?pin-source=file:${pinFile}`;
    await generateKey(uri('root'), 'ecdsa-p256', opts);
    await generateKey(uri('targets'), 'ecdsa-p256', opts);
    await generateKey(uri('release-2026'), 'ecdsa-p256', opts);
    const [root, targets, release] = await Promise.all([openSigner(uri('root'), opts), openSigner(uri('targets'), opts), openSigner(uri('release-2026'), opts)]);
    try {
      const gun = `${lab.registryHost}/team/token`;
      const init = await trustInit({ ...base(gun), rootSigner: root, targetsSigner: targets });
      expect(init.rootCertificate!.subject).toBe(`CN=${gun}`); // made and signed on the token
      await signerAdd({ ...base(gun), role: 'releases', keys: [release], targetsSigner: targets });
      await sign({ ...base(gun), tag: 'v1', target: v1(), signer: release });
      expect(await notaryList(gun)).toEqual([{ name: 'v1', digest: lab.images.v1.sha256Hex, size: lab.images.v1.size, role: 'targets/releases' }]);
      const line = lastAudit('sign');
      expect(line).toMatchObject({ gun, tag: 'v1', outcome: 'published', keyUri: release.displayUri });
      expect(String(line['keyUri'])).toContain('object=release-2026');
      expect(String(line['keyUri'])).not.toContain('1234');
    } finally {
      await Promise.all([root.close(), targets.close(), release.close()]);
    }
  });
});

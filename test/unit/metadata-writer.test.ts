// The Notary v1 documents hsm/metadata-writer.ts builds and signs: they verify with the trust core, they have
// the shape of what notary-server 0.7 serves (the lab's samples), the key IDs and envelope bytes are Notary's
// own, and the preflight check refuses what a client would refuse. Also the upload wire format
// (trust/notary-upload.ts) against a local HTTP server, and the audit line's redaction.
import { createHash, createPublicKey, generateKeyPairSync, sign as cryptoSign, constants, X509Certificate, type KeyObject } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createAuditLogger, redactKeyUri, writeAudit } from '../../hsm/audit.js';
import {
  defaultExpiry, envelopeBytes, findKeyId, goTime, metaEntry, notaryCertificateKey, notaryPublicKey, rootDocument,
  signDocument, signedOf, signerNotaryKey, snapshotDocument, targetEntry, targetsDocument, timestampDocument,
  verifyPublication, type NotaryKey,
} from '../../hsm/metadata-writer.js';
import type { Signer } from '../../hsm/signer.js';
import { TrustError } from '../../trust/errors.js';
import type { JsonObject, JsonValue } from '../../trust/json.js';
import { NotaryUploadError, NotaryWriter } from '../../trust/notary-upload.js';
import { TrustedSet } from '../../trust/trusted-set.js';
import { selfSignedCertificate } from '../fixtures/repo-builder.js';

const SAMPLES = join(import.meta.dirname, '../../../shared/lab/notary-samples');
const GUN = '127.0.0.1:5000/team/app';
const NOW = new Date('2026-11-25T10:20:30.456Z');
const DAY = 86_400_000;

function testSigner(name: string, o: { cn?: string; kind?: 'ec' | 'ed25519' | 'rsa'; validFrom?: Date } = {}): Signer & { pub: KeyObject } {
  const kind = o.kind ?? 'ec';
  const pair = kind === 'ec' ? generateKeyPairSync('ec', { namedCurve: 'prime256v1' }) : kind === 'ed25519' ? generateKeyPairSync('ed25519') : generateKeyPairSync('rsa', { modulusLength: 2048 });
  const from = o.validFrom ?? new Date(NOW.getTime() - DAY);
  const cert = o.cn ? new X509Certificate(selfSignedCertificate(pair, o.cn, { notBefore: from, notAfter: new Date(from.getTime() + 3650 * DAY) })) : undefined;
  return {
    displayUri: `test:${name}`,
    algorithm: kind === 'ec' ? 'ecdsa-p256' : kind === 'ed25519' ? 'ed25519' : 'rsa-2048',
    pub: pair.publicKey,
    publicKey: async () => pair.publicKey,
    certificate: async () => cert,
    async sign(data: Buffer) {
      if (kind === 'ed25519') return { method: 'eddsa', sig: cryptoSign(null, data, pair.privateKey) };
      if (kind === 'rsa') return { method: 'rsapss', sig: cryptoSign('sha256', data, { key: pair.privateKey, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 }) };
      return { method: 'ecdsa', sig: cryptoSign('sha256', data, { key: pair.privateKey, dsaEncoding: 'ieee-p1363' }) };
    },
    close: async () => {},
  };
}

const DIGEST = `sha256:${'ab'.repeat(32)}`;

/** A complete repository: root (x509 root key), targets delegating targets/releases (two keys), snapshot, timestamp. */
async function buildRepo(o: { rootKind?: 'ec' | 'rsa'; targetsKind?: 'ec' | 'ed25519' | 'rsa' } = {}) {
  const s = {
    root: testSigner('root', { cn: GUN, kind: o.rootKind ?? 'ec' }),
    targets: testSigner('targets', { kind: o.targetsKind ?? 'ec' }),
    snapshot: testSigner('snapshot', { kind: 'ed25519' }),
    timestamp: testSigner('timestamp'),
    alice: testSigner('alice', { cn: 'alice' }),
    bob: testSigner('bob', { kind: 'rsa' }),
  };
  const k = {
    root: await signerNotaryKey(s.root, { x509: true }),
    targets: await signerNotaryKey(s.targets),
    snapshot: await signerNotaryKey(s.snapshot),
    timestamp: await signerNotaryKey(s.timestamp),
    alice: await signerNotaryKey(s.alice, { x509: true }),
    bob: await signerNotaryKey(s.bob),
  };
  const root = await signDocument(
    rootDocument({ version: 1, expires: defaultExpiry('root', NOW), roles: { root: [k.root], targets: [k.targets], snapshot: [k.snapshot], timestamp: [k.timestamp] } }),
    [{ signer: s.root, keyid: k.root.id }],
  );
  const targets = await signDocument(
    targetsDocument({
      version: 2, expires: defaultExpiry('targets', NOW), targets: { v1: targetEntry({ digest: DIGEST, size: 526, sha512: 'ef'.repeat(64) }) },
      delegations: { keys: { [k.alice.id]: k.alice.json, [k.bob.id]: k.bob.json }, roles: [{ name: 'targets/releases', keyids: [k.alice.id, k.bob.id], threshold: 1, paths: [''] }] },
    }),
    [{ signer: s.targets, keyid: k.targets.id }],
  );
  const releases = await signDocument(
    targetsDocument({ version: 1, expires: defaultExpiry('targets', NOW), targets: { 'v2': targetEntry({ digest: DIGEST, size: 527, sha512: 'cd'.repeat(64) }) } }),
    [{ signer: s.bob, keyid: k.bob.id }],
  );
  const snapshot = await signDocument(
    snapshotDocument({ version: 2, expires: defaultExpiry('snapshot', NOW), meta: { root: metaEntry(root), targets: metaEntry(targets), 'targets/releases': metaEntry(releases) } }),
    [{ signer: s.snapshot, keyid: k.snapshot.id }],
  );
  const timestamp = await signDocument(timestampDocument({ version: 1, expires: defaultExpiry('timestamp', NOW), snapshot }), [{ signer: s.timestamp, keyid: k.timestamp.id }]);
  return { s, k, root, targets, releases, snapshot, timestamp };
}

function trustChain(r: Awaited<ReturnType<typeof buildRepo>>, now = NOW): TrustedSet {
  const set = TrustedSet.fromRoot(r.root, { dialect: 'notary', gun: GUN }, now);
  set.updateTimestamp(r.timestamp, now);
  set.updateSnapshot(r.snapshot, now);
  set.updateTargets(r.targets, now);
  set.updateDelegated(r.releases, 'targets/releases', 'targets', now);
  return set;
}

/** The set of member names at every path, arrays merged: "the same fields". */
function shape(v: JsonValue, path = '$', out = new Set<string>(), mapLevels: RegExp[] = []): Set<string> {
  if (v === null || typeof v !== 'object') {
    out.add(`${path}:${v === null ? 'null' : typeof v}`);
    return out;
  }
  if (Array.isArray(v)) {
    for (const x of v) shape(x, `${path}[]`, out, mapLevels);
    return out;
  }
  const isMap = mapLevels.some((re) => re.test(path));
  for (const [k, x] of Object.entries(v)) shape(x, `${path}.${isMap ? '*' : k}`, out, mapLevels);
  return out;
}

// Objects keyed by IDs, target names or role names: compare their values, not their keys.
const MAPS = [/\.keys$/, /\.targets$/, /\.meta$/];
const readSample = (p: string) => readFileSync(join(SAMPLES, p));
const parse = (b: Buffer) => JSON.parse(b.toString('utf8')) as { signed: JsonObject; signatures: JsonObject[] };

describe('building Notary v1 documents', () => {
  it('a repository signed with ECDSA, Ed25519 and RSA-PSS Signers verifies with TrustedSet', async () => {
    for (const o of [{}, { rootKind: 'rsa' as const, targetsKind: 'ed25519' as const }, { targetsKind: 'rsa' as const }]) {
      const r = await buildRepo(o);
      const set = trustChain(r);
      expect(set.targetsIn('targets').get('v1')!.length).toBe(526);
      expect(set.targetsIn('targets/releases').get('v2')!.hashes.get('sha256')!.toString('hex')).toBe('ab'.repeat(32));
      expect(set.targetsIn('targets/releases').get('v2')!.hashes.get('sha512')!.toString('hex')).toBe('cd'.repeat(64));
      // and a year later still (targets 3 y, root 10 y), except the 14-day timestamp
      expect(() => trustChain(r, new Date(NOW.getTime() + 15 * DAY))).toThrow(/timestamp expired/);
    }
  });

  it('has the fields notary-server serves (notary-cli-initial, delegation and docker samples)', async () => {
    const r = await buildRepo();
    const pairs: [Buffer, string][] = [
      [r.root, 'notary-cli-initial/root.json'],
      [r.targets, 'notary-cli-delegation-rotated/targets.json'],
      [r.releases, 'notary-cli-delegation-rotated/targets/releases.json'],
      [r.snapshot, 'docker-cli-signer/snapshot.json'],
      [r.timestamp, 'notary-cli-initial/timestamp.json'],
    ];
    for (const [mine, sample] of pairs) {
      const theirs = parse(readSample(sample));
      expect([...shape(parse(mine) as unknown as JsonValue, '$', new Set(), MAPS)].sort(), sample).toEqual([...shape(theirs as unknown as JsonValue, '$', new Set(), MAPS)].sort());
    }
    // the top-level targets of a fresh repository: Notary writes an empty delegations object, not null
    const fresh = targetsDocument({ version: 1, expires: NOW });
    expect(fresh['delegations']).toEqual({ keys: {}, roles: [] });
    expect(fresh['targets']).toEqual({});
  });

  it('key IDs and key objects are Notary\'s: recomputed for every key in the samples', () => {
    let checked = 0;
    for (const folder of readdirSync(SAMPLES, { withFileTypes: true }).filter((d) => d.isDirectory()).map((d) => d.name)) {
      for (const file of ['root.json', 'targets.json']) {
        const signed = parse(readSample(`${folder}/${file}`)).signed;
        const keys = (file === 'root.json' ? signed['keys'] : (signed['delegations'] as JsonObject)['keys']) as Record<string, { keytype: string; keyval: { public: string } }>;
        for (const [id, k] of Object.entries(keys)) {
          const raw = Buffer.from(k.keyval.public, 'base64');
          let mine: NotaryKey;
          if (k.keytype.endsWith('-x509')) mine = notaryCertificateKey(new X509Certificate(raw));
          else if (k.keytype === 'ed25519') mine = notaryPublicKey(createPublicKey({ key: Buffer.concat([Buffer.from('302a300506032b6570032100', 'hex'), raw]), format: 'der', type: 'spki' }));
          else mine = notaryPublicKey(createPublicKey({ key: raw, format: 'der', type: 'spki' }));
          expect(mine.json, `${folder}/${file} ${id}`).toEqual(k);
          expect(mine.id).toBe(id);
          checked++;
        }
      }
    }
    expect(checked).toBeGreaterThan(15);
  });

  it('envelope bytes are Go\'s json.Marshal of the Signed struct: every sample re-serialises byte for byte', () => {
    let n = 0;
    for (const folder of readdirSync(SAMPLES, { withFileTypes: true }).filter((d) => d.isDirectory()).map((d) => d.name)) {
      for (const file of ['root.json', 'targets.json', 'snapshot.json', 'timestamp.json', 'targets/releases.json']) {
        let bytes: Buffer;
        try {
          bytes = readSample(`${folder}/${file}`);
        } catch {
          continue;
        }
        const doc = parse(bytes);
        const again = envelopeBytes(doc.signed, doc.signatures as unknown as { keyid: string; method: string; sig: string }[]);
        expect(again.toString('utf8'), `${folder}/${file}`).toBe(bytes.toString('utf8'));
        n++;
      }
    }
    expect(n).toBeGreaterThanOrEqual(20); // html-escaping included: <>& as \u003c \u003e \u0026, é raw
  });

  it('times, targets entries and keys', async () => {
    expect(goTime(new Date('2029-11-23T02:33:50.780Z'))).toBe('2029-11-23T02:33:50.78Z');
    expect(goTime(new Date('2029-11-23T02:33:50.000Z'))).toBe('2029-11-23T02:33:50Z');
    expect(defaultExpiry('root', NOW).toISOString()).toBe('2036-11-25T10:20:30.456Z');
    expect(defaultExpiry('targets/releases', NOW).toISOString()).toBe('2029-11-25T10:20:30.456Z');
    expect(defaultExpiry('timestamp', NOW).toISOString()).toBe('2026-12-09T10:20:30.456Z');
    expect(targetEntry({ digest: DIGEST, size: 10 })).toEqual({ hashes: { sha256: Buffer.from('ab'.repeat(32), 'hex').toString('base64') }, length: 10 });
    expect(() => targetEntry({ digest: 'sha256:abc', size: 1 })).toThrow(/sha256/);
    expect(() => targetEntry({ digest: DIGEST, size: -1 })).toThrow(/size/);
    expect(() => notaryPublicKey(generateKeyPairSync('ec', { namedCurve: 'secp384r1' }).publicKey)).toThrow(/P-256/);
    const ed = testSigner('ed', { kind: 'ed25519' });
    await expect(signerNotaryKey(ed, { x509: true })).rejects.toThrow(/no certificate/);
    // a key is found in a role whether it is listed bare or as its certificate
    const alice = testSigner('alice', { cn: 'alice' });
    const asCert = await signerNotaryKey(alice, { x509: true });
    const bare = await signerNotaryKey(alice);
    expect(findKeyId(alice.pub, { [asCert.id]: asCert.json }, [asCert.id])).toBe(asCert.id);
    expect(findKeyId(alice.pub, new Map([[bare.id, bare.json as JsonValue]]), [bare.id])).toBe(bare.id);
    expect(findKeyId(ed.pub, { [asCert.id]: asCert.json }, [asCert.id])).toBeUndefined();
    // one key signing twice is written once
    const doc = targetsDocument({ version: 1, expires: NOW });
    const twice = parse(await signDocument(doc, [{ signer: alice, keyid: bare.id }, { signer: alice, keyid: bare.id }]));
    expect(twice.signatures).toHaveLength(1);
  });
});

describe('verifyPublication: what we would refuse is never uploaded', () => {
  it('accepts a good state with the server signing timestamp and snapshot, and with our own snapshot', async () => {
    const r = await buildRepo();
    const targets = new Map([['targets', r.targets], ['targets/releases', r.releases]]);
    const set = verifyPublication({ gun: GUN, now: NOW, root: r.root, targets });
    expect(set.targetsIn('targets/releases').has('v2')).toBe(true);
    verifyPublication({ gun: GUN, now: NOW, root: r.root, snapshot: r.snapshot, targets });
  });

  it('refuses a delegated role signed by a key the delegation does not list', async () => {
    const r = await buildRepo();
    const mallory = testSigner('mallory');
    const forged = await signDocument(signedOf(r.releases), [{ signer: mallory, keyid: (await signerNotaryKey(mallory)).id }]);
    const e = (() => { try { verifyPublication({ gun: GUN, now: NOW, root: r.root, targets: new Map([['targets', r.targets], ['targets/releases', forged]]) }); } catch (x) { return x; } })();
    expect(e).toBeInstanceOf(TrustError);
    expect((e as TrustError).reason).toBe('THRESHOLD');
    expect((e as TrustError).role).toBe('targets/releases');
  });

  it('refuses targets signed by a key root does not name for targets, and a snapshot that does not match', async () => {
    const r = await buildRepo();
    const wrong = await signDocument(signedOf(r.targets), [{ signer: r.s.alice, keyid: r.k.alice.id }]);
    expect(() => verifyPublication({ gun: GUN, now: NOW, root: r.root, targets: new Map([['targets', wrong]]) })).toThrow(TrustError);
    const other = await signDocument({ ...signedOf(r.targets), version: 3 }, [{ signer: r.s.targets, keyid: r.k.targets.id }]);
    const e = (() => { try { verifyPublication({ gun: GUN, now: NOW, root: r.root, snapshot: r.snapshot, targets: new Map([['targets', other]]) }); } catch (x) { return x; } })();
    expect((e as TrustError).reason).toBe('MIX_AND_MATCH');
  });

  it('refuses a role nobody delegates to, a root certificate for another GUN, an expired document', async () => {
    const r = await buildRepo();
    expect(() => verifyPublication({ gun: GUN, now: NOW, root: r.root, targets: new Map([['targets', r.targets], ['targets/orphan', r.releases]]) })).toThrow(/no role delegates/);
    expect(() => verifyPublication({ gun: `${GUN}-other`, now: NOW, root: r.root, targets: new Map([['targets', r.targets]]) })).toThrow(/CN/);
    const stale = await signDocument({ ...signedOf(r.targets), expires: goTime(new Date(NOW.getTime() - 1000)) }, [{ signer: r.s.targets, keyid: r.k.targets.id }]);
    expect(() => verifyPublication({ gun: GUN, now: NOW, root: r.root, targets: new Map([['targets', stale]]) })).toThrow(/expired/);
  });

  it('root rotation: the new root must be signed by the old root key too, and be the next version', async () => {
    const r = await buildRepo();
    const root2 = testSigner('root-2', { cn: GUN });
    const k2 = await signerNotaryKey(root2, { x509: true });
    const next = rootDocument({ version: 2, expires: defaultExpiry('root', NOW), roles: { root: [k2], targets: [r.k.targets], snapshot: [r.k.snapshot], timestamp: [r.k.timestamp] } });
    const targets = new Map([['targets', r.targets]]);
    const both = await signDocument(next, [{ signer: r.s.root, keyid: r.k.root.id }, { signer: root2, keyid: k2.id }]);
    verifyPublication({ gun: GUN, now: NOW, root: both, previousRoot: r.root, targets });
    const newOnly = await signDocument(next, [{ signer: root2, keyid: k2.id }]);
    expect(() => verifyPublication({ gun: GUN, now: NOW, root: newOnly, previousRoot: r.root, targets })).toThrow(/threshold/);
    const skip = await signDocument({ ...next, version: 3 }, [{ signer: r.s.root, keyid: r.k.root.id }, { signer: root2, keyid: k2.id }]);
    expect(() => verifyPublication({ gun: GUN, now: NOW, root: skip, previousRoot: r.root, targets })).toThrow(/version 3/);
  });
});

// ------------------------------------------------------------------------------------------ the wire

interface Received {
  method: string;
  url: string;
  headers: IncomingMessage['headers'];
  body: Buffer;
}

describe('NotaryWriter (multipart upload, <role>.key) against a local HTTP server', () => {
  let srv: Server;
  let url: string;
  const received: Received[] = [];
  let answer: (r: Received) => { status: number; body: string; headers?: Record<string, string> } = () => ({ status: 200, body: '' });

  beforeAll(async () => {
    srv = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        const r = { method: req.method!, url: req.url!, headers: req.headers, body: Buffer.concat(chunks) };
        received.push(r);
        const a = answer(r);
        res.writeHead(a.status, { 'content-type': 'application/json', ...(a.headers ?? {}) });
        res.end(a.body);
      });
    });
    await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
    url = `http://127.0.0.1:${(srv.address() as AddressInfo).port}`;
  });

  afterAll(async () => {
    await new Promise((resolve) => srv.close(resolve));
  });

  it('uploads one multipart form, field "files", filename = role name with its slash', async () => {
    received.length = 0;
    answer = () => ({ status: 200, body: '{}' });
    const w = new NotaryWriter({ baseUrl: url });
    await w.upload('127.0.0.1:5000/team/app', new Map([['targets', Buffer.from('{"a":1}')], ['targets/releases', Buffer.from('{"b":2}')]]));
    await w.close();
    const r = received[0]!;
    expect(r.method).toBe('POST');
    expect(r.url).toBe('/v2/127.0.0.1:5000/team/app/_trust/tuf/');
    const boundary = /boundary=(.+)$/.exec(r.headers['content-type']!)![1]!;
    const text = r.body.toString('utf8');
    expect(text.split(`--${boundary}`).length).toBe(4); // two parts + the closing delimiter
    expect(text).toContain('Content-Disposition: form-data; name="files"; filename="targets"\r\n');
    expect(text).toContain('Content-Disposition: form-data; name="files"; filename="targets/releases"\r\n');
    expect(text).toContain('\r\n\r\n{"b":2}\r\n');
    expect(text.endsWith(`--${boundary}--\r\n`)).toBe(true);
  });

  it('a 400 VERSION is a version conflict; other refusals carry the server\'s code and detail', async () => {
    const w = new NotaryWriter({ baseUrl: url });
    answer = () => ({ status: 400, body: '{"errors":[{"code":"VERSION","message":"A newer version of metadata is already available.","detail":{}}]}' });
    const e = await w.upload('a/b', new Map([['targets', Buffer.from('{}')]])).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(NotaryUploadError);
    expect((e as NotaryUploadError).isVersionConflict).toBe(true);
    answer = () => ({ status: 400, body: '{"errors":[{"code":"INVALID_UPDATE","message":"Update sent by the client is invalid.","detail":{"Name":"ErrBadRoot"}}]}' });
    const e2 = (await w.upload('a/b', new Map([['root', Buffer.from('{}')]])).catch((x: unknown) => x)) as NotaryUploadError;
    expect([e2.status, e2.code, e2.isVersionConflict]).toEqual([400, 'INVALID_UPDATE', false]);
    expect(e2.detail).toEqual({ Name: 'ErrBadRoot' });
    expect(e2.message).toContain('ErrBadRoot');
    await expect(w.upload('a/../b', new Map([['targets', Buffer.from('{}')]]))).rejects.toThrow(/GUN/);
    await expect(w.upload('a/b', new Map([['timestamp', Buffer.from('{}')]]))).rejects.toThrow(/role name/);
    await w.close();
  });

  it('answers a Bearer challenge with a token from the realm (Basic credentials), then retries', async () => {
    received.length = 0;
    answer = (r) => {
      if (r.url.startsWith('/auth')) return { status: 200, body: '{"token":"tok123"}' };
      if (r.headers.authorization === 'Bearer tok123') return { status: 200, body: '{}' };
      return { status: 401, body: '{}', headers: { 'www-authenticate': `Bearer realm="${url}/auth",service="notary",scope="repository:a/b:push,pull"` } };
    };
    const w = new NotaryWriter({ baseUrl: url, auth: { username: 'u', password: 'p' } });
    await w.upload('a/b', new Map([['targets', Buffer.from('{}')]]));
    await w.close();
    const token = received.find((r) => r.url.startsWith('/auth'))!;
    expect(token.headers.authorization).toBe(`Basic ${Buffer.from('u:p').toString('base64')}`);
    expect(token.url).toContain('scope=repository%3Aa%2Fb%3Apush%2Cpull');
    expect(received.at(-1)!.headers.authorization).toBe('Bearer tok123');
    expect(received.at(-1)!.body.length).toBeGreaterThan(0); // the body was sent again
  });

  it('sends Basic credentials only in answer to a Basic challenge, never up front', async () => {
    received.length = 0;
    const expected = `Basic ${Buffer.from('u:p').toString('base64')}`;
    answer = (r) => (r.headers.authorization === expected ? { status: 200, body: '{}' } : { status: 401, body: '{}', headers: { 'www-authenticate': 'Basic realm="notary"' } });
    const w = new NotaryWriter({ baseUrl: url, auth: { username: 'u', password: 'p' } });
    await w.upload('a/b', new Map([['targets', Buffer.from('{}')]]));
    await w.close();
    expect(received.map((r) => r.headers.authorization)).toEqual([undefined, expected]);
    const anon = new NotaryWriter({ baseUrl: url });
    const e = (await anon.upload('a/b', new Map([['targets', Buffer.from('{}')]])).catch((x: unknown) => x)) as NotaryUploadError;
    expect([e.status, e.code]).toEqual([401, 'UNAUTHORIZED']);
    await anon.close();
  });

  it('GET <role>.key: the server\'s public key with its Notary key ID', async () => {
    const { publicKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
    const pub = publicKey.export({ type: 'spki', format: 'der' }).toString('base64');
    answer = (r) => r.url.endsWith('/_trust/tuf/timestamp.key')
      ? { status: 200, body: JSON.stringify({ keytype: 'ecdsa', keyval: { private: null, public: pub } }) }
      : { status: 404, body: '{}' };
    const w = new NotaryWriter({ baseUrl: url });
    const k = await w.serverKey('a/b', 'timestamp');
    expect(k.id).toBe(createHash('sha256').update(`{"keytype":"ecdsa","keyval":{"private":null,"public":"${pub}"}}`).digest('hex'));
    expect(k.id).toBe(notaryPublicKey(publicKey).id);
    await expect(w.serverKey('a/b', 'snapshot')).rejects.toThrow(/no snapshot key/);
    await w.close();
  });
});

describe('audit lines', () => {
  it('one JSON line per operation, PINs redacted from key URIs', () => {
    expect(redactKeyUri('pkcs11:token=a;object=b;pin-value=1234')).toBe('pkcs11:token=a;object=b;pin-value=[redacted]');
    expect(redactKeyUri('pkcs11:token=a;object=b?pin-value=1234&module-path=/x')).toBe('pkcs11:token=a;object=b?pin-value=[redacted]&module-path=/x');
    expect(redactKeyUri('pkcs11:token=a?pin-source=file:/run/pin')).toBe('pkcs11:token=a?pin-source=file:/run/pin');
    const lines: string[] = [];
    const log = createAuditLogger({ write: (s: string) => void lines.push(s) });
    writeAudit(log, {
      operation: 'sign', gun: GUN, role: 'targets/releases', keyUri: 'pkcs11:token=build01;object=rel?pin-value=9999', keys: { 'targets/releases': 'pkcs11:token=build01;object=rel?pin-value=9999' },
      tag: 'v1', digest: DIGEST, versions: { 'targets/releases': 3 }, outcome: 'published', attempts: 1, server: 'https://notary:4443',
    });
    expect(lines).toHaveLength(1);
    const line = JSON.parse(lines[0]!) as Record<string, unknown>;
    expect(line).toMatchObject({ operation: 'sign', gun: GUN, role: 'targets/releases', tag: 'v1', digest: DIGEST, versions: { 'targets/releases': 3 }, outcome: 'published' });
    expect(lines[0]).not.toContain('9999');
  });
});

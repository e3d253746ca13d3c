// Signers: the conformance suite against key files and SoftHSM, then what each one must refuse.
// SoftHSM tests make their own token directory in a temp dir (never /var/lib/softhsm) and skip, with the reason in
// the suite name, where SoftHSM or the pkcs11js addon is not available.
import { execFileSync } from 'node:child_process';
import { createHash, generateKeyPairSync, X509Certificate, type KeyObject } from 'node:crypto';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inspect } from 'node:util';
import type { PKCS11 } from 'pkcs11js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FileSigner, generateKeyFile } from '../../hsm/file-signer.js';
import { openSigner } from '../../hsm/open-signer.js';
import { CK, Pkcs11Signer, TokenSession, findPrivateKey, loadPkcs11js, pkcs11Unavailable } from '../../hsm/pkcs11-signer.js';
import { HsmError, parsePkcs11Uri, type HsmErrorCode } from '../../hsm/pkcs11-uri.js';
import type { KeyAlgorithm, Signer } from '../../hsm/signer.js';
import {
  createSelfSignedCertificate, deleteKey, generateKey, listKeys, notaryCertificateKeyId, notaryKeyId, storeCertificate,
} from '../../hsm/token-keys.js';
import { canonicalGo } from '../../trust/json.js';
import { createSoftHsmDir, softhsmUnavailable, type SoftHsmDir, type SoftHsmToken } from '../harness/softhsm.js';
import { describeSigner, notaryVerifies } from './signer.conformance.js';

const DATA = Buffer.from('{"_type":"Root","version":1}');

async function failure(p: Promise<unknown>): Promise<HsmError> {
  const err = await p.then(() => undefined, (e: unknown) => e);
  expect(err).toBeInstanceOf(HsmError);
  return err as HsmError;
}

async function expectCode(p: Promise<unknown>, code: HsmErrorCode): Promise<HsmError> {
  const err = await failure(p);
  expect(err.code, err.message).toBe(code);
  return err;
}

/** Every way an error could end up in a log. */
function renderings(err: unknown): string[] {
  const e = err as Error;
  return [e.message, String(e.stack), inspect(e), JSON.stringify(e), JSON.stringify({ ...e })];
}

// ---------------------------------------------------------------------------------------------------------------
// Key files.

const PASSPHRASE = 'correct horse 8813 battery';

async function tempDir(): Promise<string> {
  return mkdtemp(join(tmpdir(), 'portcullis-keys-'));
}

for (const algorithm of ['ecdsa-p256', 'ed25519', 'rsa-2048'] as const) {
  describeSigner(`FileSigner ${algorithm}`, async () => {
    const dir = await tempDir();
    const path = join(dir, `${algorithm}.key`);
    const expectedPublicKey = await generateKeyFile(path, algorithm, PASSPHRASE);
    return {
      algorithm,
      expectedPublicKey,
      secrets: [PASSPHRASE],
      open: () => FileSigner.open(path, { passphrase: PASSPHRASE }),
      cleanup: () => rm(dir, { recursive: true, force: true }),
    };
  });
}

describe('FileSigner refusals and file handling', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await tempDir();
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('generateKeyFile writes an encrypted PKCS#8 file with mode 0600 and never replaces an existing file', async () => {
    const path = join(dir, 'a.key');
    await generateKeyFile(path, 'ecdsa-p256', PASSPHRASE);
    expect((await stat(path)).mode & 0o777).toBe(0o600);
    const text = await readFile(path, 'utf8');
    expect(text).toMatch(/^-----BEGIN ENCRYPTED PRIVATE KEY-----\n/);
    await expectCode(generateKeyFile(path, 'ecdsa-p256', PASSPHRASE), 'OBJECT_EXISTS');
    expect(await readFile(path, 'utf8')).toBe(text);
  });

  it('a wrong passphrase is PIN_INCORRECT and the message does not contain it', async () => {
    const path = join(dir, 'b.key');
    await generateKeyFile(path, 'ed25519', PASSPHRASE);
    const err = await expectCode(FileSigner.open(path, { passphrase: 'not the passphrase 4242' }), 'PIN_INCORRECT');
    for (const r of renderings(err)) expect(r).not.toContain('4242');
  });

  it('the passphrase comes from env:NAME or file:/path; a missing one is PIN_MISSING', async () => {
    const path = join(dir, 'c.key');
    await generateKeyFile(path, 'ecdsa-p256', PASSPHRASE);
    process.env['PORTCULLIS_TEST_PASSPHRASE'] = PASSPHRASE;
    await (await FileSigner.open(path, { passphraseSource: 'env:PORTCULLIS_TEST_PASSPHRASE' })).close();
    delete process.env['PORTCULLIS_TEST_PASSPHRASE'];
    await expectCode(FileSigner.open(path, { passphraseSource: 'env:PORTCULLIS_TEST_PASSPHRASE' }), 'PIN_MISSING');
    await writeFile(join(dir, 'pass'), `${PASSPHRASE}\n`, { mode: 0o600 });
    await (await FileSigner.open(path, { passphraseSource: `file:${join(dir, 'pass')}` })).close();
    await expectCode(FileSigner.open(path), 'PIN_MISSING');
    await expectCode(FileSigner.open(path, { passphraseSource: 'https://example.com/pass' }), 'BAD_URI');
  });

  it("Notary's own key files (PEM with role/gun headers) are accepted", async () => {
    const path = join(dir, 'notary.key');
    const pub = await generateKeyFile(path, 'ecdsa-p256', PASSPHRASE, { role: 'root', gun: 'docker.io/library/demo' });
    expect(await readFile(path, 'utf8')).toMatch(/^-----BEGIN ENCRYPTED PRIVATE KEY-----\nrole: root\ngun: docker\.io\/library\/demo\n\n/);
    const s = await FileSigner.open(path, { passphrase: PASSPHRASE });
    const sig = await s.sign(DATA);
    expect(notaryVerifies(pub, sig.method, DATA, sig.sig)).toBe(true);
    await s.close();
  });

  it('unencrypted private keys and files without a key are refused (KEY_FILE)', async () => {
    const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    await writeFile(join(dir, 'plain.key'), privateKey.export({ type: 'pkcs8', format: 'pem' }));
    const err = await expectCode(FileSigner.open(join(dir, 'plain.key'), { passphrase: PASSPHRASE }), 'KEY_FILE');
    expect(err.message).toContain('unencrypted');
    await writeFile(join(dir, 'junk.key'), 'hello');
    await expectCode(FileSigner.open(join(dir, 'junk.key'), { passphrase: PASSPHRASE }), 'KEY_FILE');
    await expectCode(FileSigner.open(join(dir, 'missing.key'), { passphrase: PASSPHRASE }), 'KEY_FILE');
  });

  it('keys Notary cannot use are refused (P-384)', async () => {
    const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-384' });
    await writeFile(join(dir, 'p384.key'), privateKey.export({ type: 'pkcs8', format: 'pem', cipher: 'aes-256-cbc', passphrase: PASSPHRASE }));
    await expectCode(FileSigner.open(join(dir, 'p384.key'), { passphrase: PASSPHRASE }), 'MECHANISM_UNSUPPORTED');
  });

  it('a certificate next to the key file is its certificate(); the self-signed one has CN = GUN', async () => {
    const path = join(dir, 'root-key.pem');
    await generateKeyFile(path, 'ecdsa-p256', PASSPHRASE);
    const s = await FileSigner.open(path, { passphrase: PASSPHRASE });
    expect(await s.certificate()).toBeUndefined();
    const { pem } = await createSelfSignedCertificate(s, 'example.com/org/app', 3650);
    await writeFile(join(dir, 'root.crt'), pem);
    await s.close();
    const again = await FileSigner.open(path, { passphrase: PASSPHRASE });
    const cert = await again.certificate();
    expect(cert?.subject).toBe('CN=example.com/org/app');
    expect(cert?.verify(await again.publicKey())).toBe(true);
    await again.close();
  });

  it('openSigner sends paths to the file signer and pkcs11: URIs to PKCS#11', async () => {
    const path = join(dir, 'd.key');
    await generateKeyFile(path, 'ed25519', PASSPHRASE);
    const s = await openSigner(path, { passphrase: PASSPHRASE });
    expect(s).toBeInstanceOf(FileSigner);
    expect(s.displayUri).toBe(path);
    await s.close();
    // a pkcs11: URI is parsed as one (and refused here before any module is loaded)
    await expectCode(openSigner('PKCS11:tokn=x;object=y'), 'BAD_URI');
  });
});

// ---------------------------------------------------------------------------------------------------------------
// SoftHSM.

const hsmSkip = softhsmUnavailable() ?? pkcs11Unavailable();

// Wraps the real module: `overrides` replace methods; calls are counted.
function faulty(overrides: Partial<Record<keyof PKCS11, (...args: never[]) => unknown>>, calls: string[] = []): (p11: PKCS11) => PKCS11 {
  return (p11) =>
    new Proxy(p11, {
      get(target, prop, receiver) {
        const real = Reflect.get(target, prop, receiver) as unknown;
        if (typeof prop !== 'string' || typeof real !== 'function') return real;
        const override = (overrides as Record<string, ((...args: unknown[]) => unknown) | undefined>)[prop];
        return (...args: unknown[]) => {
          calls.push(prop);
          return override ? override.call(target, ...args) : (real as (...a: unknown[]) => unknown).apply(target, args);
        };
      },
    });
}

/** An error exactly as pkcs11js throws it for a PKCS#11 return value. */
function ckError(name: string, code: number): Error {
  const { Pkcs11Error } = loadPkcs11js() as unknown as { Pkcs11Error: new (msg: string) => Error };
  return new Pkcs11Error(`${name}:${code}`);
}

describe.skipIf(hsmSkip !== undefined)(`SoftHSM${hsmSkip ? ` (skipped: ${hsmSkip})` : ''}`, () => {
  let hsm: SoftHsmDir;
  let main: SoftHsmToken;
  let other: SoftHsmToken;
  let gone: SoftHsmToken;
  const keys = new Map<string, KeyObject>();

  beforeAll(async () => {
    hsm = createSoftHsmDir();
    // SoftHSM scans its token directory in C_Initialize: every token exists before the first signer opens.
    main = hsm.addToken('main', '2468-main-pin');
    other = hsm.addToken('other', '1357-other-pin');
    gone = hsm.addToken('gone', '9999-gone-pin');
    for (const alg of ['ecdsa-p256', 'ed25519', 'rsa-2048'] as const) {
      keys.set(alg, (await generateKey(hsm.uri(main, `object=${alg}`), alg)).publicKey);
    }
    keys.set('other', (await generateKey(hsm.uri(other, 'object=k;id=%01%02'), 'ecdsa-p256')).publicKey);
    keys.set('gone', (await generateKey(hsm.uri(gone, 'object=k'), 'ecdsa-p256')).publicKey);
  });
  afterAll(() => {
    hsm?.dispose();
  });

  for (const algorithm of ['ecdsa-p256', 'ed25519', 'rsa-2048'] as const) {
    describeSigner(`Pkcs11Signer on SoftHSM ${algorithm}`, async () => ({
      algorithm,
      expectedPublicKey: keys.get(algorithm) as KeyObject,
      secrets: [main.pin],
      open: () => Pkcs11Signer.open(hsm.uri(main, `object=${algorithm}`)),
    }));
  }

  it('many signers on one module signing at once do not crash the process (the module is told to lock)', () => {
    // C_SignAsync runs on libuv's thread pool; with C_Initialize(NULL) SoftHSM takes no locks and this load
    // segfaulted every time. In a child process, so a crash is a failed test rather than a dead test worker.
    const script = `
      const { Pkcs11Signer } = await import(${JSON.stringify(new URL('../../hsm/pkcs11-signer.ts', import.meta.url).href)});
      const signers = await Promise.all(Array.from({ length: 16 }, () => Pkcs11Signer.open(process.env.URI)));
      let n = 0;
      for (let round = 0; round < 3; round++) {
        n += (await Promise.all(signers.flatMap((s) => Array.from({ length: 150 }, (_, i) => s.sign(Buffer.from('data ' + i)))))).length;
      }
      await Promise.all(signers.map((s) => s.close()));
      console.log('signed', n);`;
    const out = execFileSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
      env: { ...process.env, URI: hsm.uri(main, 'object=ecdsa-p256') },
      encoding: 'utf8',
      timeout: 120_000,
    });
    expect(out.trim()).toBe('signed 7200');
  });

  it('the private key is CKA_SENSITIVE and not extractable (asked with C_GetAttributeValue)', async () => {
    for (const alg of ['ecdsa-p256', 'ed25519', 'rsa-2048'] as const) {
      const uri = parsePkcs11Uri(hsm.uri(main, `object=${alg}`));
      const ts = await TokenSession.open(uri, {}, { rw: false });
      try {
        const key = findPrivateKey(ts, uri);
        const bools = ts.p11.C_GetAttributeValue(ts.handle, key.handle, [
          { type: CK.CKA_TOKEN }, { type: CK.CKA_PRIVATE }, { type: CK.CKA_SENSITIVE }, { type: CK.CKA_EXTRACTABLE },
          { type: CK.CKA_ALWAYS_SENSITIVE }, { type: CK.CKA_NEVER_EXTRACTABLE },
        ]).map((a) => a.value[0] === 1);
        expect(bools, alg).toEqual([true, true, true, false, true, true]);
        const secret = alg.startsWith('rsa') ? 0x123 /* CKA_PRIVATE_EXPONENT */ : CK.CKA_VALUE;
        expect(() => ts.p11.C_GetAttributeValue(ts.handle, key.handle, [{ type: secret }])).toThrow(/CKR_ATTRIBUTE_SENSITIVE/);
      } finally {
        ts.close();
      }
    }
  });

  it('wrong PIN is refused and nothing is signed', async () => {
    process.env['PORTCULLIS_TEST_WRONG_PIN'] = '0000-wrong';
    const calls: string[] = [];
    const uri = hsm.uri(main, 'object=ecdsa-p256').replace(/pin-source=[^&]*/, 'pin-source=env:PORTCULLIS_TEST_WRONG_PIN');
    const err = await expectCode(Pkcs11Signer.open(uri, { wrapModule: faulty({}, calls) }), 'PIN_INCORRECT');
    expect(err.message).toContain("'main'");
    expect(err.message).toContain('pin-source=env:PORTCULLIS_TEST_WRONG_PIN');
    expect(err.ckr).toBe('CKR_PIN_INCORRECT');
    expect(calls).toContain('C_Login');
    expect(calls.filter((c) => c.startsWith('C_Sign'))).toEqual([]);

    // While another signer holds the token logged in, the token would not check the PIN: we do.
    const good = await Pkcs11Signer.open(hsm.uri(main, 'object=ecdsa-p256'));
    try {
      const calls2: string[] = [];
      const err2 = await expectCode(Pkcs11Signer.open(uri, { wrapModule: faulty({}, calls2) }), 'PIN_INCORRECT');
      expect(err2.message).toContain('differs');
      expect(calls2.filter((c) => c === 'C_Login' || c.startsWith('C_Sign'))).toEqual([]);
      expect(notaryVerifies(keys.get('ecdsa-p256') as KeyObject, 'ecdsa', DATA, (await good.sign(DATA)).sig)).toBe(true);
    } finally {
      await good.close();
      delete process.env['PORTCULLIS_TEST_WRONG_PIN'];
    }
  });

  it('a missing PIN source is PIN_MISSING before any module is loaded', async () => {
    const calls: string[] = [];
    await expectCode(Pkcs11Signer.open(`pkcs11:token=main;object=k?pin-source=env:PORTCULLIS_TEST_UNSET&module-path=/nonexistent/lib.so`), 'PIN_MISSING');
    const err = await expectCode(Pkcs11Signer.open(`pkcs11:token=main;object=ecdsa-p256?module-path=${hsm.module}`, { wrapModule: faulty({}, calls) }), 'PIN_MISSING');
    expect(err.message).toContain('pin-source=');
    expect(calls).toEqual([]);
  });

  it('missing token names the tokens present', async () => {
    const err = await expectCode(Pkcs11Signer.open(hsm.uri({ ...main, label: 'mian' }, 'object=k')), 'TOKEN_NOT_FOUND');
    expect(err.message).toContain("token='mian'");
    for (const label of ["'main'", "'other'", "'gone'"]) expect(err.message).toContain(label);
  });

  it('a URI naming no token is refused when several tokens are present', async () => {
    const err = await expectCode(Pkcs11Signer.open(`pkcs11:object=k?pin-source=file:${main.pinFile}&module-path=${hsm.module}`), 'BAD_URI');
    expect(err.message).toContain('add token=');
  });

  it('missing object names the keys present', async () => {
    const err = await expectCode(Pkcs11Signer.open(hsm.uri(main, 'object=nope')), 'OBJECT_NOT_FOUND');
    expect(err.message).toContain("object='nope'");
    expect(err.message).toContain("'ecdsa-p256'");
    await expectCode(Pkcs11Signer.open(hsm.uri(other, 'object=k;id=%09')), 'OBJECT_NOT_FOUND');
    await expectCode(Pkcs11Signer.open(hsm.uri(main)), 'BAD_URI'); // names no key at all
    await expectCode(Pkcs11Signer.open(hsm.uri(main, 'object=ecdsa-p256;type=cert')), 'BAD_URI');
  });

  it('the key is found by id alone, and by label and id', async () => {
    for (const attrs of ['id=%01%02', 'object=k;id=%01%02', 'object=k']) {
      const s = await Pkcs11Signer.open(hsm.uri(other, attrs));
      expect(notaryVerifies(keys.get('other') as KeyObject, 'ecdsa', DATA, (await s.sign(DATA)).sig)).toBe(true);
      await s.close();
    }
  });

  it('locked token: a PIN the token reports locked is not even tried (SoftHSM 2.6 never locks: simulated)', async () => {
    // SoftHSM 2.6 only sets CKF_USER_PIN_COUNT_LOW after wrong PINs and never locks, so the lock is injected.
    const calls: string[] = [];
    const lockedFlags = faulty({
      C_GetTokenInfo(this: PKCS11, slot: Buffer) {
        const info = this.C_GetTokenInfo(slot);
        return { ...info, flags: info.flags | CK.CKF_USER_PIN_LOCKED };
      },
    } as never, calls);
    const err = await expectCode(Pkcs11Signer.open(hsm.uri(other, 'object=k'), { wrapModule: lockedFlags }), 'PIN_LOCKED');
    expect(err.message).toContain("'other'");
    expect(calls).not.toContain('C_Login');
  });

  it('locked token: C_Login answering CKR_PIN_LOCKED is PIN_LOCKED (simulated)', async () => {
    const wrap = faulty({ C_Login: () => { throw ckError('CKR_PIN_LOCKED', 0xa4); } });
    const err = await expectCode(Pkcs11Signer.open(hsm.uri(other, 'object=k'), { wrapModule: wrap }), 'PIN_LOCKED');
    expect(err.ckr).toBe('CKR_PIN_LOCKED');
    expect(err.message).toContain('security officer');
  });

  it('a URI naming an unknown attribute is refused before the module is loaded', async () => {
    const calls: string[] = [];
    const err = await expectCode(
      Pkcs11Signer.open(`pkcs11:tokn=main;object=k?pin-source=file:${main.pinFile}&module-path=/nonexistent/libnope.so`, { wrapModule: faulty({}, calls) }),
      'BAD_URI',
    );
    expect(err.message).toBe("unknown attribute 'tokn' in pkcs11 URI");
    expect(calls).toEqual([]);
    // the same URI spelled right gets as far as the (missing) module
    await expectCode(Pkcs11Signer.open(`pkcs11:token=main;object=k?pin-source=file:${main.pinFile}&module-path=/nonexistent/libnope.so`), 'MODULE_NOT_FOUND');
  });

  it('pin-value in the URI is refused unless allowed', async () => {
    const uri = `pkcs11:token=main;object=ecdsa-p256?pin-value=${main.pin}&module-path=${hsm.module}`;
    const err = await expectCode(Pkcs11Signer.open(uri), 'BAD_URI');
    expect(err.message).toContain('pin-source');
    await expectCode(openSigner(uri), 'BAD_URI');
    const s = await openSigner(uri, { allowPinValue: true });
    expect(s.displayUri).not.toContain(main.pin);
    expect(notaryVerifies(keys.get('ecdsa-p256') as KeyObject, 'ecdsa', DATA, (await s.sign(DATA)).sig)).toBe(true);
    await s.close();
  });

  it('the PIN never appears in errors or redacted URIs', async () => {
    const wrongPin = 'Wr0ngPin-5150';
    const uri = `pkcs11:token=other;object=k?pin-value=${wrongPin}&module-path=${hsm.module}`;
    const parsed = parsePkcs11Uri(uri, { allowPinValue: true });
    for (const s of [parsed.toString(), parsed.redacted(), inspect(parsed), JSON.stringify(parsed)]) expect(s).not.toContain(wrongPin);
    const errors: unknown[] = [
      await expectCode(Pkcs11Signer.open(uri, { allowPinValue: true }), 'PIN_INCORRECT'),
      await expectCode(Pkcs11Signer.open(uri), 'BAD_URI'),
      await expectCode(Pkcs11Signer.open(uri.replace('token=other', 'token=nope'), { allowPinValue: true }), 'TOKEN_NOT_FOUND'),
    ];
    // and the right PIN, used by a signer, is not in anything it shows
    const good = await Pkcs11Signer.open(`pkcs11:token=other;object=k?pin-value=${other.pin}&module-path=${hsm.module}`, { allowPinValue: true });
    errors.push(await expectCode(Pkcs11Signer.open(uri, { allowPinValue: true }), 'PIN_INCORRECT'));
    await good.close();
    errors.push(await expectCode(good.sign(DATA), 'CLOSED'));
    for (const err of errors) {
      for (const r of renderings(err)) {
        expect(r).not.toContain(wrongPin);
        expect(r).not.toContain(other.pin);
      }
    }
    expect(good.displayUri).not.toContain(other.pin);
    expect(inspect(good)).not.toContain(other.pin);
  });

  it('the module comes from module-path, the module option, module-name or the usual locations', async () => {
    const bare = `pkcs11:token=main;object=ecdsa-p256?pin-source=file:${main.pinFile}`;
    const cases: Array<[string, { module?: string }]> = [
      [hsm.uri(main, 'object=ecdsa-p256'), {}],
      [bare, { module: hsm.module }],
      [`${bare}&module-name=softhsm2`, {}],
      [bare, {}],
    ];
    for (const [uri, opts] of cases) {
      const s = await Pkcs11Signer.open(uri, opts);
      expect(notaryVerifies(keys.get('ecdsa-p256') as KeyObject, 'ecdsa', DATA, (await s.sign(DATA)).sig)).toBe(true);
      await s.close();
    }
  });

  it('a module path that does not exist is MODULE_NOT_FOUND', async () => {
    await expectCode(Pkcs11Signer.open(`pkcs11:token=main;object=k?pin-source=file:${main.pinFile}&module-path=/nonexistent/libx.so`), 'MODULE_NOT_FOUND');
    await expectCode(Pkcs11Signer.open(`pkcs11:token=main;object=k?pin-source=file:${main.pinFile}&module-name=no-such-pkcs11-module`), 'MODULE_NOT_FOUND');
  });

  it('a token without the signing mechanism is MECHANISM_UNSUPPORTED (simulated)', async () => {
    const wrap = faulty({ C_GetMechanismList: () => [] });
    const err = await expectCode(Pkcs11Signer.open(hsm.uri(main, 'object=ed25519'), { wrapModule: wrap }), 'MECHANISM_UNSUPPORTED');
    expect(err.message).toContain('CKM_EDDSA');
  });

  it('a token that returns garbage signatures is caught: SIGNATURE_INVALID, nothing returned', async () => {
    const wrap = faulty({ C_SignAsync: async () => Buffer.alloc(64, 7) });
    const s = await Pkcs11Signer.open(hsm.uri(main, 'object=ecdsa-p256'), { wrapModule: wrap });
    await expectCode(s.sign(DATA), 'SIGNATURE_INVALID');
    await s.close();
  });

  it('a dead session is reopened once; if it dies again the error is TOKEN_REMOVED', async () => {
    let failures = 1;
    const calls: string[] = [];
    const flaky = faulty({
      C_SignAsync(this: PKCS11, ...args: Parameters<PKCS11['C_SignAsync']>) {
        if (failures-- > 0) return Promise.reject(ckError('CKR_SESSION_HANDLE_INVALID', 0xb3));
        return this.C_SignAsync(...args);
      },
    } as never, calls);
    const s = await Pkcs11Signer.open(hsm.uri(main, 'object=ecdsa-p256'), { wrapModule: flaky });
    const sig = await s.sign(DATA);
    expect(notaryVerifies(keys.get('ecdsa-p256') as KeyObject, 'ecdsa', DATA, sig.sig)).toBe(true);
    expect(calls.filter((c) => c === 'C_OpenSession').length).toBe(2);
    failures = 2;
    const err = await expectCode(s.sign(DATA), 'TOKEN_REMOVED');
    expect(err.message).toContain("'main'");
    // the token is back: the next sign works
    expect(notaryVerifies(keys.get('ecdsa-p256') as KeyObject, 'ecdsa', DATA, (await s.sign(DATA)).sig)).toBe(true);
    await s.close();
  });

  it('generateKey refuses duplicates; listKeys reports Notary key IDs; deleteKey removes key, public key and certificate', async () => {
    const g = await generateKey(hsm.uri(other, 'object=tmp;id=%aa%bb'), 'ecdsa-p256');
    expect(g.idHex).toBe('aabb');
    expect(g.uri).toContain('id=%aa%bb');
    expect(g.uri).not.toContain(other.pin);
    await expectCode(generateKey(hsm.uri(other, 'object=tmp'), 'ecdsa-p256'), 'OBJECT_EXISTS');
    await expectCode(generateKey(hsm.uri(other, 'object=tmp2;id=%aa%bb'), 'ed25519'), 'OBJECT_EXISTS');
    await expectCode(generateKey(hsm.uri(other), 'ecdsa-p256'), 'BAD_URI');

    const s = await Pkcs11Signer.open(g.uri); // a generated URI opens as is
    const spki = (await s.publicKey()).export({ type: 'spki', format: 'der' });
    const expectedId = createHash('sha256')
      .update(canonicalGo({ keytype: 'ecdsa', keyval: { private: null, public: spki.toString('base64') } }))
      .digest('hex');
    expect(g.keyId).toBe(expectedId);
    const { pem } = await createSelfSignedCertificate(s, 'tmp', 30);
    await storeCertificate(g.uri, pem);
    await s.close();

    const listed = (await listKeys(hsm.uri(other))).find((k) => k.label === 'tmp');
    expect(listed).toMatchObject({ idHex: 'aabb', algorithm: 'ecdsa-p256', keyId: expectedId, hasCertificate: true });
    expect(await deleteKey(g.uri)).toEqual({ privateKeys: 1, publicKeys: 1, certificates: 1 });
    expect((await listKeys(hsm.uri(other))).map((k) => k.label)).toEqual(['k']);
    await expectCode(Pkcs11Signer.open(g.uri), 'OBJECT_NOT_FOUND');
  });

  it('certificate on the token verifies and has CN = GUN', async () => {
    const gun = 'docker.io/library/demo';
    const g = await generateKey(hsm.uri(main, `object=${encodeURIComponent(gun)}`), 'ecdsa-p256');
    const signer = await Pkcs11Signer.open(g.uri);
    expect(await signer.certificate()).toBeUndefined();
    const now = new Date('2026-11-25T12:00:00Z');
    const made = await createSelfSignedCertificate(signer, gun, 3650, { now });
    await storeCertificate(g.uri, made.pem);
    await expectCode(storeCertificate(g.uri, made.pem), 'OBJECT_EXISTS');
    // a certificate for another key is refused
    const dir = await tempDir();
    try {
      await generateKeyFile(join(dir, 'f.key'), 'ecdsa-p256', PASSPHRASE);
      const fileSigner = await FileSigner.open(join(dir, 'f.key'), { passphrase: PASSPHRASE });
      const foreign = await createSelfSignedCertificate(fileSigner, gun, 1);
      await fileSigner.close();
      await expectCode(storeCertificate(g.uri, foreign.pem, { replace: true }), 'BAD_URI');
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
    await signer.close();

    const again: Signer = await openSigner(g.uri);
    const cert = (await again.certificate()) as X509Certificate;
    expect(cert).toBeInstanceOf(X509Certificate);
    expect(cert.subject).toBe(`CN=${gun}`);
    expect(cert.issuer).toBe(`CN=${gun}`);
    expect(cert.verify(await again.publicKey())).toBe(true);
    expect(cert.publicKey.export({ type: 'spki', format: 'der' })).toEqual((await again.publicKey()).export({ type: 'spki', format: 'der' }));
    expect(new Date(cert.validFrom).toISOString()).toBe(now.toISOString());
    expect(new Date(cert.validTo).getTime() - now.getTime()).toBe(3650 * 86_400_000);
    expect(cert.ca).toBe(false);
    expect(cert.keyUsage).toEqual(['1.3.6.1.5.5.7.3.3']); // extKeyUsage codeSigning, as Notary's root certificates
    await again.close();

    let text = '';
    try {
      text = execFileSync('openssl', ['x509', '-noout', '-text'], { input: made.pem }).toString();
    } catch {
      text = ''; // openssl not installed: the node:crypto checks above stand
    }
    if (text !== '') {
      expect(text).toContain(`Subject: CN = ${gun}`);
      expect(text).toContain('Signature Algorithm: ecdsa-with-SHA256');
      expect(text).toMatch(/Key Usage: critical\s+Digital Signature/);
      expect(text).toMatch(/Basic Constraints: critical\s+CA:FALSE/);
    }
    const listed = (await listKeys(g.uri))[0];
    expect(listed?.hasCertificate).toBe(true);
    expect(listed?.certificateKeyId).toBe(notaryCertificateKeyId(cert));
    expect(listed?.keyId).toBe(notaryKeyId(cert.publicKey));
  });

  for (const alg of ['ed25519', 'rsa-2048'] as KeyAlgorithm[]) {
    it(`self-signed certificates also work for ${alg} token keys`, async () => {
      const s = await Pkcs11Signer.open(hsm.uri(main, `object=${alg}`));
      const { certificate, pem } = await createSelfSignedCertificate(s, 'example.com/app', 365);
      expect(certificate.verify(await s.publicKey())).toBe(true);
      expect(new X509Certificate(pem).subject).toBe('CN=example.com/app');
      await s.close();
    });
  }

  // Last: deleting a token leaves SoftHSM with a dead slot for the rest of the process.
  it('token removal (softhsm2-util --delete-token while a signer is open) is TOKEN_REMOVED, naming the tokens left', async () => {
    const s = await Pkcs11Signer.open(hsm.uri(gone, 'object=k'));
    expect(notaryVerifies(keys.get('gone') as KeyObject, 'ecdsa', DATA, (await s.sign(DATA)).sig)).toBe(true);
    hsm.deleteToken('gone');
    const err = await expectCode(s.sign(DATA), 'TOKEN_REMOVED');
    expect(err.message).toContain("token 'gone'");
    expect(err.message).toContain("'main'");
    expect(err.message).not.toContain(gone.pin);
    await expectCode(s.sign(DATA), 'TOKEN_REMOVED'); // still gone: tried again, fails the same way
    await s.close();
    await s.close();
    await expectCode(s.sign(DATA), 'CLOSED');
    // other tokens are unaffected
    const m = await Pkcs11Signer.open(hsm.uri(main, 'object=ecdsa-p256'));
    expect(notaryVerifies(keys.get('ecdsa-p256') as KeyObject, 'ecdsa', DATA, (await m.sign(DATA)).sig)).toBe(true);
    await m.close();
  });
});

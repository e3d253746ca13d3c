// Signing keys in encrypted PEM files, for tests and for people without a token; plus the Notary signature
// helpers (method per algorithm, sign/verify with node:crypto) the PKCS#11 signer shares.
//
// Accepted files: PKCS#8 `ENCRYPTED PRIVATE KEY` (what generateKeyFile writes, and what Notary 0.6+ writes), with
// or without Notary's `role:` / `gun:` PEM headers; legacy OpenSSL-encrypted `EC PRIVATE KEY` / `RSA PRIVATE KEY`
// (Proc-Type: 4,ENCRYPTED). Unencrypted private keys are refused: a key file on disk must need a passphrase.
import { randomBytes, createPrivateKey, createPublicKey, generateKeyPair, sign as cryptoSign, verify as cryptoVerify,
  constants, KeyObject, X509Certificate } from 'node:crypto';
import { link, open, readFile, unlink } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { promisify } from 'node:util';
import type { KeyAlgorithm, NotaryMethod, Signature, Signer } from './signer.js';
import { HsmError, parseSecretSource, readSecret, type PinSource } from './pkcs11-uri.js';

const generateKeyPairAsync = promisify(generateKeyPair);

/** The Notary signature method for a key algorithm. */
export function methodFor(algorithm: KeyAlgorithm): NotaryMethod {
  switch (algorithm) {
    case 'ecdsa-p256': return 'ecdsa';
    case 'ed25519': return 'eddsa';
    case 'rsa-2048': case 'rsa-3072': case 'rsa-4096': return 'rsapss';
  }
}

/** The KeyAlgorithm of a public or private key; HsmError('MECHANISM_UNSUPPORTED') for keys Notary cannot use. */
export function algorithmOfKey(key: KeyObject): KeyAlgorithm {
  const type = key.asymmetricKeyType;
  const details = key.asymmetricKeyDetails ?? {};
  if (type === 'ec') {
    if (details.namedCurve === 'prime256v1') return 'ecdsa-p256';
    throw new HsmError('MECHANISM_UNSUPPORTED', `EC curve ${details.namedCurve ?? 'unknown'} is not supported; Notary uses P-256`);
  }
  if (type === 'ed25519') return 'ed25519';
  if (type === 'rsa') {
    const bits = details.modulusLength;
    if (bits === 2048 || bits === 3072 || bits === 4096) return `rsa-${bits}`;
    throw new HsmError('MECHANISM_UNSUPPORTED', `RSA-${bits ?? '?'} is not supported; use 2048, 3072 or 4096 bits`);
  }
  throw new HsmError('MECHANISM_UNSUPPORTED', `key type ${type ?? 'unknown'} is not supported (ecdsa-p256, ed25519, rsa)`);
}

/** Node's sign/verify parameters for a Notary method. */
function cryptoParams(method: NotaryMethod, key: KeyObject): [string | null, KeyObject | { key: KeyObject; dsaEncoding?: 'ieee-p1363'; padding?: number; saltLength?: number }] {
  switch (method) {
    case 'ecdsa': return ['sha256', { key, dsaEncoding: 'ieee-p1363' }];
    case 'eddsa': return [null, key];
    case 'rsapss': return ['sha256', { key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 }];
  }
}

/**
 * True if `sig` is a valid Notary signature of `data` by `publicKey` with `method`: ecdsa = raw r||s (64 bytes)
 * over SHA-256, eddsa = Ed25519, rsapss = RSA-PSS SHA-256, MGF1-SHA-256, salt 32.
 */
export function verifyNotarySignature(publicKey: KeyObject, method: NotaryMethod, data: Buffer, sig: Buffer): boolean {
  if (method === 'ecdsa' && sig.length !== 64) return false;
  if (method === 'eddsa' && sig.length !== 64) return false;
  const [hash, key] = cryptoParams(method, publicKey);
  try {
    return cryptoVerify(hash, data, key, sig);
  } catch {
    return false;
  }
}

/** Throws SIGNATURE_INVALID unless the signature verifies. Every signer runs this before returning a signature. */
export function assertSignatureValid(publicKey: KeyObject, sig: Signature, data: Buffer, where: string): void {
  if (!verifyNotarySignature(publicKey, sig.method, data, sig.sig)) {
    throw new HsmError(
      'SIGNATURE_INVALID',
      `${where} produced a ${sig.method} signature (${sig.sig.length} bytes) that does not verify with its own public key; refusing to use it`,
    );
  }
}

export interface FileSignerOptions {
  /** The passphrase itself (API callers that already hold it, e.g. from a prompt). */
  readonly passphrase?: string | Buffer;
  /** Where to read the passphrase: `env:NAME` or `file:/absolute/path` (same syntax as pin-source). */
  readonly passphraseSource?: string;
}

// The first private key block (a file may also hold the certificate).
const PEM_BLOCK = /-----BEGIN ((?:[A-Z0-9]+ )*PRIVATE KEY)-----\r?\n([\s\S]*?)-----END \1-----/;

// Removes Notary's "role: …" / "gun: …" headers from the first private key block; keeps OpenSSL's own encryption
// headers (Proc-Type, DEK-Info). Returns the cleaned PEM and whether the key is encrypted.
function cleanKeyPem(text: string, path: string): { pem: string; encrypted: boolean } {
  const m = PEM_BLOCK.exec(text);
  if (!m) throw new HsmError('KEY_FILE', `${path}: no PEM private key block found`);
  const label = m[1] as string;
  const lines = (m[2] as string).split(/\r?\n/);
  const headers: string[] = [];
  let i = 0;
  if (lines[0]?.includes(':')) {
    for (; i < lines.length && (lines[i] as string) !== ''; i++) headers.push(lines[i] as string);
    i++; // the blank line after the headers
  }
  const body = lines.slice(i).filter((l) => l !== '');
  const keep = headers.filter((h) => /^(Proc-Type|DEK-Info):/i.test(h));
  const encrypted = label === 'ENCRYPTED PRIVATE KEY' || keep.some((h) => /^Proc-Type:\s*4,ENCRYPTED/i.test(h));
  const head = keep.length > 0 ? `${keep.join('\n')}\n\n` : '';
  return { pem: `-----BEGIN ${label}-----\n${head}${body.join('\n')}\n-----END ${label}-----\n`, encrypted };
}

async function resolvePassphrase(opts: FileSignerOptions, path: string): Promise<string | Buffer> {
  if (opts.passphrase !== undefined) {
    if (opts.passphrase.length === 0) throw new HsmError('PIN_MISSING', `passphrase for ${path} is empty`);
    return opts.passphrase;
  }
  if (opts.passphraseSource !== undefined) {
    let source: PinSource;
    try {
      source = parseSecretSource(opts.passphraseSource);
    } catch (err) {
      throw new HsmError('BAD_URI', `passphrase source for ${path}: ${(err as Error).message.replace(/pin-source/g, 'passphrase source')}`);
    }
    return readSecret(source, `passphrase for ${path}`);
  }
  throw new HsmError('PIN_MISSING', `no passphrase for ${path}: pass passphraseSource (env:NAME or file:/path)`);
}

/** A Signer over an encrypted private key file. The decrypted key lives only in a node:crypto KeyObject. */
export class FileSigner implements Signer {
  readonly displayUri: string;
  readonly algorithm: KeyAlgorithm;
  #privateKey: KeyObject | undefined;
  readonly #publicKey: KeyObject;
  readonly #method: NotaryMethod;
  readonly #certificate: X509Certificate | undefined;

  private constructor(path: string, privateKey: KeyObject, certificate: X509Certificate | undefined) {
    this.displayUri = path;
    this.algorithm = algorithmOfKey(privateKey);
    this.#method = methodFor(this.algorithm);
    this.#privateKey = privateKey;
    this.#publicKey = createPublicKey(privateKey);
    this.#certificate = certificate;
  }

  /**
   * Opens and decrypts `path`. If a certificate sits next to it (`<path minus .key/-key.pem>.crt` or `.pem`
   * holding a CERTIFICATE for the same key), certificate() returns it.
   */
  static async open(path: string, opts: FileSignerOptions = {}): Promise<FileSigner> {
    const abs = resolve(path);
    let text: string;
    try {
      text = await readFile(abs, 'utf8');
    } catch (err) {
      throw new HsmError('KEY_FILE', `cannot read key file ${abs} (${(err as NodeJS.ErrnoException).code ?? 'error'})`);
    }
    const { pem, encrypted } = cleanKeyPem(text, abs);
    if (!encrypted) {
      throw new HsmError('KEY_FILE', `${abs} holds an unencrypted private key; encrypt it (openssl pkcs8 -topk8 -v2 aes-256-cbc)`);
    }
    const passphrase = await resolvePassphrase(opts, abs);
    let key: KeyObject;
    try {
      key = createPrivateKey({ key: pem, format: 'pem', passphrase });
    } catch (err) {
      const e = err as Error & { code?: string; reason?: string };
      if (/BAD_DECRYPT|bad decrypt/i.test(`${e.code ?? ''} ${e.message}`)) {
        throw new HsmError('PIN_INCORRECT', `wrong passphrase for ${abs} (or the file is corrupt)`);
      }
      throw new HsmError('KEY_FILE', `cannot decrypt ${abs}: ${e.message}`);
    }
    const signer = new FileSigner(abs, key, await findCertificateNextTo(abs, createPublicKey(key)));
    return signer;
  }

  async publicKey(): Promise<KeyObject> {
    return this.#publicKey;
  }

  async certificate(): Promise<X509Certificate | undefined> {
    return this.#certificate;
  }

  async sign(data: Buffer): Promise<Signature> {
    const key = this.#privateKey;
    if (key === undefined) throw new HsmError('CLOSED', `signer for ${this.displayUri} is closed`);
    const [hash, params] = cryptoParams(this.#method, key);
    const sig: Signature = { method: this.#method, sig: cryptoSign(hash, data, params) };
    assertSignatureValid(this.#publicKey, sig, data, `key file ${this.displayUri}`);
    return sig;
  }

  async close(): Promise<void> {
    this.#privateKey = undefined;
  }
}

async function findCertificateNextTo(keyPath: string, publicKey: KeyObject): Promise<X509Certificate | undefined> {
  const stem = keyPath.replace(/(-key)?\.(pem|key)$/, '');
  const candidates = [`${stem}.crt`, `${stem}.cert.pem`, ...(stem !== keyPath ? [`${stem}.pem`] : [])];
  const spki = publicKey.export({ type: 'spki', format: 'der' });
  for (const c of candidates) {
    if (c === keyPath) continue;
    let text: string;
    try {
      text = await readFile(c, 'utf8');
    } catch {
      continue;
    }
    if (!text.includes('BEGIN CERTIFICATE')) continue;
    try {
      const cert = new X509Certificate(text);
      if (cert.publicKey.export({ type: 'spki', format: 'der' }).equals(spki)) return cert;
    } catch {
      // not a certificate we can read: ignore
    }
  }
  return undefined;
}

export async function generateKeyPairFor(algorithm: KeyAlgorithm): Promise<{ privateKey: KeyObject; publicKey: KeyObject }> {
  switch (algorithm) {
    case 'ecdsa-p256': return generateKeyPairAsync('ec', { namedCurve: 'P-256' });
    case 'ed25519': return generateKeyPairAsync('ed25519');
    case 'rsa-2048': return generateKeyPairAsync('rsa', { modulusLength: 2048, publicExponent: 65537 });
    case 'rsa-3072': return generateKeyPairAsync('rsa', { modulusLength: 3072, publicExponent: 65537 });
    case 'rsa-4096': return generateKeyPairAsync('rsa', { modulusLength: 4096, publicExponent: 65537 });
  }
}

export interface GenerateKeyFileOptions {
  /** Notary's PEM headers (`role: root`, `gun: …`), so `notary key import` knows what the key is for. */
  readonly role?: string;
  readonly gun?: string;
}

/**
 * Generates a key and writes it to `path` as a PKCS#8 ENCRYPTED PRIVATE KEY (PBES2, AES-256-CBC), mode 0600,
 * atomically and without replacing an existing file (HsmError OBJECT_EXISTS). Returns the public key.
 */
export async function generateKeyFile(
  path: string,
  algorithm: KeyAlgorithm,
  passphrase: string | Buffer,
  opts: GenerateKeyFileOptions = {},
): Promise<KeyObject> {
  if (passphrase.length === 0) throw new HsmError('PIN_MISSING', `refusing to write ${path} with an empty passphrase`);
  for (const [k, v] of Object.entries(opts)) {
    if (typeof v === 'string' && /[\r\n]/.test(v)) throw new HsmError('BAD_URI', `${k} must be one line`);
  }
  const { privateKey, publicKey } = await generateKeyPairFor(algorithm);
  let pem = privateKey.export({ type: 'pkcs8', format: 'pem', cipher: 'aes-256-cbc', passphrase }) as string;
  const headers = [opts.role !== undefined ? `role: ${opts.role}` : '', opts.gun !== undefined ? `gun: ${opts.gun}` : '']
    .filter((h) => h !== '');
  if (headers.length > 0) {
    pem = pem.replace('-----BEGIN ENCRYPTED PRIVATE KEY-----\n', `-----BEGIN ENCRYPTED PRIVATE KEY-----\n${headers.join('\n')}\n\n`);
  }
  await writeNewFileAtomically(resolve(path), Buffer.from(pem, 'utf8'));
  return publicKey;
}

// Writes a temp file (0600, fsynced), hard-links it to the final name (fails if that exists, so nothing is ever
// replaced), removes the temp name and fsyncs the directory.
async function writeNewFileAtomically(path: string, bytes: Buffer): Promise<void> {
  const dir = dirname(path);
  const tmp = join(dir, `.${basename(path)}.${randomBytes(6).toString('hex')}.tmp`);
  const fh = await open(tmp, 'wx', 0o600);
  try {
    await fh.writeFile(bytes);
    await fh.sync();
  } finally {
    await fh.close();
  }
  try {
    await link(tmp, path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') {
      throw new HsmError('OBJECT_EXISTS', `${path} already exists; not replacing a key file`);
    }
    throw err;
  } finally {
    await unlink(tmp).catch(() => undefined);
  }
  const dh = await open(dir, 'r');
  try {
    await dh.sync();
  } finally {
    await dh.close();
  }
}

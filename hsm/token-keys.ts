// Key management on a PKCS#11 token: generate, list, delete keys, store a certificate next to a key, and make the
// self-signed X.509 certificate Notary wants for root keys (CN = the GUN), signed by the token key itself.
//
// Keys are generated on the token: the private half is CKA_TOKEN, CKA_PRIVATE, CKA_SENSITIVE and not
// CKA_EXTRACTABLE, so it can never be read out. Label and id come from the URI (`object=`, `id=`); a missing id
// gets 8 random bytes. The private key, its public key and its certificate share label and id.
import { createHash, randomBytes, X509Certificate, type KeyObject } from 'node:crypto';
import type { Template } from 'pkcs11js';
import { canonicalGo } from '../trust/json.js';
import { algorithmOfKey } from './file-signer.js';
import {
  CK, ED25519_PARAMS, P256_PARAMS, TokenSession, certificateFor, describeKey, describeToken, findPrivateKey,
  objectTemplate, pkcs11Failure, publicKeyFor, readKeyInfo, siblings, type Pkcs11Options,
} from './pkcs11-signer.js';
import { HsmError, parsePkcs11Uri, type Pkcs11Uri } from './pkcs11-uri.js';
import type { KeyAlgorithm, Signer } from './signer.js';

function parse(uri: string | Pkcs11Uri, opts: Pkcs11Options): Pkcs11Uri {
  return typeof uri === 'string' ? parsePkcs11Uri(uri, { allowPinValue: opts.allowPinValue ?? false }) : uri;
}

async function withSession<T>(uri: Pkcs11Uri, opts: Pkcs11Options, rw: boolean, fn: (ts: TokenSession) => Promise<T> | T): Promise<T> {
  const ts = await TokenSession.open(uri, opts, { rw });
  try {
    return await fn(ts);
  } catch (err) {
    throw pkcs11Failure(err, `token ${describeToken(ts.token)}`);
  } finally {
    ts.close();
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Notary key IDs.

/**
 * Notary's key ID for a public key: hex sha256 of the canonical JSON of the TUF key object, i.e.
 * {"keytype":"ecdsa","keyval":{"private":null,"public":"<base64 DER SPKI>"}} (ed25519: the raw 32 bytes; rsa: DER
 * SPKI). This is the ID of the key as it appears in targets/snapshot/delegation metadata.
 */
export function notaryKeyId(publicKey: KeyObject): string {
  const alg = algorithmOfKey(publicKey);
  let keytype: string;
  let pub: string;
  if (alg === 'ed25519') {
    keytype = 'ed25519';
    pub = Buffer.from((publicKey.export({ format: 'jwk' }) as { x: string }).x, 'base64url').toString('base64');
  } else {
    keytype = alg === 'ecdsa-p256' ? 'ecdsa' : 'rsa';
    pub = publicKey.export({ type: 'spki', format: 'der' }).toString('base64');
  }
  return createHash('sha256').update(canonicalGo({ keytype, keyval: { private: null, public: pub } })).digest('hex');
}

/** PEM exactly as Go's pem.Encode writes it (64-column base64, trailing newline): what Notary puts in x509 keys. */
export function certificatePem(der: Buffer): string {
  const b64 = der.toString('base64').replace(/(.{64})/g, '$1\n').replace(/\n$/, '');
  return `-----BEGIN CERTIFICATE-----\n${b64}\n-----END CERTIFICATE-----\n`;
}

/**
 * Notary's key ID for a certificate-wrapped key (root keys, x509 delegation keys): sha256 of
 * {"keytype":"ecdsa-x509"|"rsa-x509","keyval":{"private":null,"public":"<base64 of the PEM>"}}. Undefined for key
 * types Notary has no x509 form of (ed25519).
 */
export function notaryCertificateKeyId(cert: X509Certificate): string | undefined {
  const alg = algorithmOfKey(cert.publicKey);
  if (alg === 'ed25519') return undefined;
  const keytype = alg === 'ecdsa-p256' ? 'ecdsa-x509' : 'rsa-x509';
  const pub = Buffer.from(certificatePem(cert.raw), 'utf8').toString('base64');
  return createHash('sha256').update(canonicalGo({ keytype, keyval: { private: null, public: pub } })).digest('hex');
}

// ---------------------------------------------------------------------------------------------------------------
// Generate / list / delete.

export interface GeneratedKey {
  /** The key's URI (label and id set, no PIN), for `openSigner`. */
  readonly uri: string;
  readonly label: string;
  readonly idHex: string;
  readonly algorithm: KeyAlgorithm;
  readonly keyId: string;
  readonly publicKey: KeyObject;
}

/**
 * Generates a key pair on the token. The URI must name the label (`object=`); `id=` is optional (8 random bytes
 * otherwise). OBJECT_EXISTS if a key with that label or any object with that id is already there;
 * MECHANISM_UNSUPPORTED if the token cannot generate or sign with that algorithm.
 */
export async function generateKey(uri: string | Pkcs11Uri, algorithm: KeyAlgorithm, opts: Pkcs11Options = {}): Promise<GeneratedKey> {
  const u = parse(uri, opts);
  const label = u.object;
  if (label === undefined || label === '') throw new HsmError('BAD_URI', `generating a key needs a label: add object=<label> to the pkcs11 URI`);
  if (u.type !== undefined && u.type !== 'private') throw new HsmError('BAD_URI', `generating a key: the URI names type=${u.type}`);
  return withSession(u, opts, true, async (ts) => {
    const byLabel = ts.find([{ type: CK.CKA_CLASS, value: CK.CKO_PRIVATE_KEY }, { type: CK.CKA_LABEL, value: Buffer.from(label, 'utf8') }]);
    if (byLabel.length > 0) {
      throw new HsmError('OBJECT_EXISTS', `token '${ts.token.label}' already has a private key labelled '${label}'`);
    }
    let id = u.id;
    if (id !== undefined) {
      if (ts.find([{ type: CK.CKA_ID, value: id }]).length > 0) {
        throw new HsmError('OBJECT_EXISTS', `token '${ts.token.label}' already has objects with id ${id.toString('hex')}`);
      }
    } else {
      do id = randomBytes(8);
      while (ts.find([{ type: CK.CKA_ID, value: id }]).length > 0);
    }
    const mechs = ts.mechanisms();
    const signMechs = ts.signMechanisms();
    const common: Template = [
      { type: CK.CKA_TOKEN, value: true },
      { type: CK.CKA_LABEL, value: Buffer.from(label, 'utf8') },
      { type: CK.CKA_ID, value: id },
    ];
    const pub: Template = [...common, { type: CK.CKA_PRIVATE, value: false }, { type: CK.CKA_VERIFY, value: true }];
    const priv: Template = [
      ...common,
      { type: CK.CKA_PRIVATE, value: true },
      { type: CK.CKA_SIGN, value: true },
      { type: CK.CKA_SENSITIVE, value: true },
      { type: CK.CKA_EXTRACTABLE, value: false },
      { type: CK.CKA_DERIVE, value: false },
    ];
    let mechanism: number;
    let signWith: number[];
    switch (algorithm) {
      case 'ecdsa-p256':
        mechanism = CK.CKM_EC_KEY_PAIR_GEN;
        signWith = [CK.CKM_ECDSA];
        pub.push({ type: CK.CKA_EC_PARAMS, value: P256_PARAMS });
        break;
      case 'ed25519':
        mechanism = CK.CKM_EC_EDWARDS_KEY_PAIR_GEN;
        signWith = [CK.CKM_EDDSA];
        pub.push({ type: CK.CKA_EC_PARAMS, value: ED25519_PARAMS });
        break;
      default: {
        mechanism = CK.CKM_RSA_PKCS_KEY_PAIR_GEN;
        signWith = [CK.CKM_SHA256_RSA_PKCS_PSS, CK.CKM_RSA_PKCS_PSS];
        const bits = Number(algorithm.slice('rsa-'.length));
        pub.push({ type: CK.CKA_MODULUS_BITS, value: bits }, { type: CK.CKA_PUBLIC_EXPONENT, value: Buffer.from([1, 0, 1]) });
        priv.push({ type: CK.CKA_DECRYPT, value: false });
      }
    }
    if (!mechs.has(mechanism) || !signWith.some((m) => signMechs.has(m))) {
      throw new HsmError('MECHANISM_UNSUPPORTED', `token ${describeToken(ts.token)} cannot generate and sign with ${algorithm} keys`);
    }
    let pair: { privateKey: Buffer; publicKey: Buffer };
    try {
      pair = await ts.p11.C_GenerateKeyPairAsync(ts.handle, { mechanism }, pub, priv);
    } catch (err) {
      throw pkcs11Failure(err, `generating a ${algorithm} key on token ${describeToken(ts.token)}`);
    }
    const key = readKeyInfo(ts, pair.privateKey);
    const publicKey = publicKeyFor(ts, key);
    return {
      uri: u.withObject({ object: label, id, type: null }).toString(),
      label,
      idHex: id.toString('hex'),
      algorithm,
      keyId: notaryKeyId(publicKey),
      publicKey,
    };
  });
}

export interface TokenKeyInfo {
  readonly label: string;
  readonly idHex: string;
  /** Undefined if Notary cannot use the key (`unsupported` says why). */
  readonly algorithm: KeyAlgorithm | undefined;
  readonly unsupported?: string;
  /** Notary key ID of the public key (undefined if the token holds no public half for it). */
  readonly keyId: string | undefined;
  readonly hasCertificate: boolean;
  /** Notary key ID of the certificate form (ecdsa-x509 / rsa-x509), as root.json lists root keys. */
  readonly certificateKeyId?: string;
  /** The key's URI (no PIN). */
  readonly uri: string;
}

/** The private keys on the token the URI names (filtered by object/id if the URI has them). */
export async function listKeys(uri: string | Pkcs11Uri, opts: Pkcs11Options = {}): Promise<TokenKeyInfo[]> {
  const u = parse(uri, opts);
  return withSession(u, opts, false, (ts) => {
    const out: TokenKeyInfo[] = [];
    for (const h of ts.find(objectTemplate(u, CK.CKO_PRIVATE_KEY))) {
      const key = readKeyInfo(ts, h);
      let keyId: string | undefined;
      try {
        if (key.algorithm !== undefined) keyId = notaryKeyId(publicKeyFor(ts, key));
      } catch {
        keyId = undefined;
      }
      const cert = certificateFor(ts, key);
      const certificateKeyId = cert ? notaryCertificateKeyId(cert) : undefined;
      out.push({
        label: key.label,
        idHex: key.id.toString('hex'),
        algorithm: key.algorithm,
        ...(key.unsupported !== undefined ? { unsupported: key.unsupported } : {}),
        keyId,
        hasCertificate: cert !== undefined,
        ...(certificateKeyId !== undefined ? { certificateKeyId } : {}),
        uri: u.withObject({ object: key.label, id: key.id.length > 0 ? key.id : null, type: null }).toString(),
      });
    }
    return out.sort((a, b) => (a.label < b.label ? -1 : a.label > b.label ? 1 : a.idHex < b.idHex ? -1 : 1));
  });
}

export interface DeletedObjects {
  readonly privateKeys: number;
  readonly publicKeys: number;
  readonly certificates: number;
}

/** Destroys the private key the URI names, its public key and its certificate. */
export async function deleteKey(uri: string | Pkcs11Uri, opts: Pkcs11Options = {}): Promise<DeletedObjects> {
  const u = parse(uri, opts);
  return withSession(u, opts, true, (ts) => {
    const key = findPrivateKey(ts, u);
    const pubs = key.id.length > 0 || key.label !== '' ? siblings(ts, key, CK.CKO_PUBLIC_KEY) : [];
    const certs = key.id.length > 0 || key.label !== '' ? siblings(ts, key, CK.CKO_CERTIFICATE) : [];
    for (const h of [...certs, ...pubs, key.handle]) ts.p11.C_DestroyObject(ts.handle, h);
    return { privateKeys: 1, publicKeys: pubs.length, certificates: certs.length };
  });
}

// ---------------------------------------------------------------------------------------------------------------
// Certificates.

/**
 * Stores an X.509 certificate (PEM or DER) on the token next to the key the URI names (same label and id).
 * Refused if the certificate is for another key; OBJECT_EXISTS if the key already has one, unless `replace`.
 */
export async function storeCertificate(
  uri: string | Pkcs11Uri,
  certificate: string | Buffer,
  opts: Pkcs11Options & { readonly replace?: boolean } = {},
): Promise<void> {
  const u = parse(uri, opts);
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(certificate);
  } catch (err) {
    throw new HsmError('KEY_FILE', `not an X.509 certificate: ${(err as Error).message}`);
  }
  const der = cert.raw;
  const parts = tbsParts(der);
  await withSession(u, opts, true, (ts) => {
    const key = findPrivateKey(ts, u);
    const spki = publicKeyFor(ts, key).export({ type: 'spki', format: 'der' });
    if (!cert.publicKey.export({ type: 'spki', format: 'der' }).equals(spki)) {
      throw new HsmError('BAD_URI', `the certificate (${cert.subject}) is not for key ${describeKey(key)} on token '${ts.token.label}'`);
    }
    const existing = siblings(ts, key, CK.CKO_CERTIFICATE);
    if (existing.length > 0 && !opts.replace) {
      throw new HsmError('OBJECT_EXISTS', `key ${describeKey(key)} on token '${ts.token.label}' already has a certificate`);
    }
    ts.p11.C_CreateObject(ts.handle, [
      { type: CK.CKA_CLASS, value: CK.CKO_CERTIFICATE },
      { type: CK.CKA_CERTIFICATE_TYPE, value: CK.CKC_X_509 },
      { type: CK.CKA_TOKEN, value: true },
      { type: CK.CKA_PRIVATE, value: false },
      { type: CK.CKA_LABEL, value: Buffer.from(key.label, 'utf8') },
      ...(key.id.length > 0 ? [{ type: CK.CKA_ID, value: key.id }] : []),
      { type: CK.CKA_SUBJECT, value: parts.subject },
      { type: CK.CKA_ISSUER, value: parts.issuer },
      { type: CK.CKA_SERIAL_NUMBER, value: parts.serial },
      { type: CK.CKA_VALUE, value: der },
    ]);
    for (const h of existing) ts.p11.C_DestroyObject(ts.handle, h);
  });
}

export interface SelfSignedCertificate {
  readonly der: Buffer;
  readonly pem: string;
  readonly certificate: X509Certificate;
}

export interface CertificateOptions {
  /** notBefore (default now, to the second); notAfter = notBefore + validityDays. */
  readonly now?: Date;
}

/**
 * A self-signed X.509 v3 certificate for the signer's key, shaped like the ones Notary makes for root keys:
 * subject = issuer = CN=<commonName> (the GUN), keyUsage digitalSignature (critical), extKeyUsage codeSigning,
 * basicConstraints CA:FALSE (critical), random 128-bit serial. Signed by `signer` (ecdsa-with-SHA256, Ed25519, or
 * RSASSA-PSS SHA-256 salt 32) and verified before it is returned.
 */
export async function createSelfSignedCertificate(
  signer: Signer,
  commonName: string,
  validityDays: number,
  opts: CertificateOptions = {},
): Promise<SelfSignedCertificate> {
  if (commonName === '') throw new HsmError('BAD_URI', 'a certificate needs a common name (the GUN)');
  if (!Number.isInteger(validityDays) || validityDays < 1 || validityDays > 36_600) {
    throw new HsmError('BAD_URI', `validityDays must be a whole number of days between 1 and 36600, got ${validityDays}`);
  }
  const publicKey = await signer.publicKey();
  const notBefore = new Date(Math.floor((opts.now ?? new Date()).getTime() / 1000) * 1000);
  const notAfter = new Date(notBefore.getTime() + validityDays * 86_400_000);
  const serial = randomBytes(16);
  serial[0] = ((serial[0] as number) & 0x7f) | 0x01; // positive and 16 bytes long
  const sigAlg = signatureAlgorithm(signer.algorithm);
  const name = distinguishedName(commonName);
  const extensions = explicit(3, seq(
    extension('2.5.29.15', true, bitString(Buffer.from([0x80]), 7)), // keyUsage: digitalSignature
    extension('2.5.29.37', false, seq(oid('1.3.6.1.5.5.7.3.3'))), // extKeyUsage: codeSigning
    extension('2.5.29.19', true, seq()), // basicConstraints: CA:FALSE
  ));
  const tbs = seq(
    explicit(0, integer(Buffer.from([2]))),
    integer(serial),
    sigAlg,
    name,
    seq(time(notBefore), time(notAfter)),
    name,
    publicKey.export({ type: 'spki', format: 'der' }),
    extensions,
  );
  const sig = await signer.sign(tbs);
  const sigBytes = sig.method === 'ecdsa' ? ecdsaRawToDer(sig.sig) : sig.sig;
  const der = seq(tbs, sigAlg, bitString(sigBytes, 0));
  const certificate = new X509Certificate(der);
  if (!certificate.verify(publicKey)) {
    throw new HsmError('SIGNATURE_INVALID', `the certificate signed by ${signer.displayUri} does not verify with its public key`);
  }
  return { der, pem: certificatePem(der), certificate };
}

// ---------------------------------------------------------------------------------------------------------------
// Minimal DER, exactly for the certificate shape above.

function tlv(tag: number, content: Buffer): Buffer {
  const len = content.length;
  let header: Buffer;
  if (len < 0x80) header = Buffer.from([tag, len]);
  else {
    const bytes: number[] = [];
    for (let n = len; n > 0; n = Math.floor(n / 256)) bytes.unshift(n & 0xff);
    header = Buffer.from([tag, 0x80 | bytes.length, ...bytes]);
  }
  return Buffer.concat([header, content]);
}

function seq(...parts: Buffer[]): Buffer {
  return tlv(0x30, Buffer.concat(parts));
}

function explicit(n: number, inner: Buffer): Buffer {
  return tlv(0xa0 | n, inner);
}

/** A non-negative INTEGER from big-endian bytes. */
function integer(bytes: Buffer): Buffer {
  let i = 0;
  while (i < bytes.length - 1 && bytes[i] === 0) i++;
  const v = bytes.subarray(i);
  return tlv(0x02, ((v[0] ?? 0) & 0x80) !== 0 ? Buffer.concat([Buffer.from([0]), v]) : v);
}

function oid(dotted: string): Buffer {
  const arcs = dotted.split('.').map(Number);
  const out: number[] = [(arcs[0] as number) * 40 + (arcs[1] as number)];
  for (const arc of arcs.slice(2)) {
    const bytes = [arc & 0x7f];
    for (let n = Math.floor(arc / 128); n > 0; n = Math.floor(n / 128)) bytes.unshift((n & 0x7f) | 0x80);
    out.push(...bytes);
  }
  return tlv(0x06, Buffer.from(out));
}

function bitString(bytes: Buffer, unusedBits: number): Buffer {
  return tlv(0x03, Buffer.concat([Buffer.from([unusedBits]), bytes]));
}

function extension(id: string, critical: boolean, value: Buffer): Buffer {
  return seq(oid(id), ...(critical ? [Buffer.from([0x01, 0x01, 0xff])] : []), tlv(0x04, value));
}

// RFC 5280: UTCTime through 2049, GeneralizedTime from 2050.
function time(d: Date): Buffer {
  const iso = d.toISOString(); // YYYY-MM-DDTHH:MM:SS.sssZ
  const digits = iso.slice(0, 19).replace(/[-T:]/g, '');
  const year = d.getUTCFullYear();
  return year < 2050 && year >= 1950 ? tlv(0x17, Buffer.from(`${digits.slice(2)}Z`)) : tlv(0x18, Buffer.from(`${digits}Z`));
}

// CN as Go's crypto/x509 encodes it: PrintableString if every character allows it, else UTF8String.
function distinguishedName(cn: string): Buffer {
  const printable = /^[A-Za-z0-9 '()+,\-./:=?]*$/.test(cn);
  const value = tlv(printable ? 0x13 : 0x0c, Buffer.from(cn, 'utf8'));
  return seq(tlv(0x31, seq(oid('2.5.4.3'), value)));
}

const NULL = Buffer.from([0x05, 0x00]);

function signatureAlgorithm(alg: KeyAlgorithm): Buffer {
  switch (alg) {
    case 'ecdsa-p256': return seq(oid('1.2.840.10045.4.3.2')); // ecdsa-with-SHA256
    case 'ed25519': return seq(oid('1.3.101.112'));
    default: {
      const sha256 = seq(oid('2.16.840.1.101.3.4.2.1'), NULL);
      return seq(
        oid('1.2.840.113549.1.1.10'), // RSASSA-PSS
        seq(explicit(0, sha256), explicit(1, seq(oid('1.2.840.113549.1.1.8'), sha256)), explicit(2, integer(Buffer.from([32])))),
      );
    }
  }
}

/** Notary's raw r||s ECDSA signature as the DER Ecdsa-Sig-Value X.509 needs. */
export function ecdsaRawToDer(raw: Buffer): Buffer {
  if (raw.length === 0 || raw.length % 2 !== 0) throw new HsmError('SIGNATURE_INVALID', `raw ECDSA signature of odd length ${raw.length}`);
  const half = raw.length / 2;
  return seq(integer(raw.subarray(0, half)), integer(raw.subarray(half)));
}

// Reads one TLV at `off`: returns [start of content, end of TLV].
function readTlv(der: Buffer, off: number): { tag: number; start: number; end: number } {
  const tag = der[off];
  let len = der[off + 1];
  if (tag === undefined || len === undefined) throw new HsmError('KEY_FILE', 'truncated certificate DER');
  let start = off + 2;
  if (len & 0x80) {
    const n = len & 0x7f;
    if (n < 1 || n > 4 || start + n > der.length) throw new HsmError('KEY_FILE', 'bad length in certificate DER');
    len = der.readUIntBE(start, n);
    start += n;
  }
  if (start + len > der.length) throw new HsmError('KEY_FILE', 'truncated certificate DER');
  return { tag, start, end: start + len };
}

/** The raw DER of the serial INTEGER, issuer and subject of a certificate (for CKA_SERIAL_NUMBER etc.). */
function tbsParts(der: Buffer): { serial: Buffer; issuer: Buffer; subject: Buffer } {
  const cert = readTlv(der, 0);
  const tbs = readTlv(der, cert.start);
  let off = tbs.start;
  const next = (): Buffer => {
    const t = readTlv(der, off);
    const whole = der.subarray(off, t.end);
    off = t.end;
    return whole;
  };
  if (der[off] === 0xa0) next(); // version
  const serial = next();
  next(); // signature algorithm
  const issuer = next();
  next(); // validity
  const subject = next();
  return { serial, issuer, subject };
}


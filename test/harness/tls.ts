// A throw-away PKI made with the openssl CLI: one P-256 root CA and server/client certificates it issues
// (SAN 127.0.0.1, localhost and the certificate's own name), plus self-signed certificates for Notary delegation
// keys. Everything is written into a directory the caller owns.
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { runChecked } from './process.js';

export interface KeyPair {
  /** PEM certificate file. */
  readonly certPath: string;
  /** PEM private key file (SEC1 "EC PRIVATE KEY"). */
  readonly keyPath: string;
}

export interface Pki {
  readonly dir: string;
  readonly ca: KeyPair;
  /** Issued certificates by name (e.g. `notary-server`). */
  readonly certs: Readonly<Record<string, KeyPair>>;
  /** The CA certificate as PEM text. */
  caPem(): string;
}

const DAYS = '3650';

async function ecKey(path: string): Promise<void> {
  await runChecked('openssl', ['ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', path]);
}

/** A root CA in `dir`: `root-ca.crt` / `root-ca.key`. */
export async function makeCa(dir: string, commonName = 'portcullis test root CA'): Promise<KeyPair> {
  mkdirSync(dir, { recursive: true });
  const pair = { certPath: join(dir, 'root-ca.crt'), keyPath: join(dir, 'root-ca.key') };
  await ecKey(pair.keyPath);
  await runChecked('openssl', [
    'req', '-x509', '-new', '-key', pair.keyPath, '-sha256', '-days', DAYS, '-subj', `/CN=${commonName}`,
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign',
    '-out', pair.certPath,
  ]);
  return pair;
}

/** A certificate for `name` issued by `ca` (serverAuth + clientAuth; SAN DNS:name, DNS:localhost, IP:127.0.0.1). */
export async function issueCert(dir: string, ca: KeyPair, name: string, extraSans: readonly string[] = []): Promise<KeyPair> {
  const pair = { certPath: join(dir, `${name}.crt`), keyPath: join(dir, `${name}.key`) };
  const csr = join(dir, `${name}.csr`);
  const ext = join(dir, `${name}.ext`);
  await ecKey(pair.keyPath);
  await runChecked('openssl', ['req', '-new', '-key', pair.keyPath, '-subj', `/CN=${name}`, '-out', csr]);
  const sans = [`DNS:${name}`, 'DNS:localhost', 'IP:127.0.0.1', ...extraSans].join(',');
  writeFileSync(
    ext,
    'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n' +
      `extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=${sans}\n`,
  );
  await runChecked('openssl', [
    'x509', '-req', '-in', csr, '-CA', ca.certPath, '-CAkey', ca.keyPath, '-CAcreateserial',
    '-days', DAYS, '-sha256', '-extfile', ext, '-out', pair.certPath,
  ]);
  return pair;
}

/** A CA and one certificate per name (default: notary-server, notary-signer), all in `dir`. */
export async function makePki(dir: string, names: readonly string[] = ['notary-server', 'notary-signer']): Promise<Pki> {
  const ca = await makeCa(dir);
  const certs: Record<string, KeyPair> = {};
  // sequential: -CAcreateserial writes root-ca.srl
  for (const n of names) certs[n] = await issueCert(dir, ca, n);
  return { dir, ca, certs, caPem: () => readFileSync(ca.certPath, 'utf8') };
}

/** A self-signed P-256 certificate for CN=`name` (Notary delegation keys): `<name>.crt` / `<name>.key`. */
export async function selfSignedCert(dir: string, name: string): Promise<KeyPair> {
  mkdirSync(dir, { recursive: true });
  const pair = { certPath: join(dir, `${name}.crt`), keyPath: join(dir, `${name}.key`) };
  await ecKey(pair.keyPath);
  await runChecked('openssl', [
    'req', '-new', '-x509', '-key', pair.keyPath, '-sha256', '-days', DAYS, '-subj', `/CN=${name}`, '-out', pair.certPath,
  ]);
  return pair;
}

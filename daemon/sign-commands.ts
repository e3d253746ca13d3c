// The signing half of the `portcullis` command line: keys on a PKCS#11 token (or in an encrypted key file), and
// publishing to a Notary v1 server with them, as `docker trust` / `notary` do but without key files.
//
//   portcullis key generate --token URI|FILE [--type ecdsa-p256|ed25519|rsa-2048|rsa-3072|rsa-4096]
//   portcullis key list     --token URI|FILE
//   portcullis key delete   --token URI
//   portcullis trust init <gun> --root-key URI [--targets-key URI] [--snapshot-key URI]
//   portcullis trust signer add <name> <gun> --key URI|PEM… [--threshold N] --targets-key URI [--no-releases]
//   portcullis sign <gun>:<tag> --key URI… [--role R…] [--digest sha256:… --size N | registry options]
//   portcullis trust revoke <gun>:<tag> --key URI… [--role R…]
//   portcullis trust key rotate <gun> targets|root|snapshot [--key URI] --root-key URI [--server-managed]
//
// Every key option takes a `pkcs11:` URI (RFC 7512; the PIN from `pin-source=file:…|env:…`, a prompt on a
// terminal, or `pin-value` only with --allow-pin-value) or the path of an encrypted PEM key file (passphrase from
// --passphrase-source). The publishing commands read and verify the current trust data through the trust core
// (kept in --state-dir, the cache `portcullis trust inspect` uses), never upload what the trust core would refuse,
// and write one audit line (NDJSON, PIN removed) to stderr. Results go to stdout.
import { createPublicKey, X509Certificate, type KeyObject } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { Writable } from 'node:stream';
import { createInterface } from 'node:readline';
import type { Command } from 'commander';
import type { Logger } from 'pino';
import type { Clock } from '../trust/clock.js';
import { parseImageReference, type ImageReference } from '../trust/reference.js';
import type { KeyAlgorithm, Signer } from '../hsm/signer.js';
import type { Io } from './cli.js';

// hsm/ (and the pkcs11js addon behind it) and proxy/ load only when a signing command runs.
const hsm = {
  audit: () => import('../hsm/audit.js'),
  openSigner: () => import('../hsm/open-signer.js'),
  publisher: () => import('../hsm/notary-publisher.js'),
  tokenKeys: () => import('../hsm/token-keys.js'),
  uri: () => import('../hsm/pkcs11-uri.js'),
  fileSigner: () => import('../hsm/file-signer.js'),
};

export interface SignCommandContext {
  readonly io: Io;
  readonly clock: Clock;
  /** The state directory used when --state-dir is not given (the same as `trust inspect`'s). */
  readonly defaultStateDir: () => string;
  /** Ask for a PIN on the terminal when a pkcs11 URI has no pin-source (only for the real CLI on a TTY). */
  readonly interactive: boolean;
}

const KEY_TYPES: readonly KeyAlgorithm[] = ['ecdsa-p256', 'ed25519', 'rsa-2048', 'rsa-3072', 'rsa-4096'];

/** A PEM manifest is small; distribution caps manifests at 4 MiB. */
const MANIFEST_MAX_BYTES = 4 * 1024 * 1024;

const MANIFEST_ACCEPT = [
  'application/vnd.oci.image.index.v1+json',
  'application/vnd.docker.distribution.manifest.list.v2+json',
  'application/vnd.oci.image.manifest.v1+json',
  'application/vnd.docker.distribution.manifest.v2+json',
] as const;

// ------------------------------------------------------------------------------------------------ options

interface KeyOptions {
  module?: string;
  allowPinValue?: boolean;
  passphraseSource?: string;
}

interface PublishCliOptions extends KeyOptions {
  server?: string;
  notary?: string;
  tlscacert?: string;
  stateDir?: string;
  snapshotKey?: string;
}

const collect = (v: string, prev: string[] = []): string[] => [...prev, v];

function keyOptions(c: Command): Command {
  return c
    .option('--module <path>', 'PKCS#11 module (shared library) when the URI has no module-path (default: the usual locations)')
    .option('--allow-pin-value', 'accept pin-value=… in a pkcs11 URI (it ends up in shell history and process lists)')
    .option('--passphrase-source <src>', 'passphrase of key files: env:NAME or file:/absolute/path');
}

function publishOptions(c: Command): Command {
  return keyOptions(c)
    .option('-s, --server <url>', 'Notary server URL (default: $DOCKER_CONTENT_TRUST_SERVER)')
    .option('--notary <url>', 'the same as --server')
    .option('--tlscacert <file>', 'CA certificate for the Notary server')
    .option('--state-dir <dir>', 'state directory holding the trusted metadata (LMDB)')
    .option('--snapshot-key <uri>', 'the snapshot key, when the client holds it (default: the server signs snapshots)');
}

// ------------------------------------------------------------------------------------------------ keys

/** Opens each key once (the same URI twice is one Signer) and closes them all at the end. */
class KeyRing {
  readonly #open = new Map<string, Promise<Signer>>();

  constructor(private readonly o: KeyOptions, private readonly ctx: SignCommandContext) {}

  open(uriOrPath: string): Promise<Signer> {
    let p = this.#open.get(uriOrPath);
    if (!p) {
      p = (async () => {
        const { openSigner } = await hsm.openSigner();
        return openSigner(uriOrPath, await signerOptions(this.o, this.ctx, uriOrPath));
      })();
      this.#open.set(uriOrPath, p);
    }
    return p;
  }

  async openAll(uris: readonly string[]): Promise<Signer[]> {
    const out: Signer[] = [];
    for (const u of uris) out.push(await this.open(u));
    return out;
  }

  async close(): Promise<void> {
    await Promise.allSettled([...this.#open.values()].map(async (p) => (await p).close()));
    this.#open.clear();
  }
}

/** Token options (a PIN prompt only for a pkcs11 URI), plus the passphrase source for key files. */
async function signerOptions(o: KeyOptions, ctx: SignCommandContext, uriOrPath: string) {
  const { isPkcs11Uri } = await hsm.uri();
  return {
    ...tokenOpts(o, { ...ctx, interactive: ctx.interactive && isPkcs11Uri(uriOrPath) }, uriOrPath),
    ...(o.passphraseSource !== undefined ? { passphraseSource: o.passphraseSource } : {}),
  };
}

function shortUri(uri: string): string {
  return uri.replace(/\?.*$/, '');
}

/** Reads a line from the terminal without echoing it (the PIN never reaches argv or the environment). */
function promptHidden(question: string): Promise<string> {
  let muted = false;
  const output = new Writable({
    write(chunk: Buffer, _enc, cb) {
      if (!muted) process.stderr.write(chunk);
      cb();
    },
  });
  const rl = createInterface({ input: process.stdin, output, terminal: true });
  return new Promise((resolve) => {
    rl.question(question, (answer) => {
      rl.close();
      process.stderr.write('\n');
      resolve(answer);
    });
    muted = true;
  });
}

async function isTokenUri(s: string): Promise<boolean> {
  return (await hsm.uri()).isPkcs11Uri(s);
}

function keyType(t: string): KeyAlgorithm {
  if (!(KEY_TYPES as readonly string[]).includes(t)) throw new Error(`--type must be one of ${KEY_TYPES.join(', ')} (got ${t})`);
  return t as KeyAlgorithm;
}

async function readPassphrase(o: KeyOptions, path: string): Promise<string> {
  const { parseSecretSource, readSecret, HsmError } = await hsm.uri();
  if (o.passphraseSource === undefined) throw new HsmError('PIN_MISSING', `no passphrase for ${path}: pass --passphrase-source env:NAME or file:/path`);
  return readSecret(parseSecretSource(o.passphraseSource), `passphrase for ${path}`);
}

function tokenOpts(o: KeyOptions, ctx: SignCommandContext, uri: string) {
  return {
    ...(o.module !== undefined ? { module: o.module } : {}),
    allowPinValue: o.allowPinValue === true,
    ...(ctx.interactive ? { pin: () => promptHidden(`PIN for ${shortUri(uri)}: `) } : {}),
  };
}

async function keyGenerate(o: KeyOptions & { token: string; type: string; json?: boolean; publicKeyOut?: string }, ctx: SignCommandContext): Promise<void> {
  const alg = keyType(o.type);
  let result: { uri: string; label?: string; idHex?: string; algorithm: KeyAlgorithm; keyId: string; publicKey: KeyObject };
  if (await isTokenUri(o.token)) {
    const { generateKey } = await hsm.tokenKeys();
    const g = await generateKey(o.token, alg, tokenOpts(o, ctx, o.token));
    result = { uri: g.uri, label: g.label, idHex: g.idHex, algorithm: g.algorithm, keyId: g.keyId, publicKey: g.publicKey };
  } else {
    const { generateKeyFile } = await hsm.fileSigner();
    const { notaryKeyId } = await hsm.tokenKeys();
    const publicKey = await generateKeyFile(o.token, alg, await readPassphrase(o, o.token));
    result = { uri: o.token, algorithm: alg, keyId: notaryKeyId(publicKey), publicKey };
  }
  const pem = result.publicKey.export({ type: 'spki', format: 'pem' }) as string;
  if (o.publicKeyOut) writeFileSync(o.publicKeyOut, pem, { flag: 'wx' });
  if (o.json) {
    const { publicKey: _p, ...rest } = result;
    ctx.io.out(JSON.stringify({ ...rest, publicKeyPem: pem }, null, 2) + '\n');
    return;
  }
  ctx.io.out(`generated ${alg} key ${result.keyId}\n  key:  ${result.uri}\n`);
  if (o.publicKeyOut) ctx.io.out(`  public key: ${o.publicKeyOut}\n`);
}

async function keyList(o: KeyOptions & { token: string; json?: boolean }, ctx: SignCommandContext): Promise<void> {
  let rows: Array<{ label: string; id: string; algorithm: string; keyId: string; certificate: boolean; certificateKeyId?: string; uri: string }>;
  if (await isTokenUri(o.token)) {
    const { listKeys } = await hsm.tokenKeys();
    rows = (await listKeys(o.token, tokenOpts(o, ctx, o.token))).map((k) => ({
      label: k.label,
      id: k.idHex,
      algorithm: k.algorithm ?? `unsupported${k.unsupported ? ` (${k.unsupported})` : ''}`,
      keyId: k.keyId ?? '-',
      certificate: k.hasCertificate,
      ...(k.certificateKeyId !== undefined ? { certificateKeyId: k.certificateKeyId } : {}),
      uri: k.uri,
    }));
  } else {
    const ring = new KeyRing(o, ctx);
    try {
      const s = await ring.open(o.token);
      const { notaryKeyId, notaryCertificateKeyId } = await hsm.tokenKeys();
      const cert = await s.certificate();
      const certId = cert ? notaryCertificateKeyId(cert) : undefined;
      rows = [{ label: '-', id: '-', algorithm: s.algorithm, keyId: notaryKeyId(await s.publicKey()), certificate: cert !== undefined, ...(certId ? { certificateKeyId: certId } : {}), uri: s.displayUri }];
    } finally {
      await ring.close();
    }
  }
  if (o.json) {
    ctx.io.out(JSON.stringify(rows, null, 2) + '\n');
    return;
  }
  if (rows.length === 0) {
    ctx.io.out('No keys on this token.\n');
    return;
  }
  const table = [['LABEL', 'ID', 'ALGORITHM', 'NOTARY KEY ID', 'CERTIFICATE', 'URI'], ...rows.map((r) => [r.label, r.id, r.algorithm, r.keyId, r.certificate ? 'yes' : 'no', r.uri])];
  const widths = table[0]!.map((_, c) => Math.max(...table.map((r) => r[c]!.length)) + 3);
  for (const r of table) ctx.io.out(r.map((cell, c) => (c < r.length - 1 ? cell.padEnd(widths[c]!) : cell)).join('').trimEnd() + '\n');
}

async function keyDelete(o: KeyOptions & { token: string }, ctx: SignCommandContext): Promise<void> {
  const { parsePkcs11Uri, isPkcs11Uri, HsmError } = await hsm.uri();
  if (!isPkcs11Uri(o.token)) throw new HsmError('BAD_URI', `key delete works on token keys (a pkcs11: URI); remove a key file with rm`);
  const u = parsePkcs11Uri(o.token, { allowPinValue: o.allowPinValue === true });
  if (u.object === undefined && u.id === undefined) throw new HsmError('BAD_URI', `key delete needs the key named: add object=<label> or id=<%xx bytes> to ${u.redacted()}`);
  const { deleteKey } = await hsm.tokenKeys();
  const d = await deleteKey(u, tokenOpts(o, ctx, o.token));
  ctx.io.out(`deleted ${u.toString()}: ${d.privateKeys} private key, ${d.publicKeys} public key(s), ${d.certificates} certificate(s)\n`);
}

// ------------------------------------------------------------------------------------------------ publishing

interface Publishing {
  readonly base: {
    server: { url: string; ca?: Buffer };
    gun: string;
    stateDir: string;
    audit: Logger;
    clock: Clock;
    snapshotSigner?: Signer;
  };
  readonly ring: KeyRing;
}

/** Resolves the server, the state dir and the audit logger, runs `f` with the keys it opens, closes them all. */
async function publishing<T>(gun: string, o: PublishCliOptions, ctx: SignCommandContext, f: (p: Publishing) => Promise<T>): Promise<T> {
  if (o.server !== undefined && o.notary !== undefined && o.server !== o.notary) throw new Error('--server and --notary name different servers; give one');
  const url = o.server ?? o.notary ?? process.env['DOCKER_CONTENT_TRUST_SERVER'] ?? process.env['NOTARY_SERVER'];
  if (!url) throw new Error('no Notary server: pass --server URL (or set DOCKER_CONTENT_TRUST_SERVER)');
  const ca = o.tlscacert !== undefined ? readFileOrFail(o.tlscacert, '--tlscacert') : undefined;
  const { createAuditLogger } = await hsm.audit();
  const audit = createAuditLogger({ write: (s: string) => ctx.io.err(s) });
  const ring = new KeyRing(o, ctx);
  try {
    const snapshotSigner = o.snapshotKey !== undefined ? await ring.open(o.snapshotKey) : undefined;
    const base = {
      server: { url, ...(ca !== undefined ? { ca } : {}) },
      gun,
      stateDir: o.stateDir ?? ctx.defaultStateDir(),
      audit,
      clock: ctx.clock,
      ...(snapshotSigner ? { snapshotSigner } : {}),
    };
    return await f({ base, ring });
  } finally {
    await ring.close();
  }
}

function readFileOrFail(path: string, what: string): Buffer {
  try {
    return readFileSync(path);
  } catch (e) {
    throw new Error(`cannot read ${what} ${path} (${(e as NodeJS.ErrnoException).code ?? 'error'})`);
  }
}

/** A repository name without tag or digest: the GUN. */
function gunOf(ref: string): string {
  const r = parseImageReference(ref);
  if (r.tag !== undefined || r.digest !== undefined) throw new Error(`${ref}: give the repository (GUN) without a tag or digest`);
  return r.repository;
}

/** `<gun>:<tag>` */
function taggedRef(ref: string): ImageReference & { tag: string } {
  const r = parseImageReference(ref);
  if (r.digest !== undefined) throw new Error(`${ref}: sign a tag (<gun>:<tag>); give the digest with --digest and --size`);
  if (r.tag === undefined) throw new Error(`${ref}: no tag (expected <gun>:<tag>)`);
  return r as ImageReference & { tag: string };
}

function versions(v: Readonly<Record<string, number>>): string {
  return Object.entries(v).map(([role, n]) => `${role} v${n}`).join(', ');
}

/**
 * Keeps the certificate made for a root key next to it, so the same root key ID is used next time: on the token
 * (same label and id) for a pkcs11 key, `<stem>.crt` next to a key file. An existing certificate is left alone.
 * The publication already happened: failures here are warnings.
 */
async function keepCertificate(keyUri: string, cert: X509Certificate, o: KeyOptions, ctx: SignCommandContext): Promise<void> {
  try {
    if (await isTokenUri(keyUri)) {
      const { storeCertificate } = await hsm.tokenKeys();
      await storeCertificate(keyUri, cert.raw, tokenOpts(o, ctx, keyUri));
      ctx.io.out(`stored the root certificate (${cert.subject}) on the token next to the key\n`);
    } else {
      const { certificatePem } = await hsm.tokenKeys();
      const path = `${keyUri.replace(/(-key)?\.(pem|key)$/, '')}.crt`;
      writeFileSync(path, certificatePem(cert.raw), { flag: 'wx', mode: 0o644 });
      ctx.io.out(`wrote the root certificate (${cert.subject}) to ${path}\n`);
    }
  } catch (e) {
    const code = (e as { code?: string }).code;
    if (code === 'OBJECT_EXISTS' || code === 'EEXIST') ctx.io.err(`portcullis: note: ${keyUri.startsWith('pkcs11:') ? 'the key already has a certificate' : 'a certificate file exists'}; kept it (the new root certificate is in the published root.json)\n`);
    else ctx.io.err(`portcullis: warning: published, but the root certificate was not stored next to the key: ${(e as Error).message}\n`);
  }
}

async function trustInitCommand(ref: string, o: PublishCliOptions & { rootKey: string; targetsKey?: string }, ctx: SignCommandContext): Promise<void> {
  const gun = gunOf(ref);
  const { trustInit } = await hsm.publisher();
  await publishing(gun, o, ctx, async ({ base, ring }) => {
    const rootSigner = await ring.open(o.rootKey);
    const targetsSigner = o.targetsKey !== undefined ? await ring.open(o.targetsKey) : undefined;
    if (!targetsSigner) ctx.io.err('portcullis: note: no --targets-key: the root key signs targets too (keep root offline: give a separate targets key)\n');
    const r = await trustInit({ ...base, rootSigner, ...(targetsSigner ? { targetsSigner } : {}), serverSnapshot: base.snapshotSigner === undefined });
    ctx.io.out(`initialised ${gun}: ${versions(r.versions)}${base.snapshotSigner ? '' : ' (snapshot and timestamp keys on the server)'}\n`);
    if (r.rootCertificate) await keepCertificate(o.rootKey, r.rootCertificate, o, ctx);
  });
}

/** A delegation key: a pkcs11 URI or key file (opened), or a PEM file holding a certificate or a public key. */
async function delegationKey(spec: string, ring: KeyRing): Promise<Signer | X509Certificate | KeyObject> {
  if (!(await isTokenUri(spec))) {
    const text = readFileOrFail(spec, 'key file').toString('utf8');
    if (text.includes('-----BEGIN CERTIFICATE-----')) return new X509Certificate(text);
    if (/-----BEGIN (RSA )?PUBLIC KEY-----/.test(text)) return createPublicKey(text);
  }
  return ring.open(spec);
}

async function signerAddCommand(name: string, ref: string, o: PublishCliOptions & { key: string[]; threshold?: string; targetsKey: string; releases: boolean }, ctx: SignCommandContext): Promise<void> {
  const gun = gunOf(ref);
  const threshold = o.threshold === undefined ? undefined : Number(o.threshold);
  if (threshold !== undefined && (!Number.isSafeInteger(threshold) || threshold < 1)) throw new Error(`--threshold must be a whole number >= 1 (got ${o.threshold})`);
  const roleName = name.replace(/^targets\//, '');
  // docker trust signer add: the signer's own role, and the key added to targets/releases
  const roles = o.releases && roleName !== 'releases' ? [roleName, 'releases'] : [roleName];
  const { signerAdd } = await hsm.publisher();
  await publishing(gun, o, ctx, async ({ base, ring }) => {
    const keys = [];
    for (const k of o.key) keys.push(await delegationKey(k, ring));
    const targetsSigner = await ring.open(o.targetsKey);
    const r = await signerAdd({ ...base, role: roles, keys, targetsSigner, ...(threshold !== undefined ? { threshold } : {}) });
    ctx.io.out(`added ${keys.length} key(s) to ${roles.map((x) => `targets/${x}`).join(', ')} of ${gun}: ${versions(r.versions)}\n`);
  });
}

interface RegistryCliOptions {
  digest?: string;
  size?: string;
  registryUrl?: string;
  insecureRegistry?: boolean;
  registryCacert?: string;
  registryUser?: string;
  registryPasswordSource?: string;
}

/** The digest and size to sign: given, or the manifest the registry serves for the tag (sha256 of its bytes). */
async function targetOf(r: ImageReference & { tag: string }, o: RegistryCliOptions): Promise<{ digest: string; size: number; from: string }> {
  if (o.digest !== undefined || o.size !== undefined) {
    if (o.digest === undefined || o.size === undefined) throw new Error('--digest and --size go together');
    if (!/^sha256:[0-9a-f]{64}$/.test(o.digest)) throw new Error(`--digest must be sha256:<64 hex digits> (got ${o.digest})`);
    if (!/^[0-9]+$/.test(o.size) || !Number.isSafeInteger(Number(o.size)) || Number(o.size) < 1) throw new Error(`--size must be the manifest's size in bytes (got ${o.size})`);
    return { digest: o.digest, size: Number(o.size), from: 'given' };
  }
  const host = r.host === 'docker.io' ? 'registry-1.docker.io' : r.host;
  const given = o.registryUrl ?? `${o.insecureRegistry ? 'http' : 'https'}://${host}`;
  let url: URL;
  try {
    url = new URL(given);
  } catch {
    throw new Error(`--registry-url ${given} is not a URL`);
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') throw new Error(`--registry-url must be http(s) (got ${given})`);
  if (url.pathname !== '/' || url.search || url.username) throw new Error(`--registry-url must be the registry's origin only (https://host[:port]), got ${given}`);
  let auth: { username: string; password: string } | undefined;
  if (o.registryUser !== undefined) {
    const { parseSecretSource, readSecret } = await hsm.uri();
    if (o.registryPasswordSource === undefined) throw new Error('--registry-user needs --registry-password-source env:NAME or file:/path');
    auth = { username: o.registryUser, password: await readSecret(parseSecretSource(o.registryPasswordSource), `registry password for ${o.registryUser}`) };
  }
  const { RegistryClient } = await import('../proxy/registry-client.js');
  const client = new RegistryClient({
    host: r.host,
    url: url.origin,
    ...(o.registryCacert !== undefined ? { ca: readFileOrFail(o.registryCacert, '--registry-cacert') } : {}),
    ...(auth ? { auth } : {}),
    ...(r.host === 'docker.io' ? { allowedHosts: ['auth.docker.io'] } : {}),
  });
  try {
    const m = await client.getManifest(r.path, r.tag, MANIFEST_ACCEPT, MANIFEST_MAX_BYTES);
    if (m.status === 404) throw new Error(`${r.repository}:${r.tag} is not in the registry at ${url.origin} (push it first, or pass --digest and --size)`);
    const { createHash } = await import('node:crypto');
    const digest = `sha256:${createHash('sha256').update(m.bytes).digest('hex')}`;
    if (m.digestHeader !== undefined && m.digestHeader.startsWith('sha256:') && m.digestHeader !== digest) {
      throw new Error(`${url.origin} says ${r.repository}:${r.tag} is ${m.digestHeader}, but the manifest it sent hashes to ${digest}`);
    }
    return { digest, size: m.bytes.length, from: url.origin };
  } finally {
    await client.close();
  }
}

async function signCommand(ref: string, o: PublishCliOptions & RegistryCliOptions & { key: string[]; role?: string[] }, ctx: SignCommandContext): Promise<void> {
  const r = taggedRef(ref);
  const { sign } = await hsm.publisher();
  await publishing(r.repository, o, ctx, async ({ base, ring }) => {
    // keys first: a wrong PIN or a missing key fails before anything goes over the network
    const signers = await ring.openAll(o.key);
    const target = await targetOf(r, o);
    const res = await sign({ ...base, tag: r.tag, target, signer: signers, ...(o.role ? { role: o.role } : {}) });
    ctx.io.out(`signed ${r.repository}:${r.tag} ${target.digest} (${target.size} bytes): ${versions(res.versions)}\n`);
  });
}

async function revokeCommand(ref: string, o: PublishCliOptions & { key: string[]; role?: string[] }, ctx: SignCommandContext): Promise<void> {
  const r = taggedRef(ref);
  const { revoke } = await hsm.publisher();
  await publishing(r.repository, o, ctx, async ({ base, ring }) => {
    const signers = await ring.openAll(o.key);
    const res = await revoke({ ...base, tag: r.tag, signer: signers, ...(o.role ? { role: o.role } : {}) });
    ctx.io.out(`revoked ${r.repository}:${r.tag}: ${versions(res.versions)}\n`);
  });
}

async function keyRotateCommand(ref: string, role: string, o: PublishCliOptions & { key?: string; rootKey: string; serverManaged?: boolean }, ctx: SignCommandContext): Promise<void> {
  const gun = gunOf(ref);
  if (role !== 'targets' && role !== 'root' && role !== 'snapshot') throw new Error(`can rotate targets, root or snapshot keys (got ${role})`);
  if (o.serverManaged && role !== 'snapshot') throw new Error('--server-managed is for the snapshot key only');
  if (role === 'snapshot' ? Boolean(o.serverManaged) === (o.key !== undefined) : o.key === undefined) {
    throw new Error(role === 'snapshot' ? 'snapshot rotation takes either --key URI or --server-managed' : `${role} rotation needs the new key: --key URI`);
  }
  const { keyRotate } = await hsm.publisher();
  await publishing(gun, o, ctx, async ({ base, ring }) => {
    const rootSigner = await ring.open(o.rootKey);
    const newSigner = o.key !== undefined ? await ring.open(o.key) : undefined;
    const res = await keyRotate({ ...base, role, rootSigner, ...(newSigner ? { newSigner } : {}), ...(o.serverManaged ? { serverManaged: true } : {}) });
    ctx.io.out(`rotated the ${role} key of ${gun}${o.serverManaged ? ' to the server' : ''}: ${versions(res.versions)}\n`);
    if (res.rootCertificate && o.key !== undefined) await keepCertificate(o.key, res.rootCertificate, o, ctx);
  });
}

// ------------------------------------------------------------------------------------------------ registration

/** Adds `key …`, `sign`, and `trust init|signer add|revoke|key rotate` to the program. */
export function registerSignCommands(program: Command, trust: Command, ctx: SignCommandContext): void {
  const key = program.command('key').description('Keys on a PKCS#11 token (or in an encrypted key file) for signing');
  keyOptions(key.command('generate').description('generate a key pair on the token (private half sensitive, never extractable)'))
    .requiredOption('--token <uri>', "pkcs11 URI naming token and label (pkcs11:token=…;object=…?pin-source=…), or a key file path to create")
    .option('--type <type>', `key type: ${KEY_TYPES.join(', ')}`, 'ecdsa-p256')
    .option('--public-key-out <file>', 'also write the public key (PEM) here, for `trust signer add --key`')
    .option('--json', 'JSON output')
    .action((o: KeyOptions & { token: string; type: string; json?: boolean; publicKeyOut?: string }) => keyGenerate(o, ctx));
  keyOptions(key.command('list').description('the private keys on the token: label, id, algorithm, Notary key ID, certificate'))
    .requiredOption('--token <uri>', 'pkcs11 URI of the token (object=/id= filter), or a key file')
    .option('--json', 'JSON output')
    .action((o: KeyOptions & { token: string; json?: boolean }) => keyList(o, ctx));
  keyOptions(key.command('delete').description('destroy a key on the token (private key, public key and certificate)'))
    .requiredOption('--token <uri>', 'pkcs11 URI naming the key (object= and/or id=)')
    .action((o: KeyOptions & { token: string }) => keyDelete(o, ctx));

  publishOptions(program.command('sign <ref>').description('sign <gun>:<tag> (its manifest digest and size) and publish it to the Notary server'))
    .requiredOption('--key <uri>', 'signing key (repeatable: all sign, for roles with a threshold above 1)', collect)
    .option('--role <role>', 'role to sign into, e.g. targets/releases (repeatable; default: every delegation the key signs for, else targets)', collect)
    .option('--digest <sha256:hex>', 'the manifest digest to sign (with --size; default: fetch the manifest from the registry)')
    .option('--size <bytes>', 'the manifest size in bytes (with --digest)')
    .option('--registry-url <url>', 'registry to fetch the manifest from (default https://<registry host of the GUN>)')
    .option('--insecure-registry', 'fetch the manifest over plain http (default URL http://<host>)')
    .option('--registry-cacert <file>', 'CA certificate for the registry')
    .option('--registry-user <name>', 'registry user name (with --registry-password-source)')
    .option('--registry-password-source <src>', 'registry password: env:NAME or file:/absolute/path')
    .action((ref: string, o: PublishCliOptions & RegistryCliOptions & { key: string[]; role?: string[] }) => signCommand(ref, o, ctx));

  publishOptions(trust.command('init <gun>').description('create trust data for a new GUN on the Notary server (root key on a token)'))
    .requiredOption('--root-key <uri>', 'the root key (its certificate, CN = GUN, is made and stored next to it if needed)')
    .option('--targets-key <uri>', 'the targets key (default: the root key)')
    .action((gun: string, o: PublishCliOptions & { rootKey: string; targetsKey?: string }) => trustInitCommand(gun, o, ctx));

  const signer = trust.command('signer').description('Delegations (signers) of a GUN');
  publishOptions(signer.command('add <name> <gun>').description('add a delegation role targets/<name> with the keys, as `docker trust signer add`'))
    .requiredOption('--key <uri>', "the signer's key: pkcs11 URI, key file, or PEM certificate / public key (repeatable)", collect)
    .requiredOption('--targets-key <uri>', 'the targets key, which signs the delegation')
    .option('--threshold <n>', 'signatures the role needs (default 1 for a new role)')
    .option('--no-releases', 'do not also add the keys to targets/releases (docker trust signer add does)')
    .action((name: string, gun: string, o: PublishCliOptions & { key: string[]; threshold?: string; targetsKey: string; releases: boolean }) => signerAddCommand(name, gun, o, ctx));

  publishOptions(trust.command('revoke <ref>').description('remove the signature of <gun>:<tag> and publish'))
    .requiredOption('--key <uri>', 'a key of the role(s) holding the tag (repeatable)', collect)
    .option('--role <role>', 'role to remove the tag from (repeatable; default: every role holding it that the key signs)', collect)
    .action((ref: string, o: PublishCliOptions & { key: string[]; role?: string[] }) => revokeCommand(ref, o, ctx));

  const trustKey = trust.command('key').description('Keys of a GUN');
  publishOptions(trustKey.command('rotate <gun> <role>').description('replace the targets, root or snapshot key (root v+1, signed by the current root key)'))
    .requiredOption('--root-key <uri>', 'the current root key')
    .option('--key <uri>', 'the new key (targets, root, or a client-held snapshot key)')
    .option('--server-managed', 'snapshot: hand the snapshot key to the server')
    .action((gun: string, role: string, o: PublishCliOptions & { key?: string; rootKey: string; serverManaged?: boolean }) => keyRotateCommand(gun, role, o, ctx));
}

// The real docker CLI's `docker trust inspect` against the lab's Notary server, as a reference to compare
// `portcullis trust inspect` with. `docker trust` talks to Notary only, so no Docker daemon is needed.
//
// How the docker CLI (20.10) finds the CA of a Notary server: it reads the certificates in
// `$DOCKER_CONFIG/tls/<host:port of the Notary URL>/` (`*.crt` are CAs). The Notary server itself comes from
// `DOCKER_CONTENT_TRUST_SERVER`. Cached trust data goes to `$DOCKER_CONFIG/trust`.
import { createHash, X509Certificate } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { makeTempDir, run, type RunResult } from './process.js';

/** Docker CLI 20.10 from the distribution package (not /usr/local/bin/docker). */
export const DOCKER_CLI = '/usr/bin/docker';

export interface DockerTrust {
  /** `$DOCKER_CONFIG` (holds `tls/<host:port>/ca.crt` and the CLI's trust cache). */
  readonly configDir: string;
  /** The complete environment the CLI runs with. */
  readonly env: NodeJS.ProcessEnv;
  /** `docker trust inspect [--pretty] <refs...>`; never throws for a non-zero exit. */
  inspect(refs: string | readonly string[], o?: { pretty?: boolean }): Promise<RunResult>;
  /** `docker trust inspect <ref>` parsed; throws with docker's stderr when it fails. */
  inspectOne(ref: string): Promise<TrustInspection>;
}

/** One repository of `docker trust inspect` JSON (the fields the tests compare). */
export interface TrustInspection {
  Name: string;
  SignedTags: { SignedTag: string; Digest: string; Signers: string[] }[];
  Signers: { Name: string; Keys: { ID: string }[] }[];
  AdministrativeKeys: { Name: string; Keys: { ID: string }[] }[];
}

/** A docker CLI configuration that trusts `caPem` for the Notary server at `notaryUrl` (and nothing else). */
export function dockerTrust(notaryUrl: string, caPem: string, configDir: string = makeTempDir('portcullis-docker')): DockerTrust {
  const hostPort = new URL(notaryUrl).host;
  const tlsDir = join(configDir, 'tls', hostPort);
  mkdirSync(tlsDir, { recursive: true });
  writeFileSync(join(tlsDir, 'ca.crt'), caPem);
  // A clean environment: no DOCKER_HOST, no user config, no proxy settings leaking in.
  const env: NodeJS.ProcessEnv = {
    PATH: process.env.PATH ?? '/usr/bin:/bin',
    HOME: configDir,
    DOCKER_CONFIG: configDir,
    DOCKER_CONTENT_TRUST_SERVER: notaryUrl,
  };
  return {
    configDir,
    env,
    inspect(refs, o = {}) {
      const args = ['trust', 'inspect', ...(o.pretty ? ['--pretty'] : []), ...(typeof refs === 'string' ? [refs] : refs)];
      return run(DOCKER_CLI, args, { env, timeoutMs: 60_000 });
    },
    async inspectOne(ref) {
      const r = await this.inspect(ref);
      if (r.code !== 0) throw new Error(`docker trust inspect ${ref} exited ${r.code}: ${r.stderr}`);
      return (JSON.parse(r.stdout) as TrustInspection[])[0]!;
    },
  };
}

/**
 * The ID Notary and docker show for a delegation certificate: sha256 of Notary's canonical JSON of the bare public
 * key it certifies (`{"keytype":"ecdsa","keyval":{"private":null,"public":"<base64 SPKI DER>"}}`). Computed here
 * independently of trust/, so the test does not check the model against itself.
 */
export function certPublicKeyId(certPem: string): string {
  const key = new X509Certificate(certPem).publicKey;
  const keytype = key.asymmetricKeyType === 'ec' ? 'ecdsa' : key.asymmetricKeyType === 'rsa' ? 'rsa' : undefined;
  if (!keytype) throw new Error(`unsupported certificate key type ${key.asymmetricKeyType}`);
  const der = key.export({ type: 'spki', format: 'der' }).toString('base64');
  return createHash('sha256').update(`{"keytype":"${keytype}","keyval":{"private":null,"public":"${der}"}}`).digest('hex');
}

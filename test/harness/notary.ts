// Real notary-signer + notary-server 0.7 over TLS (memory storage) on free loopback ports, and the real `notary`
// CLI pointed at them with its own client config and trust dir.
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { freePorts } from './ports.js';
import {
  makeTempDir, removeTempDir, run, startProcess, waitForHttp, waitForPort, CommandError,
  type ManagedProcess, type RunResult,
} from './process.js';
import { makePki, type Pki } from './tls.js';

export const NOTARY_SERVER_BIN = '/usr/bin/notary-server';
export const NOTARY_SIGNER_BIN = '/usr/bin/notary-signer';
export const NOTARY_BIN = '/usr/bin/notary';

/** The passphrases the notary CLI reads from the environment instead of prompting. */
export const NOTARY_PASSPHRASES: Readonly<Record<string, string>> = Object.freeze({
  NOTARY_ROOT_PASSPHRASE: 'portcullis-root',
  NOTARY_TARGETS_PASSPHRASE: 'portcullis-targets',
  NOTARY_SNAPSHOT_PASSPHRASE: 'portcullis-snapshot',
  NOTARY_DELEGATION_PASSPHRASE: 'portcullis-delegation',
});

export interface NotaryOptions {
  /** Working directory (configs, TLS, client trust dir, logs). Default: a new temp dir, removed by stop(). */
  readonly dir?: string;
  /** Use this PKI (needs `notary-server` and `notary-signer` certificates) instead of making one. */
  readonly pki?: Pki;
  /** notary log level, default "info". */
  readonly logLevel?: 'error' | 'warn' | 'info' | 'debug';
}

export interface NotaryPeer {
  /** `https://127.0.0.1:<port>` */
  readonly url: string;
  readonly port: number;
  readonly signerPort: number;
  /** The root CA that issued the server's certificate (PEM file). */
  readonly caPath: string;
  readonly caPem: string;
  readonly pki: Pki;
  readonly dir: string;
  /** The notary CLI's client config (`-c`). */
  readonly clientConfigPath: string;
  /** The notary CLI's trust dir (private keys and cached metadata). */
  readonly trustDir: string;
  /** Environment for the CLI: this process's env plus the passphrases. */
  readonly cliEnv: NodeJS.ProcessEnv;
  readonly server: ManagedProcess;
  readonly signer: ManagedProcess;
  /** Runs `notary -c <client config> ...args`; never throws for a non-zero exit. */
  notary(...args: string[]): Promise<RunResult>;
  /** Like `notary()`, but throws a CommandError unless it exits 0. */
  notaryOk(...args: string[]): Promise<RunResult>;
  stop(): Promise<void>;
}

function signerConfig(port: number, pki: Pki, logLevel: string): object {
  const c = pki.certs['notary-signer'];
  if (!c) throw new Error('the PKI has no notary-signer certificate');
  return {
    server: { grpc_addr: `127.0.0.1:${port}`, tls_cert_file: c.certPath, tls_key_file: c.keyPath, client_ca_file: pki.ca.certPath },
    logging: { level: logLevel },
    storage: { backend: 'memory' },
  };
}

function serverConfig(port: number, signerPort: number, pki: Pki, logLevel: string): object {
  const c = pki.certs['notary-server'];
  if (!c) throw new Error('the PKI has no notary-server certificate');
  return {
    server: { http_addr: `127.0.0.1:${port}`, tls_key_file: c.keyPath, tls_cert_file: c.certPath },
    trust_service: {
      type: 'remote', hostname: '127.0.0.1', port: String(signerPort), key_algorithm: 'ecdsa',
      tls_ca_file: pki.ca.certPath, tls_client_cert: c.certPath, tls_client_key: c.keyPath,
    },
    storage: { backend: 'memory' },
    logging: { level: logLevel },
  };
}

export async function startNotary(opts: NotaryOptions = {}): Promise<NotaryPeer> {
  const ownDir = opts.dir === undefined;
  const dir = opts.dir ?? makeTempDir('portcullis-notary');
  const logLevel = opts.logLevel ?? 'info';
  const pki = opts.pki ?? (await makePki(join(dir, 'tls')));
  const [port, signerPort] = (await freePorts(2)) as [number, number];
  const signerCfg = join(dir, 'signer-config.json');
  const serverCfg = join(dir, 'server-config.json');
  writeFileSync(signerCfg, JSON.stringify(signerConfig(signerPort, pki, logLevel), null, 2));
  writeFileSync(serverCfg, JSON.stringify(serverConfig(port, signerPort, pki, logLevel), null, 2));
  const url = `https://127.0.0.1:${port}`;
  const clientDir = join(dir, 'client');
  const trustDir = join(clientDir, 'trust');
  mkdirSync(trustDir, { recursive: true });
  const clientConfigPath = join(clientDir, 'config.json');
  writeFileSync(clientConfigPath, JSON.stringify({ trust_dir: trustDir, remote_server: { url, root_ca: pki.ca.certPath } }, null, 2));

  const signer = await startProcess({
    name: 'notary-signer', command: NOTARY_SIGNER_BIN, args: ['-config', signerCfg], logFile: join(dir, 'notary-signer.log'),
  });
  let server: ManagedProcess | undefined;
  try {
    await waitForPort(signerPort, { process: signer, timeoutMs: 20_000 });
    server = await startProcess({
      name: 'notary-server', command: NOTARY_SERVER_BIN, args: ['-config', serverCfg], logFile: join(dir, 'notary-server.log'),
    });
    await waitForHttp(`${url}/_notary_server/health`, { ca: pki.caPem(), process: server, timeoutMs: 20_000 });
  } catch (e) {
    await server?.stop();
    await signer.stop();
    throw e;
  }
  const srv = server;
  const cliEnv: NodeJS.ProcessEnv = { ...process.env, ...NOTARY_PASSPHRASES };
  const notary = (...args: string[]) => run(NOTARY_BIN, ['-c', clientConfigPath, ...args], { env: cliEnv });
  return {
    url,
    port,
    signerPort,
    caPath: pki.ca.certPath,
    caPem: readFileSync(pki.ca.certPath, 'utf8'),
    pki,
    dir,
    clientConfigPath,
    trustDir,
    cliEnv,
    server: srv,
    signer,
    notary,
    async notaryOk(...args: string[]) {
      const r = await notary(...args);
      if (r.code !== 0) throw new CommandError(r);
      return r;
    },
    async stop() {
      await srv.stop();
      await signer.stop();
      if (ownDir) removeTempDir(dir);
    },
  };
}

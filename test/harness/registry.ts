// A real distribution 2.8 registry (`docker-registry serve config.yml`) on a free loopback port, filesystem storage
// in its own directory. With `proxyRemoteUrl` it runs in pull-through proxy mode (read-only cache of that remote).
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { freePort } from './ports.js';
import { makeTempDir, removeTempDir, startProcess, waitForHttp, type ManagedProcess } from './process.js';

export const REGISTRY_BIN = '/usr/bin/docker-registry';

export interface RegistryOptions {
  /** Working directory (config, data, log). Default: a new temp dir, removed by stop(). */
  readonly dir?: string;
  /** Name in logs; default "registry" or "registry-proxy". */
  readonly name?: string;
  /** Run as a pull-through cache of this registry URL (`proxy: remoteurl`). */
  readonly proxyRemoteUrl?: string;
  /** Default: a free port. */
  readonly port?: number;
  /** distribution log level, default "info". */
  readonly logLevel?: 'error' | 'warn' | 'info' | 'debug';
}

export interface Registry {
  /** `http://127.0.0.1:<port>` */
  readonly url: string;
  /** `127.0.0.1:<port>` — the registry part of image references and GUNs. */
  readonly host: string;
  readonly port: number;
  readonly dir: string;
  readonly logFile: string;
  readonly process: ManagedProcess;
  stop(): Promise<void>;
}

export function registryConfig(o: { name: string; addr: string; rootDir: string; logLevel: string; proxyRemoteUrl?: string }): string {
  let y =
    'version: 0.1\n' +
    `log:\n  level: ${o.logLevel}\n  fields:\n    service: ${o.name}\n` +
    `storage:\n  cache:\n    blobdescriptor: inmemory\n  filesystem:\n    rootdirectory: ${JSON.stringify(o.rootDir)}\n` +
    '  delete:\n    enabled: true\n' +
    `http:\n  addr: ${o.addr}\n  secret: portcullis-test-not-secret\n  headers:\n    X-Content-Type-Options: [nosniff]\n`;
  if (o.proxyRemoteUrl) y += `proxy:\n  remoteurl: ${JSON.stringify(o.proxyRemoteUrl)}\n`;
  return y;
}

export async function startRegistry(opts: RegistryOptions = {}): Promise<Registry> {
  const name = opts.name ?? (opts.proxyRemoteUrl ? 'registry-proxy' : 'registry');
  const ownDir = opts.dir === undefined;
  const dir = opts.dir ?? makeTempDir(`portcullis-${name}`);
  mkdirSync(join(dir, 'data'), { recursive: true });
  const port = opts.port ?? (await freePort());
  const host = `127.0.0.1:${port}`;
  const configPath = join(dir, 'config.yml');
  writeFileSync(
    configPath,
    registryConfig({ name, addr: host, rootDir: join(dir, 'data'), logLevel: opts.logLevel ?? 'info', proxyRemoteUrl: opts.proxyRemoteUrl }),
  );
  const logFile = join(dir, `${name}.log`);
  const proc = await startProcess({ name, command: REGISTRY_BIN, args: ['serve', configPath], logFile });
  const url = `http://${host}`;
  try {
    await waitForHttp(`${url}/v2/`, { process: proc, timeoutMs: 20_000 });
  } catch (e) {
    await proc.stop();
    throw e;
  }
  return {
    url,
    host,
    port,
    dir,
    logFile,
    process: proc,
    async stop() {
      await proc.stop();
      if (ownDir) removeTempDir(dir);
    },
  };
}

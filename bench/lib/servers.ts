// The servers under test, each started in its own session (setsid, via test/harness/process.ts) with an empty
// cache directory of its own: distribution 2.8 in proxy mode, and Portcullis (`bin/portcullis serve --config`)
// with `trust: notary` or `trust: none`. Portcullis always runs as a separate process from the compiled dist/.
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { freePort } from '../../test/harness/ports.js';
import { startProcess, waitFor, httpStatus, type ManagedProcess } from '../../test/harness/process.js';
import { startRegistry } from '../../test/harness/registry.js';
import type { Fixture } from './fixture.js';

export const REPO_ROOT = resolve(fileURLToPath(new URL('../..', import.meta.url)));
export const PORTCULLIS_BIN = join(REPO_ROOT, 'bin', 'portcullis');

export type ServerKind = 'distribution' | 'portcullis-notary' | 'portcullis-none';
export const SERVER_KINDS: readonly ServerKind[] = ['distribution', 'portcullis-notary', 'portcullis-none'];

export interface ServerUnderTest {
  readonly kind: ServerKind;
  readonly url: string;
  /** PID = session id (setsid). */
  readonly pid: number;
  readonly dir: string;
  readonly logFile: string;
  readonly process: ManagedProcess;
  readonly startMs: number;
  stop(): Promise<void>;
}

export function portcullisConfig(o: { port: number; stateDir: string; fixture: Fixture; trust: 'notary' | 'none' }): string {
  const n = o.fixture.notary;
  return [
    `listen: 127.0.0.1:${o.port}`,
    `stateDir: ${JSON.stringify(o.stateDir)}`,
    'upstreams:',
    '  docker.io:',
    `    url: ${o.fixture.upstream.url}`,
    `    notary: { url: ${n.url}, ca: ${JSON.stringify(n.caPath)}, gunPrefix: "docker.io/" }`,
    'policy:',
    `  - { match: "docker.io/library/**", trust: ${o.trust} }`,
    '  - { match: "**", trust: deny }',
    '',
  ].join('\n');
}

/**
 * The Node flags `bin/portcullis` gives itself on its `#!/usr/bin/env -S node …` line (the server is started with
 * this process's node, so they are passed by hand), then `PORTCULLIS_BENCH_NODE_ARGS` to try others.
 */
const EXTRA_NODE_ARGS: readonly string[] = (() => {
  const shebang = readFileSync(PORTCULLIS_BIN, 'utf8').split('\n', 1)[0] ?? '';
  const own = /^#!\/usr\/bin\/env -S node(?:\s+(.*))?$/.exec(shebang)?.[1] ?? '';
  return [...own.split(/\s+/), ...(process.env['PORTCULLIS_BENCH_NODE_ARGS'] ?? '').split(/\s+/)].filter(Boolean);
})();

export async function startServer(kind: ServerKind, dir: string, fixture: Fixture, o: { nodeArgs?: string[] } = {}): Promise<ServerUnderTest> {
  mkdirSync(dir, { recursive: true });
  const t0 = performance.now();
  if (kind === 'distribution') {
    const r = await startRegistry({ dir, name: 'distribution-proxy', proxyRemoteUrl: fixture.upstream.url });
    return { kind, url: r.url, pid: r.process.pid, dir, logFile: r.logFile, process: r.process, startMs: performance.now() - t0, stop: () => r.stop() };
  }
  const port = await freePort();
  const configPath = join(dir, 'portcullis.yaml');
  writeFileSync(configPath, portcullisConfig({ port, stateDir: join(dir, 'state'), fixture, trust: kind === 'portcullis-notary' ? 'notary' : 'none' }));
  const logFile = join(dir, `${kind}.log`);
  const proc = await startProcess({
    name: kind,
    command: process.execPath,
    args: [...(o.nodeArgs ?? []), ...EXTRA_NODE_ARGS, PORTCULLIS_BIN, 'serve', '--config', configPath],
    logFile,
    cwd: REPO_ROOT,
  });
  const url = `http://127.0.0.1:${port}`;
  try {
    await waitFor(`${kind} on ${url}`, async () => (await httpStatus(`${url}/v2/`)) === 200, { process: proc, timeoutMs: 20_000, intervalMs: 20 });
  } catch (e) {
    await proc.stop();
    throw e;
  }
  return {
    kind,
    url,
    pid: proc.pid,
    dir,
    logFile,
    process: proc,
    startMs: performance.now() - t0,
    async stop() {
      await proc.stop(15_000);
    },
  };
}

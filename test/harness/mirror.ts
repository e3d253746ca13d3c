// Starts Portcullis in front of a lab (tests and `npm run demo` share this): the config is written as YAML and
// goes through the same loader an operator's file does.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pino, type Logger } from 'pino';
import { loadConfig } from '../../daemon/config.js';
import { startDaemon, type RunningDaemon } from '../../daemon/serve.js';
import type { Clock } from '../../trust/clock.js';
import type { Lab } from './lab.js';
import { makeTempDir } from './process.js';

export interface MirrorOptions {
  /** Policy rules as YAML list items (without the final catch-all, which is added). */
  readonly rules?: readonly string[];
  /** The catch-all's trust. Default deny. */
  readonly defaultTrust?: 'deny' | 'none';
  readonly stateDir?: string;
  readonly port?: number;
  readonly clock?: Clock;
  /** Log lines land here (an array the test can search); default: silent. */
  readonly logLines?: string[];
  /** Upstream URL override for the lab registry (e.g. a test fake in front of it). */
  readonly registryUrl?: string;
}

export interface Mirror {
  readonly url: string;
  readonly host: string;
  readonly daemon: RunningDaemon;
  readonly stateDir: string;
  readonly configPath: string;
  stop(): Promise<void>;
}

/** The YAML a site like the lab would write: the lab registry under its own name and as docker.io. */
export function mirrorConfigYaml(lab: Lab, o: MirrorOptions & { stateDir: string }): string {
  const reg = o.registryUrl ?? lab.registryUrl;
  const rules = o.rules ?? [
    `- { match: "${lab.registryHost}/library/**", trust: notary }`,
    `- { match: "docker.io/library/**", trust: notary }`,
  ];
  return [
    `listen: 127.0.0.1:${o.port ?? 0}`,
    `stateDir: ${o.stateDir}`,
    `logging: { level: debug }`,
    `upstreams:`,
    `  "${lab.registryHost}":`,
    `    url: ${reg}`,
    `    notary: { url: ${lab.notaryUrl}, ca: ${lab.caPath} }`,
    `  docker.io:`,
    `    url: ${reg}`,
    `    notary: { url: ${lab.notaryUrl}, ca: ${lab.caPath}, gunPrefix: "docker.io/" }`,
    `policy:`,
    ...rules.map((r) => `  ${r}`),
    `  - { match: "**", trust: ${o.defaultTrust ?? 'deny'} }`,
    '',
  ].join('\n');
}

export async function startMirror(lab: Lab, o: MirrorOptions = {}): Promise<Mirror> {
  const stateDir = o.stateDir ?? makeTempDir('portcullis-mirror-');
  const configPath = join(stateDir, 'config.yaml');
  writeFileSync(configPath, mirrorConfigYaml(lab, { ...o, stateDir }));
  const config = await loadConfig(configPath);
  const lines = o.logLines;
  const log: Logger = lines
    ? pino({ level: 'debug' }, { write: (s: string) => { lines.push(s); } })
    : pino({ level: 'silent' });
  const daemon = await startDaemon(config, { log, ...(o.clock ? { clock: o.clock } : {}) });
  return { url: daemon.url, host: daemon.url.replace(/^http:\/\//, ''), daemon, stateDir, configPath, stop: () => daemon.stop() };
}

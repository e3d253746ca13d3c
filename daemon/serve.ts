// `portcullis serve`: wires the configured parts together and runs until SIGTERM/SIGINT, then drains.
import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { BlobFill } from '../cache/blob-fill.js';
import { BlobStore } from '../cache/blob-store.js';
import { LmdbEnv } from '../cache/lmdb-env.js';
import { LmdbMetadataStore } from '../cache/lmdb-metadata-store.js';
import { TrustGate, type NotaryUpstream } from '../proxy/gate.js';
import { RegistryClient } from '../proxy/registry-client.js';
import { ProxyServer } from '../proxy/server.js';
import type { UpstreamRegistry } from '../proxy/upstream.js';
import { systemClock, type Clock } from '../trust/clock.js';
import { defaultTrustLimits } from '../trust/limits.js';
import { NotaryClient } from '../trust/notary-client.js';
import { Policy } from '../trust/policy.js';
import type { Config, UpstreamConfig } from './config.js';
import { createLogger } from './logger.js';

export interface RunningDaemon {
  readonly url: string;
  readonly proxy: ProxyServer;
  readonly upstreams: ReadonlyMap<string, RegistryClient>;
  stop(): Promise<void>;
}

function authOf(u: UpstreamConfig): { username: string; password: string } | { token: string } | undefined {
  const a = u.auth;
  if (!a) return undefined;
  switch (a.kind) {
    case 'password': return { username: a.username, password: a.password };
    case 'password-file': return { username: a.username, password: readFileSync(a.passwordFile, 'utf8').trim() };
    case 'token-file': return { token: readFileSync(a.tokenFile, 'utf8').trim() };
  }
}

export async function startDaemon(config: Config, o: { log?: Logger; clock?: Clock } = {}): Promise<RunningDaemon> {
  const log = o.log ?? createLogger(config.logging.level);
  const clock = o.clock ?? systemClock;
  for (const w of config.warnings) log.warn({ event: 'config-warning', path: w.path, line: w.line }, w.message);
  mkdirSync(config.stateDir, { recursive: true, mode: 0o750 });
  const env = LmdbEnv.open(config.stateDir);
  const store = new LmdbMetadataStore(env);
  const blobs = await BlobStore.open(join(config.stateDir, 'cas'));
  const fill = new BlobFill(blobs);
  const limits = { ...defaultTrustLimits, ...Object.fromEntries(Object.entries(config.limits).filter(([k]) => k in defaultTrustLimits)) };

  const upstreams = new Map<string, RegistryClient>();
  const notary = new Map<string, NotaryUpstream>();
  for (const [host, u] of config.upstreams) {
    const auth = authOf(u);
    upstreams.set(host, new RegistryClient({ host, url: u.url, allowedHosts: u.allowedHosts, ...(u.ca ? { ca: readFileSync(u.ca) } : {}), ...(auth ? { auth } : {}) }));
    if (u.notary) {
      notary.set(host, {
        client: new NotaryClient({ baseUrl: u.notary.url, ...(u.notary.ca ? { ca: readFileSync(u.notary.ca) } : {}), ...(auth ? { auth } : {}) }),
        gunPrefix: u.notary.gunPrefix,
      });
    }
  }
  const gate = new TrustGate({ policy: new Policy(config.policy), notary, store, clock, log, limits });
  const proxy = new ProxyServer({
    gate,
    upstreams: upstreams as ReadonlyMap<string, UpstreamRegistry>,
    blobs,
    fill,
    log,
    clock,
    manifestMaxBytes: config.limits.manifestMaxBytes ?? 4 * 1024 * 1024,
  });
  const addr = await proxy.listen(config.listen.port, config.listen.host);
  const url = `http://${addr.host.includes(':') ? `[${addr.host}]` : addr.host}:${addr.port}`;
  log.info({ event: 'listening', url, stateDir: config.stateDir, upstreams: [...upstreams.keys()], rules: config.policy.length }, `portcullis listening on ${url}`);
  let stopped: Promise<void> | undefined;
  return {
    url,
    proxy,
    upstreams,
    stop: () =>
      (stopped ??= (async () => {
        await proxy.shutdown();
        for (const u of upstreams.values()) await u.close();
        for (const n of notary.values()) await n.client.close();
        await store.close();
        await env.close();
        log.info({ event: 'stopped' }, 'portcullis stopped');
        log.flush();
      })()),
  };
}

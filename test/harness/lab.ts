// The whole real-peer lab in one call: a distribution 2.8 registry (optionally a second one in proxy mode in front
// of it), notary-signer + notary-server over TLS, the demo images pushed, and the demo GUN signed with the real
// notary CLI the way Docker Content Trust users do (targets + a delegation, server-managed snapshot).
//
//   const lab = await startLab();           // ~ a few seconds on 2 cores
//   ... lab.registryUrl, lab.notaryUrl, lab.caPem, lab.gun, lab.images.v1.digest ...
//   await lab.stop();
//
// PORTCULLIS_LAB_KEEP=1 keeps the lab directory (configs, logs, trust dir) after stop() for debugging.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pushDemoImages, type DemoTag, type PushedManifest } from './images.js';
import { startNotary, type NotaryPeer } from './notary.js';
import { keepLabDirs, makeTempDir, onCleanup, removeTempDir, type RunResult } from './process.js';
import { startRegistry, type Registry } from './registry.js';
import { selfSignedCert, type KeyPair } from './tls.js';

export const DEMO_REPO = 'library/demo';
export const DELEGATION_ROLE = 'targets/releases';

export interface LabOptions {
  /** Sign the demo GUN (default true). Without it the Notary server holds no trust data. */
  readonly withSigned?: boolean;
  /** Also start a distribution registry in proxy mode in front of the upstream (default false). */
  readonly withProxy?: boolean;
  /** Also sign `docker.io/library/demo` (v1 in targets), for registry-mirror tests (default false). */
  readonly withHubGun?: boolean;
  /** Lab directory; default a new temp dir. */
  readonly dir?: string;
  /** Progress messages (e.g. `console.log` for the demo). */
  readonly log?: (message: string) => void;
}

export interface NotaryListEntry {
  readonly name: string;
  /** hex sha256, as the notary CLI prints it */
  readonly digest: string;
  readonly size: number;
  readonly role: string;
}

export interface Lab {
  readonly dir: string;
  readonly registry: Registry;
  readonly proxy: Registry | undefined;
  readonly notaryPeer: NotaryPeer;
  /** `http://127.0.0.1:<port>` of the upstream registry */
  readonly registryUrl: string;
  /** `127.0.0.1:<port>` */
  readonly registryHost: string;
  /** `http://127.0.0.1:<port>` of the proxy-mode registry, if started */
  readonly proxyUrl: string | undefined;
  /** `https://127.0.0.1:<port>` */
  readonly notaryUrl: string;
  /** PEM file of the CA that issued the Notary server's certificate */
  readonly caPath: string;
  readonly caPem: string;
  /** `library/demo` */
  readonly repo: string;
  /** `<registryHost>/library/demo` */
  readonly gun: string;
  /** `docker.io/library/demo` when `withHubGun` */
  readonly hubGun: string | undefined;
  /** What the registry serves for each demo tag. */
  readonly images: Readonly<Record<DemoTag, PushedManifest>>;
  /** Tags with trust data: v1 in `targets`, multi in `targets/releases` (empty without `withSigned`). */
  readonly signedTags: readonly DemoTag[];
  readonly unsignedTags: readonly DemoTag[];
  /** The delegation signers of `targets/releases` (self-signed certs + keys). */
  readonly delegationKeys: Readonly<Record<'alice' | 'bob', KeyPair>> | undefined;
  /** Milliseconds per startup phase and in total. */
  readonly timings: Readonly<Record<string, number>>;
  /** `notary list <gun> [--roles role]`, parsed. Throws if the CLI fails. */
  notaryList(gun?: string, role?: string): Promise<NotaryListEntry[]>;
  /** The real notary CLI with the lab's client config and passphrases. */
  notary(...args: string[]): Promise<RunResult>;
  stop(): Promise<void>;
}

/** Parses `notary list` output (NAME DIGEST SIZE (BYTES) ROLE table). */
export function parseNotaryList(stdout: string): NotaryListEntry[] {
  const out: NotaryListEntry[] = [];
  for (const line of stdout.split('\n')) {
    const cols = line.trim().split(/\s+/);
    if (cols.length !== 4) continue;
    const [name, digest, size, role] = cols as [string, string, string, string];
    if (!/^[0-9a-f]{64}$/.test(digest) || !/^\d+$/.test(size)) continue;
    out.push({ name, digest, size: Number(size), role });
  }
  return out;
}

export async function startLab(opts: LabOptions = {}): Promise<Lab> {
  const t0 = performance.now();
  const timings: Record<string, number> = {};
  const mark = (phase: string, since: number) => {
    timings[phase] = Math.round(performance.now() - since);
    opts.log?.(`${phase}: ${timings[phase]} ms`);
  };
  const ownDir = opts.dir === undefined;
  const dir = opts.dir ?? makeTempDir('portcullis-lab');
  const started: Array<{ stop(): Promise<void> }> = [];
  const stopStarted = async () => {
    for (const s of [...started].reverse()) await s.stop().catch(() => {});
  };

  try {
    let t = performance.now();
    const [registry, notaryPeer] = await Promise.all([
      startRegistry({ dir: join(dir, 'registry') }).then((r) => (started.push(r), r)),
      startNotary({ dir: join(dir, 'notary') }).then((n) => (started.push(n), n)),
    ]);
    mark('peers', t);

    t = performance.now();
    const proxyPromise = opts.withProxy
      ? startRegistry({ dir: join(dir, 'registry-proxy'), proxyRemoteUrl: registry.url }).then((r) => (started.push(r), r))
      : Promise.resolve(undefined);
    const images = await pushDemoImages(registry, join(dir, 'oci'), DEMO_REPO);
    const proxy = await proxyPromise;
    mark('images', t);

    const gun = `${registry.host}/${DEMO_REPO}`;
    const hubGun = opts.withHubGun ? `docker.io/${DEMO_REPO}` : undefined;
    let delegationKeys: Record<'alice' | 'bob', KeyPair> | undefined;
    const withSigned = opts.withSigned ?? true;
    if (withSigned) {
      t = performance.now();
      delegationKeys = await signDemo(notaryPeer, dir, gun, images, hubGun);
      mark('signing', t);
    }
    timings.total = Math.round(performance.now() - t0);
    opts.log?.(`lab up in ${timings.total} ms: registry ${registry.url}, notary ${notaryPeer.url}, GUN ${gun}`);

    const signedTags: DemoTag[] = withSigned ? ['v1', 'multi'] : [];
    let stopped: Promise<void> | undefined;
    const unregister = onCleanup(() => lab.stop());
    const lab: Lab = {
      dir,
      registry,
      proxy,
      notaryPeer,
      registryUrl: registry.url,
      registryHost: registry.host,
      proxyUrl: proxy?.url,
      notaryUrl: notaryPeer.url,
      caPath: notaryPeer.caPath,
      caPem: notaryPeer.caPem,
      repo: DEMO_REPO,
      gun,
      hubGun,
      images,
      signedTags,
      unsignedTags: (['v1', 'v2', 'multi', 'v1-oci'] as const).filter((x) => !signedTags.includes(x)),
      delegationKeys,
      timings,
      async notaryList(g = gun, role?: string) {
        const args = ['list', g];
        if (role) args.push('--roles', role);
        return parseNotaryList((await notaryPeer.notaryOk(...args)).stdout);
      },
      notary: (...args: string[]) => notaryPeer.notary(...args),
      stop() {
        stopped ??= (async () => {
          unregister();
          await stopStarted();
          if (ownDir) removeTempDir(dir);
          if (keepLabDirs()) opts.log?.(`PORTCULLIS_LAB_KEEP=1: kept ${dir}`);
        })();
        return stopped;
      },
    };
    return lab;
  } catch (e) {
    await stopStarted();
    if (ownDir) removeTempDir(dir);
    throw e;
  }
}

/** The lab as environment variables (for the demo command, or to drive the CLIs by hand). */
export function labEnv(lab: Lab): Record<string, string> {
  const env: Record<string, string> = {
    LAB_DIR: lab.dir,
    LAB_REGISTRY: lab.registryHost,
    LAB_REGISTRY_URL: lab.registryUrl,
    LAB_NOTARY_URL: lab.notaryUrl,
    LAB_NOTARY_CA: lab.caPath,
    LAB_NOTARY_CONFIG: lab.notaryPeer.clientConfigPath,
    LAB_GUN: lab.gun,
    LAB_SIGNED_TAGS: lab.signedTags.join(' '),
    LAB_UNSIGNED_TAGS: lab.unsignedTags.join(' '),
  };
  if (lab.proxyUrl) env.LAB_REGISTRY_PROXY_URL = lab.proxyUrl;
  if (lab.hubGun) env.LAB_GUN_HUB = lab.hubGun;
  for (const [tag, m] of Object.entries(lab.images)) env[`LAB_DIGEST_${tag.replace(/\W/g, '_').toUpperCase()}`] = m.digest;
  return env;
}

/**
 * Signs the demo GUN like a DCT publisher: v1 in `targets`; a `targets/releases` delegation (alice + bob, all
 * paths) holding `multi`; snapshot key rotated to the server (as `docker trust` does).
 */
async function signDemo(
  n: NotaryPeer,
  dir: string,
  gun: string,
  images: Readonly<Record<DemoTag, PushedManifest>>,
  hubGun: string | undefined,
): Promise<Record<'alice' | 'bob', KeyPair>> {
  const keysDir = join(dir, 'delegation');
  const [alice, bob] = await Promise.all([selfSignedCert(keysDir, 'alice'), selfSignedCert(keysDir, 'bob')]);
  const v1File = join(dir, 'manifest-v1.json');
  writeFileSync(v1File, images.v1.bytes);
  const multi = images.multi;

  await n.notaryOk('init', gun);
  await n.notaryOk('add', gun, 'v1', v1File);
  await n.notaryOk('publish', gun);
  await n.notaryOk('delegation', 'add', gun, DELEGATION_ROLE, alice.certPath, bob.certPath, '--all-paths');
  await n.notaryOk('key', 'import', alice.keyPath, '--role', DELEGATION_ROLE);
  await n.notaryOk('key', 'import', bob.keyPath, '--role', DELEGATION_ROLE);
  await n.notaryOk('publish', gun);
  await n.notaryOk('key', 'rotate', gun, 'snapshot', '-r');
  await n.notaryOk('addhash', gun, 'multi', String(multi.size), '--sha256', multi.sha256Hex, '--roles', DELEGATION_ROLE);
  await n.notaryOk('publish', gun);
  if (hubGun) {
    await n.notaryOk('init', hubGun, '-p');
    await n.notaryOk('add', hubGun, 'v1', v1File, '-p');
  }
  return { alice, bob };
}

// The REAL container clients, driven against a registry mirror on loopback: dockerd (registry-mirrors),
// containerd (`ctr images pull --hosts-dir`), podman (registries.conf mirror) and skopeo. Each one runs isolated in
// its own temp dir (config, data, sockets, logs, TMPDIR) and is stopped and removed afterwards; the machine's
// /var/lib/docker, /var/lib/containerd, /var/lib/containers/storage, /etc/docker/key.json and /run/containers are
// left alone. (Not avoidable: dockerd creates /run/docker/plugins — removed again when it was not there before —
// and podman/skopeo share the blob-info cache /var/lib/containers/cache/blob-info-cache-v1.boltdb.)
//
//   const dockerd = await startDockerd({ mirrorUrl: mirror.url, insecureRegistries: [mirror.host] });
//   const r = await dockerd.pull('demo:v1');             // docker.io/library/demo:v1 → mirror /v2/library/demo/...
//   r.code, r.stderr, r.endpointErrors, r.daemonLog       // a mirror's refusal reason is only in the daemon log
//   await dockerd.stop();
//
// Facts the helpers encode (checked against docker 20.10, containerd 1.6, podman 4.3, skopeo 1.9; see
// test/peers/clients-smoke.test.ts):
//  - dockerd uses `registry-mirrors` for docker.io names only. When the mirror fails (any error, 403 included) it
//    falls back to registry-1.docker.io, which is unreachable here; the CLI then prints only the docker.io error.
//    The mirror's answer is in the daemon log (level=info "Attempting next endpoint for pull after error: …"),
//    so `pull()` returns the slice of the daemon log written during the pull, parsed into `endpointErrors`.
//  - containerd 1.6 resolves and fetches in the client (`ctr`), tries the hosts.toml mirror before `server`, and
//    appends `?ns=<upstream host>` (percent-encoded) to every request. It resolves with HEAD and never reads an
//    error body: a refusal shows up as "… failed with status code [manifests <tag>]: 403 Forbidden" only.
//  - podman and skopeo print the mirror's error message on stderr; podman asks the mirror for the tag (GET, no
//    HEAD, no `ns`) and then falls back to the registry itself ("Mirrors also failed: […]").
import { createHash } from 'node:crypto';
import { closeSync, existsSync, fstatSync, mkdirSync, openSync, readFileSync, readSync, rmdirSync, statSync, writeFileSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { join } from 'node:path';
import {
  makeTempDir,
  onCleanup,
  removeTempDir,
  run,
  startProcess,
  waitFor,
  type ManagedProcess,
  type RunResult,
} from './process.js';

/** The docker CLI that matches dockerd 20.10 (/usr/local/bin/docker may be a different, newer client). */
export const DOCKER_BIN = '/usr/bin/docker';
export const DOCKERD_BIN = '/usr/sbin/dockerd';
export const CONTAINERD_BIN = '/usr/bin/containerd';
export const CTR_BIN = '/usr/bin/ctr';
export const PODMAN_BIN = '/usr/bin/podman';
export const SKOPEO_BIN = '/usr/bin/skopeo';

/** What one client command did. `code` is null when it was killed (timeout). */
export interface ClientResult {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
  readonly durationMs: number;
}

export interface DaemonPullResult extends ClientResult {
  /** The daemon's log lines written while the command ran. */
  readonly daemonLog: string;
  /** stdout + stderr + daemonLog, to search for a message wherever the client put it. */
  readonly combined: string;
}

export interface DockerPullResult extends DaemonPullResult {
  /**
   * The error of each registry endpoint dockerd gave up on, in order (the mirror first), unquoted from its log:
   * `Attempting next endpoint for pull after error: <this>`, e.g. `denied: <the mirror's message>`.
   */
  readonly endpointErrors: string[];
}

export interface PullOptions {
  /** Kill the client after this long (default 120 000 ms). */
  readonly timeoutMs?: number;
  /** Extra environment for the client command (e.g. DOCKER_CONTENT_TRUST=1). */
  readonly env?: Readonly<Record<string, string>>;
}

const DEFAULT_PULL_TIMEOUT_MS = 120_000;

function toResult(r: RunResult, t0: number): ClientResult {
  return { code: r.code, stdout: r.stdout, stderr: r.stderr, durationMs: Math.round(performance.now() - t0) };
}

async function timed(command: string, args: readonly string[], env: NodeJS.ProcessEnv, timeoutMs: number): Promise<ClientResult> {
  const t0 = performance.now();
  return toResult(await run(command, args, { env, timeoutMs }), t0);
}

function fileSize(file: string): number {
  try {
    return statSync(file).size;
  } catch {
    return 0;
  }
}

/** Bytes [from, EOF) of a file as UTF-8 ('' if it does not exist). */
export function readFrom(file: string, from = 0): string {
  let fd: number | undefined;
  try {
    fd = openSync(file, 'r');
    const size = fstatSync(fd).size;
    if (size <= from) return '';
    const buf = Buffer.alloc(size - from);
    readSync(fd, buf, 0, buf.length, from);
    return buf.toString('utf8');
  } catch {
    return '';
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

/** `host:port` of a mirror given as `http://host:port[/]` or `host:port`. */
export function hostOf(urlOrHost: string): string {
  return /^[a-z]+:\/\//i.test(urlOrHost) ? new URL(urlOrHost).host : urlOrHost.replace(/\/+$/, '');
}

/** `sha256:<hex>` of some bytes. */
function digestOf(b: Uint8Array): string {
  return `sha256:${createHash('sha256').update(b).digest('hex')}`;
}

// ------------------------------------------------------------------------------------------ mounts

/** Mount points at or below `dir` (deepest first), from /proc/self/mountinfo. */
export function mountsUnder(dir: string): string[] {
  let info = '';
  try {
    info = readFileSync('/proc/self/mountinfo', 'utf8');
  } catch {
    return [];
  }
  const unescape = (s: string) => s.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8)));
  const prefix = dir.endsWith('/') ? dir : dir + '/';
  return info
    .split('\n')
    .map((l) => unescape(l.split(' ')[4] ?? ''))
    .filter((m) => m === dir || m.startsWith(prefix))
    .sort((a, b) => b.length - a.length);
}

/** Unmounts whatever a daemon left mounted below its own directory, so removing the directory is safe. */
async function unmountUnder(dir: string): Promise<void> {
  for (const m of mountsUnder(dir)) {
    const r = await run('umount', [m], { timeoutMs: 15_000 });
    if (r.code !== 0) await run('umount', ['-l', m], { timeoutMs: 15_000 });
  }
}

/** Removes a directory made here, after unmounting anything below it; refuses to rm -rf over a live mount. */
async function removeDaemonDir(dir: string): Promise<void> {
  await unmountUnder(dir);
  if (mountsUnder(dir).length > 0) throw new Error(`not removing ${dir}: still has mounts ${mountsUnder(dir).join(', ')}`);
  removeTempDir(dir);
}

// ------------------------------------------------------------------------------------------ unix-socket HTTP

/** GET `path` over a unix socket; resolves with the status (0 if nothing answers). */
function unixGetStatus(socketPath: string, path: string, timeoutMs = 2000): Promise<number> {
  return new Promise((resolve) => {
    const req = httpRequest({ socketPath, path, method: 'GET', timeout: timeoutMs, agent: false }, (res) => {
      res.resume();
      res.once('end', () => resolve(res.statusCode ?? 0));
      res.once('error', () => resolve(0));
    });
    req.once('timeout', () => req.destroy());
    req.once('error', () => resolve(0));
    req.end();
  });
}

// ------------------------------------------------------------------------------------------ dockerd

export interface DockerdOptions {
  /** The `registry-mirrors` entry, `http://127.0.0.1:<port>` (omit for none). */
  readonly mirrorUrl?: string;
  /** `insecure-registries` (host:port): the mirror must be listed here when it speaks plain HTTP. */
  readonly insecureRegistries?: readonly string[];
  /** dockerd `log-level` (default "info": enough for the mirror's error; "debug" also logs every request). */
  readonly logLevel?: 'debug' | 'info' | 'warn' | 'error';
  /** Working directory; default a new temp dir, removed by stop(). */
  readonly dir?: string;
  /** Default 60 000 ms. */
  readonly startTimeoutMs?: number;
}

export interface DockerdReloadOptions {
  readonly mirrorUrl?: string;
  readonly insecureRegistries?: readonly string[];
}

export interface Dockerd {
  readonly dir: string;
  /** Path of the API socket. */
  readonly socket: string;
  /** DOCKER_HOST (unix://…) and DOCKER_CONFIG (a private, empty client config dir) for the docker CLI. */
  readonly env: Readonly<{ DOCKER_HOST: string; DOCKER_CONFIG: string }>;
  readonly configFile: string;
  readonly logFile: string;
  readonly process: ManagedProcess;
  /** Milliseconds from spawn until /_ping answered. */
  readonly startMs: number;
  /** The current `registry-mirrors` entry. */
  readonly mirrorUrl: string | undefined;
  /** Runs /usr/bin/docker with this daemon's env. Never throws for a non-zero exit. */
  docker(args: readonly string[], opts?: PullOptions): Promise<ClientResult>;
  /** `docker pull <ref>`; `daemonLog` holds what dockerd logged meanwhile (the mirror's error is only there). */
  pull(ref: string, opts?: PullOptions): Promise<DockerPullResult>;
  /** `RepoDigests` of a local image (`docker.io` names appear as `demo@sha256:…`); [] if there is no such image. */
  repoDigests(ref: string): Promise<string[]>;
  /** The `sha256:…` part of the image's (first) RepoDigest, or undefined if the image is not present. */
  imageDigest(ref: string): Promise<string | undefined>;
  /** `docker image rm -f <ref>`; no error if absent. Blobs go with the image, so a second pull fetches again. */
  removeImage(ref: string): Promise<void>;
  /** The daemon log from byte `fromOffset` (default: all of it). */
  daemonLog(fromOffset?: number): string;
  /** The current size of the daemon log, for `daemonLog(offset)`. */
  logOffset(): number;
  /** Rewrites daemon.json and SIGHUPs dockerd (registry-mirrors and insecure-registries reload live). */
  reload(opts: DockerdReloadOptions): Promise<void>;
  /** Stops dockerd (and the containerd it started), unmounts and removes its dir. Idempotent. */
  stop(): Promise<void>;
}

function dockerdConfig(dir: string, socket: string, o: { mirrorUrl?: string; insecureRegistries?: readonly string[]; logLevel: string }): string {
  return JSON.stringify(
    {
      'data-root': join(dir, 'root'),
      'exec-root': join(dir, 'exec'),
      pidfile: join(dir, 'dockerd.pid'),
      // default /etc/docker/key.json: dockerd 20.10 creates it on start
      'deprecated-key-path': join(dir, 'key.json'),
      hosts: [`unix://${socket}`],
      'storage-driver': 'vfs',
      iptables: false,
      ip6tables: false,
      'ip-forward': false,
      'ip-masq': false,
      bridge: 'none',
      'log-level': o.logLevel,
      'registry-mirrors': o.mirrorUrl ? [o.mirrorUrl] : [],
      'insecure-registries': [...(o.insecureRegistries ?? [])],
      features: { buildkit: false },
    },
    null,
    2,
  );
}

// dockerd 20.10 always creates /run/docker/plugins (not configurable); remove it again (empty dirs only) when the
// last dockerd started here stops, if it did not exist before.
const RUN_DOCKER = '/run/docker';
let runDockerCreatedHere: boolean | undefined;
let dockerdsRunning = 0;
function releaseRunDocker(): void {
  if (--dockerdsRunning > 0 || !runDockerCreatedHere) return;
  for (const d of [join(RUN_DOCKER, 'plugins'), RUN_DOCKER]) {
    try {
      rmdirSync(d);
    } catch {
      return; // not empty (someone else's dockerd uses it) or already gone
    }
  }
  runDockerCreatedHere = undefined;
}

/** Starts a private dockerd (vfs storage, no bridge/iptables) with the mirror configured; waits for /_ping. */
export async function startDockerd(opts: DockerdOptions = {}): Promise<Dockerd> {
  const ownDir = opts.dir === undefined;
  // short: the socket path must stay under 108 bytes, and dockerd's containerd puts sockets below exec-root
  const dir = opts.dir ?? makeTempDir('pc-dockerd');
  mkdirSync(dir, { recursive: true });
  const socket = join(dir, 'docker.sock');
  const clientConfig = join(dir, 'client');
  mkdirSync(clientConfig, { recursive: true });
  writeFileSync(join(clientConfig, 'config.json'), '{}\n');
  const configFile = join(dir, 'daemon.json');
  const logLevel = opts.logLevel ?? 'info';
  let current: DockerdReloadOptions = { mirrorUrl: opts.mirrorUrl, insecureRegistries: opts.insecureRegistries ?? [] };
  writeFileSync(configFile, dockerdConfig(dir, socket, { ...current, logLevel }));
  const logFile = join(dir, 'dockerd.log');
  const env = { DOCKER_HOST: `unix://${socket}`, DOCKER_CONFIG: clientConfig };
  const cliEnv = (extra?: Readonly<Record<string, string>>): NodeJS.ProcessEnv => ({ ...process.env, ...env, ...extra });

  if (dockerdsRunning === 0 && runDockerCreatedHere === undefined) runDockerCreatedHere = !existsSync(RUN_DOCKER);
  const t0 = performance.now();
  // TMPDIR: the containerd dockerd supervises dumps its stacks to $TMPDIR/containerd.<pid>.stacks.log when dockerd
  // kills it (SIGUSR1 first) after failed health checks — keep such files inside our dir
  mkdirSync(join(dir, 'tmp'), { recursive: true });
  const proc = await startProcess({
    name: 'dockerd',
    command: DOCKERD_BIN,
    args: ['--config-file', configFile],
    logFile,
    env: { ...process.env, TMPDIR: join(dir, 'tmp') },
  });
  dockerdsRunning++;
  let stopped: Promise<void> | undefined;
  let unregister = () => {};
  const stop = () =>
    (stopped ??= (async () => {
      unregister();
      await proc.stop(20_000);
      releaseRunDocker();
      if (ownDir) await removeDaemonDir(dir);
      else await unmountUnder(dir); // dockerd bind-mounts its data-root onto itself
    })());
  unregister = onCleanup(stop);
  try {
    await waitFor('dockerd /_ping', async () => (await unixGetStatus(socket, '/_ping')) === 200, {
      process: proc,
      timeoutMs: opts.startTimeoutMs ?? 60_000,
      intervalMs: 100,
    });
  } catch (e) {
    await stop();
    throw e;
  }
  const startMs = Math.round(performance.now() - t0);

  const docker = (args: readonly string[], o: PullOptions = {}) =>
    timed(DOCKER_BIN, args, cliEnv(o.env), o.timeoutMs ?? DEFAULT_PULL_TIMEOUT_MS);

  const d: Dockerd = {
    dir,
    socket,
    env,
    configFile,
    logFile,
    process: proc,
    startMs,
    get mirrorUrl() {
      return current.mirrorUrl;
    },
    docker,
    async pull(ref, o = {}) {
      const from = fileSize(logFile);
      const r = await docker(['pull', ref], o);
      const daemonLog = readFrom(logFile, from);
      return { ...r, daemonLog, combined: `${r.stdout}\n${r.stderr}\n${daemonLog}`, endpointErrors: dockerEndpointErrors(daemonLog) };
    },
    async repoDigests(ref) {
      const r = await docker(['image', 'inspect', '--format', '{{json .RepoDigests}}', ref], { timeoutMs: 30_000 });
      if (r.code !== 0) return [];
      return (JSON.parse(r.stdout.trim() || '[]') as string[] | null) ?? [];
    },
    async imageDigest(ref) {
      const all = await d.repoDigests(ref);
      const repo = repoOf(ref);
      const mine = all.find((x) => repoOf(x.split('@')[0]!) === repo) ?? all[0];
      return mine?.split('@')[1];
    },
    async removeImage(ref) {
      await docker(['image', 'rm', '-f', ref], { timeoutMs: 60_000 });
    },
    daemonLog: (fromOffset = 0) => readFrom(logFile, fromOffset),
    logOffset: () => fileSize(logFile),
    async reload(o) {
      current = {
        mirrorUrl: 'mirrorUrl' in o ? o.mirrorUrl : current.mirrorUrl,
        insecureRegistries: o.insecureRegistries ?? current.insecureRegistries,
      };
      const from = fileSize(logFile);
      writeFileSync(configFile, dockerdConfig(dir, socket, { ...current, logLevel }));
      process.kill(proc.pid, 'SIGHUP'); // the dockerd we started, by its PID (not its group: its containerd would get it too)
      await waitFor(
        'dockerd reload',
        async () => {
          const log = readFrom(logFile, from);
          if (/Error reconfiguring the daemon|failed to reload|unable to configure the Docker daemon/i.test(log)) {
            throw new Error(`dockerd refused the new configuration:\n${log}`);
          }
          return /Reloaded configuration/.test(log);
        },
        { process: proc, timeoutMs: 15_000 },
      );
    },
    stop,
  };
  return d;
}

export interface LogrusLine {
  readonly level: string;
  /** `msg`, unquoted. */
  readonly msg: string;
  readonly line: string;
}

/** Unquotes a Go `%q` string body (logrus text format); falls back to the raw text. */
function unquoteGo(body: string): string {
  try {
    return JSON.parse(`"${body.replace(/\\x([0-9a-fA-F]{2})/g, '\\u00$1').replace(/\\'/g, "'")}"`) as string;
  } catch {
    return body;
  }
}

/** The `level` and `msg` of each logrus text-format line (dockerd, containerd, distribution logs). */
export function parseLogrus(text: string): LogrusLine[] {
  const out: LogrusLine[] = [];
  for (const line of text.split('\n')) {
    const level = /(?:^|\s)level=(\w+)/.exec(line)?.[1];
    if (!level) continue;
    const q = /(?:^|\s)msg="((?:[^"\\]|\\.)*)"/.exec(line);
    const msg = q ? unquoteGo(q[1]!) : (/(?:^|\s)msg=(\S*)/.exec(line)?.[1] ?? '');
    out.push({ level, msg, line });
  }
  return out;
}

/** dockerd's `Attempting next endpoint for pull after error: …` messages (see `DockerPullResult.endpointErrors`). */
export function dockerEndpointErrors(daemonLog: string): string[] {
  const prefix = 'Attempting next endpoint for pull after error: ';
  return parseLogrus(daemonLog)
    .filter((l) => l.msg.startsWith(prefix))
    .map((l) => l.msg.slice(prefix.length));
}

/**
 * The repository of a reference, normalised the way docker does for docker.io names:
 * `demo:v1` → `docker.io/library/demo`, `127.0.0.1:5000/x/y@sha256:…` → `127.0.0.1:5000/x/y`.
 */
export function repoOf(ref: string): string {
  let name = ref.split('@')[0]!;
  const slash = name.lastIndexOf('/');
  const colon = name.lastIndexOf(':');
  if (colon > slash) name = name.slice(0, colon);
  const first = name.split('/')[0]!;
  const hasHost = name.includes('/') && (first.includes('.') || first.includes(':') || first === 'localhost');
  if (!hasHost) name = `docker.io/${name}`;
  if (name.startsWith('index.docker.io/')) name = 'docker.io/' + name.slice('index.docker.io/'.length);
  const parts = name.split('/');
  if (parts[0] === 'docker.io' && parts.length === 2) name = `docker.io/library/${parts[1]}`;
  return name;
}

// ------------------------------------------------------------------------------------------ containerd

export interface ContainerdOptions {
  /** Working directory; default a new temp dir, removed by stop(). */
  readonly dir?: string;
  /** Snapshotter `ctr images pull` unpacks into (default "native": plain copies, no mounts left behind). */
  readonly snapshotter?: string;
  /** containerd log level (default "info"). */
  readonly logLevel?: 'debug' | 'info' | 'warn' | 'error';
  /** Default 30 000 ms. */
  readonly startTimeoutMs?: number;
}

export interface CtrPullOptions extends PullOptions {
  /** A hosts directory (`<dir>/<host>/hosts.toml`, see `writeHostsToml`). */
  readonly hostsDir?: string;
  /** `--platform` (default: the node's platform). */
  readonly platform?: string;
  readonly allPlatforms?: boolean;
  /** `--plain-http` (only needed without a hosts dir). */
  readonly plainHttp?: boolean;
  /** `--http-dump`: every request/response is printed on stderr. */
  readonly httpDump?: boolean;
}

export interface CtrImage {
  readonly ref: string;
  readonly mediaType: string;
  /** `sha256:…` of the image's target (an index stays the index digest). */
  readonly digest: string;
  readonly platforms: string;
}

export interface Containerd {
  readonly dir: string;
  readonly socket: string;
  readonly configFile: string;
  readonly logFile: string;
  readonly process: ManagedProcess;
  readonly startMs: number;
  /** Runs /usr/bin/ctr against this containerd. Never throws for a non-zero exit. */
  ctr(args: readonly string[], opts?: PullOptions): Promise<ClientResult>;
  /** `ctr images pull [--hosts-dir DIR] <ref>` (fully qualified ref: `docker.io/library/demo:v1`). */
  pull(ref: string, opts?: CtrPullOptions): Promise<DaemonPullResult>;
  /** The image record (`ctr images ls`), or undefined. */
  image(ref: string): Promise<CtrImage | undefined>;
  imageDigest(ref: string): Promise<string | undefined>;
  /** `ctr images rm --sync <ref>`: also garbage-collects its content, so a second pull fetches again. */
  removeImage(ref: string): Promise<void>;
  daemonLog(fromOffset?: number): string;
  /** Stops containerd, unmounts and removes its dir. Idempotent. */
  stop(): Promise<void>;
}

function containerdConfig(dir: string, socket: string, logLevel: string): string {
  const q = (s: string) => JSON.stringify(s);
  return [
    'version = 2',
    `root = ${q(join(dir, 'root'))}`,
    `state = ${q(join(dir, 'state'))}`,
    // nothing here runs containers: keep the CRI plugin (CNI, streaming server, its own registry config) out
    'disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]',
    '',
    '[grpc]',
    `  address = ${q(socket)}`,
    '[ttrpc]',
    `  address = ${q(socket + '.ttrpc')}`,
    '[debug]',
    `  level = ${q(logLevel)}`,
    '[metrics]',
    '  address = ""',
    '[plugins."io.containerd.internal.v1.opt"]',
    `  path = ${q(join(dir, 'opt'))}`,
    '',
  ].join('\n');
}

/** Starts a private containerd (own root, state, socket); waits until `ctr version` answers. */
export async function startContainerd(opts: ContainerdOptions = {}): Promise<Containerd> {
  const ownDir = opts.dir === undefined;
  const dir = opts.dir ?? makeTempDir('pc-containerd');
  mkdirSync(dir, { recursive: true });
  const socket = join(dir, 'containerd.sock');
  const configFile = join(dir, 'config.toml');
  writeFileSync(configFile, containerdConfig(dir, socket, opts.logLevel ?? 'info'));
  const logFile = join(dir, 'containerd.log');
  const snapshotter = opts.snapshotter ?? 'native';

  const t0 = performance.now();
  mkdirSync(join(dir, 'tmp'), { recursive: true });
  const proc = await startProcess({
    name: 'containerd',
    command: CONTAINERD_BIN,
    args: ['--config', configFile],
    logFile,
    env: { ...process.env, TMPDIR: join(dir, 'tmp') }, // SIGUSR1 stack dumps go to $TMPDIR
  });
  let stopped: Promise<void> | undefined;
  let unregister = () => {};
  const stop = () =>
    (stopped ??= (async () => {
      unregister();
      await proc.stop(10_000);
      if (ownDir) await removeDaemonDir(dir);
      else await unmountUnder(dir);
    })());
  unregister = onCleanup(stop);
  const ctr = (args: readonly string[], o: PullOptions = {}) =>
    timed(CTR_BIN, ['--address', socket, ...args], { ...process.env, ...o.env }, o.timeoutMs ?? DEFAULT_PULL_TIMEOUT_MS);
  try {
    await waitFor('containerd', async () => existsSync(socket) && (await ctr(['version'], { timeoutMs: 5000 })).code === 0, {
      process: proc,
      timeoutMs: opts.startTimeoutMs ?? 30_000,
      intervalMs: 100,
    });
  } catch (e) {
    await stop();
    throw e;
  }
  const startMs = Math.round(performance.now() - t0);

  const c: Containerd = {
    dir,
    socket,
    configFile,
    logFile,
    process: proc,
    startMs,
    ctr,
    async pull(ref, o = {}) {
      const args = ['images', 'pull', '--snapshotter', snapshotter];
      if (o.hostsDir) args.push('--hosts-dir', o.hostsDir);
      if (o.platform) args.push('--platform', o.platform);
      if (o.allPlatforms) args.push('--all-platforms');
      if (o.plainHttp) args.push('--plain-http');
      if (o.httpDump) args.push('--http-dump');
      args.push(ref);
      const from = fileSize(logFile);
      const r = await ctr(args, o);
      const daemonLog = readFrom(logFile, from);
      return { ...r, daemonLog, combined: `${r.stdout}\n${r.stderr}\n${daemonLog}` };
    },
    async image(ref) {
      const r = await ctr(['images', 'ls'], { timeoutMs: 30_000 });
      if (r.code !== 0) throw new Error(`ctr images ls failed: ${r.stderr}`);
      for (const line of r.stdout.split('\n').slice(1)) {
        // REF TYPE DIGEST SIZE(2 columns: "1.2 KiB") PLATFORMS LABELS
        const cols = line.trim().split(/\s+/);
        if (cols[0] !== ref || cols.length < 6) continue;
        return { ref, mediaType: cols[1]!, digest: cols[2]!, platforms: cols[5]! };
      }
      return undefined;
    },
    async imageDigest(ref) {
      return (await c.image(ref))?.digest;
    },
    async removeImage(ref) {
      await ctr(['images', 'rm', '--sync', ref], { timeoutMs: 60_000 });
    },
    daemonLog: (fromOffset = 0) => readFrom(logFile, fromOffset),
    stop,
  };
  return c;
}

export interface HostsTomlOptions {
  /** `server = …` (default `https://registry-1.docker.io` for docker.io, else `http://<host>`). */
  readonly server?: string;
  /** Default ["pull", "resolve"]. */
  readonly capabilities?: readonly ('pull' | 'resolve' | 'push')[];
  /** `skip_verify = true` for an https mirror with a private CA. */
  readonly skipVerify?: boolean;
  /** `ca = <file>` for an https mirror. */
  readonly caFile?: string;
}

/**
 * Writes `<dir>/<host>/hosts.toml` sending pulls of `<host>/...` through `mirrorUrl` (containerd then asks the
 * mirror for `/v2/<repo>/...?ns=<host>`). Returns the file's path.
 */
export function writeHostsToml(dir: string, host: string, mirrorUrl: string, opts: HostsTomlOptions = {}): string {
  const server = opts.server ?? (host === 'docker.io' ? 'https://registry-1.docker.io' : `http://${host}`);
  const caps = opts.capabilities ?? ['pull', 'resolve'];
  let toml = `server = ${JSON.stringify(server)}\n\n[host.${JSON.stringify(mirrorUrl)}]\n  capabilities = ${JSON.stringify(caps)}\n`;
  if (opts.skipVerify) toml += '  skip_verify = true\n';
  if (opts.caFile) toml += `  ca = ${JSON.stringify(opts.caFile)}\n`;
  mkdirSync(join(dir, host), { recursive: true });
  const file = join(dir, host, 'hosts.toml');
  writeFileSync(file, toml);
  return file;
}

// ------------------------------------------------------------------------------------------ podman

export interface PodmanOptions {
  /** The mirror, `127.0.0.1:<port>` (or `http://127.0.0.1:<port>`); it is marked insecure (plain HTTP). */
  readonly mirrorHost: string;
  /** Registries (prefixes) to mirror; default ['docker.io']. Hosts other than docker.io are marked insecure too. */
  readonly registries?: readonly string[];
  /** Working directory; default a new temp dir, removed by cleanup(). */
  readonly dir?: string;
}

export interface Podman {
  readonly dir: string;
  readonly registriesConf: string;
  readonly storageConf: string;
  /** The environment podman runs with (CONTAINERS_REGISTRIES_CONF, CONTAINERS_STORAGE_CONF, CONTAINERS_CONF…). */
  readonly env: Readonly<Record<string, string>>;
  /** Runs /usr/bin/podman with this config. Never throws for a non-zero exit. */
  podman(args: readonly string[], opts?: PullOptions): Promise<ClientResult>;
  /** `podman pull <ref>`: the mirror's error is on stderr. */
  pull(ref: string, opts?: PullOptions): Promise<ClientResult>;
  /** `podman image inspect --format {{.Digest}}`: for an index, the digest of the index; undefined if absent. */
  imageDigest(ref: string): Promise<string | undefined>;
  /** RepoDigests (for an index: both the index and the platform manifest digest). */
  repoDigests(ref: string): Promise<string[]>;
  removeImage(ref: string): Promise<void>;
  /** Removes the storage and configs. Idempotent. */
  cleanup(): Promise<void>;
}

function tomlString(s: string): string {
  return JSON.stringify(s);
}

/** Writes an isolated podman configuration (vfs storage in a temp dir, registries.conf mirror); runs nothing. */
export function podman(opts: PodmanOptions): Podman {
  const ownDir = opts.dir === undefined;
  const dir = opts.dir ?? makeTempDir('pc-podman');
  mkdirSync(dir, { recursive: true });
  const mirror = hostOf(opts.mirrorHost);
  const registries = opts.registries ?? ['docker.io'];
  let conf = `unqualified-search-registries = ["docker.io"]\nshort-name-mode = "disabled"\n`;
  for (const r of registries) {
    conf += `\n[[registry]]\nprefix = ${tomlString(r)}\nlocation = ${tomlString(r)}\n`;
    if (r !== 'docker.io') conf += 'insecure = true\n';
    conf += `[[registry.mirror]]\nlocation = ${tomlString(mirror)}\ninsecure = true\n`;
  }
  const registriesConf = join(dir, 'registries.conf');
  writeFileSync(registriesConf, conf);
  const storageConf = join(dir, 'storage.conf');
  writeFileSync(
    storageConf,
    `[storage]\ndriver = "vfs"\nrunroot = ${tomlString(join(dir, 'run'))}\ngraphroot = ${tomlString(join(dir, 'root'))}\n`,
  );
  const containersConf = join(dir, 'containers.conf');
  writeFileSync(
    containersConf,
    '[engine]\n' +
      `tmp_dir = ${tomlString(join(dir, 'tmp'))}\n` +
      'cgroup_manager = "cgroupfs"\n' +
      'events_logger = "file"\n' +
      `events_logfile_path = ${tomlString(join(dir, 'events.log'))}\n` +
      `volume_path = ${tomlString(join(dir, 'volumes'))}\n` +
      // pulls stage blobs here (default /var/tmp)
      `image_copy_tmp_dir = ${tomlString(join(dir, 'tmp'))}\n` +
      '[network]\n' +
      // rootful netavark always creates /run/containers/networks (hard-coded); the CNI backend keeps to its
      // config dir. Nothing here runs a container, so the backend is otherwise irrelevant.
      'network_backend = "cni"\n' +
      `network_config_dir = ${tomlString(join(dir, 'networks'))}\n`,
  );
  const authFile = join(dir, 'auth.json');
  writeFileSync(authFile, '{}\n');
  const env: Record<string, string> = {
    CONTAINERS_REGISTRIES_CONF: registriesConf,
    CONTAINERS_STORAGE_CONF: storageConf,
    CONTAINERS_CONF: containersConf,
    REGISTRY_AUTH_FILE: authFile,
  };
  const baseEnv = (): NodeJS.ProcessEnv => {
    const e: NodeJS.ProcessEnv = { ...process.env, ...env };
    delete e.DOCKER_CONFIG; // podman reads credentials from $DOCKER_CONFIG/config.json when it is set
    delete e.DOCKER_HOST;
    return e;
  };
  const podmanRun = (args: readonly string[], o: PullOptions = {}) =>
    timed(PODMAN_BIN, ['--root', join(dir, 'root'), '--runroot', join(dir, 'run'), '--storage-driver', 'vfs', ...args], { ...baseEnv(), ...o.env }, o.timeoutMs ?? DEFAULT_PULL_TIMEOUT_MS);
  let cleaned: Promise<void> | undefined;
  let unregister = () => {};
  const cleanup = () =>
    (cleaned ??= (async () => {
      unregister();
      if (ownDir) await removeDaemonDir(dir);
    })());
  unregister = onCleanup(cleanup);
  const p: Podman = {
    dir,
    registriesConf,
    storageConf,
    env,
    podman: podmanRun,
    pull: (ref, o) => podmanRun(['pull', ref], o),
    async imageDigest(ref) {
      const r = await podmanRun(['image', 'inspect', '--format', '{{.Digest}}', ref], { timeoutMs: 30_000 });
      return r.code === 0 && r.stdout.trim() ? r.stdout.trim() : undefined;
    },
    async repoDigests(ref) {
      const r = await podmanRun(['image', 'inspect', '--format', '{{json .RepoDigests}}', ref], { timeoutMs: 30_000 });
      if (r.code !== 0) return [];
      return (JSON.parse(r.stdout.trim() || '[]') as string[] | null) ?? [];
    },
    async removeImage(ref) {
      await podmanRun(['image', 'rm', '-f', ref], { timeoutMs: 60_000 });
    },
    cleanup,
  };
  return p;
}

// ------------------------------------------------------------------------------------------ skopeo

export interface SkopeoCopyOptions {
  /** Tag in the OCI layout (default: the source tag, or "latest"). */
  readonly tag?: string;
  /** `--all`: copy every platform of an index (default: only the node's platform). */
  readonly all?: boolean;
  /** `--src-tls-verify` (default false: the mirror speaks plain HTTP). */
  readonly srcTlsVerify?: boolean;
  /** Extra `skopeo copy` arguments (before the source). */
  readonly extraArgs?: readonly string[];
  readonly timeoutMs?: number;
}

export interface SkopeoCopyResult extends ClientResult {
  /** `sha256:…` of the manifest written to the layout (from its index.json); undefined if the copy failed. */
  readonly digest: string | undefined;
  readonly mediaType: string | undefined;
  /** `oci:<dir>:<tag>` */
  readonly dest: string;
}

/**
 * `skopeo copy docker://<src> oci:<destDir>:<tag>`. `src` is `<mirrorHost>/<repo>:<tag>` (a `docker://` prefix is
 * optional). NOTE: an OCI layout stores OCI manifests only, so a Docker schema 2 source is converted and its
 * digest changes; compare with `skopeoManifestDigest` for what the registry served.
 */
export async function skopeoCopy(src: string, destDir: string, opts: SkopeoCopyOptions = {}): Promise<SkopeoCopyResult> {
  const source = src.includes('://') ? src : `docker://${src}`;
  const tag = opts.tag ?? tagOf(source.replace(/^[a-z-]+:\/\//, '')) ?? 'latest';
  const dest = `oci:${destDir}:${tag}`;
  const args = ['copy', `--src-tls-verify=${opts.srcTlsVerify ?? false}`];
  if (opts.all) args.push('--all');
  args.push(...(opts.extraArgs ?? []), source, dest);
  const r = await timed(SKOPEO_BIN, args, process.env, opts.timeoutMs ?? DEFAULT_PULL_TIMEOUT_MS);
  let digest: string | undefined;
  let mediaType: string | undefined;
  if (r.code === 0) {
    const index = JSON.parse(readFileSync(join(destDir, 'index.json'), 'utf8')) as {
      manifests?: Array<{ digest: string; mediaType: string; annotations?: Record<string, string> }>;
    };
    const entry = index.manifests?.find((m) => m.annotations?.['org.opencontainers.image.ref.name'] === tag);
    digest = entry?.digest;
    mediaType = entry?.mediaType;
  }
  return { ...r, digest, mediaType, dest };
}

/** `skopeo inspect --raw` of a registry reference: the digest and media type of the exact bytes served. */
export async function skopeoManifestDigest(
  src: string,
  opts: { tlsVerify?: boolean; timeoutMs?: number } = {},
): Promise<{ digest: string; mediaType: string | undefined; bytes: Buffer }> {
  const source = src.includes('://') ? src : `docker://${src}`;
  const r = await run(SKOPEO_BIN, ['inspect', '--raw', `--tls-verify=${opts.tlsVerify ?? false}`, source], {
    timeoutMs: opts.timeoutMs ?? 60_000,
  });
  if (r.code !== 0) throw new Error(`skopeo inspect --raw ${source} failed: ${r.stderr.trim()}`);
  // skopeo prints the bytes as they were served (no trailing newline added)
  const bytes = Buffer.from(r.stdout, 'utf8');
  let mediaType: string | undefined;
  try {
    mediaType = (JSON.parse(r.stdout) as { mediaType?: string }).mediaType;
  } catch {
    mediaType = undefined;
  }
  return { digest: digestOf(bytes), mediaType, bytes };
}

/** The tag of `host/repo:tag` (undefined for `@digest` or no tag). */
export function tagOf(ref: string): string | undefined {
  if (ref.includes('@')) return undefined;
  const slash = ref.lastIndexOf('/');
  const colon = ref.lastIndexOf(':');
  return colon > slash ? ref.slice(colon + 1) : undefined;
}

// ------------------------------------------------------------------------------------------ registry request log

export interface RegistryRequest {
  readonly method: string;
  /** Request URI as logged (path + query). */
  readonly uri: string;
  /** Path without the query. */
  readonly path: string;
  readonly query: string;
  /** The decoded `ns` query parameter containerd adds for mirrors (`docker.io`, `127.0.0.1:5000`), if any. */
  readonly ns: string | undefined;
  readonly status: number;
  readonly bytes: number;
  readonly userAgent: string;
  /** `/v2/<repo>/blobs/<digest>` → repo and digest; manifests → repo and reference. */
  readonly kind: 'blob' | 'manifest' | 'base' | 'other';
  readonly repo: string | undefined;
  readonly reference: string | undefined;
}

export interface RequestLog {
  /** The current end of the log, to pass to `since()`. */
  mark(): number;
  /** Requests logged after `mark` (default: all). */
  since(mark?: number): RegistryRequest[];
  /** `GET …/blobs/sha256:…` logged after `mark`. */
  blobGets(mark?: number): RegistryRequest[];
  /** GET/HEAD `…/manifests/<ref>` logged after `mark`. */
  manifestRequests(mark?: number): RegistryRequest[];
  /**
   * Waits until the log has not grown for `quietMs` (default 300) and returns `mark()`. Use it before a "no
   * upstream request" assertion: a proxy may still be filling its cache (a second upstream GET) after the client
   * that triggered it has finished.
   */
  settle(quietMs?: number, timeoutMs?: number): Promise<number>;
}

// distribution 2.8 writes, besides its logrus lines, one Apache combined-log line per request (after the response):
//   127.0.0.1 - - [25/Nov/2026:12:54:20 +0000] "GET /v2/ HTTP/1.1" 200 2 "" "curl/7.88.1"
const ACCESS_LINE = /^(\S+) \S+ \S+ \[[^\]]*\] "([A-Z]+) (\S+) [^"]*" (\d{3}) (\d+|-) "[^"]*" "([^"]*)"/;

/** Parses distribution's access-log lines out of its log text. */
export function parseRegistryLog(text: string): RegistryRequest[] {
  const out: RegistryRequest[] = [];
  for (const line of text.split('\n')) {
    const m = ACCESS_LINE.exec(line);
    if (!m) continue;
    const uri = m[3]!;
    const q = uri.indexOf('?');
    const path = q < 0 ? uri : uri.slice(0, q);
    let kind: RegistryRequest['kind'] = 'other';
    let repo: string | undefined;
    let reference: string | undefined;
    const pm = /^\/v2\/(.+)\/(blobs|manifests)\/([^/]+)$/.exec(path);
    if (pm) {
      kind = pm[2] === 'blobs' ? 'blob' : 'manifest';
      repo = pm[1];
      reference = decodeURIComponent(pm[3]!);
    } else if (path === '/v2/' || path === '/v2') kind = 'base';
    out.push({
      method: m[2]!,
      uri,
      path,
      query: q < 0 ? '' : uri.slice(q + 1),
      ns: q < 0 ? undefined : (new URLSearchParams(uri.slice(q + 1)).get('ns') ?? undefined),
      status: Number(m[4]),
      bytes: m[5] === '-' ? 0 : Number(m[5]),
      userAgent: m[6]!,
      kind,
      repo,
      reference,
    });
  }
  return out;
}

/**
 * Requests a distribution registry served, read from its log file — e.g. the upstream behind a mirror, to assert
 * "the second pull made no upstream blob request":
 *   const up = upstreamRequestLog(upstream); const m = up.mark(); …pull…; expect(up.blobGets(m)).toEqual([]);
 */
export function upstreamRequestLog(registry: { readonly logFile: string } | string): RequestLog {
  const file = typeof registry === 'string' ? registry : registry.logFile;
  const since = (mark = 0) => parseRegistryLog(readFrom(file, mark));
  return {
    mark: () => fileSize(file),
    since,
    blobGets: (mark) => since(mark).filter((r) => r.kind === 'blob' && r.method === 'GET'),
    manifestRequests: (mark) => since(mark).filter((r) => r.kind === 'manifest' && (r.method === 'GET' || r.method === 'HEAD')),
    async settle(quietMs = 300, timeoutMs = 10_000) {
      const deadline = Date.now() + timeoutMs;
      let size = fileSize(file);
      let since = Date.now();
      for (;;) {
        await new Promise((r) => setTimeout(r, 50));
        const now = fileSize(file);
        if (now !== size) {
          size = now;
          since = Date.now();
        } else if (Date.now() - since >= quietMs) return now;
        if (Date.now() > deadline) throw new Error(`${file}: still growing after ${timeoutMs} ms`);
      }
    },
  };
}

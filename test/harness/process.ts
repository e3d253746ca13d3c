// Child processes for the real-peer harness: each server runs in its own session (setsid via `detached`), so its
// whole process group can be signalled and nothing it forks is left behind. Only processes started here are ever
// signalled, always by the PID/PGID recorded at spawn time.
//
// Three layers make sure a crashed test leaves nothing running:
//   1. `stop()` / `stopAll()` — SIGTERM to the group, SIGKILL after a grace period.
//   2. a process 'exit' hook that SIGTERMs every group still recorded (synchronous, best effort).
//   3. a tiny detached watchdog (`/bin/sh`) that holds a pipe from this process; when the pipe closes for any
//      reason (even SIGKILL of the Node process) it SIGTERMs, then SIGKILLs, the groups still registered with it.
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readSync, fstatSync, rmSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Writable } from 'node:stream';

export interface ExitInfo {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
}

export interface StartOptions {
  /** Short name for logs and errors ("registry", "notary-server"). */
  readonly name: string;
  readonly command: string;
  readonly args?: readonly string[];
  /** stdout and stderr are appended here. */
  readonly logFile: string;
  readonly cwd?: string;
  /** The complete environment (default: this process's environment). */
  readonly env?: NodeJS.ProcessEnv;
}

export interface ManagedProcess {
  readonly name: string;
  readonly pid: number;
  readonly logFile: string;
  /** Settles when the process (the group leader) has exited. Never rejects. */
  readonly exited: Promise<ExitInfo>;
  running(): boolean;
  /** The last `maxBytes` of the log file, for error messages. */
  logTail(maxBytes?: number): string;
  /** SIGTERM to the process group, SIGKILL after `graceMs` (default 5000). Idempotent. */
  stop(graceMs?: number): Promise<ExitInfo>;
}

export interface WaitOptions {
  /** Default 15 000 ms. */
  readonly timeoutMs?: number;
  /** Poll interval, default 100 ms. */
  readonly intervalMs?: number;
  /** Fail at once (with its log tail) if this process exits while waiting. */
  readonly process?: ManagedProcess;
}

export interface RunOptions {
  readonly cwd?: string;
  /** The complete environment (default: this process's environment). */
  readonly env?: NodeJS.ProcessEnv;
  /** Written to stdin, which is then closed. */
  readonly input?: string | Buffer;
  /** Kill the command after this long (default 120 000 ms). */
  readonly timeoutMs?: number;
}

export interface RunResult {
  readonly command: string;
  readonly args: readonly string[];
  readonly stdout: string;
  readonly stderr: string;
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
}

export class CommandError extends Error {
  override readonly name = 'CommandError';
  constructor(readonly result: RunResult) {
    super(
      `${result.command} ${result.args.join(' ')} exited with ${result.code ?? result.signal}\n` +
        `${result.stderr.trim() || result.stdout.trim()}`.slice(0, 4000),
    );
  }
}

// ------------------------------------------------------------------------------------------ bookkeeping

const live = new Map<number, ManagedProcess>();
const tempDirs = new Set<string>();
const cleanups = new Set<() => unknown>();
let exitHookInstalled = false;
let watchdog: { stdin: Writable; child: ChildProcess } | null | undefined;

/** True when PORTCULLIS_LAB_KEEP=1: temp dirs are kept (processes are still stopped). */
export function keepLabDirs(): boolean {
  return process.env.PORTCULLIS_LAB_KEEP === '1';
}

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const p of live.values()) signalGroup(p.pid, 'SIGTERM');
    if (!keepLabDirs()) for (const d of tempDirs) rmSync(d, { recursive: true, force: true });
  });
}

// The watchdog reads "+PGID" / "-PGID" and "D+DIR" / "D-DIR" lines; on EOF it signals the process groups still
// registered (TERM, then KILL after 3 s) and removes the directories still registered.
const WATCHDOG_SCRIPT = `
set -f
nl='
'
pids=""
dirs=""
while IFS= read -r line; do
  case "$line" in
    D+*) dirs="$dirs$nl\${line#D+}" ;;
    D-*) keep=""; IFS=$nl; for d in $dirs; do [ "$d" = "\${line#D-}" ] || keep="$keep$nl$d"; done; unset IFS; dirs=$keep ;;
    +*) pids="$pids \${line#+}" ;;
    -*) keep=""; for p in $pids; do [ "$p" = "\${line#-}" ] || keep="$keep $p"; done; pids=$keep ;;
  esac
done
if [ -n "$pids" ]; then
  for p in $pids; do kill -TERM "-$p" 2>/dev/null; done
  i=0
  while [ -n "$pids" ] && [ $i -lt 30 ]; do
    alive=""; for p in $pids; do kill -0 "-$p" 2>/dev/null && alive="$alive $p"; done; pids=$alive
    [ -n "$pids" ] && sleep 0.1; i=$((i + 1))
  done
  for p in $pids; do kill -KILL "-$p" 2>/dev/null; done
fi
IFS=$nl
for d in $dirs; do [ -n "$d" ] && rm -rf -- "$d"; done
exit 0
`;

function tellWatchdog(line: string): void {
  if (watchdog === undefined) {
    try {
      const child = spawn('/bin/sh', ['-c', WATCHDOG_SCRIPT], { detached: true, stdio: ['pipe', 'ignore', 'ignore'] });
      child.on('error', () => { watchdog = null; });
      child.unref();
      const stdin = child.stdin!;
      stdin.on('error', () => { watchdog = null; });
      (stdin as unknown as { unref?: () => void }).unref?.();
      watchdog = { stdin, child };
    } catch {
      watchdog = null;
    }
  }
  if (watchdog) watchdog.stdin.write(line + '\n');
}

function signalGroup(pgid: number, signal: NodeJS.Signals | 0): boolean {
  try {
    process.kill(-pgid, signal);
    return true;
  } catch {
    return false;
  }
}

function groupExists(pgid: number): boolean {
  return signalGroup(pgid, 0);
}

/** Registers `fn` to run in `stopAll()`; returns a function that unregisters it. */
export function onCleanup(fn: () => unknown): () => void {
  cleanups.add(fn);
  return () => cleanups.delete(fn);
}

/** Stops every process started here that is still running and runs registered cleanups. */
export async function stopAll(graceMs?: number): Promise<void> {
  const fns = [...cleanups].reverse();
  cleanups.clear();
  for (const fn of fns) {
    try {
      await fn();
    } catch {
      // keep cleaning up
    }
  }
  await Promise.all([...live.values()].map((p) => p.stop(graceMs)));
}

/**
 * For long-running commands (the demo): on SIGINT/SIGTERM/SIGHUP, stop everything started here, then exit with
 * 128 + signal number. Without it a signal still cleans up, through the watchdog, but less gracefully.
 */
export function stopAllOnSignals(): void {
  const codes: Partial<Record<NodeJS.Signals, number>> = { SIGHUP: 1, SIGINT: 2, SIGTERM: 15 };
  let stopping = false;
  for (const sig of Object.keys(codes) as NodeJS.Signals[]) {
    process.once(sig, () => {
      if (stopping) return;
      stopping = true;
      void stopAll().finally(() => process.exit(128 + codes[sig]!));
    });
  }
}

/** PIDs (= process group IDs) of the processes started here that are still running. */
export function livePids(): number[] {
  return [...live.keys()];
}

// ------------------------------------------------------------------------------------------ temp dirs

/** mkdtemp under the OS temp dir; removed at process exit (or by `removeTempDir`) unless PORTCULLIS_LAB_KEEP=1. */
export function makeTempDir(prefix: string): string {
  installExitHook();
  const dir = mkdtempSync(join(tmpdir(), prefix.endsWith('-') ? prefix : prefix + '-'));
  tempDirs.add(dir);
  if (!keepLabDirs() && !dir.includes('\n')) tellWatchdog(`D+${dir}`);
  return dir;
}

export function removeTempDir(dir: string): void {
  if (tempDirs.delete(dir) && !keepLabDirs()) tellWatchdog(`D-${dir}`);
  if (!keepLabDirs()) rmSync(dir, { recursive: true, force: true });
}

// ------------------------------------------------------------------------------------------ processes

function readTail(file: string, maxBytes: number): string {
  let fd: number | undefined;
  try {
    fd = openSync(file, 'r');
    const size = fstatSync(fd).size;
    const len = Math.min(size, maxBytes);
    const buf = Buffer.alloc(len);
    readSync(fd, buf, 0, len, size - len);
    return buf.toString('utf8');
  } catch {
    return '';
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

/** Starts `command` in a new session with its output appended to `logFile`. Resolves once it has spawned. */
export async function startProcess(opts: StartOptions): Promise<ManagedProcess> {
  installExitHook();
  const out = openSync(opts.logFile, 'a');
  let child: ChildProcess;
  try {
    child = spawn(opts.command, [...(opts.args ?? [])], {
      cwd: opts.cwd,
      env: opts.env ?? process.env,
      detached: true, // setsid(): own session and process group, pgid = pid
      stdio: ['ignore', out, out],
    });
  } finally {
    closeSync(out);
  }
  await new Promise<void>((resolve, reject) => {
    child.once('spawn', resolve);
    child.once('error', (e) => reject(new Error(`${opts.name}: cannot start ${opts.command}: ${e.message}`)));
  });
  const pid = child.pid!;
  let exitInfo: ExitInfo | undefined;
  const exited = new Promise<ExitInfo>((resolve) => {
    child.once('exit', (code, signal) => {
      exitInfo = { code, signal };
      live.delete(pid);
      tellWatchdog(`-${pid}`);
      resolve(exitInfo);
    });
  });
  let stopping: Promise<ExitInfo> | undefined;
  const proc: ManagedProcess = {
    name: opts.name,
    pid,
    logFile: opts.logFile,
    exited,
    running: () => exitInfo === undefined,
    logTail: (maxBytes = 4096) => readTail(opts.logFile, maxBytes),
    stop(graceMs = 5000) {
      stopping ??= (async () => {
        if (exitInfo === undefined) {
          signalGroup(pid, 'SIGTERM');
          let timer: NodeJS.Timeout | undefined;
          const killed = new Promise<void>((resolve) => {
            timer = setTimeout(() => {
              signalGroup(pid, 'SIGKILL');
              resolve();
            }, graceMs);
          });
          await Promise.race([exited, killed]);
          clearTimeout(timer);
        }
        const info = await exited;
        // the leader is gone; anything it forked into its group goes too
        if (groupExists(pid)) signalGroup(pid, 'SIGKILL');
        return info;
      })();
      return stopping;
    },
  };
  live.set(pid, proc);
  tellWatchdog(`+${pid}`);
  return proc;
}

// ------------------------------------------------------------------------------------------ readiness

function delay(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Polls `probe` until it returns true. Fails after the timeout, or at once if `opts.process` exits. */
export async function waitFor(what: string, probe: () => Promise<boolean>, opts: WaitOptions = {}): Promise<void> {
  const deadline = Date.now() + (opts.timeoutMs ?? 15_000);
  let lastError = '';
  for (;;) {
    if (opts.process && !opts.process.running()) {
      throw new Error(`${what}: ${opts.process.name} exited before it was ready\n--- ${opts.process.logFile}\n${opts.process.logTail()}`);
    }
    try {
      if (await probe()) return;
    } catch (e) {
      lastError = (e as Error).message;
    }
    if (Date.now() >= deadline) {
      const log = opts.process ? `\n--- ${opts.process.logFile}\n${opts.process.logTail()}` : '';
      throw new Error(`${what}: not ready after ${opts.timeoutMs ?? 15_000} ms${lastError ? ` (${lastError})` : ''}${log}`);
    }
    await delay(opts.intervalMs ?? 100);
  }
}

/** True if a TCP connection to host:port succeeds. */
export function tcpOpen(port: number, host = '127.0.0.1', timeoutMs = 1000): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = connect({ host, port });
    const done = (ok: boolean) => {
      sock.destroy();
      resolve(ok);
    };
    sock.setTimeout(timeoutMs, () => done(false));
    sock.once('connect', () => done(true));
    sock.once('error', () => done(false));
  });
}

export interface HttpGetResult {
  readonly status: number;
  readonly headers: Readonly<Record<string, string | string[] | undefined>>;
  readonly body: Buffer;
}

/** A plain GET with node:http(s) (no keep-alive); `ca` (PEM) replaces the default trust store for https. */
export function httpGet(
  url: string,
  opts: { ca?: string | Buffer; headers?: Record<string, string>; timeoutMs?: number; method?: 'GET' | 'HEAD' } = {},
): Promise<HttpGetResult> {
  return new Promise((resolve, reject) => {
    const u = new URL(url);
    const req = (u.protocol === 'https:' ? httpsRequest : httpRequest)(
      u,
      { method: opts.method ?? 'GET', ca: opts.ca, headers: opts.headers, timeout: opts.timeoutMs ?? 5000, agent: false },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (b: Buffer) => chunks.push(b));
        res.once('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
        res.once('error', reject);
      },
    );
    req.once('timeout', () => req.destroy(new Error(`GET ${url} timed out`)));
    req.once('error', reject);
    req.end();
  });
}

/** The status code of a GET to `url` (body discarded). */
export async function httpStatus(url: string, opts: { ca?: string | Buffer; timeoutMs?: number } = {}): Promise<number> {
  return (await httpGet(url, { ca: opts.ca, timeoutMs: opts.timeoutMs ?? 2000 })).status;
}

export function waitForPort(port: number, opts: WaitOptions & { host?: string } = {}): Promise<void> {
  const host = opts.host ?? '127.0.0.1';
  return waitFor(`${opts.process?.name ?? 'server'} on ${host}:${port}`, () => tcpOpen(port, host), opts);
}

/** Waits until GET `url` answers `status` (default 200). */
export function waitForHttp(
  url: string,
  opts: WaitOptions & { ca?: string | Buffer; status?: number } = {},
): Promise<void> {
  const want = opts.status ?? 200;
  return waitFor(`GET ${url}`, async () => (await httpStatus(url, { ca: opts.ca })) === want, opts);
}

// ------------------------------------------------------------------------------------------ one-shot commands

/** Runs a command to completion, capturing stdout/stderr. Never throws for a non-zero exit (see `runChecked`). */
export function run(command: string, args: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, [...args], {
      cwd: opts.cwd,
      env: opts.env ?? process.env,
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout!.on('data', (b: Buffer) => out.push(b));
    child.stderr!.on('data', (b: Buffer) => err.push(b));
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 120_000);
    child.once('error', (e) => {
      clearTimeout(timer);
      reject(new Error(`cannot run ${command}: ${e.message}`));
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      resolve({
        command,
        args: [...args],
        stdout: Buffer.concat(out).toString('utf8'),
        stderr: Buffer.concat(err).toString('utf8'),
        code,
        signal,
      });
    });
    child.stdin!.on('error', () => {});
    child.stdin!.end(opts.input ?? '');
  });
}

/** `run`, throwing a CommandError (with stderr) unless the command exits 0. */
export async function runChecked(command: string, args: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  const r = await run(command, args, opts);
  if (r.code !== 0) throw new CommandError(r);
  return r;
}

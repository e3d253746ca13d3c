// The parent side of bench/load.mjs: starts the load generator in its own session (setsid) with an IPC channel,
// sends it operations and waits for their results. Only the process started here is ever signalled.
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const LOAD_SCRIPT = fileURLToPath(new URL('../load.mjs', import.meta.url));

export interface WindowResult {
  readonly windowBytes: number;
  readonly windowMs: number;
  readonly mibps: number;
  readonly totalBytes: number;
  readonly totalMs: number;
  readonly completed: number;
  readonly errors: string[];
  readonly errorCount: number;
}

export interface PullResult {
  readonly ms: number;
  readonly bytes: number;
  readonly mibps: number;
  readonly manifests: number;
  readonly blobs: number;
  readonly clientMs: number[];
}

export interface LatencySummary {
  readonly n: number;
  readonly min: number;
  readonly p50: number;
  readonly p90: number;
  readonly p99: number;
  readonly p999: number;
  readonly max: number;
  readonly mean: number;
}

export interface ManifestsResult {
  readonly ms: number;
  readonly rps: number;
  readonly capped: boolean;
  readonly statuses: Record<string, number>;
  readonly errors: string[];
  readonly errorCount: number;
  readonly latencyMs: LatencySummary;
}

export interface GetResult {
  readonly ms: number;
  readonly status: number;
  readonly bytes: number;
  readonly body?: string;
}

export class LoadGen {
  readonly #child: ChildProcess;
  readonly #pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  #next = 1;

  private constructor(child: ChildProcess) {
    this.#child = child;
    child.on('message', (m: { id?: number; ok?: boolean; result?: unknown; error?: string }) => {
      if (m.id === undefined) return;
      const p = this.#pending.get(m.id);
      if (!p) return;
      this.#pending.delete(m.id);
      if (m.ok) p.resolve(m.result);
      else p.reject(new Error(`load generator: ${m.error}`));
    });
    child.on('exit', (code, signal) => {
      for (const p of this.#pending.values()) p.reject(new Error(`load generator exited (${code ?? signal})`));
      this.#pending.clear();
    });
  }

  get pid(): number {
    return this.#child.pid!;
  }

  static async start(): Promise<LoadGen> {
    // detached: setsid(), its own session and so its own CPU share under sched_autogroup.
    const child = spawn(process.execPath, [LOAD_SCRIPT], { detached: true, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    const pid = child.pid;
    if (pid === undefined) throw new Error('cannot start the load generator');
    process.on('exit', () => {
      try {
        process.kill(-pid, 'SIGKILL');
      } catch {
        // already gone
      }
    });
    await new Promise<void>((resolve, reject) => {
      child.once('message', () => resolve());
      child.once('error', reject);
      child.once('exit', (c) => reject(new Error(`load generator exited at start (${c})`)));
    });
    return new LoadGen(child);
  }

  #call<T>(op: string, args: object): Promise<T> {
    const id = this.#next++;
    return new Promise<T>((resolve, reject) => {
      this.#pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
      this.#child.send({ id, op, args });
    });
  }

  window(args: { url: string; conc: number; rampMs: number; ms: number }): Promise<WindowResult> {
    return this.#call('window', args);
  }

  pull(args: { base: string; repo: string; tags: string[]; clients: number; parallel?: number; verify?: boolean; expect?: Record<string, string> }): Promise<PullResult> {
    return this.#call('pull', args);
  }

  manifests(args: { base: string; repo: string; tags: string[]; conc: number; requests: number; capMs: number; offset?: number }): Promise<ManifestsResult> {
    return this.#call('manifests', args);
  }

  get(args: { url: string; accept?: boolean }): Promise<GetResult> {
    return this.#call('get', args);
  }

  async stop(): Promise<void> {
    if (this.#child.exitCode !== null) return;
    const exited = new Promise<void>((r) => this.#child.once('exit', () => r()));
    this.#child.disconnect();
    await Promise.race([exited, new Promise((r) => setTimeout(r, 2000))]);
    if (this.#child.exitCode === null) {
      try {
        process.kill(-this.pid, 'SIGKILL');
      } catch {
        // gone
      }
    }
  }
}

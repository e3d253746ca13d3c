// CPU time and resident memory of a server under test, read from /proc while the load runs: every process whose
// session is the server's (each server is started with setsid, so its session id is its PID), summed.
import { readdirSync, readFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';

let clkTck: number | undefined;
function ticksPerSecond(): number {
  if (clkTck === undefined) {
    try {
      clkTck = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
    } catch {
      clkTck = 100;
    }
  }
  return clkTck;
}

interface ProcStat {
  readonly session: number;
  readonly cpuTicks: number;
}

function readStat(pid: number): ProcStat | undefined {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'latin1');
    // "pid (comm) state ppid pgrp session ... utime stime ...": comm may contain spaces and parentheses.
    const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
    return { session: Number(f[3]), cpuTicks: Number(f[11]) + Number(f[12]) };
  } catch {
    return undefined;
  }
}

function readRssKiB(pid: number): number {
  try {
    const m = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'latin1'));
    return m ? Number(m[1]) : 0;
  } catch {
    return 0;
  }
}

export interface SessionSample {
  readonly cpuSec: number;
  readonly rssMiB: number;
  readonly pids: readonly number[];
}

export interface PhaseUsage {
  /** CPU seconds (user + system) the session used during the phase. */
  readonly cpuSec: number;
  /** Highest summed RSS seen by the sampler during the phase (MiB). */
  readonly peakRssMiB: number;
  readonly samples: number;
}

/** Samples one session every `intervalMs` and tracks the peak RSS of each open phase. */
export class SessionSampler {
  readonly #sid: number;
  #pids: number[] = [];
  #pidsAt = 0;
  readonly #timer: NodeJS.Timeout;
  readonly #open = new Map<string, { cpu0: number; peak: number; n: number }>();
  #overallPeak = 0;

  constructor(sid: number, intervalMs = 100) {
    this.#sid = sid;
    this.#timer = setInterval(() => this.sample(), intervalMs);
    this.#timer.unref();
  }

  #sessionPids(): number[] {
    const t = Date.now();
    if (t - this.#pidsAt > 1000 || this.#pids.length === 0) {
      const pids: number[] = [];
      for (const e of readdirSync('/proc')) {
        if (!/^\d+$/.test(e)) continue;
        const pid = Number(e);
        if (pid === this.#sid || readStat(pid)?.session === this.#sid) pids.push(pid);
      }
      this.#pids = pids;
      this.#pidsAt = t;
    }
    return this.#pids;
  }

  sample(): SessionSample {
    let ticks = 0;
    let rss = 0;
    const alive: number[] = [];
    for (const pid of this.#sessionPids()) {
      const st = readStat(pid);
      if (!st || st.session !== this.#sid) continue;
      alive.push(pid);
      ticks += st.cpuTicks;
      rss += readRssKiB(pid);
    }
    const s = { cpuSec: ticks / ticksPerSecond(), rssMiB: rss / 1024, pids: alive };
    if (s.rssMiB > this.#overallPeak) this.#overallPeak = s.rssMiB;
    for (const p of this.#open.values()) {
      p.n++;
      if (s.rssMiB > p.peak) p.peak = s.rssMiB;
    }
    return s;
  }

  begin(phase: string): void {
    const s = this.sample();
    this.#open.set(phase, { cpu0: s.cpuSec, peak: s.rssMiB, n: 1 });
  }

  end(phase: string): PhaseUsage {
    const p = this.#open.get(phase);
    if (!p) throw new Error(`phase ${phase} was not begun`);
    const s = this.sample();
    this.#open.delete(phase);
    return { cpuSec: s.cpuSec - p.cpu0, peakRssMiB: Math.max(p.peak, s.rssMiB), samples: p.n };
  }

  /** Runs `f` as a phase. */
  async phase<T>(name: string, f: () => Promise<T>): Promise<T & { usage: PhaseUsage }> {
    this.begin(name);
    const r = await f();
    return { ...r, usage: this.end(name) };
  }

  get overallPeakRssMiB(): number {
    return this.#overallPeak;
  }

  stop(): void {
    clearInterval(this.#timer);
  }
}

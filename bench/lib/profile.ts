// Summarises a V8 .cpuprofile (from `node --cpu-prof`, or node:inspector's Profiler): self time per function.
import { readFileSync } from 'node:fs';
import { Session } from 'node:inspector/promises';

interface CpuProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number; columnNumber: number };
  hitCount?: number;
  children?: number[];
}

export interface CpuProfile {
  nodes: CpuProfileNode[];
  startTime: number;
  endTime: number;
  samples?: number[];
  timeDeltas?: number[];
}

export interface ProfileEntry {
  readonly fn: string;
  readonly where: string;
  readonly selfMs: number;
  /** Percent of the non-idle time. */
  readonly pct: number;
}

export interface ProfileSummary {
  readonly totalMs: number;
  readonly idleMs: number;
  readonly top: ProfileEntry[];
}

function shortUrl(url: string): string {
  if (!url) return '';
  const u = url.replace(/^file:\/\//, '');
  const nm = u.lastIndexOf('/node_modules/');
  if (nm >= 0) return u.slice(nm + '/node_modules/'.length);
  const dist = u.indexOf('/dist/');
  if (dist >= 0) return u.slice(dist + 1);
  for (const d of ['/trust/', '/cache/', '/proxy/', '/daemon/', '/test/', '/bench/']) {
    const i = u.indexOf(d);
    if (i >= 0) return u.slice(i + 1);
  }
  return u;
}

export function summarizeProfile(p: CpuProfile, topN = 15): ProfileSummary {
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const self = new Map<number, number>();
  const samples = p.samples ?? [];
  const deltas = p.timeDeltas ?? [];
  if (samples.length > 0) {
    // timeDeltas[i] is the time before sample i; the time a sample stands for is the gap to the next one.
    for (let i = 0; i < samples.length; i++) {
      const d = (deltas[i + 1] ?? deltas[i] ?? 0) / 1000;
      self.set(samples[i]!, (self.get(samples[i]!) ?? 0) + d);
    }
  } else {
    const per = (p.endTime - p.startTime) / 1000 / Math.max(1, p.nodes.reduce((a, n) => a + (n.hitCount ?? 0), 0));
    for (const n of p.nodes) self.set(n.id, (n.hitCount ?? 0) * per);
  }
  const agg = new Map<string, { fn: string; where: string; ms: number }>();
  let total = 0;
  let idle = 0;
  for (const [id, ms] of self) {
    const n = byId.get(id);
    if (!n) continue;
    total += ms;
    const fn = n.callFrame.functionName || '(anonymous)';
    if (fn === '(idle)') {
      idle += ms;
      continue;
    }
    const where = n.callFrame.url ? `${shortUrl(n.callFrame.url)}:${n.callFrame.lineNumber + 1}` : '';
    const key = `${fn}|${where}`;
    const e = agg.get(key) ?? { fn, where, ms: 0 };
    e.ms += ms;
    agg.set(key, e);
  }
  const busy = Math.max(1e-9, total - idle);
  const top = [...agg.values()]
    .sort((a, b) => b.ms - a.ms)
    .slice(0, topN)
    .map((e) => ({ fn: e.fn, where: e.where, selfMs: e.ms, pct: (100 * e.ms) / busy }));
  return { totalMs: total, idleMs: idle, top };
}

export function summarizeProfileFile(file: string, topN = 15): ProfileSummary {
  return summarizeProfile(JSON.parse(readFileSync(file, 'utf8')) as CpuProfile, topN);
}

/** Profiles `f` in this process with the inspector's sampling profiler. */
export async function profileInProcess<T>(f: () => Promise<T>): Promise<{ result: T; profile: CpuProfile }> {
  const s = new Session();
  s.connect();
  await s.post('Profiler.enable');
  await s.post('Profiler.setSamplingInterval', { interval: 200 });
  await s.post('Profiler.start');
  let result: T | undefined;
  let error: unknown;
  try {
    result = await f();
  } catch (e) {
    error = e;
  }
  const { profile } = (await s.post('Profiler.stop')) as unknown as { profile: CpuProfile };
  s.disconnect();
  if (error !== undefined) throw error;
  return { result: result as T, profile };
}

export function formatProfile(title: string, s: ProfileSummary): string {
  const lines = [`${title}: ${(s.totalMs - s.idleMs).toFixed(0)} ms busy of ${s.totalMs.toFixed(0)} ms sampled`, '', '| self ms | % of busy | function | where |', '|---:|---:|---|---|'];
  for (const e of s.top) lines.push(`| ${e.selfMs.toFixed(1)} | ${e.pct.toFixed(1)} | ${e.fn} | ${e.where} |`);
  return lines.join('\n');
}

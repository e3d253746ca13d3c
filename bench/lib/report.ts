// Turns the raw numbers into the tables the bench prints (markdown): one row per measurement, a column per server,
// the ratio Portcullis (notary) / distribution, the target from issue 6 and whether Portcullis meets it.
import type { PhaseUsage } from './proc.js';
import type { GetResult, ManifestsResult, PullResult, WindowResult } from './loadgen.js';
import type { ServerKind } from './servers.js';
import type { TrustEngineResult } from './trust-engine.js';
import type { UpstreamCounts } from './upstream-log.js';

export const CLIENTS = [1, 8, 64] as const;
export type Clients = (typeof CLIENTS)[number];

export interface RepResult {
  readonly rep: number;
  readonly startMs: number;
  readonly idleRssMiB: number;
  readonly firstGet: GetResult;
  readonly cold1: PullResult & { usage: PhaseUsage; upstream: UpstreamCounts };
  readonly cold8: PullResult & { usage: PhaseUsage; upstream: UpstreamCounts };
  readonly verified: boolean;
  readonly warmBlob: Record<string, WindowResult & { usage: PhaseUsage }>;
  readonly warmPull8: PullResult & { usage: PhaseUsage };
  readonly manifestWarmup: ManifestsResult;
  readonly manifest1: ManifestsResult & { usage: PhaseUsage };
  readonly manifest16: ManifestsResult & { usage: PhaseUsage };
  readonly warmUpstream: UpstreamCounts;
  readonly peakRssMiB: number;
  /** Wall time of each step of the repetition (ms). */
  readonly phaseMs: Record<string, number>;
}

export interface MachineLimits {
  readonly sha256MiBps: number[];
  /** path ("/buffer", "/file") -> clients -> MiB/s per repetition */
  readonly bare: Record<string, Record<string, number[]>>;
  readonly bareBufferCpuSecPerGiB: number[];
}

export interface Stat {
  readonly median: number;
  readonly min: number;
  readonly max: number;
  readonly n: number;
}

export function stat(values: readonly number[]): Stat {
  const v = values.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return { median: NaN, min: NaN, max: NaN, n: 0 };
  const mid = v.length >> 1;
  const median = v.length % 2 ? v[mid]! : (v[mid - 1]! + v[mid]!) / 2;
  return { median, min: v[0]!, max: v[v.length - 1]!, n: v.length };
}

const GiB = 1024 ** 3;

function fmt(x: number, digits: number): string {
  if (!Number.isFinite(x)) return 'n/a';
  if (digits === 0) return Math.round(x).toLocaleString('en-US');
  return x.toFixed(digits);
}

function cell(s: Stat, digits: number): string {
  if (s.n === 0) return 'n/a';
  if (s.n === 1 || s.min === s.max) return fmt(s.median, digits);
  return `${fmt(s.median, digits)} (${fmt(s.min, digits)}–${fmt(s.max, digits)})`;
}

export interface Verdict {
  readonly pass: boolean;
  readonly note: string;
}

interface Row {
  readonly label: string;
  readonly digits: number;
  readonly get: (r: RepResult) => number;
  readonly target?: string;
  readonly judge?: (s: Record<ServerKind, Stat>, raw: Record<ServerKind, number[]>) => Verdict;
}

export interface ReportInput {
  readonly results: Record<ServerKind, RepResult[]>;
  readonly limits: MachineLimits;
  readonly trust: TrustEngineResult;
  readonly setPullBlobs: number;
  readonly setPullMiB: number;
  readonly bigMiB: number;
  readonly manifestCapMs: number;
  readonly manifestRequests: number;
}

export interface JudgedRow {
  readonly label: string;
  readonly digits: number;
  readonly stats: Partial<Record<ServerKind, Stat>>;
  readonly ratio: number;
  readonly target: string;
  readonly verdict?: Verdict;
}

const KINDS: readonly ServerKind[] = ['distribution', 'portcullis-notary', 'portcullis-none'];

function cpuPerGiB(parts: Array<{ usage: PhaseUsage; bytes: number }>): number {
  const cpu = parts.reduce((a, p) => a + p.usage.cpuSec, 0);
  const bytes = parts.reduce((a, p) => a + p.bytes, 0);
  return bytes > 0 ? cpu / (bytes / GiB) : NaN;
}

export function serverRows(inp: ReportInput): Row[] {
  const bare = (c: Clients) => stat(inp.limits.bare['/buffer']?.[String(c)] ?? []).median;
  const P = 'portcullis-notary';
  const D = 'distribution';
  const x = (a: number, b: number) => `${(a / b).toFixed(2)}x distribution`;
  const rows: Row[] = [];
  for (const c of [1, 8] as const) {
    const key = c === 1 ? 'cold1' : 'cold8';
    rows.push({
      label: `cold pull of the set, ${c} client${c > 1 ? 's' : ''} (MiB/s aggregate)`,
      digits: 0,
      get: (r) => r[key].mibps,
      target: '>= 1.5x distribution',
      judge: (s) => ({ pass: s[P].median >= 1.5 * s[D].median, note: x(s[P].median, s[D].median) }),
    });
    rows.push({
      label: `  upstream blob GETs (${inp.setPullBlobs} distinct blobs)`,
      digits: 0,
      get: (r) => r[key].upstream.blobGet,
      target: `exactly ${inp.setPullBlobs}, every run`,
      judge: (_s, raw) => {
        const all = raw[P];
        const ok = all.length > 0 && all.every((n) => n === inp.setPullBlobs);
        return { pass: ok, note: ok ? 'one per blob' : `got ${[...new Set(all)].join(', ')}` };
      },
    });
  }
  rows.push({
    label: '  cold pulls: CPU s per GiB served',
    digits: 2,
    get: (r) => cpuPerGiB([{ usage: r.cold1.usage, bytes: r.cold1.bytes }, { usage: r.cold8.usage, bytes: r.cold8.bytes }]),
    target: '<= distribution',
    judge: (s) => ({ pass: s[P].median <= s[D].median, note: x(s[P].median, s[D].median) }),
  });
  for (const c of CLIENTS) {
    rows.push({
      label: `warm ${inp.bigMiB} MiB blob, ${c} client${c > 1 ? 's' : ''} (MiB/s aggregate)`,
      digits: 0,
      get: (r) => r.warmBlob[String(c)]!.mibps,
      target: `>= 1.0x distribution and >= 80% of bare Node Buffer (${fmt(0.8 * bare(c), 0)})`,
      judge: (s) => {
        const ok = s[P].median >= s[D].median && s[P].median >= 0.8 * bare(c);
        return { pass: ok, note: `${x(s[P].median, s[D].median)}, ${((100 * s[P].median) / bare(c)).toFixed(0)}% of bare Buffer` };
      },
    });
  }
  rows.push({
    label: '  warm blob runs: CPU s per GiB served',
    digits: 2,
    get: (r) => cpuPerGiB(CLIENTS.map((c) => ({ usage: r.warmBlob[String(c)]!.usage, bytes: r.warmBlob[String(c)]!.totalBytes }))),
    target: '<= distribution',
    judge: (s) => ({ pass: s[P].median <= s[D].median, note: x(s[P].median, s[D].median) }),
  });
  rows.push({
    label: '  peak RSS during the 64-client run (MiB)',
    digits: 0,
    get: (r) => r.warmBlob['64']!.usage.peakRssMiB,
    target: '<= 150 MiB',
    judge: (s) => ({ pass: s[P].median <= 150 && s[P].max <= 150, note: `max ${fmt(s[P].max, 0)} MiB` }),
  });
  rows.push({
    label: `warm pull of the whole set, 8 clients (s)`,
    digits: 2,
    get: (r) => r.warmPull8.ms / 1000,
    target: '<= 0.8x distribution',
    judge: (s) => ({ pass: s[P].median <= 0.8 * s[D].median, note: x(s[P].median, s[D].median) }),
  });
  const cap = `${inp.manifestRequests.toLocaleString('en-US')}, or what fits in ${inp.manifestCapMs / 1000} s`;
  rows.push({ label: 'warm manifest by tag, 1 connection: p50 (ms)', digits: 2, get: (r) => r.manifest1.latencyMs.p50 });
  rows.push({
    label: '  p99 (ms)',
    digits: 2,
    get: (r) => r.manifest1.latencyMs.p99,
    target: '<= 2 ms',
    judge: (s) => ({ pass: s[P].median <= 2, note: `${fmt(s[P].median, 2)} ms` }),
  });
  rows.push({ label: '  max (ms)', digits: 1, get: (r) => r.manifest1.latencyMs.max });
  rows.push({
    label: '  requests/s',
    digits: 0,
    get: (r) => r.manifest1.rps,
    target: '>= 10x distribution',
    judge: (s) => ({ pass: s[P].median >= 10 * s[D].median, note: x(s[P].median, s[D].median) }),
  });
  rows.push({ label: `  requests per run (${cap})`, digits: 0, get: (r) => r.manifest1.latencyMs.n });
  rows.push({
    label: 'warm manifest by tag, 16 connections: requests/s',
    digits: 0,
    get: (r) => r.manifest16.rps,
    target: '>= 10x distribution',
    judge: (s) => ({ pass: s[P].median >= 10 * s[D].median, note: x(s[P].median, s[D].median) }),
  });
  rows.push({ label: '  p50 (ms)', digits: 2, get: (r) => r.manifest16.latencyMs.p50 });
  rows.push({ label: '  p99 (ms)', digits: 2, get: (r) => r.manifest16.latencyMs.p99 });
  rows.push({ label: '  max (ms)', digits: 1, get: (r) => r.manifest16.latencyMs.max });
  rows.push({ label: '  CPU ms per request', digits: 3, get: (r) => (1000 * r.manifest16.usage.cpuSec) / Math.max(1, r.manifest16.latencyMs.n) });
  rows.push({ label: 'first manifest GET of a tag, trust data not cached (ms)', digits: 1, get: (r) => r.firstGet.ms });
  rows.push({ label: 'RSS idle after start (MiB)', digits: 0, get: (r) => r.idleRssMiB });
  rows.push({ label: 'peak RSS over the whole run (MiB)', digits: 0, get: (r) => r.peakRssMiB });
  rows.push({ label: 'start-up until it answers /v2/ (ms)', digits: 0, get: (r) => r.startMs });
  return rows;
}

export function judge(inp: ReportInput): JudgedRow[] {
  const out: JudgedRow[] = [];
  for (const row of serverRows(inp)) {
    const raw = {} as Record<ServerKind, number[]>;
    const stats = {} as Record<ServerKind, Stat>;
    for (const k of KINDS) {
      raw[k] = (inp.results[k] ?? []).map(row.get);
      stats[k] = stat(raw[k]);
    }
    const ratio = stats['portcullis-notary'].median / stats.distribution.median;
    out.push({ label: row.label, digits: row.digits, stats, ratio, target: row.target ?? '', ...(row.judge ? { verdict: row.judge(stats, raw) } : {}) });
  }
  return out;
}

export function trustRows(t: TrustEngineResult): JudgedRow[] {
  const one = (label: string, values: number[], target: string, verdict?: (s: Stat) => Verdict): JudgedRow => {
    const s = stat(values);
    return { label, digits: /verifications/.test(label) ? 0 : 2, stats: { 'portcullis-notary': s }, ratio: NaN, target, ...(verdict ? { verdict: verdict(s) } : {}) };
  };
  const rows = [
    one(`verify a Notary repo, ${t.repo.targets.toLocaleString('en-US')} targets in ${t.repo.delegations} delegations, cold (ms)`, t.coldMs, '< 200 ms', (s) => ({ pass: s.median < 200, note: `${fmt(s.median, 0)} ms` })),
    one('  timestamp-only refresh of the verified repo (ms)', t.timestampRefreshMs, '< 10 ms', (s) => ({ pass: s.median < 10, note: `${fmt(s.median, 2)} ms` })),
    one('  a tag decision on the verified repo, resolveSignedTag (ms)', t.decisionMs, ''),
  ];
  for (const [k, v] of Object.entries(t.verifyPerSec)) rows.push(one(`signature verifications/s, ${k}`, [v], ''));
  return rows;
}

export function renderServerTable(rows: JudgedRow[]): string {
  const head = '| measurement | distribution 2.8 proxy | portcullis (notary) | portcullis (trust: none) | notary / distribution | target | result |';
  const lines = [head, '|---|---:|---:|---:|---:|---|---|'];
  for (const r of rows) {
    const digits = r.digits;
    const c = (k: ServerKind) => (r.stats[k] ? cell(r.stats[k]!, digits) : '');
    const ratio = Number.isFinite(r.ratio) ? `${r.ratio.toFixed(2)}x` : '';
    const res = r.verdict ? `${r.verdict.pass ? 'PASS' : 'MISS'} (${r.verdict.note})` : '';
    lines.push(`| ${r.label.replace(/^ {2}/, '&nbsp;&nbsp;')} | ${c('distribution')} | ${c('portcullis-notary')} | ${c('portcullis-none')} | ${ratio} | ${r.target} | ${res} |`);
  }
  return lines.join('\n');
}

export function renderTrustTable(rows: JudgedRow[]): string {
  const lines = ['| trust engine alone (in process, no network) | value | target | result |', '|---|---:|---|---|'];
  for (const r of rows) {
    const s = r.stats['portcullis-notary']!;
    const digits = r.digits;
    const res = r.verdict ? `${r.verdict.pass ? 'PASS' : 'MISS'} (${r.verdict.note})` : '';
    lines.push(`| ${r.label.replace(/^ {2}/, '&nbsp;&nbsp;')} | ${cell(s, digits)} | ${r.target} | ${res} |`);
  }
  return lines.join('\n');
}

export function renderLimitsTable(l: MachineLimits): string {
  const lines = ['| machine limit (same run) | 1 client | 8 clients | 64 clients |', '|---|---:|---:|---:|'];
  for (const [path, label] of [['/buffer', 'bare Node http, Buffer in memory (MiB/s)'], ['/file', 'bare Node http, file stream, 1 MiB highWaterMark (MiB/s)']] as const) {
    const m = l.bare[path] ?? {};
    lines.push(`| ${label} | ${CLIENTS.map((c) => cell(stat(m[String(c)] ?? []), 0)).join(' | ')} |`);
  }
  lines.push(`| bare Node http, Buffer: CPU s per GiB (all runs) | ${cell(stat(l.bareBufferCpuSecPerGiB), 2)} | | |`);
  lines.push(`| sha256, one core (MiB/s) | ${cell(stat(l.sha256MiBps), 0)} | | |`);
  return lines.join('\n');
}

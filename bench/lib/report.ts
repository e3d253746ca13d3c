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

export function fmt(x: number, digits: number): string {
  if (!Number.isFinite(x)) return 'n/a';
  if (digits === 0) return Math.round(x).toLocaleString('en-US');
  return x.toFixed(digits);
}

/** "median (min–max)", or just the value when there is one (or all are equal). */
export function cell(s: Stat, digits: number): string {
  if (s.n === 0) return 'n/a';
  if (s.n === 1 || fmt(s.min, digits) === fmt(s.max, digits)) return fmt(s.median, digits);
  return `${fmt(s.median, digits)} (${fmt(s.min, digits)}–${fmt(s.max, digits)})`;
}

export interface Verdict {
  readonly pass: boolean;
  readonly note: string;
}

/** A target of the form "value >= need" (higher is better): met, or missed by how much. */
export function atLeast(value: number, need: number, show: (x: number) => string): Verdict {
  if (!Number.isFinite(value) || !Number.isFinite(need)) return { pass: false, note: 'MISSED (no figure)' };
  if (value >= need) return { pass: true, note: `met (${show(value)})` };
  return { pass: false, note: `MISSED by ${show(need - value)} (${show(value)} vs ${show(need)})` };
}

/** A target of the form "value <= limit" (lower is better); `strict` for "<". */
export function atMost(value: number, limit: number, show: (x: number) => string, strict = false): Verdict {
  if (!Number.isFinite(value) || !Number.isFinite(limit)) return { pass: false, note: 'MISSED (no figure)' };
  if (strict ? value < limit : value <= limit) return { pass: true, note: `met (${show(value)})` };
  return { pass: false, note: `MISSED by ${show(value - limit)} (${show(value)} vs ${show(limit)})` };
}

/** Both verdicts must pass. */
export function both(a: Verdict, b: Verdict): Verdict {
  const strip = (v: Verdict) => v.note.replace(/^met \((.*)\)$/, '$1');
  if (a.pass && b.pass) return { pass: true, note: `met (${strip(a)}; ${strip(b)})` };
  return { pass: false, note: [a, b].map((v) => (v.pass ? strip(v) : v.note)).join('; ') };
}

interface Row {
  readonly label: string;
  readonly digits: number;
  readonly get: (r: RepResult) => number;
  readonly target?: string;
  readonly judge?: (s: Record<ServerKind, Stat>, raw: Record<ServerKind, number[]>) => Verdict;
}

export interface ReportInput {
  readonly results: Partial<Record<ServerKind, RepResult[]>>;
  readonly limits: MachineLimits;
  readonly trust?: TrustEngineResult;
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
  /** median Portcullis (notary) / median distribution */
  readonly ratio: number;
  /** median Portcullis (trust: none) / median distribution */
  readonly ratioNone: number;
  readonly target: string;
  readonly verdict?: Verdict;
}

export const KINDS: readonly ServerKind[] = ['distribution', 'portcullis-notary', 'portcullis-none'];

function cpuPerGiB(parts: Array<{ usage: PhaseUsage; bytes: number }>): number {
  const cpu = parts.reduce((a, p) => a + p.usage.cpuSec, 0);
  const bytes = parts.reduce((a, p) => a + p.bytes, 0);
  return bytes > 0 ? cpu / (bytes / GiB) : NaN;
}

/** Median of the bare Node Buffer server at `c` clients, over the repetitions of this run. */
export function bareLimit(l: MachineLimits, c: number): number {
  return stat(l.bare['/buffer']?.[String(c)] ?? []).median;
}

const SUB = '↳ ';

export function serverRows(inp: ReportInput): Row[] {
  const P = 'portcullis-notary';
  const D = 'distribution';
  const xd = (v: number) => `${fmt(v, 2)}x dist`;
  const ratio = (s: Record<ServerKind, Stat>) => s[P].median / s[D].median;
  const ms = (v: number) => `${fmt(v, 2)} ms`;
  const mib = (v: number) => `${fmt(v, 0)} MiB`;
  const rows: Row[] = [];
  for (const c of [1, 8] as const) {
    const key = c === 1 ? 'cold1' : 'cold8';
    rows.push({
      label: `cold pull of the set, ${c} client${c > 1 ? 's' : ''} at once (MiB/s aggregate)`,
      digits: 0,
      get: (r) => r[key].mibps,
      target: '>= 1.5x dist',
      judge: (s) => atLeast(ratio(s), 1.5, xd),
    });
    rows.push({
      label: `${SUB}upstream blob GETs (${inp.setPullBlobs} distinct blobs)`,
      digits: 0,
      get: (r) => r[key].upstream.blobGet,
      target: `${inp.setPullBlobs}, every run`,
      judge: (_s, raw) => {
        const all = raw[P];
        const ok = all.length > 0 && all.every((n) => n === inp.setPullBlobs);
        return ok ? { pass: true, note: 'met (one per blob)' } : { pass: false, note: `MISSED (got ${[...new Set(all)].join(', ')})` };
      },
    });
  }
  rows.push({
    label: `${SUB}cold pulls: CPU s per GiB served`,
    digits: 2,
    get: (r) => cpuPerGiB([{ usage: r.cold1.usage, bytes: r.cold1.bytes }, { usage: r.cold8.usage, bytes: r.cold8.bytes }]),
    target: '<= dist',
    judge: (s) => atMost(ratio(s), 1, xd),
  });
  for (const c of CLIENTS) {
    rows.push({
      label: `warm ${inp.bigMiB} MiB blob, ${c} client${c > 1 ? 's' : ''} (MiB/s aggregate)`,
      digits: 0,
      get: (r) => r.warmBlob[String(c)]!.mibps,
      target: `>= 1.0x dist, >= 80% of bare (${fmt(0.8 * bareLimit(inp.limits, c), 0)})`,
      judge: (s) => both(atLeast(ratio(s), 1, xd), atLeast(s[P].median / bareLimit(inp.limits, c), 0.8, (v) => `${fmt(100 * v, 0)}% bare`)),
    });
  }
  rows.push({
    label: `${SUB}warm blob runs: CPU s per GiB served`,
    digits: 2,
    get: (r) => cpuPerGiB(CLIENTS.map((c) => ({ usage: r.warmBlob[String(c)]!.usage, bytes: r.warmBlob[String(c)]!.totalBytes }))),
    target: '<= dist',
    judge: (s) => atMost(ratio(s), 1, xd),
  });
  rows.push({
    label: `${SUB}peak RSS during the 64-client run (MiB)`,
    digits: 0,
    get: (r) => r.warmBlob['64']!.usage.peakRssMiB,
    target: '<= 150 MiB',
    judge: (s) => atMost(s[P].max, 150, mib),
  });
  rows.push({
    label: 'warm pull of the whole set, 8 clients (s)',
    digits: 2,
    get: (r) => r.warmPull8.ms / 1000,
    target: '<= 0.8x dist',
    judge: (s) => atMost(ratio(s), 0.8, xd),
  });
  const cap = `${inp.manifestRequests.toLocaleString('en-US')} or ${inp.manifestCapMs / 1000} s`;
  rows.push({ label: 'warm manifest GET by tag, 1 connection: p50 (ms)', digits: 2, get: (r) => r.manifest1.latencyMs.p50 });
  rows.push({ label: `${SUB}p99 (ms)`, digits: 2, get: (r) => r.manifest1.latencyMs.p99, target: '<= 2 ms', judge: (s) => atMost(s[P].median, 2, ms) });
  rows.push({ label: `${SUB}max (ms)`, digits: 1, get: (r) => r.manifest1.latencyMs.max });
  rows.push({ label: `${SUB}requests/s`, digits: 0, get: (r) => r.manifest1.rps, target: '>= 10x dist', judge: (s) => atLeast(ratio(s), 10, xd) });
  rows.push({ label: `${SUB}requests measured per run (${cap})`, digits: 0, get: (r) => r.manifest1.latencyMs.n });
  rows.push({
    label: 'warm manifest GET by tag, 16 connections: requests/s',
    digits: 0,
    get: (r) => r.manifest16.rps,
    target: '>= 10x dist',
    judge: (s) => atLeast(ratio(s), 10, xd),
  });
  rows.push({ label: `${SUB}p50 (ms)`, digits: 2, get: (r) => r.manifest16.latencyMs.p50 });
  rows.push({ label: `${SUB}p99 (ms)`, digits: 2, get: (r) => r.manifest16.latencyMs.p99 });
  rows.push({ label: `${SUB}max (ms)`, digits: 1, get: (r) => r.manifest16.latencyMs.max });
  rows.push({ label: `${SUB}requests measured per run (${cap})`, digits: 0, get: (r) => r.manifest16.latencyMs.n });
  rows.push({ label: `${SUB}CPU ms per request`, digits: 3, get: (r) => (1000 * r.manifest16.usage.cpuSec) / Math.max(1, r.manifest16.latencyMs.n) });
  rows.push({ label: 'first manifest GET of a tag, trust data not cached (ms)', digits: 1, get: (r) => r.firstGet.ms });
  rows.push({ label: 'RSS idle after start (MiB)', digits: 0, get: (r) => r.idleRssMiB });
  rows.push({ label: 'peak RSS over the whole repetition (MiB)', digits: 0, get: (r) => r.peakRssMiB });
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
    const d = stats.distribution.median;
    out.push({
      label: row.label,
      digits: row.digits,
      stats,
      ratio: stats['portcullis-notary'].median / d,
      ratioNone: stats['portcullis-none'].median / d,
      target: row.target ?? '',
      ...(row.judge ? { verdict: row.judge(stats, raw) } : {}),
    });
  }
  return out;
}

export function trustRows(t: TrustEngineResult): JudgedRow[] {
  const one = (label: string, values: number[], digits: number, target: string, verdict?: (s: Stat) => Verdict): JudgedRow => {
    const s = stat(values);
    return { label, digits, stats: { 'portcullis-notary': s }, ratio: NaN, ratioNone: NaN, target, ...(verdict ? { verdict: verdict(s) } : {}) };
  };
  const ms = (digits: number) => (v: number) => `${fmt(v, digits)} ms`;
  const rows = [
    one(`verify a Notary repo, ${t.repo.targets.toLocaleString('en-US')} targets in ${t.repo.delegations} delegations, cold (ms)`, t.coldMs, 1, '< 200 ms', (s) => atMost(s.median, 200, ms(1), true)),
    one(`${SUB}incremental refresh, only the timestamp changed (ms)`, t.timestampRefreshMs, 2, '< 10 ms', (s) => atMost(s.median, 10, ms(2), true)),
    one(`${SUB}a tag decision on the verified repo, resolveSignedTag (ms)`, t.decisionMs, 2, ''),
  ];
  for (const [k, v] of Object.entries(t.verifyPerSec)) rows.push(one(`signature verifications/s, ${k}`, [v], 0, ''));
  return rows;
}

/** A markdown table whose columns are padded to one width, so it reads as well in a terminal as rendered. */
export function renderTable(head: readonly string[], align: ReadonlyArray<'l' | 'r'>, rows: ReadonlyArray<readonly string[]>): string {
  const width = head.map((h, i) => Math.max(h.length, 3, ...rows.map((r) => (r[i] ?? '').length)));
  const pad = (s: string, i: number) => (align[i] === 'r' ? s.padStart(width[i]!) : s.padEnd(width[i]!));
  const line = (cells: readonly string[]) => `| ${head.map((_, i) => pad(cells[i] ?? '', i)).join(' | ')} |`;
  const rule = `|${head.map((_, i) => (align[i] === 'r' ? `${'-'.repeat(width[i]! + 1)}:` : `${'-'.repeat(width[i]! + 2)}`)).join('|')}|`;
  return [line(head), rule, ...rows.map(line)].join('\n');
}

function ratioCell(x: number): string {
  return Number.isFinite(x) ? `${x.toFixed(2)}x` : 'n/a';
}

export function renderServerTable(rows: readonly JudgedRow[]): string {
  const head = ['measurement', 'distribution 2.8 proxy', 'Portcullis (notary)', 'Portcullis (trust: none)', 'notary/dist', 'none/dist', 'target (issue 6)', 'result (notary)'];
  const body = rows.map((r) => {
    const c = (k: ServerKind) => (r.stats[k] ? cell(r.stats[k]!, r.digits) : '');
    return [r.label, c('distribution'), c('portcullis-notary'), c('portcullis-none'), ratioCell(r.ratio), ratioCell(r.ratioNone), r.target, r.verdict?.note ?? ''];
  });
  return renderTable(head, ['l', 'r', 'r', 'r', 'r', 'r', 'l', 'l'], body);
}

export function renderTrustTable(rows: readonly JudgedRow[]): string {
  const head = ['trust engine alone (in process, no network; distribution has none)', 'Portcullis', 'target (issue 6)', 'result'];
  const body = rows.map((r) => [r.label, cell(r.stats['portcullis-notary']!, r.digits), r.target, r.verdict?.note ?? '']);
  return renderTable(head, ['l', 'r', 'l', 'l'], body);
}

export function renderLimitsTable(l: MachineLimits): string {
  const head = ['machine limit (same run, between the servers)', '1 client', '8 clients', '64 clients'];
  const body: string[][] = [];
  for (const [path, label] of [['/buffer', 'bare Node http, Buffer from memory (MiB/s)'], ['/file', 'bare Node http, file stream, 1 MiB chunks (MiB/s)']] as const) {
    const m = l.bare[path] ?? {};
    body.push([label, ...CLIENTS.map((c) => cell(stat(m[String(c)] ?? []), 0))]);
  }
  body.push(['bare Node http, Buffer: CPU s per GiB served', cell(stat(l.bareBufferCpuSecPerGiB), 2), '', '']);
  body.push(['sha256 on one core (MiB/s)', cell(stat(l.sha256MiBps), 0), '', '']);
  return renderTable(head, ['l', 'r', 'r', 'r'], body);
}

/** "Targets: 14 of 15 met. Missed: <row> (<note>); …" — the line printed under the tables. */
export function targetSummary(rows: readonly JudgedRow[]): string {
  // A sub-row ("↳ p99 (ms)") is named with the row it belongs to.
  let parent = '';
  const named = rows.map((r) => {
    if (!r.label.startsWith(SUB)) parent = r.label.split(':')[0]!.replace(/ \([^)]*\)$/, '');
    return { ...r, name: r.label.startsWith(SUB) ? `${parent}, ${r.label.slice(SUB.length)}` : r.label };
  });
  const judged = named.filter((r) => r.verdict);
  const missed = judged.filter((r) => !r.verdict!.pass);
  const head = `Targets of issue 6: ${judged.length - missed.length} of ${judged.length} met.`;
  if (missed.length === 0) return head;
  return `${head} Missed: ${missed.map((r) => `${r.name}: ${r.verdict!.note}`).join('; ')}`;
}

// bench/lib/report.ts, the pure part of `npm run bench`: medians, ratios, the verdicts against issue 6's targets
// and the aligned tables. Nothing here runs the bench or looks at a clock.
import { describe, expect, it } from 'vitest';
import {
  atLeast, atMost, both, cell, judge, renderServerTable, renderTable, renderTrustTable, stat, targetSummary, trustRows,
  type MachineLimits, type RepResult,
} from '../../bench/lib/report.js';
import type { PhaseUsage } from '../../bench/lib/proc.js';
import type { ServerKind } from '../../bench/lib/servers.js';
import type { TrustEngineResult } from '../../bench/lib/trust-engine.js';

const usage = (cpuSec: number, peakRssMiB = 100): PhaseUsage => ({ cpuSec, peakRssMiB, samples: 10 });
const upstream = (blobGet: number) => ({ blobGet, blobHead: 0, manifestGet: 0, manifestHead: 0, other: 0, repeatedBlobs: 0 });
const lat = (p50: number, p99: number) => ({ n: 10_000, min: p50 / 2, p50, p90: p50, p99, p999: p99, max: p99 * 2, mean: p50 });

/** One repetition of one server where everything scales with `k` (speed) and `blobGets`. */
function rep(rep: number, k: number, o: { blobGets?: number; rss?: number; p99?: number } = {}): RepResult {
  const pull = (mibps: number) => ({ ms: 1000 / k, bytes: 100 * 1024 ** 2, mibps, manifests: 5, blobs: 47, clientMs: [1000 / k] });
  const win = (mibps: number, rss = 100) => ({
    windowBytes: 0, windowMs: 1000, mibps, totalBytes: 1024 ** 3, totalMs: 1000, completed: 10, errors: [], errorCount: 0, usage: usage(1 / k, rss),
  });
  const manifests = (rps: number) => ({ ms: 1000, rps, capped: false, statuses: { 200: 10_000 }, errors: [], errorCount: 0, latencyMs: lat(1 / k, o.p99 ?? 10 / k) });
  return {
    rep,
    startMs: 100,
    idleRssMiB: 20,
    firstGet: { ms: 10, status: 200, bytes: 500 },
    cold1: { ...pull(100 * k), usage: usage(1), upstream: upstream(o.blobGets ?? 47) },
    cold8: { ...pull(200 * k), usage: usage(1), upstream: upstream(o.blobGets ?? 47) },
    verified: rep === 0,
    warmBlob: { '1': win(500 * k), '8': win(800 * k), '64': win(900 * k, o.rss ?? 100) },
    warmPull8: { ...pull(1000 * k), usage: usage(1) },
    manifestWarmup: manifests(100 * k),
    manifest1: { ...manifests(100 * k), usage: usage(1) },
    manifest16: { ...manifests(200 * k), usage: usage(1) },
    warmUpstream: upstream(0),
    peakRssMiB: o.rss ?? 100,
    phaseMs: {},
  };
}

const limits: MachineLimits = { sha256MiBps: [1500, 1600, 1700], bare: { '/buffer': { '1': [1000], '8': [1000], '64': [1000] }, '/file': {} }, bareBufferCpuSecPerGiB: [0.3] };

function input(results: Partial<Record<ServerKind, RepResult[]>>) {
  return { results, limits, setPullBlobs: 47, setPullMiB: 100, bigMiB: 50, manifestCapMs: 9000, manifestRequests: 10_000 };
}

describe('stat and cell', () => {
  it('median of odd and even counts, min and max, non-finite values left out', () => {
    expect(stat([3, 1, 2])).toEqual({ median: 2, min: 1, max: 3, n: 3 });
    expect(stat([4, 1, 3, 2])).toEqual({ median: 2.5, min: 1, max: 4, n: 4 });
    expect(stat([5, NaN, Infinity])).toEqual({ median: 5, min: 5, max: 5, n: 1 });
    expect(stat([]).n).toBe(0);
    expect(Number.isNaN(stat([]).median)).toBe(true);
  });

  it('prints "median (min–max)" with thousands separators, one value when there is nothing to spread', () => {
    expect(cell(stat([1200, 900, 1500]), 0)).toBe('1,200 (900–1,500)');
    expect(cell(stat([0.5, 0.25, 0.75]), 2)).toBe('0.50 (0.25–0.75)');
    expect(cell(stat([7, 7]), 1)).toBe('7.0');
    expect(cell(stat([]), 0)).toBe('n/a');
  });
});

describe('verdicts say met, or missed by how much', () => {
  const x = (v: number) => `${v.toFixed(2)}x`;
  it('at least / at most / both', () => {
    expect(atLeast(1.6, 1.5, x)).toEqual({ pass: true, note: 'met (1.60x)' });
    expect(atLeast(1.2, 1.5, x)).toEqual({ pass: false, note: 'MISSED by 0.30x (1.20x vs 1.50x)' });
    expect(atMost(2.5, 2, (v) => `${v} ms`)).toEqual({ pass: false, note: 'MISSED by 0.5 ms (2.5 ms vs 2 ms)' });
    expect(atMost(2, 2, (v) => `${v} ms`).pass).toBe(true);
    expect(atMost(200, 200, (v) => `${v} ms`, true).pass).toBe(false);
    expect(atLeast(NaN, 1, x).pass).toBe(false);
    expect(both(atLeast(2, 1, x), atLeast(3, 1, x))).toEqual({ pass: true, note: 'met (2.00x; 3.00x)' });
    expect(both(atLeast(2, 1, x), atLeast(0.5, 1, x))).toEqual({ pass: false, note: '2.00x; MISSED by 0.50x (0.50x vs 1.00x)' });
  });
});

describe('judge: one row per measurement, ratios of medians', () => {
  const results = {
    distribution: [rep(0, 1, { blobGets: 94, rss: 300 }), rep(1, 1, { blobGets: 94, rss: 320 }), rep(2, 1, { blobGets: 94, rss: 310 })],
    'portcullis-notary': [rep(0, 2, { rss: 120 }), rep(1, 3, { rss: 140 }), rep(2, 2.5, { rss: 130, p99: 1 })],
    'portcullis-none': [rep(0, 2), rep(1, 2), rep(2, 2)],
  };
  const rows = judge(input(results));
  const row = (label: RegExp) => rows.find((r) => label.test(r.label))!;

  it('every row has both ratios, from the medians', () => {
    expect(rows.length).toBeGreaterThan(20);
    for (const r of rows) {
      expect(Number.isFinite(r.ratio), r.label).toBe(true);
      expect(Number.isFinite(r.ratioNone), r.label).toBe(true);
    }
    const cold1 = row(/^cold pull of the set, 1 client/);
    expect(cold1.stats['portcullis-notary']!.median).toBe(250);
    expect(cold1.ratio).toBe(2.5);
    expect(cold1.ratioNone).toBe(2);
    expect(cold1.verdict).toEqual({ pass: true, note: 'met (2.50x dist)' });
  });

  it('upstream GETs must be exactly one per blob in every repetition', () => {
    expect(rows.filter((r) => /upstream blob GETs/.test(r.label)).map((r) => r.verdict?.pass)).toEqual([true, true]);
    const bad = judge(input({ ...results, 'portcullis-notary': [rep(0, 2), rep(1, 2, { blobGets: 48 })] }));
    expect(bad.find((r) => /upstream blob GETs/.test(r.label))!.verdict).toEqual({ pass: false, note: 'MISSED (got 47, 48)' });
  });

  it('warm blobs are judged against distribution and 80% of the bare Node limit of the same run', () => {
    const w1 = row(/^warm 50 MiB blob, 1 client/);
    expect(w1.target).toContain('80% of bare (800)');
    // 1,250 MiB/s median: 2.5x distribution and 125% of the 1,000 MiB/s bare server
    expect(w1.verdict).toEqual({ pass: true, note: 'met (2.50x dist; 125% bare)' });
    const slow = judge(input({ ...results, 'portcullis-notary': [rep(0, 1.2)] })).find((r) => /^warm 50 MiB blob, 1 client/.test(r.label))!;
    expect(slow.verdict).toEqual({ pass: false, note: '1.20x dist; MISSED by 20% bare (60% bare vs 80% bare)' });
  });

  it('peak RSS is judged on the worst repetition, p99 on the median', () => {
    expect(row(/peak RSS during the 64-client run/).verdict).toEqual({ pass: true, note: 'met (140 MiB)' });
    const p99 = rows.filter((r) => /p99/.test(r.label))[0]!;
    // p99 of the three repetitions: 5, 3.33 and 1 ms
    expect(p99.verdict).toEqual({ pass: false, note: 'MISSED by 1.33 ms (3.33 ms vs 2.00 ms)' });
  });

  it('renders an aligned table with a ratio in every row, and names missed sub-rows with their parent', () => {
    const table = renderServerTable(rows).split('\n');
    expect(table[0]).toMatch(/^\| measurement +\| distribution 2\.8 proxy \| Portcullis \(notary\) \| Portcullis \(trust: none\) \| notary\/dist \| none\/dist \|/);
    expect(new Set(table.map((l) => l.length)).size).toBe(1);
    expect(table[1]).toMatch(/^\|-+\|-+:\|/);
    for (const l of table.slice(2)) expect(l.split('|')[5]!.trim()).toMatch(/^\d+\.\d\dx$/);
    expect(targetSummary(rows)).toMatch(/^Targets of issue 6: \d+ of \d+ met\. Missed: warm manifest GET by tag, 1 connection, p99 \(ms\): MISSED by 1\.33 ms/);
  });

  it('a server with no results shows n/a instead of failing', () => {
    const partial = judge(input({ distribution: results.distribution, 'portcullis-notary': results['portcullis-notary'] }));
    expect(Number.isNaN(partial[0]!.ratioNone)).toBe(true);
    expect(renderServerTable(partial)).toContain('n/a');
  });
});

describe('trust engine rows', () => {
  const t: TrustEngineResult = {
    repo: { delegations: 100, targets: 10_000, generateMs: 1, metadataBytes: 1 },
    coldMs: [150, 250, 190],
    timestampRefreshMs: [0.5, 0.6, 0.4],
    timestampRefreshFetches: ['timestamp.json'],
    decisionMs: [5],
    verifyPerSec: { 'ecdsa P-256': 15_000 },
  };
  it('judges cold < 200 ms and the timestamp-only refresh < 10 ms', () => {
    const rows = trustRows(t);
    expect(rows[0]!.verdict).toEqual({ pass: true, note: 'met (190.0 ms)' });
    expect(rows[1]!.verdict).toEqual({ pass: true, note: 'met (0.50 ms)' });
    const slow = trustRows({ ...t, coldMs: [230] });
    expect(slow[0]!.verdict).toEqual({ pass: false, note: 'MISSED by 30.0 ms (230.0 ms vs 200.0 ms)' });
    expect(renderTrustTable(rows)).toContain('15,000');
  });
});

describe('renderTable', () => {
  it('pads columns, right-aligns numbers and marks them in the rule', () => {
    expect(renderTable(['a', 'bb'], ['l', 'r'], [['xyz', '1'], ['', '22']]).split('\n')).toEqual([
      '| a   |  bb |',
      '|-----|----:|',
      '| xyz |   1 |',
      '|     |  22 |',
    ]);
  });
});

// `npm run bench` (full, ~10 min on 2 cores) and `npm run bench -- --quick` (< 2 min): distribution 2.8 in proxy
// mode, Portcullis with `trust: notary` and Portcullis with `trust: none`, side by side against the same upstream,
// each started in its own session with an empty cache, measured in the same run by a load generator in a session
// of its own, with the machine's own limits measured alongside. Prints markdown tables (the ratio Portcullis /
// distribution and the targets of issue 6 with PASS/MISS) and writes every raw number to bench/results/<date>.json.
//
//   npm run bench [-- --quick] [-- --reps N] [-- --profile]
//
// --profile: instead of the comparison, builds the fixture and records CPU profiles (node --cpu-prof) of Portcullis
// (trust: notary) in four runs: a cold pull of the set by one client, a warm big blob to 1 and to 8 clients, and
// warm manifests by tag on 16 connections; plus an in-process profile of the trust engine's cold verification.
// Prints the top self-time functions of each and writes them to bench/results/<date>-profile.json.
//
// Nothing here asserts anything about time: numbers are reported, and judged against the targets in the table.
import { execFileSync } from 'node:child_process';
import { createHash, randomFillSync } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import os from 'node:os';
import { join } from 'node:path';
import { freePort } from '../test/harness/ports.js';
import { makeTempDir, startProcess, stopAllOnSignals, waitForHttp, onCleanup, stopAll } from '../test/harness/process.js';
import { buildFixture, FULL_SIZES, QUICK_SIZES, type Fixture } from './lib/fixture.js';
import { LoadGen } from './lib/loadgen.js';
import { SessionSampler } from './lib/proc.js';
import { formatProfile, profileInProcess, summarizeProfile, summarizeProfileFile, type ProfileSummary } from './lib/profile.js';
import {
  CLIENTS, judge, renderLimitsTable, renderServerTable, renderTrustTable, stat, targetSummary, trustRows,
  type MachineLimits, type RepResult,
} from './lib/report.js';
import { REPO_ROOT, SERVER_KINDS, startServer, type ServerKind } from './lib/servers.js';
import { buildManySignersRepo, trustEngineBench, verifyCold, type TrustEngineResult } from './lib/trust-engine.js';
import { UpstreamLog } from './lib/upstream-log.js';

const MiB = 1024 * 1024;
const argv = process.argv.slice(2);
const quick = argv.includes('--quick');
const profileMode = argv.includes('--profile');
const repsArg = argv.indexOf('--reps');

const M = quick
  ? {
      mode: 'quick',
      sizes: QUICK_SIZES,
      reps: 3,
      rampMs: 120,
      windowMs: 450,
      manifestRequests: 2000,
      manifestCapMs: 1200,
      trustReps: 5,
      verifyMs: 150,
      shaBytes: 128 * MiB,
    }
  : {
      mode: 'full',
      sizes: FULL_SIZES,
      reps: 5,
      rampMs: 400,
      windowMs: 2000,
      manifestRequests: 10_000,
      manifestCapMs: 9000,
      trustReps: 15,
      verifyMs: 1500,
      shaBytes: 512 * MiB,
    };
if (repsArg >= 0) M.reps = Math.max(1, Number(argv[repsArg + 1]));

const t0 = performance.now();
const elapsed = () => `${((performance.now() - t0) / 1000).toFixed(1)}s`;
const log = (s: string) => process.stderr.write(`[bench ${elapsed()}] ${s}\n`);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// ------------------------------------------------------------------------------------------------ machine

/** True when dist/ is missing or older than any TypeScript source it is compiled from. */
function distIsStale(): boolean {
  let built: number;
  try {
    built = statSync(join(REPO_ROOT, 'dist', 'daemon', 'cli.js')).mtimeMs;
  } catch {
    return true;
  }
  const newer = (dir: string): boolean => {
    let entries;
    try {
      entries = readdirSync(dir, { withFileTypes: true });
    } catch {
      return false;
    }
    return entries.some((e) => (e.isDirectory() ? newer(join(dir, e.name)) : e.name.endsWith('.ts') && statSync(join(dir, e.name)).mtimeMs > built));
  };
  return statSync(join(REPO_ROOT, 'tsconfig.json')).mtimeMs > built || ['daemon', 'proxy', 'trust', 'cache', 'hsm'].some((d) => newer(join(REPO_ROOT, d)));
}

function machineInfo(): Record<string, unknown> {
  const cpuinfo = readFileSync('/proc/cpuinfo', 'utf8');
  const model = /^model name\s*:\s*(.*)$/m.exec(cpuinfo)?.[1]?.trim();
  const version = (cmd: string, args: string[]) => {
    try {
      return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim().split('\n')[0];
    } catch (e) {
      return String((e as { stdout?: string }).stdout ?? '').trim().split('\n')[0] || 'unknown';
    }
  };
  let autogroup = 'unknown';
  try {
    autogroup = readFileSync('/proc/sys/kernel/sched_autogroup_enabled', 'utf8').trim();
  } catch {
    // not Linux
  }
  return {
    nproc: os.availableParallelism(),
    cpuModel: model,
    memTotalGiB: +(os.totalmem() / 1024 ** 3).toFixed(1),
    kernel: `${os.type()} ${os.release()}`,
    node: process.version,
    distribution: version('/usr/bin/docker-registry', ['--version']),
    // `notary version` prints no version for the Debian build; the package knows it.
    notary: version('dpkg-query', ['-W', '-f=${Version}', 'notary']),
    schedAutogroup: autogroup,
  };
}

/** sha256 on one core: best of three over random bytes (stable on these machines; measured once). */
function sha256Rates(): number[] {
  const buf = Buffer.allocUnsafe(M.shaBytes);
  for (let off = 0; off < buf.length; off += 64 * MiB) randomFillSync(buf, off, Math.min(64 * MiB, buf.length - off));
  const out: number[] = [];
  for (let i = 0; i < 3; i++) {
    const s = performance.now();
    createHash('sha256').update(buf).digest();
    out.push(buf.length / MiB / ((performance.now() - s) / 1000));
  }
  return out;
}

interface BareServer {
  readonly url: string;
  readonly sampler: SessionSampler;
  stop(): Promise<void>;
}

/** A bare node:http server in its own session, serving the big layer from memory and from the file. */
async function startBare(fx: Fixture): Promise<BareServer> {
  const port = await freePort();
  const dir = join(fx.dir, 'bare');
  mkdirSync(dir, { recursive: true });
  const proc = await startProcess({
    name: 'bare-node-http',
    command: process.execPath,
    args: [join(REPO_ROOT, 'bench', 'bare-server.mjs'), String(port), fx.bigBlob.file],
    logFile: join(dir, 'bare.log'),
  });
  try {
    await waitForHttp(`http://127.0.0.1:${port}/`, { process: proc, intervalMs: 20 });
  } catch (e) {
    await proc.stop();
    throw e;
  }
  const sampler = new SessionSampler(proc.pid);
  return {
    url: `http://127.0.0.1:${port}`,
    sampler,
    async stop() {
      sampler.stop();
      await proc.stop();
    },
  };
}

/**
 * One repetition of the machine's limits, measured between the servers under test (so under the same load as
 * they were): the bare server at 1/8/64 clients from memory and from the file, the same windows as the servers.
 */
async function measureBare(lg: LoadGen, bare: BareServer, limits: MachineLimits): Promise<void> {
  for (const path of ['/buffer', '/file']) {
    let cpu = 0;
    let bytes = 0;
    for (const c of CLIENTS) {
      bare.sampler.begin('w');
      const w = await lg.window({ url: `${bare.url}${path}`, conc: c, rampMs: M.rampMs, ms: M.windowMs });
      const u = bare.sampler.end('w');
      if (w.errorCount > 0) throw new Error(`bare server ${path}: ${w.errors.join('; ')}`);
      ((limits.bare[path] ??= {})[String(c)] ??= []).push(w.mibps);
      cpu += u.cpuSec;
      bytes += w.totalBytes;
      await sleep(100);
    }
    if (path === '/buffer') limits.bareBufferCpuSecPerGiB.push(cpu / (bytes / 1024 ** 3));
  }
}

// ------------------------------------------------------------------------------------------------ one server, one repetition

/** A repetition that failed (an HTTP error, a broken transfer): what failed, and the end of the server's log. */
class RepFailure extends Error {
  constructor(
    readonly kind: ServerKind,
    readonly rep: number,
    readonly phase: string,
    override readonly cause: unknown,
    readonly logTail: string,
  ) {
    super(`${kind} rep ${rep + 1} (${phase}): ${(cause as Error)?.message ?? String(cause)}`);
  }
}

/** Cache directories of stopped servers, removed in the background. */
const removing: Promise<void>[] = [];

function check(what: string, r: { errorCount?: number; errors?: string[]; statuses?: Record<string, number> }): void {
  if (r.errorCount) throw new Error(`${what}: ${r.errorCount} errors: ${r.errors?.join('; ')}`);
  if (r.statuses) {
    const bad = Object.entries(r.statuses).filter(([s]) => s !== '200');
    if (bad.length > 0) throw new Error(`${what}: non-200 answers ${JSON.stringify(r.statuses)}`);
  }
}

async function runRep(kind: ServerKind, rep: number, lg: LoadGen, fx: Fixture, up: UpstreamLog, base: string): Promise<RepResult> {
  const pullArgs = { repo: fx.setRepo, tags: fx.setTags };
  const phaseMs: Record<string, number> = {};
  let last = performance.now();
  const lap = (k: string) => {
    const t = performance.now();
    phaseMs[k] = Math.round(t - last);
    last = t;
  };

  // A: empty cache, the first manifest GET (trust data not cached), then a cold pull by one client.
  const dirA = join(base, `${kind}-r${rep}-a`);
  let s = await startServer(kind, dirA, fx);
  lap('startA');
  let sampler = new SessionSampler(s.pid);
  let cold1: RepResult['cold1'];
  let firstGet: RepResult['firstGet'];
  const startMs = s.startMs;
  const idleRssMiB = sampler.sample().rssMiB;
  try {
    firstGet = await lg.get({ url: `${s.url}/v2/${fx.tagsRepo}/manifests/${fx.tags[500]}` });
    if (firstGet.status !== 200) throw new Error(`${kind}: first manifest GET: HTTP ${firstGet.status} ${firstGet.body ?? ''}`);
    await up.settle(150);
    lap('firstGet');
    const off = up.offset();
    sampler.begin('cold1');
    const p = await lg.pull({ base: s.url, ...pullArgs, clients: 1 });
    lap('cold1');
    await up.settle(200);
    lap('settle1');
    cold1 = { ...p, usage: sampler.end('cold1'), upstream: up.countSince(off) };
  } catch (e) {
    throw new RepFailure(kind, rep, 'first GET / cold pull, 1 client', e, s.process.logTail(3000));
  } finally {
    sampler.stop();
    await s.stop();
    removing.push(rm(dirA, { recursive: true, force: true }));
    lap('stopA');
  }

  // B: empty cache again, 8 clients pull the same set at once; then everything warm.
  const dirB = join(base, `${kind}-r${rep}-b`);
  s = await startServer(kind, dirB, fx);
  lap('startB');
  sampler = new SessionSampler(s.pid);
  try {
    const off = up.offset();
    sampler.begin('cold8');
    const p8 = await lg.pull({ base: s.url, ...pullArgs, clients: 8 });
    lap('cold8');
    await up.settle(200);
    lap('settle8');
    const cold8 = { ...p8, usage: sampler.end('cold8'), upstream: up.countSince(off) };

    let verified = false;
    if (rep === 0) {
      // Once per server: every manifest and blob of the set hashes to what was pushed and signed.
      await lg.pull({ base: s.url, ...pullArgs, clients: 1, verify: true, expect: fx.setDigests });
      verified = true;
      lap('verify');
    }
    const offWarm = up.offset();
    const warmBlob: RepResult['warmBlob'] = {};
    for (const c of CLIENTS) {
      sampler.begin(`warm${c}`);
      const w = await lg.window({ url: `${s.url}/v2/${fx.setRepo}/blobs/${fx.bigBlob.digest}`, conc: c, rampMs: M.rampMs, ms: M.windowMs });
      warmBlob[String(c)] = { ...w, usage: sampler.end(`warm${c}`) };
      check(`${kind} warm blob ${c}`, w);
      await sleep(100);
    }
    lap('warmBlob');
    sampler.begin('warmPull8');
    const wp = await lg.pull({ base: s.url, ...pullArgs, clients: 8 });
    const warmPull8 = { ...wp, usage: sampler.end('warmPull8') };
    lap('warmPull8');

    const mArgs = { base: s.url, repo: fx.tagsRepo, tags: fx.tags };
    const cap = M.manifestCapMs;
    // Warm-up, not measured. Portcullis (notary) keeps a decision per tag: every tag once. The others keep no
    // per-tag state (each GET by tag goes upstream); 50 requests touch all 10 manifests behind the tags.
    const warmupRequests = kind === 'portcullis-notary' ? fx.tags.length : 50;
    const manifestWarmup = await lg.manifests({ ...mArgs, conc: 16, requests: warmupRequests, capMs: 30_000 });
    check(`${kind} manifest warm-up`, manifestWarmup);
    lap('manifestWarmup');
    sampler.begin('m1');
    const m1 = await lg.manifests({ ...mArgs, conc: 1, requests: M.manifestRequests, capMs: cap, offset: 17 });
    const manifest1 = { ...m1, usage: sampler.end('m1') };
    check(`${kind} manifests c=1`, m1);
    lap('manifest1');
    sampler.begin('m16');
    const m16 = await lg.manifests({ ...mArgs, conc: 16, requests: M.manifestRequests, capMs: cap, offset: 331 });
    const manifest16 = { ...m16, usage: sampler.end('m16') };
    check(`${kind} manifests c=16`, m16);
    lap('manifest16');
    await up.settle(150);
    const warmUpstream = up.countSince(offWarm);
    return {
      rep,
      startMs,
      idleRssMiB,
      firstGet,
      cold1,
      cold8,
      verified,
      warmBlob,
      warmPull8,
      manifestWarmup,
      manifest1,
      manifest16,
      warmUpstream,
      peakRssMiB: sampler.overallPeakRssMiB,
      phaseMs,
    };
  } catch (e) {
    throw new RepFailure(kind, rep, `after ${Object.keys(phaseMs).at(-1)}`, e, s.process.logTail(3000));
  } finally {
    sampler.stop();
    await s.stop();
    removing.push(rm(dirB, { recursive: true, force: true }));
    lap('stopB');
  }
}

const MAX_ATTEMPTS = 3;

interface Failure {
  readonly kind: ServerKind;
  readonly rep: number;
  readonly attempt: number;
  readonly phase: string;
  readonly error: string;
  readonly logTail: string;
}

function repLine(kind: ServerKind, r: RepResult): string {
  const w = CLIENTS.map((c) => r.warmBlob[String(c)]!.mibps.toFixed(0)).join('/');
  return (
    `${kind.padEnd(17)} rep ${r.rep + 1}: first GET ${r.firstGet.ms.toFixed(1)} ms; cold 1: ${r.cold1.mibps.toFixed(0)} MiB/s ` +
    `(${r.cold1.upstream.blobGet} upstream blob GETs); cold 8: ${r.cold8.mibps.toFixed(0)} MiB/s (${r.cold8.upstream.blobGet}); ` +
    `warm 1/8/64: ${w} MiB/s (peak RSS ${r.warmBlob['64']!.usage.peakRssMiB.toFixed(0)} MiB); warm pull 8: ${(r.warmPull8.ms / 1000).toFixed(2)} s; ` +
    `manifests c1 p99 ${r.manifest1.latencyMs.p99.toFixed(2)} ms ${r.manifest1.rps.toFixed(0)}/s, c16 ${r.manifest16.rps.toFixed(0)}/s; ` +
    `warm-phase upstream blob GETs ${r.warmUpstream.blobGet}`
  );
}

// ------------------------------------------------------------------------------------------------ profile mode

async function profile(lg: LoadGen, fx: Fixture, base: string): Promise<Record<string, ProfileSummary>> {
  const out: Record<string, ProfileSummary> = {};
  for (const scenario of ['cold-pull-1', 'warm-blob-1', 'warm-blob-8', 'warm-manifests-16'] as const) {
    const dir = join(base, `profile-${scenario}`);
    const profDir = join(dir, 'cpuprofile');
    mkdirSync(profDir, { recursive: true });
    const s = await startServer('portcullis-notary', dir, fx, { nodeArgs: ['--cpu-prof', '--cpu-prof-dir', profDir] });
    try {
      const p = await lg.pull({ base: s.url, repo: fx.setRepo, tags: fx.setTags, clients: 1 });
      if (scenario === 'cold-pull-1') {
        log(`profile ${scenario}: ${p.mibps.toFixed(0)} MiB/s`);
      } else if (scenario === 'warm-blob-1' || scenario === 'warm-blob-8') {
        const conc = scenario === 'warm-blob-1' ? 1 : 8;
        const w = await lg.window({ url: `${s.url}/v2/${fx.setRepo}/blobs/${fx.bigBlob.digest}`, conc, rampMs: 300, ms: 4000 });
        log(`profile ${scenario}: ${w.mibps.toFixed(0)} MiB/s`);
      } else {
        const mArgs = { base: s.url, repo: fx.tagsRepo, tags: fx.tags };
        await lg.manifests({ ...mArgs, conc: 16, requests: fx.tags.length, capMs: 10_000 });
        const m = await lg.manifests({ ...mArgs, conc: 16, requests: 20_000, capMs: 60_000 });
        log(`profile ${scenario}: ${m.rps.toFixed(0)} req/s, p99 ${m.latencyMs.p99.toFixed(2)} ms`);
      }
    } finally {
      await s.stop(); // SIGTERM: Portcullis drains and exits, and node writes the profile
    }
    const files = readdirSync(profDir).filter((f) => f.endsWith('.cpuprofile'));
    if (files.length === 0) throw new Error(`no .cpuprofile in ${profDir} (did Portcullis exit cleanly on SIGTERM?)`);
    out[scenario] = summarizeProfileFile(join(profDir, files[0]!), 20);
    console.log('\n' + formatProfile(`Portcullis (trust: notary), ${scenario}`, out[scenario]!));
  }
  const repo = buildManySignersRepo();
  await verifyCold(repo); // JIT warm-up, as the bench's own first repetition
  const { profile: p } = await profileInProcess(async () => {
    for (let i = 0; i < 10; i++) await verifyCold(repo);
  });
  out['trust-engine-cold'] = summarizeProfile(p, 20);
  console.log('\n' + formatProfile('trust engine: cold verification of 10,000 targets in 100 delegations (x10), in process', out['trust-engine-cold']!));
  return out;
}

// ------------------------------------------------------------------------------------------------ main

async function main(): Promise<void> {
  stopAllOnSignals();
  const loadStart = os.loadavg();
  const machine = machineInfo();
  log(`${M.mode} run, ${M.reps} repetitions; ${machine.nproc} cores (${machine.cpuModel}), ${machine.memTotalGiB} GiB, node ${machine.node}`);

  if (distIsStale()) {
    log('building dist/ (tsc -p tsconfig.json)');
    execFileSync(process.execPath, [join(REPO_ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', join(REPO_ROOT, 'tsconfig.json')], { stdio: 'inherit' });
  } else {
    log('dist/ is newer than every source file: not rebuilding');
  }

  const base = makeTempDir('portcullis-bench');
  const lg = await LoadGen.start();
  onCleanup(() => lg.stop());

  if (!profileMode) log('trust engine alone: 10,000 targets in 100 delegations, signature verification rates');
  const trust: TrustEngineResult = profileMode
    ? ({} as TrustEngineResult)
    : await trustEngineBench({ reps: M.trustReps, verifyMs: M.verifyMs });

  log('fixture: upstream distribution + notary-server/signer, image set, 1,000 signed tags');
  const fx = await buildFixture(join(base, 'fixture'), M.sizes, log);
  onCleanup(() => fx.stop());
  const up = new UpstreamLog(fx.upstream.logFile);

  if (profileMode) {
    const profiles = await profile(lg, fx, base);
    const outDir = join(REPO_ROOT, 'bench', 'results');
    mkdirSync(outDir, { recursive: true });
    const file = join(outDir, `${new Date().toISOString().replace(/:/g, '-').replace(/\.\d+Z$/, 'Z')}-profile.json`);
    writeFileSync(file, JSON.stringify({ date: new Date().toISOString(), machine, profiles }, null, 1) + '\n');
    log(`wrote ${file}`);
    return;
  }

  log('machine limits: sha256 on one core; a bare Node http server, measured once per repetition');
  const limits: MachineLimits = { sha256MiBps: sha256Rates(), bare: {}, bareBufferCpuSecPerGiB: [] };
  const bare = await startBare(fx);
  onCleanup(() => bare.stop());

  const results = Object.fromEntries(SERVER_KINDS.map((k) => [k, [] as RepResult[]])) as Record<ServerKind, RepResult[]>;
  const failures: Failure[] = [];
  for (let rep = 0; rep < M.reps; rep++) {
    await measureBare(lg, bare, limits);
    const last = (path: string) => CLIENTS.map((c) => limits.bare[path]![String(c)]!.at(-1)!.toFixed(0)).join('/');
    log(`bare node http    rep ${rep + 1}: Buffer ${last('/buffer')} MiB/s, file ${last('/file')} MiB/s at 1/8/64 clients; sha256 ${stat(limits.sha256MiBps).median.toFixed(0)} MiB/s`);
    // Rotate the order each repetition, so no server always goes first (or right after the heaviest run).
    const order = SERVER_KINDS.map((_, i) => SERVER_KINDS[(i + rep) % SERVER_KINDS.length]!);
    for (const kind of order) {
      // A failed attempt (distribution 2.8's proxy answers HTTP 500 now and then under 8 concurrent cold pulls) is
      // recorded and reported, and the repetition is run again on a fresh, empty cache, up to MAX_ATTEMPTS times.
      for (let attempt = 1; ; attempt++) {
        try {
          const r = await runRep(kind, rep, lg, fx, up, join(base, 'servers', `a${attempt}`));
          results[kind].push(r);
          log(repLine(kind, r));
          break;
        } catch (e) {
          if (!(e instanceof RepFailure) || attempt >= MAX_ATTEMPTS) throw e;
          failures.push({ kind, rep, attempt, phase: e.phase, error: e.message, logTail: e.logTail });
          log(`${kind.padEnd(17)} rep ${rep + 1}: attempt ${attempt} FAILED, running it again: ${e.message.split('\n')[0]!.slice(0, 300)}`);
        }
      }
    }
  }
  await bare.stop();

  await Promise.all(removing);
  const input = {
    results,
    limits,
    trust,
    setPullBlobs: fx.setPullBlobs,
    setPullMiB: fx.setPullBytes / MiB,
    bigMiB: Math.round(fx.bigBlob.size / MiB),
    manifestCapMs: M.manifestCapMs,
    manifestRequests: M.manifestRequests,
  };
  const rows = judge(input);
  const tRows = trustRows(trust);
  const date = new Date().toISOString();
  const loadEnd = os.loadavg();
  const la = (l: number[]) => l.map((x) => x.toFixed(2)).join(' ');
  const header = [
    `Portcullis bench, ${M.mode} run, ${date}`,
    `Machine: ${machine.nproc} cores (${machine.cpuModel}), ${machine.memTotalGiB} GiB RAM, ${machine.kernel}, node ${machine.node}, ${machine.distribution}; ` +
      `load average ${la(loadStart)} at the start, ${la(loadEnd)} at the end.`,
    `Median (min–max) of ${M.reps} repetitions, each server started empty in its own session. Image set: ${fx.setTags.length} tags, ${fx.setPullBlobs} blobs, ` +
      `${(fx.setPullBytes / MiB).toFixed(1)} MiB per amd64 pull (big layer ${input.bigMiB} MiB; random, incompressible).`,
    `Warm blob windows ${M.windowMs} ms after ${M.rampMs} ms ramp-up; manifests: ${M.manifestRequests.toLocaleString('en-US')} requests per run ` +
      `(or ${M.manifestCapMs / 1000} s, whichever comes first) over ${fx.tags.length} tags, keep-alive.`,
  ].join('\n');
  const failed =
    failures.length === 0
      ? 'Failed attempts: none.'
      : `Failed attempts (each run again on an empty cache): ${failures.map((f) => `${f.kind} rep ${f.rep + 1} (${f.phase}): ${f.error.split('\n')[0]!.slice(0, 200)}`).join('; ')}`;
  const tables = [header, '', renderServerTable(rows), '', renderLimitsTable(limits), '', renderTrustTable(tRows), '', failed].join('\n');
  console.log('\n' + tables + '\n');
  console.log(targetSummary([...rows, ...tRows]));

  const outDir = join(REPO_ROOT, 'bench', 'results');
  mkdirSync(outDir, { recursive: true });
  const file = join(outDir, `${date.replace(/:/g, '-').replace(/\.\d+Z$/, 'Z')}${quick ? '-quick' : ''}.json`);
  writeFileSync(
    file,
    JSON.stringify(
      {
        date,
        mode: M.mode,
        settings: M,
        machine,
        fixture: { setTags: fx.setTags, setDigests: fx.setDigests, setPullBlobs: fx.setPullBlobs, setPullBytes: fx.setPullBytes, bigBlob: { digest: fx.bigBlob.digest, size: fx.bigBlob.size }, tags: fx.tags.length, timings: fx.timings },
        limits,
        trust,
        results,
        failures,
        loadavg: { start: loadStart, end: loadEnd },
        table: rows.map((r) => ({ ...r, ratio: Number.isFinite(r.ratio) ? r.ratio : null, ratioNone: Number.isFinite(r.ratioNone) ? r.ratioNone : null })),
        trustTable: tRows,
        markdown: tables,
        wallSeconds: (performance.now() - t0) / 1000,
      },
      null,
      1,
    ) + '\n',
  );
  log(`wrote ${file}; total ${elapsed()}`);
}

try {
  await main();
} finally {
  await stopAll();
}

// A child process commits namespace 'g' (root/timestamp/snapshot/targets all at version N, plus high water N)
// in a tight loop; we SIGKILL it at random moments, reopen the environment and check that the trusted state is
// whole: every document and mark at one N, never a mix, and N is the last commit the child reported or the one
// after it (the commit in flight when the kill came landed whole or not at all).
//
// The child is plain `node`, which cannot import .ts on Node 20, so the store modules are transpiled (no type
// check: that is tsc's job) into a temp dir whose node_modules links to the project's; the child imports the real
// LmdbMetadataStore from there.

import { spawn, type ChildProcessByStdio } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import type { Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LmdbMetadataStore } from '../../cache/lmdb-metadata-store.js';
import type { StoredNamespace } from '../../cache/metadata-store.js';

const PROJECT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const CHILD = join(PROJECT, 'test', 'fixtures', 'metadata-store-crash-child.mjs');
const MODULES = ['cache/metadata-store.ts', 'cache/lmdb-env.ts', 'cache/lmdb-metadata-store.ts'];
const NAMES = ['root', 'timestamp', 'snapshot', 'targets'];
const KILLS = 20;
const PAD = 16 * 1024; // each commit spans several pages

let work: string;
let modDir: string;

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'portcullis-crash-'));
  modDir = join(work, 'mod');
  await mkdir(join(modDir, 'cache'), { recursive: true });
  await writeFile(join(modDir, 'package.json'), JSON.stringify({ type: 'module' }));
  await symlink(join(PROJECT, 'node_modules'), join(modDir, 'node_modules'), 'dir');
  for (const file of MODULES) {
    const source = await readFile(join(PROJECT, file), 'utf8');
    const out = ts.transpileModule(source, {
      fileName: file,
      compilerOptions: { module: ts.ModuleKind.ES2022, target: ts.ScriptTarget.ES2022 },
    });
    await writeFile(join(modDir, file.replace(/\.ts$/, '.js')), out.outputText);
  }
});

afterAll(async () => {
  if (work) await rm(work, { recursive: true, force: true });
});

/** The single N the namespace is at, or a description of the mix. */
function uniformVersion(ns: StoredNamespace): number | string {
  const seen = new Set<string>();
  for (const name of NAMES) {
    const doc = ns.documents.get(name);
    const fromBytes = doc ? /"version":(\d+)/.exec(doc.bytes.toString('utf8'))?.[1] : undefined;
    seen.add(String(doc?.version ?? 0));
    seen.add(String(fromBytes ?? 0));
    seen.add(String(ns.highWater.get(name) ?? 0));
  }
  if (ns.documents.size !== 0 && ns.documents.size !== NAMES.length) return `documents ${[...ns.documents.keys()]}`;
  return seen.size === 1 ? Number([...seen][0]) : `mixed versions ${[...seen].join(',')}`;
}

interface Child {
  readonly proc: ChildProcessByStdio<null, Readable, Readable>;
  readonly ready: Promise<number>;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  lastCommitted(): number | undefined;
  stderr(): string;
}

function startChild(stateDir: string): Child {
  const proc = spawn(process.execPath, [CHILD, modDir, stateDir, String(PAD)], { stdio: ['ignore', 'pipe', 'pipe'] });
  let buffered = '';
  let errors = '';
  let last: number | undefined;
  let onReady!: (n: number) => void;
  let onFail!: (err: Error) => void;
  const ready = new Promise<number>((res, rej) => {
    onReady = res;
    onFail = rej;
  });
  proc.stdout.setEncoding('utf8');
  proc.stdout.on('data', (chunk: string) => {
    buffered += chunk;
    let nl: number;
    while ((nl = buffered.indexOf('\n')) >= 0) {
      const line = buffered.slice(0, nl);
      buffered = buffered.slice(nl + 1);
      const m = /^(ready|committed) (\d+)$/.exec(line);
      if (!m) continue;
      const n = Number(m[2]);
      if (m[1] === 'ready') onReady(n);
      else last = n;
    }
  });
  proc.stderr.setEncoding('utf8');
  proc.stderr.on('data', (chunk: string) => (errors += chunk));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((res) =>
    proc.on('exit', (code, signal) => {
      onFail(new Error(`child exited (${code ?? signal}) before ready: ${errors}`));
      res({ code, signal });
    }),
  );
  return { proc, ready, exited, lastCommitted: () => last, stderr: () => errors };
}

const sleep = (ms: number) => new Promise<void>((res) => setTimeout(res, ms));

describe('LmdbMetadataStore crash safety', () => {
  it('kill -9 during an update never leaves a mixed trusted state', { timeout: 180_000 }, async () => {
    const stateDir = join(work, 'state');
    // a long-lived reader in this process, as the daemon would be, reading while the child writes and dies
    const watcher = LmdbMetadataStore.open(stateDir);
    let expectedAtLeast = 0;
    let totalCommits = 0;
    let watcherSawProgress = 0;
    try {
      for (let kill = 0; kill < KILLS; kill++) {
        const child = startChild(stateDir);
        const startedAt = await child.ready;
        // nothing wrote since our last look: the child starts from exactly the state we verified
        expect(startedAt).toBe(expectedAtLeast);

        // concurrent snapshot reads while the child commits: always whole, never going backwards
        const deadline = Date.now() + 5 + Math.floor(Math.random() * 76);
        let seenByWatcher = startedAt;
        while (Date.now() < deadline) {
          const n = uniformVersion(await watcher.load('g'));
          expect(typeof n, `watcher saw ${n}`).toBe('number');
          expect(n as number).toBeGreaterThanOrEqual(seenByWatcher);
          seenByWatcher = n as number;
          await sleep(1);
        }
        if (seenByWatcher > startedAt) watcherSawProgress++;

        child.proc.kill('SIGKILL');
        const { signal } = await child.exited;
        expect(signal, `child died on its own: ${child.stderr()}`).toBe('SIGKILL');
        const reported = child.lastCommitted() ?? startedAt;
        totalCommits += reported - startedAt;

        // reopen from scratch, as a restarted daemon would
        const reopened = LmdbMetadataStore.open(stateDir);
        let n: number | string;
        try {
          n = uniformVersion(await reopened.load('g'));
        } finally {
          await reopened.close();
        }
        expect(typeof n, `after kill ${kill}: ${n}`).toBe('number');
        expect(n as number).toBeGreaterThanOrEqual(reported);
        expect(n as number).toBeLessThanOrEqual(reported + 1);
        expectedAtLeast = n as number;
      }
    } finally {
      await watcher.close();
    }
    // the kills must have landed while the child was busy committing, not before it started
    expect(totalCommits).toBeGreaterThan(KILLS);
    // and the long-lived reader saw the other process's commits as they happened (fresh snapshots, not a stale one)
    expect(watcherSawProgress).toBeGreaterThan(0);
  });
});

// The `portcullis` command line. Each command parses its arguments, builds the parts it needs, runs, and turns
// every failure into one line on stderr and exit code 1 (the `tuf` contract) — never a stack trace for a refusal.
import { Command, CommanderError } from 'commander';
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync, openSync, fsyncSync, closeSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { homedir } from 'node:os';
import { FileMetadataStore } from '../cache/file-metadata-store.js';
import { LmdbMetadataStore } from '../cache/lmdb-metadata-store.js';
import { systemClock, type Clock } from '../trust/clock.js';
import { TrustError } from '../trust/errors.js';
import { HttpFetcher } from '../trust/http-fetcher.js';
import { inspectRepository, listTargets, type TrustInspection } from '../trust/inspect.js';
import { defaultTrustLimits } from '../trust/limits.js';
import { checkLengthAndHashes, versionOfDocument } from '../trust/metadata.js';
import { NotaryClient, notaryFetcher } from '../trust/notary-client.js';
import { parseImageReference, ReferenceError } from '../trust/reference.js';
import { Updater } from '../trust/updater.js';
import { registerSignCommands } from './sign-commands.js';

export interface Io {
  out(s: string): void;
  err(s: string): void;
}

const stdio: Io = { out: (s) => process.stdout.write(s), err: (s) => process.stderr.write(s) };

function defaultStateDir(): string {
  return process.env['STATE_DIRECTORY']?.split(':')[0] ?? join(process.env['XDG_STATE_HOME'] ?? join(homedir(), '.local', 'state'), 'portcullis');
}

/** Writes a file so that it appears whole or not at all. */
function writeAtomic(path: string, bytes: Buffer): void {
  const tmp = `${path}.tmp-${process.pid}`;
  writeFileSync(tmp, bytes);
  const fd = openSync(tmp, 'r');
  try { fsyncSync(fd); } finally { closeSync(fd); }
  renameSync(tmp, path);
}

// ---------------------------------------------------------------- trust inspect / trust list

interface NotaryOptions {
  server?: string;
  tlscacert?: string;
  stateDir?: string;
  offline?: boolean;
}

async function withNotaryUpdater<T>(ref: string, o: NotaryOptions, clock: Clock, f: (u: Updater, gun: string, tag: string | undefined) => Promise<T>): Promise<T> {
  const r = parseImageReference(ref);
  const gun = r.repository;
  const server = o.server ?? process.env['DOCKER_CONTENT_TRUST_SERVER'] ?? process.env['NOTARY_SERVER'];
  if (!server && !o.offline) throw new Error('no Notary server: pass --server URL (or set DOCKER_CONTENT_TRUST_SERVER)');
  const stateDir = o.stateDir ?? defaultStateDir();
  mkdirSync(stateDir, { recursive: true });
  const store = LmdbMetadataStore.open(stateDir);
  const client = server ? new NotaryClient({ baseUrl: server, ca: o.tlscacert ? readFileSync(o.tlscacert) : undefined }) : undefined;
  try {
    const fetcher = client ? notaryFetcher(client, gun) : { fetch: async () => { throw new TrustError('TRUST_UNAVAILABLE', 'offline'); } };
    const u = new Updater({ dialect: 'notary', namespace: gun, gun, store, fetcher, clock });
    if (!o.offline) await u.refresh();
    return await f(u, gun, r.tag);
  } finally {
    await client?.close();
    await store.close();
  }
}

function pad(s: string, n: number): string {
  return s.length >= n ? `${s}  ` : s.padEnd(n);
}

export function formatPretty(t: TrustInspection): string {
  // As docker trust inspect --pretty lays it out: tables as Go's tabwriter (min width 10, padding 3) makes them,
  // "(Repo Admin)" in parentheses, signers and key IDs sorted, admin keys "Repository" before "Root".
  const table = (rows: string[][]): string[] => {
    const widths = rows[0]!.slice(0, -1).map((_, c) => Math.max(10, ...rows.map((r) => r[c]!.length + 3)));
    return rows.map((r) => r.map((cell, c) => (c < widths.length ? cell.padEnd(widths[c]!) : cell)).join(''));
  };
  const sorted = (xs: readonly string[]) => [...xs].sort();
  const lines: string[] = [];
  if (t.SignedTags.length === 0) {
    lines.push(`\nNo signatures for ${t.Name}\n`);
  } else {
    lines.push(`\nSignatures for ${t.Name}\n`);
    lines.push(...table([
      ['SIGNED TAG', 'DIGEST', 'SIGNERS'],
      ...t.SignedTags.map((r) => [r.SignedTag, r.Digest, sorted(r.Signers).map((s) => (s === 'Repo Admin' ? `(${s})` : s)).join(', ')]),
    ]));
  }
  if (t.Signers.length > 0) {
    lines.push(`\nList of signers and their keys for ${t.Name}\n`);
    const signers = [...t.Signers].sort((a, b) => (a.Name < b.Name ? -1 : a.Name > b.Name ? 1 : 0));
    lines.push(...table([['SIGNER', 'KEYS'], ...signers.map((s) => [s.Name, sorted(s.Keys.map((k) => k.ID)).map((id) => id.slice(0, 12)).join(', ')])]));
  }
  lines.push(`\nAdministrative keys for ${t.Name}\n`);
  // docker orders these by TUF role name, descending: "targets" (Repository) before "root" (Root)
  const rank = (n: string) => (n === 'Repository' ? 0 : n === 'Root' ? 1 : 2);
  const admin = [...t.AdministrativeKeys].sort((a, b) => rank(a.Name) - rank(b.Name));
  for (const a of admin) lines.push(`  ${a.Name} Key:\t${sorted(a.Keys.map((k) => k.ID)).join(', ')}`);
  return lines.join('\n') + '\n';
}

// ---------------------------------------------------------------- tuf (the TUF client contract)

interface TufOptions {
  metadataDir?: string;
  metadataUrl?: string;
  dialect?: string;
}

function tufDialect(o: TufOptions): 'tuf' | 'notary' {
  const d = o.dialect ?? 'tuf';
  if (d !== 'tuf' && d !== 'notary') throw new Error(`--dialect must be tuf or notary (got ${d})`);
  return d;
}

async function tufUpdater(o: TufOptions, clock: Clock): Promise<{ u: Updater; store: FileMetadataStore; close(): Promise<void> }> {
  if (!o.metadataDir) throw new Error('--metadata-dir is required');
  if (!o.metadataUrl) throw new Error('--metadata-url is required');
  const dialect = tufDialect(o);
  const store = await FileMetadataStore.open(o.metadataDir, { versionOf: (_n, b) => versionOfDocument(b) });
  const http = new HttpFetcher({ baseUrl: o.metadataUrl.replace(/\/+$/, '') });
  const u = new Updater({
    dialect,
    namespace: 'tuf',
    store,
    fetcher: { fetch: (name, max) => http.get('/' + name.split('/').map(encodeURIComponent).join('/'), max) },
    clock,
  });
  return { u, store, close: async () => { await http.close(); await store.close(); } };
}

async function tufInit(rootFile: string, o: TufOptions, clock: Clock): Promise<void> {
  if (!o.metadataDir) throw new Error('--metadata-dir is required');
  const dialect = tufDialect(o);
  const bytes = readFileSync(rootFile);
  // Refuse to pin a root that does not even sign itself.
  const { TrustedSet } = await import('../trust/trusted-set.js');
  const set = TrustedSet.fromRoot(bytes, { dialect }, clock());
  const store = await FileMetadataStore.open(o.metadataDir, { versionOf: (_n, b) => versionOfDocument(b) });
  try {
    await store.commit('tuf', set.takeChange());
  } finally {
    await store.close();
  }
}

async function tufDownload(o: TufOptions & { targetName: string[]; targetBaseUrl?: string; targetDir?: string }, clock: Clock): Promise<void> {
  if (!o.targetBaseUrl) throw new Error('--target-base-url is required');
  if (!o.targetDir) throw new Error('--target-dir is required');
  const t = await tufUpdater(o, clock);
  const http = new HttpFetcher({ baseUrl: o.targetBaseUrl.replace(/\/+$/, '') });
  try {
    const set = await t.u.refresh();
    for (const name of o.targetName) {
      const found = await t.u.findTarget(name);
      if (!found) throw new TrustError('NOT_SIGNED', `target ${name} is not listed in any trusted targets role`);
      const dest = join(o.targetDir, encodeURIComponent(name));
      // A verified copy already there is not fetched again.
      if (existsSync(dest)) {
        try {
          checkLengthAndHashes(readFileSync(dest), found.target.length, found.target.hashes, name);
          continue;
        } catch {
          // stale or tampered local copy: fetch it again
        }
      }
      let remote = name;
      if (set.root.consistentSnapshot) {
        const [, hash] = [...found.target.hashes][0]!;
        const slash = name.lastIndexOf('/');
        remote = `${name.slice(0, slash + 1)}${hash.toString('hex')}.${name.slice(slash + 1)}`;
      }
      const bytes = await http.get('/' + remote.split('/').map(encodeURIComponent).join('/'), Math.min(found.target.length, defaultTrustLimits.targetMaxBytes));
      if (bytes === null) throw new TrustError('NO_TRUST_DATA', `target ${name} is not on the server`);
      checkLengthAndHashes(bytes, found.target.length, found.target.hashes, name);
      mkdirSync(o.targetDir, { recursive: true });
      writeAtomic(dest, bytes);
    }
  } finally {
    await http.close();
    await t.close();
  }
}

// ---------------------------------------------------------------- program

export function buildProgram(io: Io, clock: Clock = systemClock): Command {
  const program = new Command('portcullis')
    .description('A pull-through registry mirror that refuses to serve what is not signed.')
    .exitOverride()
    .configureOutput({ writeOut: io.out, writeErr: io.err });

  program
    .command('serve')
    .description('run the verifying mirror (embedded default config unless --config is given)')
    .option('-c, --config <file>', 'YAML configuration file')
    .option('--listen <host:port>', 'override the listen address')
    .option('--state-dir <dir>', 'override the state directory')
    .action(async (o: { config?: string; listen?: string; stateDir?: string }) => {
      const { loadConfig } = await import('./config.js');
      const { startDaemon } = await import('./serve.js');
      let config = await loadConfig(o.config);
      if (o.listen) {
        const m = /^(\[[^\]]+\]|[^:]+):(\d+)$/.exec(o.listen);
        if (!m) throw new Error(`--listen must be host:port (got ${o.listen})`);
        config = { ...config, listen: { host: m[1]!.replace(/^\[|\]$/g, ''), port: Number(m[2]) } };
      }
      if (o.stateDir) config = { ...config, stateDir: resolve(o.stateDir) };
      const d = await startDaemon(config);
      await new Promise<void>((done) => {
        const stop = (sig: string) => {
          process.stderr.write(`portcullis: ${sig}: draining in-flight requests\n`);
          d.stop().then(done, done);
        };
        process.once('SIGTERM', () => stop('SIGTERM'));
        process.once('SIGINT', () => stop('SIGINT'));
      });
    });

  const trust = program.command('trust').description('Inspect and publish Notary v1 (Docker Content Trust) trust data');
  const notaryOpts = (c: Command) =>
    c
      .option('-s, --server <url>', 'Notary server URL (default: $DOCKER_CONTENT_TRUST_SERVER)')
      .option('--tlscacert <file>', 'CA certificate for the Notary server')
      .option('--state-dir <dir>', 'state directory holding the trusted metadata (LMDB)')
      .option('--offline', 'answer from the trusted metadata already stored, without contacting the server');
  notaryOpts(trust.command('inspect <ref>').description('signed tags, digests and signers, as `docker trust inspect`'))
    .option('--json', 'JSON output, as `docker trust inspect`')
    .option('--pretty', 'human-readable output (the default)')
    .action(async (ref: string, o: NotaryOptions & { json?: boolean }) => {
      const t = await withNotaryUpdater(ref, o, clock, (u, gun, tag) => inspectRepository(u, gun, tag, { offline: o.offline }));
      io.out(o.json ? JSON.stringify([t], null, 4) + '\n' : formatPretty(t));
    });
  notaryOpts(trust.command('list <gun>').description('every target and the role that signs it, as `notary list`'))
    .option('--json', 'JSON output')
    .action(async (ref: string, o: NotaryOptions & { json?: boolean }) => {
      const rows = await withNotaryUpdater(ref, o, clock, (u) => listTargets(u, { offline: o.offline }));
      if (o.json) {
        io.out(JSON.stringify(rows, null, 2) + '\n');
        return;
      }
      if (rows.length === 0) {
        io.out('No targets present in this repository.\n');
        return;
      }
      const w = Math.max(4, ...rows.map((r) => r.name.length)) + 3;
      io.out(pad('NAME', w) + pad('DIGEST', 67) + pad('SIZE (BYTES)', 16) + 'ROLE\n');
      io.out(pad('----', w) + pad('------', 67) + pad('------------', 16) + '----\n');
      for (const r of rows) io.out(pad(r.name, w) + pad(r.digest, 67) + pad(String(r.size), 16) + r.role + '\n');
    });

  const tuf = program
    .command('tuf')
    .description('A TUF client: init a trusted root, refresh metadata, download verified targets')
    .option('--metadata-dir <dir>', 'directory holding the trusted metadata files')
    .option('--metadata-url <url>', 'base URL of the repository metadata')
    .option('--dialect <d>', 'tuf (TUF 1.0) or notary (Notary v1 layout)', 'tuf');
  tuf.command('init <root>').description('trust this root.json from now on').action(async (root: string) => {
    await tufInit(root, tuf.opts(), clock);
  });
  tuf.command('refresh').description('update the trusted metadata from --metadata-url').action(async () => {
    const t = await tufUpdater(tuf.opts(), clock);
    try {
      await t.u.refresh();
    } finally {
      await t.close();
    }
  });
  tuf
    .command('download')
    .description('refresh, then download targets that verify into --target-dir')
    .requiredOption('--target-name <name>', 'target path (repeatable; processed in order, stops at the first failure)', (v: string, prev: string[] = []) => [...prev, v])
    .option('--target-base-url <url>', 'base URL of the targets')
    .option('--target-dir <dir>', 'where to store verified targets')
    .action(async (o: { targetName: string[]; targetBaseUrl?: string; targetDir?: string }) => {
      await tufDownload({ ...tuf.opts(), ...o }, clock);
    });

  // key generate|list|delete, sign, trust init|signer add|revoke|key rotate (daemon/sign-commands.ts)
  registerSignCommands(program, trust, { io, clock, defaultStateDir, interactive: io === stdio && process.stdin.isTTY === true });

  return program;
}

// hsm/ and proxy/ errors are recognised by name, so that `serve` and `trust inspect` never load hsm/.
function isNamed(e: unknown, name: string): e is Error & { code?: unknown; status?: unknown } {
  return e instanceof Error && e.name === name;
}

function oneLine(s: string): string {
  return s.replace(/\s*\n\s*/g, ' ');
}

export async function main(argv: string[], io: Io = stdio, clock: Clock = systemClock): Promise<number> {
  const program = buildProgram(io, clock);
  try {
    await program.parseAsync(argv, { from: 'user' });
    return 0;
  } catch (e) {
    if (e instanceof CommanderError) return e.exitCode === 0 ? 0 : 1;
    if ((e as Error)?.name === 'ConfigError') io.err(`portcullis: ${(e as Error).message}\n`);
    else if (e instanceof TrustError) io.err(`portcullis: refused (${e.reason}): ${e.message}\n`);
    else if (e instanceof ReferenceError) io.err(`portcullis: ${e.message}\n`);
    else if (isNamed(e, 'HsmError')) io.err(`portcullis: key error (${String(e.code)}): ${oneLine(e.message)}\n`);
    else if (isNamed(e, 'PublishError')) io.err(`portcullis: not published (${String(e.code)}): ${oneLine(e.message)}\n`);
    else if (isNamed(e, 'NotaryUploadError')) io.err(`portcullis: the Notary server refused the update (${e.code !== undefined ? String(e.code) : `HTTP ${String(e.status)}`}): ${oneLine(e.message)}\n`);
    else if (isNamed(e, 'UpstreamError')) io.err(`portcullis: registry error (${String(e.code)}): ${oneLine(e.message)}\n`);
    else io.err(`portcullis: ${(e as Error).message ?? String(e)}\n`);
    return 1;
  }
}

// Allow `node dist/daemon/cli.js …` as well as the bin wrapper.
if (process.argv[1] && resolve(process.argv[1]) === resolve(new URL(import.meta.url).pathname)) {
  main(process.argv.slice(2)).then((code) => { process.exitCode = code; });
}

// Loading and checking the YAML configuration. Every problem is reported with the key path and line:column it
// concerns, all problems at once, and an unknown key is an error: a typo must never silently weaken a rule.
// The reference for every key is docs/config.md; keep the two in step.
import { access, constants, readFile } from 'node:fs/promises';
import { isIPv4, isIPv6 } from 'node:net';
import { homedir } from 'node:os';
import path from 'node:path';
import { isAlias, isMap, isScalar, isSeq, LineCounter, parseDocument, type Document, type Node } from 'yaml';
import { defaultTrustLimits, type TrustLimits } from '../trust/limits.js';
import {
  CATCH_ALL,
  globProblem,
  patternHost,
  Policy,
  PolicyError,
  signerProblem,
  type PolicyRuleSpec,
  type RuleTrust,
  type TrustFormat,
} from '../trust/policy.js';
import { DEFAULT_CONFIG_SOURCE, DEFAULT_CONFIG_YAML } from './default-config.js';

// ---------------------------------------------------------------------------------------------------------------
// Public types

export interface ConfigIssue {
  /** Key path, e.g. `policy[1].trust` or `upstreams["docker.io"].url`; '' for the file as a whole. */
  readonly path: string;
  /** 1-based; 0 when the issue has no position (e.g. the file could not be read). */
  readonly line: number;
  readonly col: number;
  readonly message: string;
}

export function formatIssue(source: string, issue: ConfigIssue): string {
  const where = issue.line > 0 ? `${source}:${issue.line}:${issue.col}` : source;
  return issue.path === '' ? `${where}: ${issue.message}` : `${where}: ${issue.path}: ${issue.message}`;
}

export class ConfigError extends Error {
  override readonly name = 'ConfigError';
  constructor(
    readonly source: string,
    readonly issues: readonly ConfigIssue[],
  ) {
    const n = issues.length;
    super(`invalid configuration ${source} (${n} problem${n === 1 ? '' : 's'}):\n${issues.map((i) => `  ${formatIssue(source, i)}`).join('\n')}`);
  }
}

export interface ListenAddress {
  /** An IPv4 address, a host name, or an IPv6 address without brackets. */
  readonly host: string;
  /** 0 asks the OS for a free port (tests). */
  readonly port: number;
}

export type UpstreamAuth =
  | { readonly kind: 'password-file'; readonly username: string; readonly passwordFile: string }
  | { readonly kind: 'password'; readonly username: string; readonly password: string }
  | { readonly kind: 'token-file'; readonly tokenFile: string };

export interface NotaryConfig {
  /** Origin only, e.g. `https://notary.example.com:4443`. */
  readonly url: string;
  /** Absolute path of a PEM bundle to trust for this server's TLS, instead of the system roots. */
  readonly ca?: string;
  /** GUN = gunPrefix + repository path (the name without its host). Default: `<upstream host>/`. */
  readonly gunPrefix: string;
  /** Set when the config allowed plain http to a loopback Notary server. */
  readonly insecure: boolean;
}

export interface UpstreamConfig {
  /** The registry host as it appears in names, e.g. `docker.io`, `127.0.0.1:5000`. */
  readonly host: string;
  /** Origin only, e.g. `https://registry-1.docker.io`. */
  readonly url: string;
  readonly ca?: string;
  readonly auth?: UpstreamAuth;
  readonly notary?: NotaryConfig;
  /**
   * Other hosts this upstream may send the daemon to: its Bearer token realm and the storage its blob redirects
   * point at (Docker Hub: auth.docker.io, production.cloudflare.docker.com). Nothing else is ever contacted.
   */
  readonly allowedHosts: readonly string[];
}

/** A policy rule exactly as trust/policy.ts takes it: `new Policy(config.policy)`. */
export type PolicyRule = PolicyRuleSpec;

export const logLevels = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
export type LogLevel = (typeof logLevels)[number];

export type LimitKey = 'manifestMaxBytes' | keyof TrustLimits;
/** Only the limits the file sets; the consumer merges them over its defaults (trust/limits.ts and the proxy's). */
export type LimitOverrides = { readonly [K in LimitKey]?: number };

export interface Config {
  /** The file the config came from, or DEFAULT_CONFIG_SOURCE. */
  readonly source: string;
  readonly listen: ListenAddress;
  /** Absolute. */
  readonly stateDir: string;
  /** Keyed by registry host (`docker.io`, `127.0.0.1:5000`), in file order. */
  readonly upstreams: ReadonlyMap<string, UpstreamConfig>;
  /** In file order; the last rule is always `match: "**"`. */
  readonly policy: readonly PolicyRule[];
  /** Reserved: only 0 (never serve past expiry) is accepted today. */
  readonly offline: { readonly maxStalenessMs: number };
  readonly logging: { readonly level: LogLevel };
  readonly limits: LimitOverrides;
  /** Accepted but worth a log line at startup (inline password, non-loopback listen, ...). */
  readonly warnings: readonly ConfigIssue[];
}

export interface ParseOptions {
  /** Environment for defaults ($STATE_DIRECTORY, $XDG_STATE_HOME, $HOME). Default: process.env. */
  readonly env?: Readonly<Record<string, string | undefined>>;
  /** Home directory for the stateDir default. Default: os.homedir(). */
  readonly homeDir?: string;
  /** Directory relative paths resolve against. Default: the directory of `source` (the cwd for the default). */
  readonly baseDir?: string;
}

// ---------------------------------------------------------------------------------------------------------------
// Entry points

/** Reads and checks `file` (paths in it resolve against its directory), or the embedded default when omitted. */
export async function loadConfig(file?: string, options: ParseOptions = {}): Promise<Config> {
  if (file === undefined) return parseConfig(DEFAULT_CONFIG_YAML, DEFAULT_CONFIG_SOURCE, options);
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    throw new ConfigError(file, [{ path: '', line: 0, col: 0, message: `cannot read: ${errText(err)}` }]);
  }
  const { config, files, issues } = check(text, file, { baseDir: path.dirname(path.resolve(file)), ...options });
  // The files the config names must be readable by this process now, not at the first pull.
  const unreadable = await Promise.all(
    files.map(async (f) => {
      try {
        await access(f.file, constants.R_OK);
        return undefined;
      } catch (err) {
        return { ...f.at, message: `cannot read ${f.file}: ${errText(err)}` };
      }
    }),
  );
  const all = [...issues, ...unreadable.filter((i): i is ConfigIssue => i !== undefined)].sort(byPosition);
  if (all.length > 0 || config === undefined) throw new ConfigError(file, all);
  return config;
}

/** Checks YAML text without touching the file system (referenced files are not opened). */
export function parseConfig(text: string, source: string, options: ParseOptions = {}): Config {
  const { config, issues } = check(text, source, options);
  if (issues.length > 0 || config === undefined) throw new ConfigError(source, issues);
  return config;
}

// ---------------------------------------------------------------------------------------------------------------
// Checking

interface FileRef {
  readonly file: string;
  readonly at: { readonly path: string; readonly line: number; readonly col: number };
}

const DOCKER_HUB = 'docker.io';
const DOCKER_HUB_URL = 'https://registry-1.docker.io';
const DOCKER_HUB_ALIASES = new Set(['index.docker.io', 'registry-1.docker.io', 'registry.hub.docker.com', 'hub.docker.com']);
const LABEL = '[a-z0-9](?:[a-z0-9-]*[a-z0-9])?';
const HOSTNAME = new RegExp(`^${LABEL}(?:\\.${LABEL})*$`);
const limitKeys: readonly LimitKey[] = ['manifestMaxBytes', ...(Object.keys(defaultTrustLimits) as (keyof TrustLimits)[])];

function byPosition(a: ConfigIssue, b: ConfigIssue): number {
  return a.line - b.line || a.col - b.col;
}

function errText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** `a.b`, `a["docker.io"]`, `a[3]`. */
function child(parent: string, key: string | number): string {
  if (typeof key === 'number') return `${parent}[${key}]`;
  if (/^[A-Za-z_][A-Za-z0-9_]*$/.test(key)) return parent === '' ? key : `${parent}.${key}`;
  return `${parent}[${JSON.stringify(key)}]`;
}

function describe(node: Node | null | undefined): string {
  if (node === null || node === undefined) return 'nothing';
  if (isMap(node)) return 'a mapping';
  if (isSeq(node)) return 'a list';
  if (isScalar(node)) {
    const v = node.value;
    if (v === null) return 'null';
    if (typeof v === 'string') return JSON.stringify(v);
    return `${typeof v} ${String(v)}`;
  }
  return 'something else';
}

/** Edit distance, for "did you mean". */
function distance(a: string, b: string): number {
  const row = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    let prev = row[0]!;
    row[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const cur = row[j]!;
      row[j] = Math.min(row[j]! + 1, row[j - 1]! + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1));
      prev = cur;
    }
  }
  return row[b.length]!;
}

function suggest(word: string, choices: readonly string[]): string {
  let best: string | undefined;
  let bestD = Infinity;
  for (const c of choices) {
    const d = distance(word.toLowerCase(), c.toLowerCase());
    if (d < bestD) [best, bestD] = [c, d];
  }
  return best !== undefined && bestD <= Math.max(1, Math.floor(best.length / 3)) ? `; did you mean "${best}"?` : '';
}

function isLoopbackHost(host: string): boolean {
  const h = host.startsWith('[') ? host.slice(1, -1) : host;
  return h === 'localhost' || h === '::1' || (isIPv4(h) && h.startsWith('127.'));
}

type Entry = { readonly key: Node; readonly value: Node | null; readonly path: string };

class Checker {
  readonly issues: ConfigIssue[] = [];
  readonly warnings: ConfigIssue[] = [];
  readonly files: FileRef[] = [];

  constructor(
    private readonly doc: Document,
    private readonly lc: LineCounter,
    private readonly baseDir: string,
  ) {}

  at(node: Node | null | undefined, fallback?: Node | null): { line: number; col: number } {
    const n = node ?? fallback;
    const offset = n?.range?.[0];
    if (offset === undefined) return { line: 0, col: 0 };
    const { line, col } = this.lc.linePos(offset);
    return { line, col };
  }

  error(path: string, node: Node | null | undefined, message: string, fallback?: Node | null): void {
    this.issues.push({ path, ...this.at(node, fallback), message });
  }

  warn(path: string, node: Node | null | undefined, message: string): void {
    this.warnings.push({ path, ...this.at(node), message });
  }

  deref(node: Node | null | undefined): Node | null {
    if (node === null || node === undefined) return null;
    if (isAlias(node)) return (node.resolve(this.doc) as Node | undefined) ?? null;
    return node;
  }

  /** The entries of a mapping; unknown and duplicate keys are reported. Undefined when `node` is no mapping. */
  map(node: Node | null, path: string, known: readonly string[], fallback?: Node | null): Map<string, Entry> | undefined {
    const n = this.deref(node);
    if (!isMap(n)) {
      this.error(path, n, `must be a mapping (got ${describe(n)})`, fallback);
      return undefined;
    }
    const out = new Map<string, Entry>();
    for (const pair of n.items) {
      const key = this.deref(pair.key as Node | null);
      const value = this.deref(pair.value as Node | null);
      if (!isScalar(key) || typeof key.value !== 'string') {
        this.error(path, key, `keys must be strings (got ${describe(key)})`, n);
        continue;
      }
      const name = key.value;
      const p = child(path, name);
      if (known.length > 0 && !known.includes(name)) {
        this.error(p, key, `unknown key (expected one of: ${known.join(', ')})${suggest(name, known)}`);
        continue;
      }
      const first = out.get(name);
      if (first !== undefined) {
        this.error(p, key, `duplicate key (first at line ${this.at(first.key).line})`);
        continue;
      }
      out.set(name, { key, value, path: p });
    }
    return out;
  }

  /** An `Entry` for a key that is required but absent, positioned at the parent mapping. */
  missing(entries: Map<string, Entry>, parentPath: string, key: string, parent: Node | null): void {
    if (!entries.has(key)) this.error(child(parentPath, key), parent, 'is required');
  }

  str(e: Entry): string | undefined {
    if (isScalar(e.value) && typeof e.value.value === 'string') {
      if (e.value.value === '') {
        this.error(e.path, e.value, 'must not be empty', e.key);
        return undefined;
      }
      return e.value.value;
    }
    this.error(e.path, e.value, `must be a string (got ${describe(e.value)})`, e.key);
    return undefined;
  }

  int(e: Entry, min: number): number | undefined {
    if (isScalar(e.value) && typeof e.value.value === 'number' && Number.isSafeInteger(e.value.value) && e.value.value >= min) {
      return e.value.value;
    }
    this.error(e.path, e.value, `must be an integer >= ${min} (got ${describe(e.value)})`, e.key);
    return undefined;
  }

  bool(e: Entry): boolean | undefined {
    if (isScalar(e.value) && typeof e.value.value === 'boolean') return e.value.value;
    this.error(e.path, e.value, `must be true or false (got ${describe(e.value)})`, e.key);
    return undefined;
  }

  /** A path to a file the daemon will read: absolute, or relative to the config file's directory. */
  file(e: Entry): string | undefined {
    const s = this.str(e);
    if (s === undefined) return undefined;
    const resolved = path.resolve(this.baseDir, s);
    this.files.push({ file: resolved, at: { path: e.path, ...this.at(e.value, e.key) } });
    return resolved;
  }

  /** An http(s) origin: no credentials, path, query or fragment. Returns the normalized origin. */
  origin(e: Entry): { url: URL; origin: string } | undefined {
    const s = this.str(e);
    if (s === undefined) return undefined;
    let u: URL;
    try {
      u = new URL(s);
    } catch {
      this.error(e.path, e.value, `must be an absolute http(s) URL (got ${JSON.stringify(s)})`);
      return undefined;
    }
    const problems: string[] = [];
    if (u.protocol !== 'https:' && u.protocol !== 'http:') problems.push(`scheme must be https or http (got ${u.protocol.slice(0, -1)})`);
    if (u.username !== '' || u.password !== '') problems.push('must not contain credentials (use auth with passwordFile or tokenFile)');
    if (u.pathname !== '/' && u.pathname !== '') problems.push('must not have a path');
    if (s.includes('?') || s.includes('#')) problems.push('must not have a query or fragment');
    if (problems.length > 0) {
      this.error(e.path, e.value, `${problems.join('; ')} (got ${JSON.stringify(s.replace(/\/\/[^@/]*@/, '//***@'))})`);
      return undefined;
    }
    return { url: u, origin: u.origin };
  }

  // --- sections ---------------------------------------------------------------------------------------------

  listen(e: Entry): ListenAddress | undefined {
    const s = this.str(e);
    if (s === undefined) return undefined;
    let host: string;
    let portText: string;
    const v6 = /^\[([^\]]*)\]:(.*)$/.exec(s);
    if (v6 !== null) {
      host = v6[1]!;
      portText = v6[2]!;
      if (!isIPv6(host)) {
        this.error(e.path, e.value, `"[${host}]" is not an IPv6 address`);
        return undefined;
      }
    } else {
      const i = s.lastIndexOf(':');
      if (i < 0) {
        this.error(e.path, e.value, `must be host:port, e.g. 127.0.0.1:5050 or [::1]:5050 (got ${JSON.stringify(s)})`);
        return undefined;
      }
      host = s.slice(0, i);
      portText = s.slice(i + 1);
      if (host.includes(':')) {
        this.error(e.path, e.value, `an IPv6 address needs brackets, e.g. [::1]:5050 (got ${JSON.stringify(s)})`);
        return undefined;
      }
      if (!isIPv4(host) && !HOSTNAME.test(host)) {
        this.error(e.path, e.value, `host must be an IP address or a lower-case host name (got ${JSON.stringify(host)})`);
        return undefined;
      }
    }
    const port = /^[0-9]{1,5}$/.test(portText) ? Number(portText) : NaN;
    if (!(port >= 0 && port <= 65535)) {
      this.error(e.path, e.value, `port must be a number from 0 to 65535 (got ${JSON.stringify(portText)})`);
      return undefined;
    }
    if (!isLoopbackHost(host)) {
      this.warn(e.path, e.value, `listening on a non-loopback address (${host}): anyone who can reach it can pull through your upstreams and their credentials`);
    }
    return { host, port };
  }

  upstreamHost(key: Node, p: string, host: string): boolean {
    if (DOCKER_HUB_ALIASES.has(host)) {
      this.error(p, key, `Docker Hub is named ${DOCKER_HUB} (its url defaults to ${DOCKER_HUB_URL})`);
      return false;
    }
    if (host !== host.toLowerCase()) {
      this.error(p, key, 'registry hosts must be lower case');
      return false;
    }
    const m = /^([^:]+)(?::([0-9]{1,5}))?$/.exec(host);
    const port = m?.[2];
    if (m === null || !(isIPv4(m[1]!) || HOSTNAME.test(m[1]!)) || (port !== undefined && !(Number(port) >= 1 && Number(port) <= 65535))) {
      this.error(p, key, `must be a registry host: hostname or IPv4 address with an optional :port (got ${JSON.stringify(host)})`);
      return false;
    }
    return true;
  }

  upstream(host: string, key: Node, value: Node | null, p: string): UpstreamConfig | undefined {
    const entries = this.map(value, p, ['url', 'ca', 'auth', 'notary', 'allowedHosts'], key);
    if (entries === undefined) return undefined;
    let ok = true;
    let url: string | undefined;
    let isHttps = true;
    const urlEntry = entries.get('url');
    if (urlEntry !== undefined) {
      const o = this.origin(urlEntry);
      if (o === undefined) ok = false;
      else {
        url = o.origin;
        isHttps = o.url.protocol === 'https:';
        if (!isHttps && !isLoopbackHost(o.url.hostname)) {
          this.warn(urlEntry.path, urlEntry.value, 'plain http to a non-loopback registry: bytes are still checked against signed digests, but the transfer is visible to the network');
        }
      }
    } else if (host === DOCKER_HUB) {
      url = DOCKER_HUB_URL;
    } else {
      this.missing(entries, p, 'url', value ?? key);
      ok = false;
    }
    const out: { host: string; url: string; ca?: string; auth?: UpstreamAuth; notary?: NotaryConfig; allowedHosts: readonly string[] } = { host, url: url ?? '', allowedHosts: Object.freeze([]) };
    const allowedEntry = entries.get('allowedHosts');
    if (allowedEntry !== undefined) {
      const seq = allowedEntry.value;
      if (!isSeq(seq)) {
        this.error(allowedEntry.path, allowedEntry.value, 'must be a list of hosts (hostname or hostname:port)');
        ok = false;
      } else {
        const hosts: string[] = [];
        seq.items.forEach((item, i) => {
          const v = isScalar(item) ? item.value : undefined;
          const m = typeof v === 'string' ? /^([^:]+)(?::([0-9]{1,5}))?$/.exec(v) : null;
          if (m === null || !(isIPv4(m[1]!) || HOSTNAME.test(m[1]!))) {
            this.error(`${allowedEntry.path}[${i}]`, item as Node, `must be a hostname or hostname:port (got ${JSON.stringify(v)})`);
            ok = false;
          } else hosts.push((v as string).toLowerCase());
        });
        out.allowedHosts = Object.freeze(hosts);
      }
    }
    const caEntry = entries.get('ca');
    if (caEntry !== undefined) {
      const ca = this.file(caEntry);
      if (ca === undefined) ok = false;
      else if (!isHttps && url !== undefined) {
        this.error(caEntry.path, caEntry.value, 'applies only to an https url');
        ok = false;
      } else out.ca = ca;
    }
    const authEntry = entries.get('auth');
    if (authEntry !== undefined) {
      const auth = this.auth(authEntry);
      if (auth === undefined) ok = false;
      else {
        out.auth = auth;
        const u = url !== undefined ? new URL(url) : undefined;
        if (u !== undefined && !isHttps && !isLoopbackHost(u.hostname)) {
          this.error(authEntry.path, authEntry.key, 'credentials would travel in clear text: use an https url');
          ok = false;
        }
      }
    }
    const notaryEntry = entries.get('notary');
    if (notaryEntry !== undefined) {
      const notary = this.notary(host, notaryEntry);
      if (notary === undefined) ok = false;
      else out.notary = notary;
    }
    return ok ? Object.freeze(out) : undefined;
  }

  auth(e: Entry): UpstreamAuth | undefined {
    const entries = this.map(e.value, e.path, ['username', 'password', 'passwordFile', 'tokenFile'], e.key);
    if (entries === undefined) return undefined;
    const has = (k: string) => entries.has(k);
    const shape = 'needs either username with one of passwordFile or password, or tokenFile alone';
    if (has('tokenFile')) {
      if (has('username') || has('password') || has('passwordFile')) {
        this.error(e.path, e.value, `${shape}: tokenFile cannot be combined with username or password`, e.key);
        return undefined;
      }
      const tokenFile = this.file(entries.get('tokenFile')!);
      return tokenFile === undefined ? undefined : { kind: 'token-file', tokenFile };
    }
    if (!has('username') || has('password') === has('passwordFile')) {
      this.error(e.path, e.value, shape, e.key);
      return undefined;
    }
    const username = this.str(entries.get('username')!);
    if (has('passwordFile')) {
      const passwordFile = this.file(entries.get('passwordFile')!);
      return username === undefined || passwordFile === undefined ? undefined : { kind: 'password-file', username, passwordFile };
    }
    const pw = entries.get('password')!;
    const password = this.str(pw);
    if (password !== undefined) this.warn(pw.path, pw.value, 'an inline password lives in the config file: prefer passwordFile');
    return username === undefined || password === undefined ? undefined : { kind: 'password', username, password };
  }

  notary(host: string, e: Entry): NotaryConfig | undefined {
    const entries = this.map(e.value, e.path, ['url', 'ca', 'gunPrefix', 'insecure'], e.key);
    if (entries === undefined) return undefined;
    let ok = true;
    let insecure = false;
    const insecureEntry = entries.get('insecure');
    if (insecureEntry !== undefined) {
      const b = this.bool(insecureEntry);
      if (b === undefined) ok = false;
      else insecure = b;
    }
    let url: string | undefined;
    let isHttps = true;
    const urlEntry = entries.get('url');
    if (urlEntry === undefined) {
      this.missing(entries, e.path, 'url', e.value ?? e.key);
      ok = false;
    } else {
      const o = this.origin(urlEntry);
      if (o === undefined) ok = false;
      else {
        isHttps = o.url.protocol === 'https:';
        if (!isHttps && !(insecure && isLoopbackHost(o.url.hostname))) {
          this.error(
            urlEntry.path,
            urlEntry.value,
            isLoopbackHost(o.url.hostname)
              ? 'must be https (plain http to a loopback Notary server needs insecure: true)'
              : 'must be https (plain http is allowed only for a loopback Notary server with insecure: true)',
          );
          ok = false;
        } else {
          url = o.origin;
          if (insecure && isHttps && insecureEntry !== undefined) {
            this.warn(insecureEntry.path, insecureEntry.value, 'has no effect with an https url');
          }
        }
      }
    }
    let ca: string | undefined;
    const caEntry = entries.get('ca');
    if (caEntry !== undefined) {
      ca = this.file(caEntry);
      if (ca === undefined) ok = false;
      else if (!isHttps) {
        this.error(caEntry.path, caEntry.value, 'applies only to an https url');
        ok = false;
      }
    }
    let gunPrefix = `${host}/`;
    const gunEntry = entries.get('gunPrefix');
    if (gunEntry !== undefined) {
      if (isScalar(gunEntry.value) && typeof gunEntry.value.value === 'string') {
        const g = gunEntry.value.value;
        if (g !== '' && (!g.endsWith('/') || g.startsWith('/') || g.includes('//') || g.includes('..') || !/^[\x21-\x7e]+$/.test(g))) {
          this.error(gunEntry.path, gunEntry.value, `must be empty or end with "/", without spaces, "..", "//" or a leading "/" (got ${JSON.stringify(g)})`);
          ok = false;
        } else gunPrefix = g;
      } else {
        this.error(gunEntry.path, gunEntry.value, `must be a string (got ${describe(gunEntry.value)})`, gunEntry.key);
        ok = false;
      }
    }
    if (!ok || url === undefined) return undefined;
    const out: { url: string; ca?: string; gunPrefix: string; insecure: boolean } = { url, gunPrefix, insecure };
    if (ca !== undefined) out.ca = ca;
    return Object.freeze(out);
  }

  trust(e: Entry): RuleTrust | undefined {
    const formatsHint = 'only "notary" is supported today';
    const later = new Set(['notation', 'cosign']);
    if (isScalar(e.value) && typeof e.value.value === 'string') {
      const v = e.value.value;
      if (v === 'notary') return Object.freeze({ formats: Object.freeze(['notary'] as TrustFormat[]) });
      if (v === 'none' || v === 'deny') return v;
      if (later.has(v)) {
        this.error(e.path, e.value, `"${v}" is not supported yet (${formatsHint}); must be one of notary, none, deny`);
      } else {
        this.error(e.path, e.value, `must be one of notary, none, deny (got ${JSON.stringify(v)})${suggest(v, ['notary', 'none', 'deny'])}`);
      }
      return undefined;
    }
    if (isSeq(e.value)) {
      const formats: TrustFormat[] = [];
      let ok = true;
      if (e.value.items.length === 0) {
        this.error(e.path, e.value, 'a list of signature formats must not be empty (use trust: deny to refuse)');
        return undefined;
      }
      e.value.items.forEach((raw, i) => {
        const item = this.deref(raw as Node | null);
        const p = child(e.path, i);
        if (!isScalar(item) || typeof item.value !== 'string') {
          this.error(p, item, `must be a signature format name (got ${describe(item)})`, e.value);
          ok = false;
        } else if (item.value === 'notary') {
          if (formats.includes('notary')) {
            this.error(p, item, 'is listed twice');
            ok = false;
          } else formats.push('notary');
        } else if (item.value === 'none' || item.value === 'deny') {
          this.error(p, item, `"${item.value}" is not a signature format; write trust: ${item.value} on its own`);
          ok = false;
        } else if (later.has(item.value)) {
          this.error(p, item, `"${item.value}" is not supported yet (${formatsHint})`);
          ok = false;
        } else {
          this.error(p, item, `unknown signature format ${JSON.stringify(item.value)} (${formatsHint})`);
          ok = false;
        }
      });
      return ok ? Object.freeze({ formats: Object.freeze(formats) }) : undefined;
    }
    this.error(e.path, e.value, `must be one of notary, none, deny, or a list of signature formats (got ${describe(e.value)})`, e.key);
    return undefined;
  }

  policy(e: Entry, upstreams: ReadonlyMap<string, UpstreamConfig>, upstreamHosts: readonly string[]): PolicyRule[] | undefined {
    const seq = e.value;
    if (!isSeq(seq)) {
      this.error(e.path, seq, `must be a list of rules (got ${describe(seq)})`, e.key);
      return undefined;
    }
    if (seq.items.length === 0) {
      this.error(e.path, seq, `must not be empty: end it with the explicit default - { match: "${CATCH_ALL}", trust: deny }`, e.key);
      return undefined;
    }
    const rules: PolicyRule[] = [];
    const seen = new Map<string, number>();
    let ok = true;
    seq.items.forEach((raw, i) => {
      const p = child(e.path, i);
      const node = this.deref(raw as Node | null);
      const entries = this.map(node, p, ['match', 'trust', 'signers', 'threshold'], seq);
      if (entries === undefined) {
        ok = false;
        return;
      }
      this.missing(entries, p, 'match', node);
      this.missing(entries, p, 'trust', node);
      const matchEntry = entries.get('match');
      const trustEntry = entries.get('trust');
      const match = matchEntry === undefined ? undefined : this.match(matchEntry, i, seen, upstreamHosts);
      const trust = trustEntry === undefined ? undefined : this.trust(trustEntry);
      const rawMatch = isScalar(matchEntry?.value) ? matchEntry.value.value : undefined;
      if (i === seq.items.length - 1 && rawMatch !== CATCH_ALL) {
        this.error(
          matchEntry?.path ?? p,
          matchEntry?.value ?? node,
          `the last rule must be an explicit default: match: "${CATCH_ALL}" (with trust: deny, none or notary)`,
        );
        ok = false;
      }
      // signers and threshold are checked even when match or trust failed, so every problem shows at once.
      const signersEntry = entries.get('signers');
      const thresholdEntry = entries.get('threshold');
      let signers: string[] | undefined;
      let threshold: number | undefined;
      if (signersEntry !== undefined) {
        signers = this.signers(signersEntry);
        if (signers === undefined) ok = false;
        else if (typeof trust === 'string') {
          this.error(signersEntry.path, signersEntry.key, `applies only to a rule that checks signatures (this rule has trust: ${trust})`);
          ok = false;
        }
      }
      if (thresholdEntry !== undefined) {
        threshold = this.int(thresholdEntry, 1);
        if (threshold === undefined) ok = false;
        else if (signersEntry === undefined) {
          this.error(thresholdEntry.path, thresholdEntry.key, 'needs signers: it counts how many of them must have signed');
          ok = false;
        } else if (signers !== undefined && threshold > signers.length) {
          this.error(thresholdEntry.path, thresholdEntry.value, `must be at most the number of signers (${signers.length}), got ${threshold}`);
          ok = false;
        }
      }
      if (match === undefined || trust === undefined) {
        ok = false;
        return;
      }
      // A rule that needs Notary may only cover upstreams that have a Notary server.
      if (typeof trust === 'object' && trust.formats.includes('notary')) {
        const h = patternHost(match);
        const covered = 'literal' in h ? [h.literal] : upstreamHosts.filter(h.test);
        // Hosts whose upstream block failed its own checks are skipped: that error is already reported.
        const without = covered.filter((host) => {
          const u = upstreams.get(host);
          return u !== undefined && u.notary === undefined;
        });
        if (without.length > 0) {
          const many = without.length > 1;
          this.error(
            trustEntry!.path,
            trustEntry!.value,
            `rule "${match}" needs Notary, but upstream${many ? 's' : ''} ${without.map((x) => `"${x}"`).join(', ')} ${many ? 'have' : 'has'} no notary block` +
              ('literal' in h ? '' : ' (narrow the match to hosts with a Notary server)'),
          );
          ok = false;
        }
      }
      const rule: { match: string; trust: RuleTrust; signers?: readonly string[]; threshold?: number } = { match, trust };
      if (signers !== undefined && typeof trust === 'object') {
        rule.signers = Object.freeze(signers);
        rule.threshold = threshold ?? 1;
      }
      rules.push(Object.freeze(rule));
    });
    return ok ? rules : undefined;
  }

  match(e: Entry, index: number, seen: Map<string, number>, upstreamHosts: readonly string[]): string | undefined {
    const s = this.str(e);
    if (s === undefined) return undefined;
    const problem = globProblem(s);
    if (problem !== undefined) {
      const hint = !s.includes('/') && !s.includes('*') ? `; for a Docker Hub official image write "${DOCKER_HUB}/library/${s}"` : '';
      this.error(e.path, e.value, `${problem} (got ${JSON.stringify(s)})${hint}`);
      return undefined;
    }
    const earlier = seen.get(s);
    if (earlier !== undefined) {
      this.error(e.path, e.value, `same pattern as policy[${earlier}]; this rule would never apply`);
      return undefined;
    }
    seen.set(s, index);
    const h = patternHost(s);
    if ('literal' in h) {
      if (!upstreamHosts.includes(h.literal)) {
        const hint =
          h.literal.includes('.') || h.literal.includes(':') || h.literal === 'localhost'
            ? suggest(h.literal, upstreamHosts)
            : `; patterns match host/repository: for Docker Hub write "${DOCKER_HUB}/${s}"`;
        this.error(e.path, e.value, `host "${h.literal}" is not a configured upstream (configured: ${upstreamHosts.join(', ') || 'none'})${hint}`);
        return undefined;
      }
      const segments = s.split('/');
      if (h.literal === DOCKER_HUB && segments.length === 2 && segments[1] !== '**') {
        this.error(
          e.path,
          e.value,
          `Docker Hub names always have two path segments (official images are ${DOCKER_HUB}/library/<name>), so this never matches`,
        );
        return undefined;
      }
    } else if (!upstreamHosts.some(h.test)) {
      this.error(e.path, e.value, `matches no configured upstream host (configured: ${upstreamHosts.join(', ') || 'none'})`);
      return undefined;
    }
    return s;
  }

  signers(e: Entry): string[] | undefined {
    if (!isSeq(e.value)) {
      this.error(e.path, e.value, `must be a list of Notary role names, e.g. [targets/releases] (got ${describe(e.value)})`, e.key);
      return undefined;
    }
    if (e.value.items.length === 0) {
      this.error(e.path, e.value, 'must not be empty (omit it to accept any role the trusted metadata authorizes)');
      return undefined;
    }
    const out: string[] = [];
    let ok = true;
    e.value.items.forEach((raw, i) => {
      const item = this.deref(raw as Node | null);
      const p = child(e.path, i);
      if (!isScalar(item) || typeof item.value !== 'string') {
        this.error(p, item, `must be a role name (got ${describe(item)})`, e.value);
        ok = false;
        return;
      }
      const problem = signerProblem(item.value);
      if (problem !== undefined) {
        this.error(p, item, problem);
        ok = false;
      } else if (out.includes(item.value)) {
        this.error(p, item, 'is listed twice');
        ok = false;
      } else out.push(item.value);
    });
    return ok ? out : undefined;
  }

  duration(e: Entry): number | undefined {
    if (isScalar(e.value) && typeof e.value.value === 'string') {
      const m = /^([0-9]+)(ms|s|m|h|d)$/.exec(e.value.value);
      if (m !== null) {
        const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[m[2] as 'ms' | 's' | 'm' | 'h' | 'd'];
        const ms = Number(m[1]) * unit;
        if (Number.isSafeInteger(ms)) return ms;
      }
    }
    this.error(e.path, e.value, `must be a duration such as 0s, 90s, 15m, 12h, 7d (got ${describe(e.value)})`, e.key);
    return undefined;
  }
}

const topKeys = ['listen', 'stateDir', 'upstreams', 'policy', 'offline', 'logging', 'limits'] as const;

function defaultStateDir(env: Readonly<Record<string, string | undefined>>, home: string): string {
  // systemd's StateDirectory= sets $STATE_DIRECTORY, colon-separated when several are configured: take the first.
  const systemd = env['STATE_DIRECTORY']?.split(':')[0];
  if (systemd !== undefined && path.isAbsolute(systemd)) return systemd;
  const xdg = env['XDG_STATE_HOME'];
  if (xdg !== undefined && path.isAbsolute(xdg)) return path.join(xdg, 'portcullis');
  return path.join(home, '.local', 'state', 'portcullis');
}

function deepFreeze<T>(v: T): T {
  if (v !== null && typeof v === 'object' && !Object.isFrozen(v)) {
    Object.freeze(v);
    for (const x of Object.values(v)) deepFreeze(x);
  }
  return v;
}

function check(
  text: string,
  source: string,
  options: ParseOptions,
): { config: Config | undefined; issues: ConfigIssue[]; files: FileRef[] } {
  const lc = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lc, prettyErrors: true, uniqueKeys: false });
  if (doc.errors.length > 0) {
    const issues = doc.errors.map((err) => ({
      path: '',
      line: err.linePos?.[0].line ?? 0,
      col: err.linePos?.[0].col ?? 0,
      message: `YAML: ${err.message.replace(/ at line \d+, column \d+:[\s\S]*$/, '')}`,
    }));
    return { config: undefined, issues, files: [] };
  }
  const baseDir = options.baseDir ?? (source === DEFAULT_CONFIG_SOURCE ? process.cwd() : path.dirname(path.resolve(source)));
  const c = new Checker(doc, lc, baseDir);
  const root = (doc.contents as Node | null) ?? null;
  if (root === null || (isScalar(root) && root.value === null)) {
    return { config: undefined, issues: [{ path: '', line: 1, col: 1, message: 'the file is empty: expected a mapping with upstreams and policy' }], files: [] };
  }
  const top = c.map(root, '', topKeys);
  if (top === undefined) return { config: undefined, issues: c.issues, files: [] };
  c.missing(top, '', 'upstreams', root);
  c.missing(top, '', 'policy', root);

  const listenEntry = top.get('listen');
  const listen = listenEntry === undefined ? { host: '127.0.0.1', port: 5050 } : c.listen(listenEntry);

  const env = options.env ?? process.env;
  const stateEntry = top.get('stateDir');
  let stateDir: string | undefined;
  if (stateEntry !== undefined) {
    const s = c.str(stateEntry);
    stateDir = s === undefined ? undefined : path.resolve(baseDir, s);
  } else {
    stateDir = defaultStateDir(env, options.homeDir ?? homedir());
  }

  const upstreams = new Map<string, UpstreamConfig>();
  const upstreamHosts: string[] = [];
  let upstreamsOk = true;
  const upEntry = top.get('upstreams');
  if (upEntry !== undefined) {
    const entries = c.map(upEntry.value, 'upstreams', [], upEntry.key);
    if (entries === undefined) upstreamsOk = false;
    else if (entries.size === 0) {
      c.error('upstreams', upEntry.value, 'must name at least one registry', upEntry.key);
      upstreamsOk = false;
    } else {
      for (const [host, e] of entries) {
        if (!c.upstreamHost(e.key, e.path, host)) {
          upstreamsOk = false;
          continue;
        }
        upstreamHosts.push(host);
        const u = c.upstream(host, e.key, e.value, e.path);
        if (u === undefined) upstreamsOk = false;
        else upstreams.set(host, u);
      }
    }
  }

  let policy: PolicyRule[] | undefined;
  const policyEntry = top.get('policy');
  if (policyEntry !== undefined) policy = c.policy(policyEntry, upstreams, upstreamHosts);

  let maxStalenessMs = 0;
  const offlineEntry = top.get('offline');
  if (offlineEntry !== undefined) {
    const entries = c.map(offlineEntry.value, 'offline', ['maxStaleness'], offlineEntry.key);
    const ms = entries?.get('maxStaleness');
    if (ms !== undefined) {
      const v = c.duration(ms);
      if (v !== undefined && v !== 0) {
        c.error(ms.path, ms.value, 'only 0s is supported today: Portcullis never serves past the expiry of trusted metadata');
      } else if (v !== undefined) maxStalenessMs = v;
    }
  }

  let level: LogLevel = 'info';
  const loggingEntry = top.get('logging');
  if (loggingEntry !== undefined) {
    const entries = c.map(loggingEntry.value, 'logging', ['level'], loggingEntry.key);
    const le = entries?.get('level');
    if (le !== undefined) {
      const v = isScalar(le.value) ? le.value.value : undefined;
      if (typeof v === 'string' && (logLevels as readonly string[]).includes(v)) level = v as LogLevel;
      else c.error(le.path, le.value, `must be one of ${logLevels.join(', ')} (got ${describe(le.value)})`, le.key);
    }
  }

  const limits: { [K in LimitKey]?: number } = {};
  const limitsEntry = top.get('limits');
  if (limitsEntry !== undefined) {
    const entries = c.map(limitsEntry.value, 'limits', limitKeys, limitsEntry.key);
    for (const [k, e] of entries ?? []) {
      const v = c.int(e, 1);
      if (v !== undefined) limits[k as LimitKey] = v;
    }
  }

  // The policy module has the last word: whatever passed here must also construct there.
  if (c.issues.length === 0 && policy !== undefined) {
    try {
      new Policy(policy);
    } catch (err) {
      if (!(err instanceof PolicyError)) throw err;
      c.error('policy', policyEntry?.value, err.message, policyEntry?.key);
    }
  }

  const issues = c.issues.sort(byPosition);
  if (issues.length > 0 || listen === undefined || stateDir === undefined || policy === undefined || !upstreamsOk) {
    if (issues.length === 0) issues.push({ path: '', line: 0, col: 0, message: 'invalid configuration' });
    return { config: undefined, issues, files: c.files };
  }
  const config: Config = {
    source,
    listen: Object.freeze(listen),
    stateDir,
    upstreams,
    policy: Object.freeze(policy),
    offline: Object.freeze({ maxStalenessMs }),
    logging: Object.freeze({ level }),
    limits: Object.freeze(limits),
    warnings: Object.freeze(c.warnings.sort(byPosition).map((w) => Object.freeze(w))),
  };
  for (const u of upstreams.values()) deepFreeze(u);
  return { config: Object.freeze(config), issues: [], files: c.files };
}

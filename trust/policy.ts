// Which trust rule governs a repository. Pure: takes plain rule objects (the daemon builds them from the config
// file), knows nothing of YAML, HTTP or the store, and runs on the hot path of every manifest request.
//
// Glob language (a deliberate subset of picomatch, matched with {dot: true}) over the full name `host/repo/path`,
// e.g. `docker.io/library/nginx`, `127.0.0.1:5000/team/app`:
//   - segments are separated by `/`;
//   - `*` matches within one segment (never crosses `/`), and may sit inside a segment (`app-*`);
//   - `**` as a whole segment matches any number of segments, zero included;
//   - every other character is literal and must be one a repository name can hold: [a-z0-9._:-].
// Braces, brackets, `?`, `!`, extglobs and upper case are refused, so that specificity is well defined and a
// pattern cannot silently match nothing.
//
// Specificity — the most specific matching rule wins, compared in this order:
//   1. the exact catch-all `**` always ranks last;
//   2. more literal segments (segments without any `*`) wins;
//   3. more literal characters (everything except `*` and `/`) wins;
//   4. fewer `**` segments wins (so `a/*` beats `a/**`);
//   5. the earlier rule in the list wins.
// The order is total, so the answer never depends on anything but the rules and the name.
import picomatch from 'picomatch';

export type TrustFormat = 'notary';
export const trustFormats: readonly TrustFormat[] = Object.freeze(['notary'] as const);

/** What a rule asks for: signatures in any of the listed formats, no check at all, or refusal. */
export type RuleTrust = { readonly formats: readonly TrustFormat[] } | 'none' | 'deny';

export interface PolicyRuleSpec {
  readonly match: string;
  readonly trust: RuleTrust;
  /** Roles (Notary role names, e.g. `targets/releases`) of which `threshold` must have signed the tag. */
  readonly signers?: readonly string[];
  /** N of `signers`; defaults to 1 when `signers` is given. */
  readonly threshold?: number;
}

export interface MatchedRule {
  /** Position of the rule in the list given to the constructor (the config's `policy[index]`). */
  readonly index: number;
  readonly match: string;
  readonly trust: RuleTrust;
  readonly signers?: readonly string[];
  readonly threshold?: number;
}

export class PolicyError extends Error {
  override readonly name = 'PolicyError';
}

export const CATCH_ALL = '**';

const GLOB_CHARS = /^[a-z0-9._:/*-]+$/;
const NAME_CHARS = /^[a-z0-9._:/-]+$/;
const ROLE_SEGMENT = /^[A-Za-z0-9_.-]+$/;
/** Longer names are refused before any regex runs; OCI names are far shorter (the host plus 255). */
export const MAX_NAME_LENGTH = 1024;

/** Why `pattern` is not an acceptable glob, or undefined when it is. */
export function globProblem(pattern: string): string | undefined {
  if (pattern === '') return 'must not be empty';
  if (pattern === CATCH_ALL) return undefined;
  if (/[A-Z]/.test(pattern)) return 'must be lower case (repository names are lower case, so it would never match)';
  if (!GLOB_CHARS.test(pattern)) {
    return 'may only hold a-z 0-9 . _ : - / and the wildcards * and ** (no braces, brackets, ? or !)';
  }
  const segments = pattern.split('/');
  if (segments.some((s) => s === '')) return 'must not have empty segments (leading, trailing or double /)';
  if (segments.some((s) => s === '.' || s === '..' || s.includes('..'))) return 'must not contain .. or . segments';
  for (const s of segments) {
    if (s !== '**' && s.includes('**')) return `** must be a whole segment (got "${s}"; use * within a segment)`;
  }
  for (let i = 1; i < segments.length; i++) {
    if (segments[i] === '**' && segments[i - 1] === '**') return 'must not repeat ** in consecutive segments';
  }
  if (segments.length === 1 && segments[0] !== '**') {
    return 'must cover host and repository (e.g. "registry.example.com/team/**"); a single segment never matches';
  }
  return undefined;
}

/**
 * The registry host a pattern is limited to: `{literal}` when its first segment has no wildcard, otherwise a
 * predicate over hosts (a first segment `**` matches every host). Used by the config to check that a rule which
 * needs Notary only covers upstreams that have one.
 */
export function patternHost(pattern: string): { readonly literal: string } | { readonly test: (host: string) => boolean } {
  const first = pattern.split('/')[0] ?? '';
  if (!first.includes('*')) return { literal: first };
  if (first === '**') return { test: () => true };
  const re = picomatch.makeRe(first, { dot: true, windows: false });
  return { test: (host: string) => re.test(host) };
}

/** Why `name` may not be matched, or undefined. Names reach here already validated by the proxy; this is a guard. */
export function nameProblem(name: string): string | undefined {
  if (name.length === 0) return 'is empty';
  if (name.length > MAX_NAME_LENGTH) return `is longer than ${MAX_NAME_LENGTH} characters`;
  if (/[A-Z]/.test(name)) return 'has upper case';
  if (!NAME_CHARS.test(name)) return 'has characters outside a-z 0-9 . _ : - /';
  if (name.includes('..')) return 'contains ..';
  const segments = name.split('/');
  if (segments.some((s) => s === '' || s === '.')) return 'has an empty or . segment';
  if (segments.length < 2) return 'is not host/repository';
  return undefined;
}

/** Why `role` is not a Notary targets role name, or undefined. */
export function signerProblem(role: string): string | undefined {
  if (role === 'targets') return undefined;
  if (!role.startsWith('targets/')) return `must be "targets" or a delegation "targets/<name>" (got "${role}")`;
  const rest = role.slice('targets/'.length).split('/');
  if (rest.some((s) => !ROLE_SEGMENT.test(s) || s === '.' || s === '..')) {
    return `is not a valid delegation role name (got "${role}")`;
  }
  return undefined;
}

export interface Specificity {
  readonly catchAll: boolean;
  readonly literalSegments: number;
  readonly literalChars: number;
  readonly globstars: number;
}

export function specificity(pattern: string): Specificity {
  if (pattern === CATCH_ALL) return { catchAll: true, literalSegments: 0, literalChars: 0, globstars: 1 };
  let literalSegments = 0;
  let literalChars = 0;
  let globstars = 0;
  for (const s of pattern.split('/')) {
    if (s === '**') globstars++;
    else if (!s.includes('*')) literalSegments++;
    for (const c of s) if (c !== '*') literalChars++;
  }
  return { catchAll: false, literalSegments, literalChars, globstars };
}

/** Negative when rule a is more specific than rule b (a wins). Indexes break ties: earlier wins. */
function compare(a: Specificity, ai: number, b: Specificity, bi: number): number {
  if (a.catchAll !== b.catchAll) return a.catchAll ? 1 : -1;
  if (a.literalSegments !== b.literalSegments) return b.literalSegments - a.literalSegments;
  if (a.literalChars !== b.literalChars) return b.literalChars - a.literalChars;
  if (a.globstars !== b.globstars) return a.globstars - b.globstars;
  return ai - bi;
}

function checkRule(rule: PolicyRuleSpec, index: number): MatchedRule {
  const where = `policy rule ${index} (${JSON.stringify(rule.match)})`;
  if (typeof rule.match !== 'string') throw new PolicyError(`policy rule ${index}: match must be a string`);
  const gp = globProblem(rule.match);
  if (gp !== undefined) throw new PolicyError(`${where}: match ${gp}`);
  const t = rule.trust;
  let trust: RuleTrust;
  if (t === 'none' || t === 'deny') {
    trust = t;
  } else if (typeof t === 'object' && t !== null && Array.isArray(t.formats)) {
    if (t.formats.length === 0) throw new PolicyError(`${where}: trust.formats must not be empty`);
    for (const f of t.formats) {
      if (!trustFormats.includes(f)) throw new PolicyError(`${where}: unknown trust format ${JSON.stringify(f)}`);
    }
    if (new Set(t.formats).size !== t.formats.length) throw new PolicyError(`${where}: trust.formats has duplicates`);
    trust = Object.freeze({ formats: Object.freeze([...t.formats]) });
  } else {
    throw new PolicyError(`${where}: trust must be "none", "deny" or {formats: [...]}`);
  }
  const out: { index: number; match: string; trust: RuleTrust; signers?: readonly string[]; threshold?: number } = {
    index,
    match: rule.match,
    trust,
  };
  if (rule.signers !== undefined) {
    if (typeof trust === 'string') throw new PolicyError(`${where}: signers only apply to a rule that checks signatures`);
    if (rule.signers.length === 0) throw new PolicyError(`${where}: signers must not be empty when given`);
    for (const s of rule.signers) {
      const sp = signerProblem(s);
      if (sp !== undefined) throw new PolicyError(`${where}: signer ${sp}`);
    }
    if (new Set(rule.signers).size !== rule.signers.length) throw new PolicyError(`${where}: signers has duplicates`);
    const threshold = rule.threshold ?? 1;
    if (!Number.isSafeInteger(threshold) || threshold < 1 || threshold > rule.signers.length) {
      throw new PolicyError(`${where}: threshold must be an integer from 1 to ${rule.signers.length} (got ${threshold})`);
    }
    out.signers = Object.freeze([...rule.signers]);
    out.threshold = threshold;
  } else if (rule.threshold !== undefined) {
    throw new PolicyError(`${where}: threshold needs signers`);
  }
  return Object.freeze(out);
}

/**
 * Bounded memo of name → rule, two generations of at most CACHE_GENERATION entries each: a hit in the old
 * generation is promoted, and when the young one fills up the old one is dropped whole. That approximates LRU
 * in O(1) (deleting the oldest key of one big Map degrades badly in V8 under churn, measured ~7 µs per op).
 */
const CACHE_GENERATION = 5_000;

export class Policy {
  readonly rules: readonly MatchedRule[];
  /** Rules with their compiled regexes, most specific first: the first that matches is the answer. */
  readonly #ordered: readonly { readonly prefix: string; readonly re: RegExp; readonly rule: MatchedRule }[];
  #young = new Map<string, MatchedRule>();
  #old = new Map<string, MatchedRule>();

  constructor(rules: readonly PolicyRuleSpec[]) {
    const checked = rules.map((r, i) => checkRule(r, i));
    if (!checked.some((r) => r.match === CATCH_ALL)) {
      throw new PolicyError('policy has no catch-all rule (match: "**"); every name must resolve to some rule');
    }
    this.rules = Object.freeze(checked);
    const specs = checked.map((r) => specificity(r.match));
    const order = checked.map((_, i) => i).sort((a, b) => compare(specs[a]!, a, specs[b]!, b));
    this.#ordered = Object.freeze(
      order.map((i) => {
        const rule = checked[i]!;
        // The literal text before the first wildcard: a cheap startsWith() skips most rules before any regex runs.
        const star = rule.match.indexOf('*');
        // Without its trailing "/": "a/b/**" also matches "a/b" itself (picomatch's globstar matches zero segments).
        const prefix = star < 0 ? rule.match : rule.match.slice(0, star).replace(/\/$/, '');
        return Object.freeze({ prefix, re: picomatch.makeRe(rule.match, { dot: true, windows: false }), rule });
      }),
    );
  }

  /** The rule governing `name` (`host/repo/path`). Throws PolicyError for a name that is not well formed. */
  match(name: string): MatchedRule {
    const hit = this.#young.get(name);
    if (hit !== undefined) return hit;
    const older = this.#old.get(name);
    if (older !== undefined) {
      this.#remember(name, older);
      return older;
    }
    const problem = nameProblem(name);
    if (problem !== undefined) throw new PolicyError(`repository name ${JSON.stringify(name)} ${problem}`);
    let found: MatchedRule | undefined;
    for (const { prefix, re, rule } of this.#ordered) {
      if (name.startsWith(prefix) && re.test(name)) {
        found = rule;
        break;
      }
    }
    // Unreachable: the catch-all matches every well-formed name. Kept as a hard failure rather than a default.
    if (found === undefined) throw new PolicyError(`no policy rule matches ${JSON.stringify(name)}`);
    this.#remember(name, found);
    return found;
  }

  #remember(name: string, rule: MatchedRule): void {
    if (this.#young.size >= CACHE_GENERATION) {
      this.#old = this.#young;
      this.#young = new Map();
    }
    this.#young.set(name, rule);
  }
}

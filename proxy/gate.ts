// The gate: decides, per request, whether trust data allows serving a tag, and which digest it pins the tag to.
// It owns one Updater per GUN (one refresh in flight per GUN), a short-lived cache of tag decisions, and the
// offline fallback (answer from stored trust data while it is unexpired, and say so; never past expiry).
import type { Logger } from 'pino';
import type { MetadataStore } from '../cache/metadata-store.js';
import { SingleFlight } from '../cache/single-flight.js';
import type { Clock } from '../trust/clock.js';
import { TrustError, type TrustReason } from '../trust/errors.js';
import type { TrustLimits } from '../trust/limits.js';
import { NotaryClient, notaryFetcher } from '../trust/notary-client.js';
import type { MatchedRule, Policy } from '../trust/policy.js';
import type { Tag } from '../trust/reference.js';
import { resolveSignedTag, type SignedTarget } from '../trust/signed-tag.js';
import { Updater } from '../trust/updater.js';
import { ociError, type DenyReason, OciError } from './oci-errors.js';
import type { RepoRef } from './routes.js';

export interface NotaryUpstream {
  readonly client: NotaryClient;
  /** GUN = gunPrefix + repository path. */
  readonly gunPrefix: string;
}

export interface GateOptions {
  readonly policy: Policy;
  /** Notary servers by registry host. */
  readonly notary: ReadonlyMap<string, NotaryUpstream>;
  readonly store: MetadataStore;
  readonly clock: Clock;
  readonly log: Logger;
  readonly limits?: TrustLimits;
  /** How long a verified tag decision is reused before the trust data is consulted again (and at most its expiry). */
  readonly decisionTtlMs?: number;
}

export type TagDecision =
  | { readonly kind: 'signed'; readonly rule: MatchedRule; readonly target: SignedTarget; readonly offline: boolean }
  | { readonly kind: 'unverified'; readonly rule: MatchedRule };

const REASON_MAP: Partial<Record<TrustReason, DenyReason>> = {
  NOT_SIGNED: 'NOT_SIGNED',
  NO_TRUST_DATA: 'NOT_SIGNED',
  EXPIRED: 'EXPIRED',
  ROLLBACK: 'ROLLBACK',
  THRESHOLD: 'THRESHOLD',
  TRUST_UNAVAILABLE: 'TRUST_UNAVAILABLE',
};

const MAX_UPDATERS = 10_000;
const MAX_DECISIONS = 50_000;

export class TrustGate {
  readonly #o: GateOptions;
  readonly #updaters = new Map<string, Updater>();
  readonly #refreshes = new SingleFlight<string, void>();
  readonly #lastRefresh = new Map<string, number>();
  readonly #decisions = new Map<string, { d: TagDecision; until: number }>();
  readonly #ttl: number;

  constructor(o: GateOptions) {
    this.#o = o;
    this.#ttl = o.decisionTtlMs ?? 30_000;
  }

  rule(repo: RepoRef): MatchedRule {
    try {
      return this.#o.policy.match(repo.name);
    } catch (e) {
      throw ociError('NAME_INVALID', (e as Error).message);
    }
  }

  /** Throws OciError DENIED (POLICY_DENY) for a repository the policy refuses outright. */
  admit(repo: RepoRef): MatchedRule {
    const rule = this.rule(repo);
    if (rule.trust === 'deny') {
      throw ociError('DENIED', `${repo.name} is denied by policy rule ${rule.index} (${rule.match})`, 'POLICY_DENY', { rule: rule.match });
    }
    return rule;
  }

  gunOf(repo: RepoRef): string {
    const n = this.#o.notary.get(repo.host);
    return `${n?.gunPrefix ?? `${repo.host}/`}${repo.path}`;
  }

  /** The tag decision: which digest the trust data signs for this tag, or a DENIED OciError saying why not. */
  async decideTag(repo: RepoRef, tag: Tag): Promise<TagDecision> {
    const rule = this.admit(repo);
    if (rule.trust === 'none') return { kind: 'unverified', rule };
    const key = `${repo.name}:${tag}`;
    const now = this.#o.clock().getTime();
    const cached = this.#decisions.get(key);
    if (cached && cached.until > now) return cached.d;
    const d = await this.#decideNotary(repo, tag, rule);
    if (this.#decisions.size >= MAX_DECISIONS) this.#decisions.clear();
    if (d.kind === 'signed' && !d.offline) {
      this.#decisions.set(key, { d, until: Math.min(now + this.#ttl, d.target.validUntil.getTime()) });
    }
    return d;
  }

  async #decideNotary(repo: RepoRef, tag: Tag, rule: MatchedRule): Promise<TagDecision> {
    const notary = this.#o.notary.get(repo.host);
    const roles = rule.signers && rule.signers.length > 0 ? rule.signers.join(', ') : 'targets/releases or targets';
    const deny = (reason: DenyReason, why: string, err?: unknown): OciError =>
      ociError('DENIED', `tag ${tag} of ${repo.name} has no valid Notary trust data (${roles}): ${why}`, reason, {
        rule: rule.match,
        tag,
        signers: rule.signers,
        ...(err instanceof TrustError ? { trustReason: err.reason, trustRole: err.role } : {}),
      });
    if (!notary) throw deny('TRUST_UNAVAILABLE', `no Notary server is configured for ${repo.host}`);
    const gun = this.gunOf(repo);
    const u = this.#updater(gun, notary);
    const req = { signers: rule.signers, threshold: rule.threshold };
    let offline = false;
    try {
      await this.#refresh(gun, u);
    } catch (e) {
      if (!(e instanceof TrustError) || e.reason !== 'TRUST_UNAVAILABLE') throw deny(reasonOf(e), describe(e), e);
      offline = true;
      this.#o.log.warn({ event: 'trust-offline', gun, err: e.message }, `Notary server unreachable for ${gun}; answering from stored trust data while it is unexpired`);
    }
    try {
      const target = await resolveSignedTag(u, tag, req, { offline });
      return { kind: 'signed', rule, target, offline };
    } catch (e) {
      if (offline && e instanceof TrustError && (e.reason === 'NO_TRUST_DATA' || e.reason === 'NOT_SIGNED')) {
        throw deny('TRUST_UNAVAILABLE', `the Notary server is unreachable and no valid cached trust data exists (${describe(e)})`, e);
      }
      throw deny(reasonOf(e), describe(e), e);
    }
  }

  /** Whether `digest` is itself a signed target of the repository (any tag), e.g. pulled by digest. */
  async isSignedDigest(repo: RepoRef, digest: string): Promise<boolean> {
    const notary = this.#o.notary.get(repo.host);
    if (!notary) return false;
    const gun = this.gunOf(repo);
    const u = this.#updater(gun, notary);
    let offline = false;
    try {
      await this.#refresh(gun, u);
    } catch (e) {
      if (!(e instanceof TrustError) || e.reason !== 'TRUST_UNAVAILABLE') return false;
      offline = true;
    }
    try {
      const hex = digest.replace(/^sha256:/, '');
      for (const r of await u.listAll({ offline })) {
        for (const t of r.targets.values()) if (t.hashes.get('sha256')?.toString('hex') === hex) return true;
      }
    } catch {
      return false;
    }
    return false;
  }

  #updater(gun: string, notary: NotaryUpstream): Updater {
    let u = this.#updaters.get(gun);
    if (!u) {
      if (this.#updaters.size >= MAX_UPDATERS) this.#updaters.clear();
      u = new Updater({ dialect: 'notary', namespace: gun, gun, store: this.#o.store, fetcher: notaryFetcher(notary.client, gun), clock: this.#o.clock, limits: this.#o.limits });
      this.#updaters.set(gun, u);
    }
    return u;
  }

  /** One refresh in flight per GUN; repeated requests within a second share the last result. */
  async #refresh(gun: string, u: Updater): Promise<void> {
    const last = this.#lastRefresh.get(gun) ?? 0;
    if (this.#o.clock().getTime() - last < 1_000) return;
    await this.#refreshes.run(gun, async () => {
      await u.refresh();
      this.#lastRefresh.set(gun, this.#o.clock().getTime());
    });
  }
}

function reasonOf(e: unknown): DenyReason {
  if (e instanceof TrustError) return REASON_MAP[e.reason] ?? 'TRUST_INVALID';
  return 'TRUST_INVALID';
}

function describe(e: unknown): string {
  if (e instanceof TrustError) {
    if (e.reason === 'NOT_SIGNED' || e.reason === 'NO_TRUST_DATA') return `not signed (${e.message})`;
    return `${e.reason.toLowerCase().replace(/_/g, ' ')}: ${e.message}`;
  }
  return (e as Error)?.message ?? String(e);
}

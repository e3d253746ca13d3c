// Notary v1 server client: fetches TUF metadata for one GUN from `GET /v2/<gun>/_trust/tuf/<name>`.
// The GUN and the metadata name come from image references and from metadata (delegation role names), so they
// are validated and escaped per path segment: nothing in them can change the path, add a query or a fragment.
import { TrustError } from './errors.js';
import { HttpFetcher, type HttpFetcherOptions } from './http-fetcher.js';
import type { MetadataFetcher } from './updater.js';

const MAX_GUN_LENGTH = 255 * 4;
// Characters a GUN segment may hold: a registry host[:port] or an [IPv6] literal, and repository path components.
const GUN_SEGMENT = /^[A-Za-z0-9._\-:[\]]+$/;
// Role names and metadata file names: `targets/releases.json`, `snapshot.<hex>.json`, `2.root.json`.
const NAME_SEGMENT = /^[A-Za-z0-9._-]+$/;

function checkSegments(kind: string, value: string, allowed: RegExp): string[] {
  const segs = value.split('/');
  for (const s of segs) {
    if (s === '' || s === '.' || s === '..' || !allowed.test(s)) {
      throw new TrustError('MALFORMED', `${kind} ${JSON.stringify(value)} is not a safe path (segment ${JSON.stringify(s)})`);
    }
  }
  return segs;
}

function escapeSegment(s: string): string {
  // ':' is legal in a path segment and notary keys GUNs like `127.0.0.1:5000/library/demo` by it literally
  return encodeURIComponent(s).replace(/%3A/gi, ':');
}

/** Validates a GUN (`registry.example:5000/library/demo`) and returns it escaped per segment. Throws MALFORMED. */
export function escapeGun(gun: string): string {
  if (gun.length === 0 || gun.length > MAX_GUN_LENGTH) throw new TrustError('MALFORMED', `GUN of length ${gun.length} refused`);
  return checkSegments('GUN', gun, GUN_SEGMENT).map(escapeSegment).join('/');
}

/** The server path of one metadata file of a GUN. Throws MALFORMED for an unsafe GUN or name. */
export function notaryMetadataPath(gun: string, name: string): string {
  const g = escapeGun(gun);
  if (name.length === 0 || name.length > 1024) throw new TrustError('MALFORMED', `metadata name of length ${name.length} refused`);
  const n = checkSegments('metadata name', name, NAME_SEGMENT).map(escapeSegment).join('/');
  return `/v2/${g}/_trust/tuf/${n}`;
}

export type NotaryClientOptions = HttpFetcherOptions;

export class NotaryClient {
  readonly fetcher: HttpFetcher;
  private readonly owned: boolean;

  /** Either the options of a new HttpFetcher (owned: closed by close()) or an existing fetcher (shared). */
  constructor(opts: NotaryClientOptions | { readonly fetcher: HttpFetcher }) {
    if ('fetcher' in opts) {
      this.fetcher = opts.fetcher;
      this.owned = false;
    } else {
      this.fetcher = new HttpFetcher(opts);
      this.owned = true;
    }
  }

  /** The server's base URL (no credentials). */
  get url(): string {
    return this.fetcher.baseUrl;
  }

  /**
   * GET `/v2/<gun>/_trust/tuf/<name>`: the bytes, or null when the server has no such file (404).
   * Throws TrustError MALFORMED (unsafe GUN/name), ENDLESS_DATA (over maxBytes) or TRUST_UNAVAILABLE.
   */
  fetchMetadata(gun: string, name: string, maxBytes: number): Promise<Buffer | null> {
    let path: string;
    try {
      path = notaryMetadataPath(gun, name);
    } catch (e) {
      return Promise.reject(e);
    }
    return this.fetcher.get(path, maxBytes);
  }

  async close(): Promise<void> {
    if (this.owned) await this.fetcher.close();
  }
}

/** Binds a client to one GUN, in the shape the trust updater consumes. The GUN is validated now. */
export function notaryFetcher(client: NotaryClient, gun: string): MetadataFetcher {
  escapeGun(gun);
  return { fetch: (name, maxBytes) => client.fetchMetadata(gun, name, maxBytes) };
}

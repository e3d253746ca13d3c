// RFC 7512 PKCS#11 URIs ("pkcs11:token=Notary;object=root?pin-source=file:/etc/portcullis/pin"), and the closed
// set of errors everything in hsm/ throws.
//
// What we accept (RFC 7512 section 2.3):
//   path attributes  token, manufacturer, serial, model, library-manufacturer, library-description,
//                    library-version, object, id, type, slot-id, slot-description, slot-manufacturer,
//                    and vendor attributes "x-…" (kept, otherwise ignored);
//   query attributes pin-source, pin-value, module-name, module-path, and vendor "x-…" attributes.
// Anything else is refused with an error naming the attribute, before any module is loaded.
//
// Values are percent-decoded per RFC 3986; characters the RFC does not allow literally (space, "/" in the path,
// "#", …) must be percent-encoded and are refused otherwise, with a hint. Decoded values must be UTF-8, except `id`,
// which is raw bytes.
//
// pin-source: `file:/abs/path` or `file:///abs/path` (RFC 7512), and `env:NAME` (our extension: the PIN is read
// from the environment variable NAME, for services whose PIN comes from a systemd credential or a CI secret).
// pin-value: the PIN itself in the URI. Refused unless the caller passes {allowPinValue: true}, because URIs end
// up in shell history, config files and logs. toString(), redacted(), toJSON() and util.inspect never show it.
import { readFile } from 'node:fs/promises';
import { inspect } from 'node:util';

/** Why an operation in hsm/ failed. Closed set; each message names what to check. */
export const hsmReasons = {
  BAD_URI: 'the pkcs11 URI (or a signer option) is malformed, ambiguous or not allowed',
  MODULE_NOT_FOUND: 'no usable PKCS#11 module (shared library) or the pkcs11js addon could not be loaded',
  TOKEN_NOT_FOUND: 'no token matches the URI',
  TOKEN_REMOVED: 'the token went away while in use (session or object handle invalid, device removed)',
  OBJECT_NOT_FOUND: 'no key or certificate matches the URI on the token',
  OBJECT_EXISTS: 'an object with that label or id already exists on the token',
  PIN_MISSING: 'no PIN or passphrase was provided (pin-source / passphrase source unset or empty)',
  PIN_INCORRECT: 'the token refused the PIN (or the key file its passphrase)',
  PIN_LOCKED: 'the user PIN is locked on the token; the security officer must unblock it',
  MECHANISM_UNSUPPORTED: 'the token or key cannot produce a signature Notary accepts',
  SIGNATURE_INVALID: 'the signature produced does not verify with the public key; nothing was returned',
  CLOSED: 'the signer was closed',
  KEY_FILE: 'the key file cannot be read or is not a supported encrypted private key',
  DEVICE_ERROR: 'the PKCS#11 module reported an error not covered above',
} as const;

export type HsmErrorCode = keyof typeof hsmReasons;

export class HsmError extends Error {
  override readonly name = 'HsmError';
  constructor(
    readonly code: HsmErrorCode,
    message: string,
    /** The PKCS#11 return value behind this error, if any ("CKR_PIN_INCORRECT"). */
    readonly ckr?: string,
  ) {
    super(message);
  }
}

export type Pkcs11ObjectType = 'public' | 'private' | 'cert' | 'secret-key' | 'data';

export interface ParsePkcs11UriOptions {
  /** Accept `pin-value` in the query. Off by default: a PIN in a URI leaks into history, configs and logs. */
  readonly allowPinValue?: boolean;
}

interface Fields {
  token?: string;
  manufacturer?: string;
  serial?: string;
  model?: string;
  libraryManufacturer?: string;
  libraryDescription?: string;
  libraryVersion?: string;
  object?: string;
  id?: Buffer;
  type?: Pkcs11ObjectType;
  slotId?: bigint;
  slotDescription?: string;
  slotManufacturer?: string;
  pinSource?: PinSource;
  moduleName?: string;
  modulePath?: string;
  vendorPath: Array<[string, string]>;
  vendorQuery: Array<[string, string]>;
}

/** Where a PIN comes from: `file:/abs/path` (RFC 7512) or `env:NAME` (our extension). */
export type PinSource = { readonly kind: 'file'; readonly path: string } | { readonly kind: 'env'; readonly name: string };

// Path attribute name → field, in the order toString() writes them (RFC 7512 does not fix an order).
const PATH_ATTRS = {
  token: 'token',
  manufacturer: 'manufacturer',
  serial: 'serial',
  model: 'model',
  'library-manufacturer': 'libraryManufacturer',
  'library-description': 'libraryDescription',
  'library-version': 'libraryVersion',
  'slot-id': 'slotId',
  'slot-description': 'slotDescription',
  'slot-manufacturer': 'slotManufacturer',
  object: 'object',
  id: 'id',
  type: 'type',
} as const;

const QUERY_ATTRS = ['pin-source', 'pin-value', 'module-name', 'module-path'] as const;

const OBJECT_TYPES: readonly string[] = ['public', 'private', 'cert', 'secret-key', 'data'];

// RFC 7512: pk11-res-avail = ":" / "[" / "]" / "@" / "!" / "$" / "'" / "(" / ")" / "*" / "+" / "," / "="
// pk11-path-res-avail = pk11-res-avail / "&";  pk11-query-res-avail = pk11-res-avail / "/" / "?" / "|"
const UNRESERVED = /[A-Za-z0-9\-._~]/;
const RES_AVAIL = ":[]@!$'()*+,=";
const PATH_LITERAL = RES_AVAIL + '&';
const QUERY_LITERAL = RES_AVAIL + '/?|';

// Only this module holds the key that constructs a Pkcs11Uri, so every instance went through parsePkcs11Uri.
const CONSTRUCT: unique symbol = Symbol('Pkcs11Uri');

/**
 * A parsed, validated PKCS#11 URI. Only `parsePkcs11Uri` makes one (branded by its #private fields, so a plain
 * object with the same properties is not a Pkcs11Uri). The PIN from `pin-value`, if allowed, is reachable only via `pinValue()`.
 */
export class Pkcs11Uri {
  readonly #pinValue: string | undefined;
  readonly #f: Fields;

  private constructor(key: typeof CONSTRUCT, fields: Fields, pinValue: string | undefined) {
    if (key !== CONSTRUCT) throw new TypeError('use parsePkcs11Uri()');
    this.#f = fields;
    this.#pinValue = pinValue;
    Object.freeze(this);
  }

  /** @internal used by parsePkcs11Uri only (needs the module-private key). */
  static fromFields(key: typeof CONSTRUCT, fields: Fields, pinValue: string | undefined): Pkcs11Uri {
    return new Pkcs11Uri(key, fields, pinValue);
  }

  get token(): string | undefined { return this.#f.token; }
  get manufacturer(): string | undefined { return this.#f.manufacturer; }
  get serial(): string | undefined { return this.#f.serial; }
  get model(): string | undefined { return this.#f.model; }
  get libraryManufacturer(): string | undefined { return this.#f.libraryManufacturer; }
  get libraryDescription(): string | undefined { return this.#f.libraryDescription; }
  get libraryVersion(): string | undefined { return this.#f.libraryVersion; }
  get object(): string | undefined { return this.#f.object; }
  /** CKA_ID bytes (a copy). */
  get id(): Buffer | undefined { return this.#f.id ? Buffer.from(this.#f.id) : undefined; }
  get type(): Pkcs11ObjectType | undefined { return this.#f.type; }
  get slotId(): bigint | undefined { return this.#f.slotId; }
  get slotDescription(): string | undefined { return this.#f.slotDescription; }
  get slotManufacturer(): string | undefined { return this.#f.slotManufacturer; }
  get pinSource(): PinSource | undefined { return this.#f.pinSource; }
  get moduleName(): string | undefined { return this.#f.moduleName; }
  get modulePath(): string | undefined { return this.#f.modulePath; }
  /** True when the URI carried a pin-value (the value itself is not in any string form of the URI). */
  get hasPinValue(): boolean { return this.#pinValue !== undefined; }
  /** The pin-value from the URI (only present when parsed with allowPinValue). Never log it. */
  pinValue(): string | undefined { return this.#pinValue; }

  /** True if the URI names a token by any token or slot attribute. */
  get selectsToken(): boolean {
    const f = this.#f;
    return f.token !== undefined || f.serial !== undefined || f.slotId !== undefined || f.model !== undefined ||
      f.manufacturer !== undefined || f.slotDescription !== undefined || f.slotManufacturer !== undefined;
  }

  /** A copy with other object attributes (label/id/type), for addressing siblings of a key on the same token. */
  withObject(changes: { object?: string | null; id?: Buffer | null; type?: Pkcs11ObjectType | null }): Pkcs11Uri {
    const f: Fields = { ...this.#f, vendorPath: [...this.#f.vendorPath], vendorQuery: [...this.#f.vendorQuery] };
    if (changes.object !== undefined) { if (changes.object === null) delete f.object; else f.object = changes.object; }
    if (changes.id !== undefined) { if (changes.id === null) delete f.id; else f.id = Buffer.from(changes.id); }
    if (changes.type !== undefined) { if (changes.type === null) delete f.type; else f.type = changes.type; }
    return new Pkcs11Uri(CONSTRUCT, f, this.#pinValue);
  }

  /** The URI in canonical form WITHOUT any pin-value (safe to log, and parses back to the same key). */
  toString(): string {
    return this.#format(false);
  }

  /** Like toString(), but shows that a pin-value was present as `pin-value=REDACTED`. For error messages. */
  redacted(): string {
    return this.#format(true);
  }

  toJSON(): string {
    return this.redacted();
  }

  [inspect.custom](): string {
    return `Pkcs11Uri<${this.redacted()}>`;
  }

  #format(markPin: boolean): string {
    const f = this.#f;
    const path: string[] = [];
    for (const [name, key] of Object.entries(PATH_ATTRS)) {
      const v = f[key as keyof Fields];
      if (v === undefined) continue;
      if (key === 'id') path.push(`id=${encodeBytes(v as Buffer)}`);
      else if (key === 'slotId') path.push(`slot-id=${String(v)}`);
      else path.push(`${name}=${encodeValue(v as string, PATH_LITERAL)}`);
    }
    for (const [name, value] of f.vendorPath) path.push(`${name}=${encodeValue(value, PATH_LITERAL)}`);
    const query: string[] = [];
    if (f.pinSource) {
      const ps = f.pinSource.kind === 'file' ? `file:${f.pinSource.path}` : `env:${f.pinSource.name}`;
      query.push(`pin-source=${encodeValue(ps, QUERY_LITERAL)}`);
    }
    if (markPin && this.#pinValue !== undefined) query.push('pin-value=REDACTED');
    if (f.moduleName !== undefined) query.push(`module-name=${encodeValue(f.moduleName, QUERY_LITERAL)}`);
    if (f.modulePath !== undefined) query.push(`module-path=${encodeValue(f.modulePath, QUERY_LITERAL)}`);
    for (const [name, value] of f.vendorQuery) query.push(`${name}=${encodeValue(value, QUERY_LITERAL)}`);
    return `pkcs11:${path.join(';')}${query.length > 0 ? `?${query.join('&')}` : ''}`;
  }
}

function encodeValue(value: string, literal: string): string {
  let out = '';
  for (const byte of Buffer.from(value, 'utf8')) {
    const ch = String.fromCharCode(byte);
    if (byte < 0x80 && (UNRESERVED.test(ch) || literal.includes(ch))) out += ch;
    else out += `%${byte.toString(16).padStart(2, '0').toUpperCase()}`;
  }
  return out;
}

function encodeBytes(bytes: Buffer): string {
  let out = '';
  for (const byte of bytes) out += `%${byte.toString(16).padStart(2, '0')}`;
  return out;
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

function bad(message: string): never {
  throw new HsmError('BAD_URI', message);
}

// Percent-decodes one attribute value to bytes. `literal` lists the reserved characters allowed unencoded there.
// Never echoes the value (it may be a PIN).
function decodeBytes(raw: string, attr: string, literal: string, secret: boolean): Buffer {
  const bytes: number[] = [];
  for (let i = 0; i < raw.length; i++) {
    const ch = raw[i] as string;
    if (ch === '%') {
      const hex = raw.slice(i + 1, i + 3);
      if (!/^[0-9A-Fa-f]{2}$/.test(hex)) {
        bad(`invalid percent-encoding in pkcs11 URI attribute '${attr}'${secret ? '' : ` near '${raw.slice(i, i + 3)}'`}`);
      }
      bytes.push(parseInt(hex, 16));
      i += 2;
      continue;
    }
    const code = ch.charCodeAt(0);
    if (code < 0x80 && (UNRESERVED.test(ch) || literal.includes(ch))) {
      bytes.push(code);
      continue;
    }
    const shown = secret ? 'a character' : `character ${JSON.stringify(ch)}`;
    const enc = secret ? '' : ` (write ${encodeValue(ch, '')})`;
    bad(`${shown} in pkcs11 URI attribute '${attr}' must be percent-encoded${enc}`);
  }
  return Buffer.from(bytes);
}

function decodeText(raw: string, attr: string, literal: string, secret = false): string {
  const bytes = decodeBytes(raw, attr, literal, secret);
  try {
    return utf8.decode(bytes);
  } catch {
    return bad(`pkcs11 URI attribute '${attr}' is not valid UTF-8 after percent-decoding`);
  }
}

function parsePinSource(value: string): PinSource {
  if (value.startsWith('env:')) {
    const name = value.slice(4);
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) bad(`pin-source 'env:' needs an environment variable name, got '${name}'`);
    return { kind: 'env', name };
  }
  if (value.startsWith('file:')) {
    let path = value.slice(5);
    if (path.startsWith('//')) {
      // file://host/path: only an empty host or "localhost" means this machine (RFC 8089).
      const slash = path.indexOf('/', 2);
      const host = slash < 0 ? path.slice(2) : path.slice(2, slash);
      if (host !== '' && host !== 'localhost') bad(`pin-source file URI names host '${host}'; only local files are read`);
      path = slash < 0 ? '' : path.slice(slash);
    }
    if (!path.startsWith('/')) bad(`pin-source file path must be absolute, got '${path}'`);
    return { kind: 'file', path };
  }
  if (value.startsWith('/')) return { kind: 'file', path: value };
  const scheme = /^([A-Za-z][A-Za-z0-9+.-]*):/.exec(value)?.[1];
  return bad(
    `pin-source ${scheme ? `scheme '${scheme}:'` : `'${value}'`} is not supported; use file:/absolute/path or env:NAME`,
  );
}

/**
 * Parses an RFC 7512 PKCS#11 URI. Throws HsmError('BAD_URI') naming the offending attribute; never includes a
 * pin-value in a message.
 */
export function parsePkcs11Uri(text: string, opts: ParsePkcs11UriOptions = {}): Pkcs11Uri {
  if (typeof text !== 'string') bad('a pkcs11 URI must be a string');
  if (!/^pkcs11:/i.test(text)) bad(`not a pkcs11 URI (it must start with 'pkcs11:')`);
  const rest = text.slice('pkcs11:'.length);
  if (rest.includes('#')) bad(`pkcs11 URIs have no fragment; encode '#' as %23`);
  const q = rest.indexOf('?');
  const pathPart = q < 0 ? rest : rest.slice(0, q);
  const queryPart = q < 0 ? undefined : rest.slice(q + 1);

  const f: Fields = { vendorPath: [], vendorQuery: [] };
  const seen = new Set<string>();
  let pinValue: string | undefined;

  if (pathPart !== '') {
    for (const pair of pathPart.split(';')) {
      if (pair === '') bad(`empty attribute in pkcs11 URI path (stray ';')`);
      const eq = pair.indexOf('=');
      if (eq < 0) bad(`attribute '${pair}' in pkcs11 URI has no '='`);
      const name = pair.slice(0, eq);
      const raw = pair.slice(eq + 1);
      if (seen.has(name)) bad(`attribute '${name}' appears more than once in pkcs11 URI`);
      seen.add(name);
      if (name.startsWith('x-') && /^x-[A-Za-z0-9_-]+$/.test(name)) {
        f.vendorPath.push([name, decodeText(raw, name, PATH_LITERAL)]);
        continue;
      }
      if (!Object.hasOwn(PATH_ATTRS, name)) {
        if ((QUERY_ATTRS as readonly string[]).includes(name)) {
          bad(`attribute '${name}' belongs in the query part of a pkcs11 URI (after '?')`);
        }
        bad(`unknown attribute '${name}' in pkcs11 URI`);
      }
      switch (name) {
        case 'id': {
          const id = decodeBytes(raw, name, PATH_LITERAL, false);
          if (id.length === 0) bad(`attribute 'id' in pkcs11 URI is empty`);
          f.id = id;
          break;
        }
        case 'type': {
          const t = decodeText(raw, name, PATH_LITERAL);
          if (!OBJECT_TYPES.includes(t)) bad(`attribute 'type' in pkcs11 URI must be one of ${OBJECT_TYPES.join(', ')}, got '${t}'`);
          f.type = t as Pkcs11ObjectType;
          break;
        }
        case 'slot-id': {
          const s = decodeText(raw, name, PATH_LITERAL);
          if (!/^[0-9]{1,20}$/.test(s) || BigInt(s) > 0xffffffffffffffffn) bad(`attribute 'slot-id' in pkcs11 URI must be a decimal number, got '${s}'`);
          f.slotId = BigInt(s);
          break;
        }
        case 'library-version': {
          const v = decodeText(raw, name, PATH_LITERAL);
          if (!/^[0-9]+(\.[0-9]+)?$/.test(v)) bad(`attribute 'library-version' in pkcs11 URI must be M or M.N, got '${v}'`);
          f.libraryVersion = v;
          break;
        }
        default: {
          const key = PATH_ATTRS[name as keyof typeof PATH_ATTRS] as Exclude<keyof Fields, 'id' | 'type' | 'slotId' | 'pinSource' | 'vendorPath' | 'vendorQuery'>;
          f[key] = decodeText(raw, name, PATH_LITERAL);
        }
      }
    }
  }

  if (queryPart !== undefined && queryPart !== '') {
    for (const pair of queryPart.split('&')) {
      if (pair === '') bad(`empty attribute in pkcs11 URI query (stray '&')`);
      const eq = pair.indexOf('=');
      const name = eq < 0 ? pair : pair.slice(0, eq);
      if (eq < 0) bad(`attribute '${name}' in pkcs11 URI has no '='`);
      const raw = pair.slice(eq + 1);
      if (seen.has(name)) bad(`attribute '${name}' appears more than once in pkcs11 URI`);
      seen.add(name);
      if (name.startsWith('x-') && /^x-[A-Za-z0-9_-]+$/.test(name)) {
        f.vendorQuery.push([name, decodeText(raw, name, QUERY_LITERAL)]);
        continue;
      }
      switch (name) {
        case 'pin-source':
          f.pinSource = parsePinSource(decodeText(raw, name, QUERY_LITERAL));
          break;
        case 'pin-value': {
          if (!opts.allowPinValue) {
            bad(`pin-value in a pkcs11 URI is refused (it would leak into logs and shell history); ` +
              `use pin-source=file:/path or pin-source=env:NAME`);
          }
          pinValue = decodeText(raw, name, QUERY_LITERAL, true);
          break;
        }
        case 'module-name': {
          const m = decodeText(raw, name, QUERY_LITERAL);
          if (m === '' || m.includes('/')) bad(`attribute 'module-name' must be a library name without a path, got '${m}'`);
          f.moduleName = m;
          break;
        }
        case 'module-path': {
          const m = decodeText(raw, name, QUERY_LITERAL);
          if (!m.startsWith('/')) bad(`attribute 'module-path' must be an absolute path, got '${m}'`);
          f.modulePath = m;
          break;
        }
        default:
          if (Object.hasOwn(PATH_ATTRS, name)) bad(`attribute '${name}' belongs in the path part of a pkcs11 URI (before '?')`);
          bad(`unknown attribute '${name}' in pkcs11 URI`);
      }
    }
  }
  if (f.pinSource !== undefined && pinValue !== undefined) bad(`pkcs11 URI has both pin-source and pin-value; use one`);
  return Pkcs11Uri.fromFields(CONSTRUCT, f, pinValue);
}

/** True if `text` looks like a pkcs11: URI (scheme is case-insensitive). */
export function isPkcs11Uri(text: string): boolean {
  return /^pkcs11:/i.test(text);
}

/**
 * Parses a secret source written the way pin-source is: `file:/abs/path`, `file:///abs/path`, `/abs/path` or
 * `env:NAME`. Used for key-file passphrases too. Throws HsmError('BAD_URI').
 */
export function parseSecretSource(text: string): PinSource {
  return parsePinSource(text);
}

/** Shows a secret source without its value: "env:NAME" / "file:/path". */
export function describeSecretSource(source: PinSource): string {
  return source.kind === 'env' ? `env:${source.name}` : `file:${source.path}`;
}

/**
 * Reads a PIN or passphrase from its source. A file's single trailing newline (LF or CRLF) is dropped; nothing
 * else is trimmed. An unset variable, a missing file or an empty value is HsmError('PIN_MISSING'); messages name
 * the source, never the value.
 */
export async function readSecret(source: PinSource, what: string): Promise<string> {
  let value: string | undefined;
  if (source.kind === 'env') {
    value = process.env[source.name];
    if (value === undefined) throw new HsmError('PIN_MISSING', `${what}: environment variable ${source.name} is not set`);
  } else {
    try {
      value = (await readFile(source.path, 'utf8')).replace(/\r?\n$/, '');
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? 'error';
      throw new HsmError('PIN_MISSING', `${what}: cannot read ${source.path} (${code})`);
    }
  }
  if (value === '') throw new HsmError('PIN_MISSING', `${what}: ${describeSecretSource(source)} is empty`);
  return value;
}

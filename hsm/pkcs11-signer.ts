// Signing with a key that never leaves a PKCS#11 token (YubiKey/PIV via ykcs11 or OpenSC, Nitrokey, a network
// HSM, SoftHSM in tests), over the pkcs11js native addon.
//
// One loaded module per library path per process, shared and reference-counted: PKCS#11 state (C_Initialize,
// the login state of a token) is per process, so two signers on one token share one login. A second signer on an
// already logged-in token must present the same PIN as the first (compared as an HMAC under a per-process key),
// otherwise it is refused as PIN_INCORRECT without touching the token.
//
// Signing: ecdsa-p256 -> CKM_ECDSA over SHA-256(data), raw r||s (Notary "ecdsa"); ed25519 -> CKM_EDDSA over data
// ("eddsa"); RSA -> CKM_SHA256_RSA_PKCS_PSS over data, or CKM_RSA_PKCS_PSS over SHA-256(data), MGF1-SHA-256,
// salt 32 ("rsapss"). Every signature is verified with the token's public key before it is returned.
//
// A session that dies (token unplugged, daemon restarted: CKR_SESSION_HANDLE_INVALID, CKR_DEVICE_REMOVED,
// CKR_OBJECT_HANDLE_INVALID, …) is reopened once per sign(): find the token again, log in again (the PIN is read
// again from its source), find the key again and check it is the same public key. If that fails, TOKEN_REMOVED.
import { createHash, createHmac, createPublicKey, randomBytes, timingSafeEqual, X509Certificate, type KeyObject } from 'node:crypto';
import { realpathSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import type { PKCS11, Template, Mechanism } from 'pkcs11js';
import { assertSignatureValid, algorithmOfKey, methodFor } from './file-signer.js';
import { HsmError, describeSecretSource, parsePkcs11Uri, readSecret, type Pkcs11Uri } from './pkcs11-uri.js';
import type { KeyAlgorithm, NotaryMethod, Signature, Signer } from './signer.js';

export { HsmError, hsmReasons, type HsmErrorCode } from './pkcs11-uri.js';

type Pkcs11js = typeof import('pkcs11js');

// PKCS#11 v2.40 / v3.0 constants (stable numbers; pkcs11js 2.1.7 lacks the EdDSA ones).
export const CK = {
  CKA_CLASS: 0x0, CKA_TOKEN: 0x1, CKA_PRIVATE: 0x2, CKA_LABEL: 0x3, CKA_VALUE: 0x11,
  CKA_CERTIFICATE_TYPE: 0x80, CKA_ISSUER: 0x81, CKA_SERIAL_NUMBER: 0x82,
  CKA_KEY_TYPE: 0x100, CKA_SUBJECT: 0x101, CKA_ID: 0x102, CKA_SENSITIVE: 0x103, CKA_ENCRYPT: 0x104,
  CKA_DECRYPT: 0x105, CKA_WRAP: 0x106, CKA_UNWRAP: 0x107, CKA_SIGN: 0x108, CKA_VERIFY: 0x10a, CKA_DERIVE: 0x10c,
  CKA_MODULUS: 0x120, CKA_MODULUS_BITS: 0x121, CKA_PUBLIC_EXPONENT: 0x122,
  CKA_EXTRACTABLE: 0x162, CKA_LOCAL: 0x163, CKA_NEVER_EXTRACTABLE: 0x164, CKA_ALWAYS_SENSITIVE: 0x165,
  CKA_EC_PARAMS: 0x180, CKA_EC_POINT: 0x181,
  CKO_CERTIFICATE: 1, CKO_PUBLIC_KEY: 2, CKO_PRIVATE_KEY: 3,
  CKK_RSA: 0x0, CKK_EC: 0x3, CKK_EC_EDWARDS: 0x40,
  CKC_X_509: 0,
  CKM_RSA_PKCS_KEY_PAIR_GEN: 0x0, CKM_RSA_PKCS_PSS: 0x0d, CKM_SHA256_RSA_PKCS_PSS: 0x43, CKM_SHA256: 0x250,
  CKG_MGF1_SHA256: 0x2, CKM_EC_KEY_PAIR_GEN: 0x1040, CKM_ECDSA: 0x1041,
  CKM_EC_EDWARDS_KEY_PAIR_GEN: 0x1055, CKM_EDDSA: 0x1057,
  CKF_RW_SESSION: 0x2, CKF_SERIAL_SESSION: 0x4, CKU_USER: 1,
  CKF_TOKEN_INITIALIZED: 0x400, CKF_USER_PIN_COUNT_LOW: 0x10000, CKF_USER_PIN_FINAL_TRY: 0x20000,
  CKF_USER_PIN_LOCKED: 0x40000, CKF_PROTECTED_AUTHENTICATION_PATH: 0x100, CKF_SIGN: 0x800,
} as const;

/** DER of the curve OIDs in CKA_EC_PARAMS. */
export const P256_PARAMS = Buffer.from('06082a8648ce3d030107', 'hex');
export const ED25519_PARAMS = Buffer.from('06032b6570', 'hex');
const ED25519_PARAMS_NAME = Buffer.concat([Buffer.from([0x13, 12]), Buffer.from('edwards25519', 'ascii')]);

// ---------------------------------------------------------------------------------------------------------------
// The addon, loaded lazily so that file signers and URI parsing work where it is not built.

const require = createRequire(import.meta.url);
let addon: Pkcs11js | undefined;
let addonError: string | undefined;

/** The pkcs11js addon, or HsmError('MODULE_NOT_FOUND') explaining why it cannot load. */
export function loadPkcs11js(): Pkcs11js {
  if (addon) return addon;
  if (addonError === undefined) {
    try {
      addon = require('pkcs11js') as Pkcs11js;
      return addon;
    } catch (err) {
      addonError = (err as Error).message.split('\n')[0] ?? String(err);
    }
  }
  throw new HsmError(
    'MODULE_NOT_FOUND',
    `the pkcs11js native addon cannot be loaded on Node ${process.version} (${addonError}); run 'npm rebuild pkcs11js'`,
  );
}

/** Why PKCS#11 signing is unavailable in this process (addon not loadable), or undefined if it is available. */
export function pkcs11Unavailable(): string | undefined {
  try {
    loadPkcs11js();
    return undefined;
  } catch (err) {
    return (err as Error).message;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Modules (shared libraries).

/** Where we look for a module when neither the URI nor the caller names one, in this order. */
export const WELL_KNOWN_MODULES: readonly string[] = [
  '/usr/lib/softhsm/libsofthsm2.so',
  '/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so',
  '/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so',
  '/usr/lib64/pkcs11/libsofthsm2.so',
  '/usr/local/lib/softhsm/libsofthsm2.so',
  '/usr/lib/x86_64-linux-gnu/libykcs11.so',
  '/usr/lib/aarch64-linux-gnu/libykcs11.so',
  '/usr/lib64/libykcs11.so',
  '/usr/local/lib/libykcs11.so',
  '/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so',
  '/usr/lib/aarch64-linux-gnu/opensc-pkcs11.so',
  '/usr/lib64/opensc-pkcs11.so',
  '/usr/lib/opensc-pkcs11.so',
  '/usr/local/lib/opensc-pkcs11.so',
  '/Library/OpenSC/lib/opensc-pkcs11.so',
  '/opt/homebrew/lib/softhsm/libsofthsm2.so',
  '/usr/local/lib/libykcs11.dylib',
];

const MODULE_DIRS = [
  '/usr/lib/x86_64-linux-gnu/pkcs11', '/usr/lib/aarch64-linux-gnu/pkcs11', '/usr/lib64/pkcs11', '/usr/lib/pkcs11',
  '/usr/lib/softhsm', '/usr/lib/x86_64-linux-gnu/softhsm', '/usr/lib/aarch64-linux-gnu/softhsm',
  '/usr/lib/x86_64-linux-gnu', '/usr/lib/aarch64-linux-gnu', '/usr/lib64', '/usr/lib', '/usr/local/lib',
];

function isFile(path: string): boolean {
  try {
    return statSync(path).isFile();
  } catch {
    return false;
  }
}

function namedModuleCandidates(dir: string, name: string): string[] {
  return [`${name}.so`, `lib${name}.so`, name].map((n) => join(dir, n));
}

/** The module paths to try for a URI, most specific first; HsmError('MODULE_NOT_FOUND') if none exists. */
export function resolveModulePaths(uri: Pkcs11Uri, explicit?: string): string[] {
  const given = uri.modulePath ?? explicit;
  if (given !== undefined) {
    let isDir = false;
    try {
      isDir = statSync(given).isDirectory();
    } catch {
      throw new HsmError('MODULE_NOT_FOUND', `PKCS#11 module ${given} does not exist`);
    }
    if (!isDir) return [given];
    if (uri.moduleName === undefined) {
      throw new HsmError('MODULE_NOT_FOUND', `module-path ${given} is a directory; add module-name=<library name>`);
    }
    const found = namedModuleCandidates(given, uri.moduleName).filter(isFile);
    if (found.length === 0) throw new HsmError('MODULE_NOT_FOUND', `no module named '${uri.moduleName}' in ${given}`);
    return found.slice(0, 1);
  }
  if (uri.moduleName !== undefined) {
    const tried = MODULE_DIRS.flatMap((d) => namedModuleCandidates(d, uri.moduleName as string));
    const found = tried.find(isFile);
    if (found === undefined) {
      throw new HsmError('MODULE_NOT_FOUND', `no PKCS#11 module named '${uri.moduleName}' in ${MODULE_DIRS.join(', ')}; use module-path=`);
    }
    return [found];
  }
  const present = WELL_KNOWN_MODULES.filter(isFile);
  if (present.length === 0) {
    throw new HsmError(
      'MODULE_NOT_FOUND',
      `no PKCS#11 module found in the usual locations (${WELL_KNOWN_MODULES.join(', ')}); pass --module or module-path=`,
    );
  }
  // The same library may be reachable under two names (symlinks): try each once.
  const seen = new Set<string>();
  return present.filter((p) => {
    const real = realpathSync(p);
    if (seen.has(real)) return false;
    seen.add(real);
    return true;
  });
}

interface LoginState {
  readonly pinMac: Buffer;
  sessions: number;
}

interface SharedModule {
  readonly path: string;
  readonly p11: PKCS11;
  refs: number;
  /** Login state per slot (hex of the slot handle) while we hold sessions there. */
  readonly logins: Map<string, LoginState>;
}

const modules = new Map<string, SharedModule>();
const PIN_MAC_KEY = randomBytes(32);

function pinMac(pin: string): Buffer {
  return createHmac('sha256', PIN_MAC_KEY).update(pin, 'utf8').digest();
}

function acquireModule(path: string): SharedModule {
  let real: string;
  try {
    real = realpathSync(path);
  } catch {
    throw new HsmError('MODULE_NOT_FOUND', `PKCS#11 module ${path} does not exist`);
  }
  const existing = modules.get(real);
  if (existing) {
    existing.refs++;
    return existing;
  }
  const lib = loadPkcs11js();
  const p11 = new lib.PKCS11();
  try {
    p11.load(real);
  } catch (err) {
    throw new HsmError('MODULE_NOT_FOUND', `cannot load PKCS#11 module ${real}: ${(err as Error).message.split('\n')[0]}`);
  }
  try {
    // C_Initialize(NULL) tells the module the application is single-threaded, and SoftHSM then takes no locks; but
    // C_SignAsync runs on libuv's thread pool while the main thread uses other sessions of the same module, so
    // the module must lock (CKF_OS_LOCKING_OK). Without it SoftHSM crashed the process now and then under load.
    p11.C_Initialize({ flags: lib.CKF_OS_LOCKING_OK });
  } catch (err) {
    if (ckrOf(err) !== 'CKR_CRYPTOKI_ALREADY_INITIALIZED') {
      try {
        p11.close();
      } catch {
        // ignore
      }
      throw new HsmError('MODULE_NOT_FOUND', `PKCS#11 module ${real} failed to initialise (${ckrOf(err) ?? (err as Error).message})`, ckrOf(err));
    }
  }
  const mod: SharedModule = { path: real, p11, refs: 1, logins: new Map() };
  modules.set(real, mod);
  return mod;
}

function releaseModule(mod: SharedModule): void {
  mod.refs--;
  if (mod.refs > 0) return;
  modules.delete(mod.path);
  try {
    mod.p11.C_Finalize();
  } catch {
    // already finalised or the device is gone: nothing to do
  }
  try {
    mod.p11.close();
  } catch {
    // ignore
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Errors.

/** The CKR_* name of a pkcs11js error, if it is one. */
export function ckrOf(err: unknown): string | undefined {
  const msg = (err as { message?: unknown } | undefined)?.message;
  if (typeof msg !== 'string') return undefined;
  return /^(CKR_[A-Z0-9_]+)/.exec(msg)?.[1];
}

const REMOVAL = new Set([
  'CKR_SESSION_HANDLE_INVALID', 'CKR_SESSION_CLOSED', 'CKR_DEVICE_REMOVED', 'CKR_TOKEN_NOT_PRESENT',
  'CKR_TOKEN_NOT_RECOGNIZED', 'CKR_DEVICE_ERROR', 'CKR_OBJECT_HANDLE_INVALID', 'CKR_KEY_HANDLE_INVALID',
  'CKR_USER_NOT_LOGGED_IN', 'CKR_CRYPTOKI_NOT_INITIALIZED', 'CKR_SLOT_ID_INVALID', 'CKR_GENERAL_ERROR',
]);

/** True for errors after which reopening the session may help (token unplugged and back, daemon restarted). */
export function isRemovalError(err: unknown): boolean {
  const ckr = ckrOf(err);
  return ckr !== undefined && REMOVAL.has(ckr);
}

/** Maps a pkcs11js error to HsmError. `what` says what was being done, on which token. */
export function pkcs11Failure(err: unknown, what: string): HsmError {
  if (err instanceof HsmError) return err;
  const ckr = ckrOf(err);
  if (ckr === undefined) return new HsmError('DEVICE_ERROR', `${what}: ${(err as Error)?.message ?? String(err)}`);
  switch (ckr) {
    case 'CKR_PIN_INCORRECT': case 'CKR_PIN_LEN_RANGE': case 'CKR_PIN_INVALID':
      return new HsmError('PIN_INCORRECT', `${what}: the token refused the PIN (${ckr})`, ckr);
    case 'CKR_PIN_LOCKED': case 'CKR_PIN_EXPIRED':
      return new HsmError('PIN_LOCKED', `${what}: the user PIN is locked (${ckr}); the security officer must unblock it`, ckr);
    case 'CKR_MECHANISM_INVALID': case 'CKR_MECHANISM_PARAM_INVALID': case 'CKR_KEY_TYPE_INCONSISTENT':
    case 'CKR_KEY_FUNCTION_NOT_PERMITTED': case 'CKR_FUNCTION_NOT_SUPPORTED': case 'CKR_CURVE_NOT_SUPPORTED':
    case 'CKR_KEY_SIZE_RANGE': case 'CKR_TEMPLATE_INCONSISTENT':
      return new HsmError('MECHANISM_UNSUPPORTED', `${what}: ${ckr}`, ckr);
    default:
      if (REMOVAL.has(ckr)) return new HsmError('TOKEN_REMOVED', `${what}: the token or session went away (${ckr})`, ckr);
      return new HsmError('DEVICE_ERROR', `${what}: ${ckr}`, ckr);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Tokens and sessions.

/** One initialised token as the module reports it (strings with their blank padding removed). */
export interface TokenDescription {
  readonly slot: Buffer;
  readonly slotId: bigint;
  readonly label: string;
  readonly serial: string;
  readonly manufacturer: string;
  readonly model: string;
  readonly flags: number;
  readonly slotDescription: string;
  readonly slotManufacturer: string;
}

function unpad(s: string): string {
  return s.replace(/[\s\0]+$/, '');
}

function slotIdOf(handle: Buffer): bigint {
  if (handle.length >= 8) return handle.readBigUInt64LE(0);
  return BigInt(handle.readUIntLE(0, Math.min(handle.length, 6)));
}

/** The initialised tokens a module sees. Slots whose token cannot be read (just removed) are skipped. */
export function listTokens(p11: PKCS11): TokenDescription[] {
  const out: TokenDescription[] = [];
  for (const slot of p11.C_GetSlotList(true)) {
    try {
      const ti = p11.C_GetTokenInfo(slot);
      if ((ti.flags & CK.CKF_TOKEN_INITIALIZED) === 0) continue;
      const si = p11.C_GetSlotInfo(slot);
      out.push({
        slot, slotId: slotIdOf(slot), label: unpad(ti.label), serial: unpad(ti.serialNumber),
        manufacturer: unpad(ti.manufacturerID), model: unpad(ti.model), flags: ti.flags,
        slotDescription: unpad(si.slotDescription), slotManufacturer: unpad(si.manufacturerID),
      });
    } catch {
      // token vanished between C_GetSlotList and C_GetTokenInfo
    }
  }
  return out;
}

function tokenMatches(uri: Pkcs11Uri, t: TokenDescription): boolean {
  return (uri.token === undefined || uri.token === t.label) &&
    (uri.serial === undefined || uri.serial === t.serial) &&
    (uri.manufacturer === undefined || uri.manufacturer === t.manufacturer) &&
    (uri.model === undefined || uri.model === t.model) &&
    (uri.slotId === undefined || uri.slotId === t.slotId) &&
    (uri.slotDescription === undefined || uri.slotDescription === t.slotDescription) &&
    (uri.slotManufacturer === undefined || uri.slotManufacturer === t.slotManufacturer);
}

export function describeToken(t: TokenDescription): string {
  return `'${t.label}' (serial ${t.serial || '-'}, slot ${t.slotId})`;
}

function describeTokens(ts: readonly TokenDescription[]): string {
  return ts.length === 0 ? 'none' : ts.map(describeToken).join(', ');
}

function describeSelector(uri: Pkcs11Uri): string {
  const parts: string[] = [];
  if (uri.token !== undefined) parts.push(`token='${uri.token}'`);
  if (uri.serial !== undefined) parts.push(`serial='${uri.serial}'`);
  if (uri.manufacturer !== undefined) parts.push(`manufacturer='${uri.manufacturer}'`);
  if (uri.model !== undefined) parts.push(`model='${uri.model}'`);
  if (uri.slotId !== undefined) parts.push(`slot-id=${uri.slotId}`);
  if (uri.slotDescription !== undefined) parts.push(`slot-description='${uri.slotDescription}'`);
  if (uri.slotManufacturer !== undefined) parts.push(`slot-manufacturer='${uri.slotManufacturer}'`);
  return parts.join(' ');
}

export interface Pkcs11Options {
  /** The module to load when the URI has no module-path (the CLI's --module). */
  readonly module?: string;
  /** Asks for the PIN when the URI has no pin-source (an interactive prompt). Never reads argv. */
  readonly pin?: () => Promise<string>;
  /** Accept pin-value in the URI (default false). */
  readonly allowPinValue?: boolean;
  /** Fault injection for tests: every PKCS#11 call of this signer goes through the returned object. */
  readonly wrapModule?: (p11: PKCS11) => PKCS11;
}

/** Where the PIN comes from, in words for messages (never the PIN). */
function pinOrigin(uri: Pkcs11Uri, opts: Pkcs11Options): string {
  if (uri.hasPinValue) return 'pin-value';
  if (uri.pinSource) return `pin-source=${describeSecretSource(uri.pinSource)}`;
  if (opts.pin) return 'the PIN prompt';
  return 'no PIN';
}

async function resolvePin(uri: Pkcs11Uri, opts: Pkcs11Options, token: string): Promise<string> {
  const fromUri = uri.pinValue();
  if (fromUri !== undefined) {
    if (fromUri === '') throw new HsmError('PIN_MISSING', `PIN for token '${token}': pin-value is empty`);
    return fromUri;
  }
  if (uri.pinSource) return readSecret(uri.pinSource, `PIN for token '${token}'`);
  if (opts.pin) {
    const pin = await opts.pin();
    if (pin === '') throw new HsmError('PIN_MISSING', `PIN for token '${token}': the prompt returned nothing`);
    return pin;
  }
  throw new HsmError(
    'PIN_MISSING',
    `no PIN for token '${token}': add ?pin-source=file:/path or ?pin-source=env:NAME to the pkcs11 URI`,
  );
}

/** An open, logged-in session on the token a URI names. Used by the signer and by token-keys.ts. */
export class TokenSession {
  #open = true;

  private constructor(
    readonly uri: Pkcs11Uri,
    readonly p11: PKCS11,
    readonly token: TokenDescription,
    readonly handle: Buffer,
    private readonly mod: SharedModule,
    private readonly loginKey: string,
  ) {}

  /**
   * Finds the token (TOKEN_NOT_FOUND lists the tokens present), opens a session and logs in as the user.
   * The PIN is read from the URI's pin-source (or pin-value / the prompt) before any module is loaded.
   */
  static async open(uri: Pkcs11Uri, opts: Pkcs11Options, mode: { readonly rw: boolean }): Promise<TokenSession> {
    const tokenName = uri.token ?? (describeSelector(uri) || 'the only token');
    // A PIN from a file or the environment is read first: a missing PIN fails before anything is loaded. Only an
    // interactive prompt waits until the token is found.
    let pin = uri.pinSource || uri.hasPinValue || !opts.pin ? await resolvePin(uri, opts, tokenName) : undefined;
    const paths = resolveModulePaths(uri, opts.module);
    const seen: TokenDescription[] = [];
    const broken: string[] = [];
    // With one module (named by the URI or the caller) its failure is the error; when trying the usual locations,
    // a module that will not load or list its slots (no pcscd, no device) is skipped and mentioned at the end.
    const single = paths.length === 1;
    for (const path of paths) {
      let mod: SharedModule;
      try {
        mod = acquireModule(path);
      } catch (err) {
        if (single) throw err;
        broken.push(`${path}: ${(err as Error).message}`);
        continue;
      }
      let found: TokenDescription | undefined;
      let p11: PKCS11;
      try {
        p11 = opts.wrapModule ? opts.wrapModule(mod.p11) : mod.p11;
        let tokens: TokenDescription[];
        try {
          tokens = listTokens(p11);
        } catch (err) {
          if (single) throw err;
          broken.push(`${path}: ${ckrOf(err) ?? (err as Error).message}`);
          releaseModule(mod);
          continue;
        }
        seen.push(...tokens);
        const matching = uri.selectsToken ? tokens.filter((t) => tokenMatches(uri, t)) : tokens;
        if (matching.length > 1) {
          throw new HsmError(
            'BAD_URI',
            uri.selectsToken
              ? `${describeSelector(uri)} matches ${matching.length} tokens (${describeTokens(matching)}); add serial= to choose one`
              : `the pkcs11 URI names no token and ${matching.length} are present (${describeTokens(matching)}); add token=<label>`,
          );
        }
        found = matching[0];
      } catch (err) {
        releaseModule(mod);
        throw pkcs11Failure(err, `listing tokens of ${mod.path}`);
      }
      if (found === undefined) {
        releaseModule(mod);
        continue;
      }
      const token = found;
      let handle: Buffer;
      try {
        handle = p11.C_OpenSession(token.slot, CK.CKF_SERIAL_SESSION | (mode.rw ? CK.CKF_RW_SESSION : 0));
      } catch (err) {
        releaseModule(mod);
        throw pkcs11Failure(err, `opening a session on token ${describeToken(token)}`);
      }
      const loginKey = token.slot.toString('hex');
      try {
        pin ??= await resolvePin(uri, opts, token.label);
        login(p11, mod, handle, token, loginKey, pin, pinOrigin(uri, opts));
      } catch (err) {
        try {
          p11.C_CloseSession(handle);
        } catch {
          // ignore
        }
        releaseModule(mod);
        throw err;
      }
      return new TokenSession(uri, p11, token, handle, mod, loginKey);
    }
    const where = single ? `module ${paths[0]}` : `modules ${paths.join(', ')}`;
    const skipped = broken.length > 0 ? ` (skipped: ${broken.join('; ')})` : '';
    throw new HsmError(
      'TOKEN_NOT_FOUND',
      uri.selectsToken
        ? `no token matches ${describeSelector(uri)} in ${where}; tokens present: ${describeTokens(seen)}${skipped}`
        : `no initialised token in ${where}${skipped}`,
    );
  }

  get isOpen(): boolean {
    return this.#open;
  }

  /** Handles of the objects matching `template` (at most `max`). */
  find(template: Template, max = 256): Buffer[] {
    const p11 = this.p11;
    p11.C_FindObjectsInit(this.handle, template);
    try {
      return p11.C_FindObjects(this.handle, max);
    } finally {
      p11.C_FindObjectsFinal(this.handle);
    }
  }

  /** Attribute values; undefined for attributes the object does not have or will not reveal. */
  attrs(object: Buffer, types: readonly number[]): Array<Buffer | undefined> {
    try {
      const res = this.p11.C_GetAttributeValue(this.handle, object, types.map((type) => ({ type })));
      return res.map((r) => r.value);
    } catch (err) {
      const ckr = ckrOf(err);
      if (ckr !== 'CKR_ATTRIBUTE_SENSITIVE' && ckr !== 'CKR_ATTRIBUTE_TYPE_INVALID') throw err;
      return types.map((type) => {
        try {
          return this.p11.C_GetAttributeValue(this.handle, object, [{ type }])[0]?.value;
        } catch (e) {
          const c = ckrOf(e);
          if (c === 'CKR_ATTRIBUTE_SENSITIVE' || c === 'CKR_ATTRIBUTE_TYPE_INVALID') return undefined;
          throw e;
        }
      });
    }
  }

  /** The mechanisms the token supports for signing (CKF_SIGN set). */
  signMechanisms(): Set<number> {
    const out = new Set<number>();
    for (const m of this.p11.C_GetMechanismList(this.token.slot)) {
      try {
        if ((this.p11.C_GetMechanismInfo(this.token.slot, m).flags & CK.CKF_SIGN) !== 0) out.add(m);
      } catch {
        // ignore mechanisms the token will not describe
      }
    }
    return out;
  }

  mechanisms(): Set<number> {
    return new Set(this.p11.C_GetMechanismList(this.token.slot));
  }

  /** Logs out if this is the last session we hold on the token, closes the session, releases the module. */
  close(): void {
    if (!this.#open) return;
    this.#open = false;
    const state = this.mod.logins.get(this.loginKey);
    if (state) {
      state.sessions--;
      if (state.sessions <= 0) {
        this.mod.logins.delete(this.loginKey);
        try {
          this.p11.C_Logout(this.handle);
        } catch {
          // not logged in any more, or the token is gone
        }
      }
    }
    try {
      this.p11.C_CloseSession(this.handle);
    } catch {
      // the session died with the token
    }
    releaseModule(this.mod);
  }
}

function login(
  p11: PKCS11, mod: SharedModule, session: Buffer, token: TokenDescription, key: string, pin: string, origin: string,
): void {
  const where = `token ${describeToken(token)}`;
  const mac = pinMac(pin);
  const state = mod.logins.get(key);
  if (state && state.sessions > 0) {
    // Already logged in by another signer in this process: the token will not check the PIN again, so we do.
    if (!timingSafeEqual(state.pinMac, mac)) {
      throw new HsmError('PIN_INCORRECT', `${where}: the PIN from ${origin} differs from the PIN this process is logged in with`);
    }
    state.sessions++;
    return;
  }
  if ((token.flags & CK.CKF_USER_PIN_LOCKED) !== 0) {
    throw new HsmError('PIN_LOCKED', `${where}: the user PIN is locked; the security officer must unblock it (not trying the PIN)`);
  }
  const attempt = (): void => p11.C_Login(session, CK.CKU_USER, pin);
  try {
    try {
      attempt();
    } catch (err) {
      if (ckrOf(err) !== 'CKR_USER_ALREADY_LOGGED_IN') throw err;
      // Logged in by someone we do not track: log out and in again so the PIN is really checked.
      p11.C_Logout(session);
      attempt();
    }
  } catch (err) {
    const ckr = ckrOf(err);
    if (ckr === 'CKR_PIN_INCORRECT' || ckr === 'CKR_PIN_LEN_RANGE' || ckr === 'CKR_PIN_INVALID') {
      let left = '';
      try {
        const flags = p11.C_GetTokenInfo(token.slot).flags;
        if ((flags & CK.CKF_USER_PIN_LOCKED) !== 0) left = '; the PIN is now locked';
        else if ((flags & CK.CKF_USER_PIN_FINAL_TRY) !== 0) left = '; one attempt left before the PIN locks';
        else if ((flags & CK.CKF_USER_PIN_COUNT_LOW) !== 0) left = '; few attempts left before the PIN locks';
      } catch {
        // ignore
      }
      throw new HsmError('PIN_INCORRECT', `${where} refused the PIN from ${origin} (${ckr})${left}`, ckr);
    }
    throw pkcs11Failure(err, `logging in to ${where}`);
  }
  mod.logins.set(key, { pinMac: mac, sessions: 1 });
}

// ---------------------------------------------------------------------------------------------------------------
// Keys on the token.

function ulong(buf: Buffer | undefined): number | undefined {
  if (buf === undefined || buf.length === 0) return undefined;
  if (buf.length >= 8) return Number(buf.readBigUInt64LE(0));
  return buf.readUIntLE(0, Math.min(buf.length, 6));
}

/** A private key object on the token and what we know of it. */
export interface TokenKey {
  readonly handle: Buffer;
  readonly label: string;
  readonly id: Buffer;
  readonly keyType: number | undefined;
  /** Undefined if Notary cannot use the key; `unsupported` says why. */
  readonly algorithm: KeyAlgorithm | undefined;
  readonly unsupported?: string;
}

function keyTypeName(t: number | undefined): string {
  if (t === CK.CKK_RSA) return 'RSA';
  if (t === CK.CKK_EC) return 'EC';
  if (t === CK.CKK_EC_EDWARDS) return 'EC_EDWARDS';
  return t === undefined ? 'unknown' : `0x${t.toString(16)}`;
}

export function describeKey(k: { label: string; id: Buffer }): string {
  return `'${k.label}' (id ${k.id.length > 0 ? k.id.toString('hex') : '-'})`;
}

/** Reads label, id, key type and Notary algorithm of a private (or public) key object. */
export function readKeyInfo(ts: TokenSession, handle: Buffer): TokenKey {
  const [label, id, keyType, params, modulus] = ts.attrs(handle, [CK.CKA_LABEL, CK.CKA_ID, CK.CKA_KEY_TYPE, CK.CKA_EC_PARAMS, CK.CKA_MODULUS]);
  const kt = ulong(keyType);
  const base = { handle, label: label?.toString('utf8') ?? '', id: id ?? Buffer.alloc(0), keyType: kt };
  if (kt === CK.CKK_EC) {
    if (params?.equals(P256_PARAMS)) return { ...base, algorithm: 'ecdsa-p256' };
    return { ...base, algorithm: undefined, unsupported: `EC key on curve ${params?.toString('hex') ?? 'unknown'}; Notary uses P-256` };
  }
  if (kt === CK.CKK_EC_EDWARDS) {
    if (params?.equals(ED25519_PARAMS) || params?.equals(ED25519_PARAMS_NAME)) return { ...base, algorithm: 'ed25519' };
    return { ...base, algorithm: undefined, unsupported: 'Edwards-curve key that is not Ed25519' };
  }
  if (kt === CK.CKK_RSA) {
    let bits = modulus ? stripZeros(modulus).length * 8 : undefined;
    if (bits === undefined) {
      const [mb] = ts.attrs(handle, [CK.CKA_MODULUS_BITS]);
      bits = ulong(mb);
    }
    if (bits === 2048 || bits === 3072 || bits === 4096) return { ...base, algorithm: `rsa-${bits}` };
    return { ...base, algorithm: undefined, unsupported: `RSA-${bits ?? '?'} key; use 2048, 3072 or 4096 bits` };
  }
  return { ...base, algorithm: undefined, unsupported: `key type ${keyTypeName(kt)} is not supported` };
}

function stripZeros(b: Buffer): Buffer {
  let i = 0;
  while (i < b.length - 1 && b[i] === 0) i++;
  return b.subarray(i);
}

/** The template selecting objects of `cls` by the URI's object/id. */
export function objectTemplate(uri: Pkcs11Uri, cls: number): Template {
  const t: Template = [{ type: CK.CKA_CLASS, value: cls }];
  if (uri.object !== undefined) t.push({ type: CK.CKA_LABEL, value: Buffer.from(uri.object, 'utf8') });
  const id = uri.id;
  if (id !== undefined) t.push({ type: CK.CKA_ID, value: id });
  return t;
}

function describeObjectSelector(uri: Pkcs11Uri): string {
  const parts: string[] = [];
  if (uri.object !== undefined) parts.push(`object='${uri.object}'`);
  const id = uri.id;
  if (id !== undefined) parts.push(`id=${id.toString('hex')}`);
  return parts.join(' ');
}

/** The one private key the URI names; OBJECT_NOT_FOUND lists the keys present. */
export function findPrivateKey(ts: TokenSession, uri: Pkcs11Uri): TokenKey {
  if (uri.object === undefined && uri.id === undefined) {
    throw new HsmError('BAD_URI', `the pkcs11 URI ${uri.redacted()} names no key: add object=<label> or id=<%xx bytes>`);
  }
  if (uri.type !== undefined && uri.type !== 'private') {
    throw new HsmError('BAD_URI', `the pkcs11 URI names type=${uri.type}; a signing key is type=private (or no type)`);
  }
  const handles = ts.find(objectTemplate(uri, CK.CKO_PRIVATE_KEY));
  if (handles.length > 1) {
    const names = handles.map((h) => describeKey(readKeyInfo(ts, h))).join(', ');
    throw new HsmError('BAD_URI', `${describeObjectSelector(uri)} matches ${handles.length} private keys on token '${ts.token.label}' (${names}); add id=`);
  }
  const handle = handles[0];
  if (handle === undefined) {
    const present = ts.find([{ type: CK.CKA_CLASS, value: CK.CKO_PRIVATE_KEY }]).map((h) => describeKey(readKeyInfo(ts, h)));
    throw new HsmError(
      'OBJECT_NOT_FOUND',
      `no private key ${describeObjectSelector(uri)} on token '${ts.token.label}'; keys present: ${present.length > 0 ? present.join(', ') : 'none'}`,
    );
  }
  return readKeyInfo(ts, handle);
}

function decodeOctetString(v: Buffer, rawLengths: readonly number[]): Buffer {
  if (rawLengths.includes(v.length) && !(v[0] === 0x04 && v[1] === v.length - 2)) return v;
  if (v[0] !== 0x04) return v;
  let len = v[1] ?? 0;
  let off = 2;
  if (len & 0x80) {
    const n = len & 0x7f;
    len = v.readUIntBE(2, n);
    off = 2 + n;
  }
  return v.subarray(off, off + len);
}

function b64u(b: Buffer): string {
  return b.toString('base64url');
}

/** Builds a KeyObject from a public key object's attributes. */
export function publicKeyFromObject(ts: TokenSession, handle: Buffer, keyType: number | undefined): KeyObject | undefined {
  if (keyType === CK.CKK_EC) {
    const [point] = ts.attrs(handle, [CK.CKA_EC_POINT]);
    if (!point) return undefined;
    const raw = decodeOctetString(point, [65]);
    if (raw.length !== 65 || raw[0] !== 0x04) return undefined;
    return createPublicKey({ key: { kty: 'EC', crv: 'P-256', x: b64u(raw.subarray(1, 33)), y: b64u(raw.subarray(33)) }, format: 'jwk' });
  }
  if (keyType === CK.CKK_EC_EDWARDS) {
    const [point] = ts.attrs(handle, [CK.CKA_EC_POINT]);
    if (!point) return undefined;
    const raw = decodeOctetString(point, [32]);
    if (raw.length !== 32) return undefined;
    return createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: b64u(raw) }, format: 'jwk' });
  }
  if (keyType === CK.CKK_RSA) {
    const [n, e] = ts.attrs(handle, [CK.CKA_MODULUS, CK.CKA_PUBLIC_EXPONENT]);
    if (!n || !e) return undefined;
    return createPublicKey({ key: { kty: 'RSA', n: b64u(stripZeros(n)), e: b64u(stripZeros(e)) }, format: 'jwk' });
  }
  return undefined;
}

/** Objects of class `cls` that belong with `key`: same CKA_ID if it has one, else same label. */
export function siblings(ts: TokenSession, key: { label: string; id: Buffer }, cls: number): Buffer[] {
  if (key.id.length > 0) return ts.find([{ type: CK.CKA_CLASS, value: cls }, { type: CK.CKA_ID, value: key.id }]);
  if (key.label !== '') return ts.find([{ type: CK.CKA_CLASS, value: cls }, { type: CK.CKA_LABEL, value: Buffer.from(key.label, 'utf8') }]);
  return [];
}

/** The certificate stored with `key` (CKO_CERTIFICATE, same id), if any. */
export function certificateFor(ts: TokenSession, key: { label: string; id: Buffer }): X509Certificate | undefined {
  for (const h of siblings(ts, key, CK.CKO_CERTIFICATE)) {
    const [value] = ts.attrs(h, [CK.CKA_VALUE]);
    if (!value) continue;
    try {
      return new X509Certificate(value);
    } catch {
      // not an X.509 certificate we can parse: look further
    }
  }
  return undefined;
}

/**
 * The public half of `key`: its public key object (same id, else same label), else its certificate, else (RSA)
 * the modulus and exponent of the private key object. OBJECT_NOT_FOUND if none exists.
 */
export function publicKeyFor(ts: TokenSession, key: TokenKey): KeyObject {
  for (const h of siblings(ts, key, CK.CKO_PUBLIC_KEY)) {
    const k = publicKeyFromObject(ts, h, key.keyType);
    if (k) return k;
  }
  const cert = certificateFor(ts, key);
  if (cert) return cert.publicKey;
  const fromPrivate = key.keyType === CK.CKK_RSA ? publicKeyFromObject(ts, key.handle, key.keyType) : undefined;
  if (fromPrivate) return fromPrivate;
  throw new HsmError('OBJECT_NOT_FOUND', `token '${ts.token.label}' has no public key or certificate for private key ${describeKey(key)}`);
}

interface SignPlan {
  readonly method: NotaryMethod;
  readonly mechanism: Mechanism;
  /** Hash the data with SHA-256 before handing it to the token. */
  readonly prehash: boolean;
}

function planFor(ts: TokenSession, algorithm: KeyAlgorithm): SignPlan {
  const mechs = ts.signMechanisms();
  const need = (m: number, name: string): void => {
    if (!mechs.has(m)) {
      throw new HsmError('MECHANISM_UNSUPPORTED', `token ${describeToken(ts.token)} cannot sign with ${name} (needed for ${algorithm})`);
    }
  };
  switch (algorithm) {
    case 'ecdsa-p256':
      need(CK.CKM_ECDSA, 'CKM_ECDSA');
      return { method: 'ecdsa', mechanism: { mechanism: CK.CKM_ECDSA }, prehash: true };
    case 'ed25519':
      need(CK.CKM_EDDSA, 'CKM_EDDSA');
      return { method: 'eddsa', mechanism: { mechanism: CK.CKM_EDDSA }, prehash: false };
    default: {
      const parameter = { type: loadPkcs11js().CK_PARAMS_RSA_PSS, hashAlg: CK.CKM_SHA256, mgf: CK.CKG_MGF1_SHA256, saltLen: 32 };
      if (mechs.has(CK.CKM_SHA256_RSA_PKCS_PSS)) {
        return { method: 'rsapss', mechanism: { mechanism: CK.CKM_SHA256_RSA_PKCS_PSS, parameter }, prehash: false };
      }
      need(CK.CKM_RSA_PKCS_PSS, 'CKM_SHA256_RSA_PKCS_PSS or CKM_RSA_PKCS_PSS');
      return { method: 'rsapss', mechanism: { mechanism: CK.CKM_RSA_PKCS_PSS, parameter }, prehash: true };
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// The signer.

interface Bound {
  readonly ts: TokenSession;
  readonly key: TokenKey;
}

/** A Signer whose private key stays in a PKCS#11 token. */
export class Pkcs11Signer implements Signer {
  readonly displayUri: string;
  readonly algorithm: KeyAlgorithm;
  readonly #uri: Pkcs11Uri;
  readonly #opts: Pkcs11Options;
  readonly #publicKey: KeyObject;
  readonly #spki: Buffer;
  readonly #plan: SignPlan;
  readonly #tokenLabel: string;
  #bound: Bound | undefined;
  #closed = false;
  #queue: Promise<unknown> = Promise.resolve();

  private constructor(uri: Pkcs11Uri, opts: Pkcs11Options, bound: Bound, algorithm: KeyAlgorithm, publicKey: KeyObject, plan: SignPlan) {
    this.#uri = uri;
    this.#opts = opts;
    this.#bound = bound;
    this.algorithm = algorithm;
    this.#publicKey = publicKey;
    this.#spki = publicKey.export({ type: 'spki', format: 'der' });
    this.#plan = plan;
    this.#tokenLabel = bound.ts.token.label;
    this.displayUri = uri.toString();
  }

  /** Opens the key a pkcs11: URI names. The URI is parsed (and refused) before any module is loaded. */
  static async open(uri: string | Pkcs11Uri, opts: Pkcs11Options = {}): Promise<Pkcs11Signer> {
    const parsed = typeof uri === 'string' ? parsePkcs11Uri(uri, { allowPinValue: opts.allowPinValue ?? false }) : uri;
    if (parsed.hasPinValue && !opts.allowPinValue) {
      throw new HsmError('BAD_URI', 'pin-value in a pkcs11 URI is refused; use pin-source=file:/path or pin-source=env:NAME');
    }
    if (parsed.object === undefined && parsed.id === undefined) {
      throw new HsmError('BAD_URI', `the pkcs11 URI ${parsed.redacted()} names no key: add object=<label> or id=<%xx bytes>`);
    }
    const { bound, algorithm, publicKey } = await Pkcs11Signer.#bind(parsed, opts);
    let plan: SignPlan;
    try {
      plan = planFor(bound.ts, algorithm);
    } catch (err) {
      bound.ts.close();
      throw pkcs11Failure(err, `choosing a signing mechanism on token '${bound.ts.token.label}'`);
    }
    return new Pkcs11Signer(parsed, opts, bound, algorithm, publicKey, plan);
  }

  static async #bind(uri: Pkcs11Uri, opts: Pkcs11Options): Promise<{ bound: Bound; algorithm: KeyAlgorithm; publicKey: KeyObject }> {
    const ts = await TokenSession.open(uri, opts, { rw: false });
    try {
      const key = findPrivateKey(ts, uri);
      if (key.algorithm === undefined) {
        throw new HsmError('MECHANISM_UNSUPPORTED', `private key ${describeKey(key)} on token '${ts.token.label}': ${key.unsupported ?? 'unsupported'}`);
      }
      const publicKey = publicKeyFor(ts, key);
      const pubAlg = algorithmOfKey(publicKey);
      if (pubAlg !== key.algorithm) {
        throw new HsmError('OBJECT_NOT_FOUND', `the public key stored with ${describeKey(key)} is ${pubAlg}, but the private key is ${key.algorithm}`);
      }
      return { bound: { ts, key }, algorithm: key.algorithm, publicKey };
    } catch (err) {
      ts.close();
      throw pkcs11Failure(err, `finding ${describeObjectSelector(uri)} on token '${ts.token.label}'`);
    }
  }

  /** Runs `fn` after everything queued before it: one operation at a time on the session. */
  #serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#queue.then(fn, fn);
    this.#queue = run.catch(() => undefined);
    return run;
  }

  #assertOpen(): void {
    if (this.#closed) throw new HsmError('CLOSED', `signer for ${this.displayUri} is closed`);
  }

  async publicKey(): Promise<KeyObject> {
    return this.#publicKey;
  }

  certificate(): Promise<X509Certificate | undefined> {
    return this.#serial(async () => {
      this.#assertOpen();
      const { ts, key } = await this.#session();
      try {
        const cert = certificateFor(ts, key);
        if (cert && !cert.publicKey.export({ type: 'spki', format: 'der' }).equals(this.#spki)) {
          throw new HsmError('OBJECT_NOT_FOUND', `the certificate stored with ${describeKey(key)} on token '${this.#tokenLabel}' is for another key`);
        }
        return cert;
      } catch (err) {
        throw pkcs11Failure(err, `reading the certificate of ${describeKey(key)} on token '${this.#tokenLabel}'`);
      }
    });
  }

  sign(data: Buffer): Promise<Signature> {
    return this.#serial(async () => {
      this.#assertOpen();
      let sig: Buffer;
      const first = await this.#session();
      try {
        sig = await this.#rawSign(first, data);
      } catch (err) {
        // A failed C_Sign may leave the signing operation active (SoftHSM does after CKR_ARGUMENTS_BAD), so the
        // session is never reused after a failure: the next sign opens a fresh one.
        this.#discard();
        if (!isRemovalError(err)) throw pkcs11Failure(err, `signing with ${describeKey(first.key)} on token '${this.#tokenLabel}'`);
        await this.#reopen(err);
        const again = await this.#session();
        try {
          sig = await this.#rawSign(again, data);
        } catch (err2) {
          this.#discard();
          if (isRemovalError(err2)) {
            throw new HsmError('TOKEN_REMOVED', `token '${this.#tokenLabel}' failed again after reopening (${ckrOf(err2)}); is it unplugged?`, ckrOf(err2));
          }
          throw pkcs11Failure(err2, `signing with ${describeKey(again.key)} on token '${this.#tokenLabel}'`);
        }
      }
      const out: Signature = { method: this.#plan.method, sig };
      assertSignatureValid(this.#publicKey, out, data, `token '${this.#tokenLabel}' key ${describeKey(first.key)}`);
      return out;
    });
  }

  async #rawSign(b: Bound, data: Buffer): Promise<Buffer> {
    let input = this.#plan.prehash ? createHash('sha256').update(data).digest() : data;
    // pkcs11js passes a NULL pointer for an empty Buffer, which modules refuse (CKR_ARGUMENTS_BAD); an empty view
    // into a real allocation passes a valid pointer with length 0.
    if (input.length === 0) input = Buffer.alloc(1).subarray(0, 0);
    b.ts.p11.C_SignInit(b.ts.handle, this.#plan.mechanism, b.key.handle);
    return Buffer.from(await b.ts.p11.C_SignAsync(b.ts.handle, input, Buffer.alloc(1024)));
  }

  #discard(): void {
    this.#bound?.ts.close();
    this.#bound = undefined;
  }

  /** The live session, reopening it if an earlier reopen failed (the token may be back). */
  async #session(): Promise<Bound> {
    if (this.#bound) return this.#bound;
    await this.#reopen(undefined);
    return this.#bound as unknown as Bound;
  }

  async #reopen(cause: unknown): Promise<void> {
    const why = cause === undefined ? 'its session was lost earlier' : `${ckrOf(cause) ?? (cause as Error).message}`;
    this.#discard();
    let next: { bound: Bound; publicKey: KeyObject };
    try {
      next = await Pkcs11Signer.#bind(this.#uri, this.#opts);
    } catch (err) {
      if (err instanceof HsmError && (err.code === 'TOKEN_NOT_FOUND' || err.code === 'TOKEN_REMOVED' || err.code === 'DEVICE_ERROR')) {
        throw new HsmError('TOKEN_REMOVED', `token '${this.#tokenLabel}' went away while the signer was open (${why}) and could not be reopened: ${err.message}`, ckrOf(cause));
      }
      throw err;
    }
    if (!next.publicKey.export({ type: 'spki', format: 'der' }).equals(this.#spki)) {
      next.bound.ts.close();
      throw new HsmError('TOKEN_REMOVED', `after reopening token '${this.#tokenLabel}' (${why}), ${this.displayUri} names a different key; refusing to sign`);
    }
    if (this.#closed) {
      next.bound.ts.close();
      return;
    }
    this.#bound = next.bound;
  }

  close(): Promise<void> {
    return this.#serial(async () => {
      if (this.#closed) return;
      this.#closed = true;
      this.#bound?.ts.close();
      this.#bound = undefined;
    });
  }
}

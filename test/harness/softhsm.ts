// A throwaway SoftHSM token directory for tests: its own softhsm2.conf in a temp dir, SOFTHSM2_CONF set for this
// process and its children, tokens made with `softhsm2-util --init-token --free`. Never touches
// /var/lib/softhsm or /etc/softhsm.
//
// SoftHSM reads SOFTHSM2_CONF and scans the token directory in C_Initialize: create every token a test file needs
// BEFORE the first signer opens (the module stays initialised while any signer on it is open). SoftHSM slot
// numbers are random; select tokens by label.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const SOFTHSM_MODULE_CANDIDATES = [
  '/usr/lib/softhsm/libsofthsm2.so',
  '/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so',
  '/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so',
  '/usr/lib64/pkcs11/libsofthsm2.so',
];

/** The SoftHSM module path, or undefined if SoftHSM is not installed. */
export function softhsmModule(): string | undefined {
  return SOFTHSM_MODULE_CANDIDATES.find((p) => existsSync(p));
}

/** Why SoftHSM tests cannot run here (module or softhsm2-util missing), or undefined. */
export function softhsmUnavailable(): string | undefined {
  if (softhsmModule() === undefined) return 'libsofthsm2.so not installed';
  try {
    execFileSync('softhsm2-util', ['--version'], { stdio: 'pipe' });
  } catch {
    return 'softhsm2-util not installed';
  }
  return undefined;
}

export interface SoftHsmToken {
  readonly label: string;
  readonly pin: string;
  readonly soPin: string;
  /** A file holding the user PIN (mode 0600), for pin-source=file:… */
  readonly pinFile: string;
}

export interface SoftHsmDir {
  readonly dir: string;
  readonly conf: string;
  readonly module: string;
  readonly tokens: SoftHsmToken[];
  /** Initialises a new token in a free slot. */
  addToken(label: string, pin?: string, soPin?: string): SoftHsmToken;
  /** `softhsm2-util --delete-token`: the closest SoftHSM gets to unplugging a token. */
  deleteToken(label: string): void;
  /** A pkcs11: URI for an object on a token, reading the PIN from its file, with module-path set. */
  uri(token: SoftHsmToken, attrs?: string, query?: string): string;
  /** Restores the previous SOFTHSM2_CONF and removes the directory. */
  dispose(): void;
}

/** Makes the temp token directory and points SOFTHSM2_CONF at it (for this process and children). */
export function createSoftHsmDir(): SoftHsmDir {
  const module = softhsmModule();
  if (module === undefined) throw new Error('SoftHSM is not installed (libsofthsm2.so)');
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-softhsm-'));
  const tokenDir = join(dir, 'tokens');
  mkdirSync(tokenDir, { mode: 0o700 });
  const conf = join(dir, 'softhsm2.conf');
  writeFileSync(
    conf,
    [
      `directories.tokendir = ${tokenDir}`,
      'objectstore.backend = file',
      'log.level = ERROR',
      'slots.removable = false',
      'slots.mechanisms = ALL',
      'library.reset_on_fork = false',
      '',
    ].join('\n'),
    { mode: 0o600 },
  );
  const previous = process.env['SOFTHSM2_CONF'];
  process.env['SOFTHSM2_CONF'] = conf;
  const env = { ...process.env, SOFTHSM2_CONF: conf };
  const tokens: SoftHsmToken[] = [];
  let disposed = false;
  return {
    dir,
    conf,
    module,
    tokens,
    addToken(label, pin = '1234-test', soPin = '5678-so') {
      execFileSync('softhsm2-util', ['--init-token', '--free', '--label', label, '--so-pin', soPin, '--pin', pin], {
        env,
        stdio: 'pipe',
      });
      const pinFile = join(dir, `${label}.pin`);
      writeFileSync(pinFile, `${pin}\n`, { mode: 0o600 });
      const t = { label, pin, soPin, pinFile };
      tokens.push(t);
      return t;
    },
    deleteToken(label) {
      execFileSync('softhsm2-util', ['--delete-token', '--token', label], { env, stdio: 'pipe' });
    },
    uri(token, attrs = '', query = '') {
      const path = [`token=${encodeURIComponent(token.label)}`, attrs].filter((s) => s !== '').join(';');
      const q = [`pin-source=file:${token.pinFile}`, `module-path=${module}`, query].filter((s) => s !== '').join('&');
      return `pkcs11:${path}?${q}`;
    },
    dispose() {
      if (disposed) return;
      disposed = true;
      if (previous === undefined) delete process.env['SOFTHSM2_CONF'];
      else process.env['SOFTHSM2_CONF'] = previous;
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

// One entry point for "sign with this key": a pkcs11: URI opens a key on a token, anything else is an encrypted
// key file. Callers get a Signer and never see which kind it is.
import { FileSigner, type FileSignerOptions } from './file-signer.js';
import { Pkcs11Signer, type Pkcs11Options } from './pkcs11-signer.js';
import { isPkcs11Uri } from './pkcs11-uri.js';
import type { Signer } from './signer.js';

export { HsmError, hsmReasons, type HsmErrorCode } from './pkcs11-uri.js';

export interface OpenSignerOptions extends Pkcs11Options, FileSignerOptions {}

/**
 * Opens a signer. `pkcs11:…` (RFC 7512; the PIN from `pin-source=file:/path` or `pin-source=env:NAME`, or the
 * `pin` prompt) goes to the PKCS#11 module (URI module-path, else `module`, else the usual locations); any other
 * string is the path of an encrypted PEM key file (passphrase from `passphrase` or `passphraseSource`).
 * Throws HsmError.
 */
export async function openSigner(uriOrPath: string, opts: OpenSignerOptions = {}): Promise<Signer> {
  if (isPkcs11Uri(uriOrPath)) return Pkcs11Signer.open(uriOrPath, opts);
  return FileSigner.open(uriOrPath, opts);
}

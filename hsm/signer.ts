// The one interface every signing key implements, whether it lives in a PKCS#11 token or in an encrypted key
// file. Nothing outside hsm/ ever sees private key material: callers get signatures and public keys only.
// The serving path (proxy/) never imports this folder.
import type { KeyObject, X509Certificate } from 'node:crypto';

/** Key algorithms Notary v1 accepts, named as the CLI takes them (`--type ecdsa-p256`). */
export type KeyAlgorithm = 'ecdsa-p256' | 'ed25519' | 'rsa-2048' | 'rsa-3072' | 'rsa-4096';

/** Notary's per-signature method names: raw r||s ECDSA over SHA-256, Ed25519, RSA-PSS SHA-256 salt 32. */
export type NotaryMethod = 'ecdsa' | 'eddsa' | 'rsapss';

export interface Signature {
  readonly method: NotaryMethod;
  readonly sig: Buffer;
}

export interface Signer {
  /** Where the key lives, safe to log: a pkcs11: URI with any PIN removed, or a file path. */
  readonly displayUri: string;
  readonly algorithm: KeyAlgorithm;
  /** The public half (for key IDs, certificates and verifying what we are about to publish). */
  publicKey(): Promise<KeyObject>;
  /** The certificate stored next to the key, if any (x509 root and delegation keys in Notary). */
  certificate(): Promise<X509Certificate | undefined>;
  /** Signs `data` (the canonical JSON of a metadata document's `signed` part) as Notary expects. */
  sign(data: Buffer): Promise<Signature>;
  /** Ends the session (logout, close); idempotent. */
  close(): Promise<void>;
}

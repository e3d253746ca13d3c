// The contract every Signer keeps (hsm/signer.ts), as one suite run against each implementation and algorithm.
// Signatures are checked with node:crypto directly, spelling out Notary's method semantics, not with our helpers.
import { constants, verify, type KeyObject } from 'node:crypto';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { HsmError } from '../../hsm/pkcs11-uri.js';
import type { KeyAlgorithm, NotaryMethod, Signer } from '../../hsm/signer.js';

export interface SignerHarness {
  readonly algorithm: KeyAlgorithm;
  /** A new signer on the same key each time. */
  open(): Promise<Signer>;
  /** The public key as known without the signer (from key generation). */
  readonly expectedPublicKey: KeyObject;
  /** Strings that must never appear in displayUri or in error messages (PINs, passphrases). */
  readonly secrets: readonly string[];
  cleanup?(): Promise<void>;
}

const METHOD: Record<KeyAlgorithm, NotaryMethod> = {
  'ecdsa-p256': 'ecdsa',
  ed25519: 'eddsa',
  'rsa-2048': 'rsapss',
  'rsa-3072': 'rsapss',
  'rsa-4096': 'rsapss',
};

/** Notary's verification rules, written out: what notary-server and the docker client check. */
export function notaryVerifies(key: KeyObject, method: NotaryMethod, data: Buffer, sig: Buffer, saltLength = 32): boolean {
  switch (method) {
    case 'ecdsa':
      return sig.length === 64 && verify('sha256', data, { key, dsaEncoding: 'ieee-p1363' }, sig);
    case 'eddsa':
      return sig.length === 64 && verify(null, data, key, sig);
    case 'rsapss':
      return verify('sha256', data, { key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength }, sig);
  }
}

function spki(k: KeyObject): string {
  return k.export({ type: 'spki', format: 'der' }).toString('base64');
}

const SIGNED = Buffer.from('{"_type":"Targets","expires":"2030-01-01T00:00:00Z","targets":{"v1":{"hashes":{"sha256":"3q2+7w=="},"length":1}},"version":7}');

export function describeSigner(name: string, setup: () => Promise<SignerHarness>): void {
  describe(`Signer conformance: ${name}`, () => {
    let h: SignerHarness;
    let opened: Signer[] = [];

    async function open(): Promise<Signer> {
      const s = await h.open();
      opened.push(s);
      return s;
    }

    beforeAll(async () => {
      h = await setup();
    });
    afterEach(async () => {
      for (const s of opened) await s.close();
      opened = [];
    });
    afterAll(async () => {
      await h?.cleanup?.();
    });

    it('reports the algorithm and signs with the matching Notary method', async () => {
      const s = await open();
      expect(s.algorithm).toBe(h.algorithm);
      const sig = await s.sign(SIGNED);
      expect(sig.method).toBe(METHOD[h.algorithm]);
      expect(Buffer.isBuffer(sig.sig)).toBe(true);
    });

    it('signatures verify with node:crypto under the Notary method semantics', async () => {
      const s = await open();
      const sig = await s.sign(SIGNED);
      expect(notaryVerifies(h.expectedPublicKey, sig.method, SIGNED, sig.sig)).toBe(true);
      if (sig.method === 'ecdsa') expect(sig.sig.length).toBe(64); // raw r||s, not DER
      if (sig.method === 'rsapss') {
        expect(sig.sig.length).toBe((h.expectedPublicKey.asymmetricKeyDetails?.modulusLength ?? 0) / 8);
        // salt length 32 exactly: Go's verifier with a fixed salt length refuses others
        expect(notaryVerifies(h.expectedPublicKey, sig.method, SIGNED, sig.sig, 20)).toBe(false);
      }
    });

    it('a signature does not verify over other data', async () => {
      const s = await open();
      const sig = await s.sign(SIGNED);
      const other = Buffer.from(SIGNED);
      other[other.length - 2] = other[other.length - 2]! ^ 1;
      expect(notaryVerifies(h.expectedPublicKey, sig.method, other, sig.sig)).toBe(false);
    });

    it('signs empty, binary and 1 MiB inputs', async () => {
      const s = await open();
      for (const data of [Buffer.alloc(0), Buffer.from([0, 255, 0x80, 0x0a]), Buffer.alloc(1 << 20, 0x61)]) {
        const sig = await s.sign(data);
        expect(notaryVerifies(h.expectedPublicKey, sig.method, data, sig.sig)).toBe(true);
      }
    });

    it('concurrent sign() calls all produce valid signatures', async () => {
      const s = await open();
      const inputs = Array.from({ length: 8 }, (_, i) => Buffer.from(`document ${i}`));
      const sigs = await Promise.all(inputs.map((d) => s.sign(d)));
      sigs.forEach((sig, i) => expect(notaryVerifies(h.expectedPublicKey, sig.method, inputs[i] as Buffer, sig.sig)).toBe(true));
    });

    it('publicKey() is the key the signatures verify with', async () => {
      const s = await open();
      const pub = await s.publicKey();
      expect(pub.type).toBe('public');
      expect(spki(pub)).toBe(spki(h.expectedPublicKey));
      const sig = await s.sign(SIGNED);
      expect(notaryVerifies(pub, sig.method, SIGNED, sig.sig)).toBe(true);
    });

    it('two signers on the same key work side by side', async () => {
      const [a, b] = [await open(), await open()];
      const [sa, sb] = await Promise.all([a.sign(SIGNED), b.sign(SIGNED)]);
      expect(notaryVerifies(h.expectedPublicKey, sa.method, SIGNED, sa.sig)).toBe(true);
      expect(notaryVerifies(h.expectedPublicKey, sb.method, SIGNED, sb.sig)).toBe(true);
      await a.close();
      const again = await b.sign(SIGNED);
      expect(notaryVerifies(h.expectedPublicKey, again.method, SIGNED, again.sig)).toBe(true);
    });

    it('close() is idempotent, also when called concurrently', async () => {
      const s = await open();
      await s.sign(SIGNED);
      await Promise.all([s.close(), s.close()]);
      await s.close();
    });

    it('sign() after close() fails clearly (HsmError CLOSED naming the key)', async () => {
      const s = await open();
      await s.close();
      const err = await s.sign(SIGNED).then(() => undefined, (e: unknown) => e);
      expect(err).toBeInstanceOf(HsmError);
      expect((err as HsmError).code).toBe('CLOSED');
      expect((err as HsmError).message).toContain(s.displayUri);
    });

    it('displayUri is set and never contains a PIN or passphrase', async () => {
      const s = await open();
      expect(s.displayUri.length).toBeGreaterThan(0);
      for (const secret of h.secrets) expect(s.displayUri).not.toContain(secret);
    });
  });
}

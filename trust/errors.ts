// The closed set of reasons the trust core refuses metadata. Each names the attack or spec step it stops, so a
// log line or an OCI `DENIED` detail tells an operator what happened without reading code. The proxy maps these
// onto its OCI error codes; nothing here knows about HTTP.
export const trustReasons = {
  NOT_SIGNED: 'the target is not listed in any trusted targets role',
  DIGEST_MISMATCH: 'bytes do not match the length or hashes the trusted metadata signs (arbitrary software attack)',
  EXPIRED: 'trusted metadata has expired (freeze attack)',
  ROLLBACK: 'metadata is older than a version already trusted (rollback attack)',
  THRESHOLD: 'not enough valid signatures from distinct keys of the role',
  BAD_SIGNATURE: 'a signature or key is malformed',
  KEYID_MISMATCH: 'a key ID does not match the key it names',
  WRONG_TYPE: 'the metadata is not the role it was fetched as (_type mismatch)',
  MIX_AND_MATCH: 'metadata does not match what the snapshot or timestamp says it must be (mix-and-match attack)',
  ENDLESS_DATA: 'metadata or a target is larger than the limit (endless data attack)',
  MALFORMED: 'metadata is not well-formed',
  DELEGATION: 'the delegation graph is invalid, too deep or cyclic',
  CERTIFICATE: 'an x509 key certificate is invalid, outside its validity window or issued for another name',
  NO_TRUST_DATA: 'the repository has no trust data',
  TRUST_UNAVAILABLE: 'trust data could not be fetched and no valid cached copy exists',
  STORE: 'the trusted metadata store failed',
} as const;

export type TrustReason = keyof typeof trustReasons;

export class TrustError extends Error {
  override readonly name = 'TrustError';
  constructor(
    readonly reason: TrustReason,
    message: string,
    readonly role?: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

export function refuse(reason: TrustReason, message: string, role?: string): never {
  throw new TrustError(reason, message, role);
}

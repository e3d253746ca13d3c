// Everything hostile input can grow has a ceiling here, applied while bytes stream in (not after).
export interface TrustLimits {
  /** Bytes read for root.json / one <n>.root.json. */
  readonly rootMaxBytes: number;
  /** Bytes read for timestamp.json: small by nature, so an endless-data attack stops early. */
  readonly timestampMaxBytes: number;
  /** Bytes read for snapshot.json when the timestamp does not give a length (Notary always does). */
  readonly snapshotMaxBytes: number;
  /** Bytes read for a targets role when its length is not given by the snapshot. */
  readonly targetsMaxBytes: number;
  /** Root versions walked in one refresh (TUF 5.3.3's MAX_ROOT_ROTATIONS). */
  readonly maxRootRotations: number;
  /** Delegated roles visited while looking up one target (TUF 5.6.7's MAX_DELEGATIONS). */
  readonly maxDelegations: number;
  /** Depth of the delegation tree, counted from the top-level targets role. */
  readonly maxDelegationDepth: number;
  /** Bytes of a target fetched by `tuf download` when the metadata gives no length (it always does). */
  readonly targetMaxBytes: number;
  /** JSON nesting accepted in metadata; real metadata nests < 10 deep. */
  readonly maxJsonDepth: number;
}

export const defaultTrustLimits: TrustLimits = Object.freeze({
  rootMaxBytes: 512 * 1024,
  timestampMaxBytes: 16 * 1024,
  snapshotMaxBytes: 4 * 1024 * 1024,
  targetsMaxBytes: 16 * 1024 * 1024,
  maxRootRotations: 256,
  maxDelegations: 32,
  maxDelegationDepth: 8,
  targetMaxBytes: 512 * 1024 * 1024,
  maxJsonDepth: 64,
});

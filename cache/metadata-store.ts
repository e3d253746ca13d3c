// The narrow interface between the trust core and whatever keeps its trusted metadata. The store knows bytes,
// names and version numbers; it knows nothing of TUF. The trusted set decides what goes in; the store's only
// promise is that one commit lands whole or not at all, and that a later load sees exactly the last commit.

export interface StoredDocument {
  /** The exact bytes as served (hashes in snapshot/timestamp are over these). */
  readonly bytes: Buffer;
  /** The document's version, so rollback checks do not need to re-parse. */
  readonly version: number;
}

export interface StoredNamespace {
  /** The last trusted copy of each document, by name ("root", "timestamp", "targets/releases", …). */
  readonly documents: ReadonlyMap<string, StoredDocument>;
  /** The highest version ever accepted per name: the rollback memory that survives restarts. */
  readonly highWater: ReadonlyMap<string, number>;
}

export interface NamespaceChange {
  /** Documents to write (replacing any previous copy). */
  readonly put?: ReadonlyMap<string, StoredDocument>;
  /** Documents to delete (e.g. timestamp/snapshot after their keys rotated: TUF 5.3.11 fast-forward recovery). */
  readonly remove?: readonly string[];
  /** High-water marks to set. A name not listed keeps its mark; a name mapped to null loses it. */
  readonly highWater?: ReadonlyMap<string, number | null>;
}

export interface MetadataStore {
  /** One consistent read of a namespace (a GUN, or one TUF repository). Unknown namespace: empty maps. */
  load(namespace: string): Promise<StoredNamespace>;
  /** Applies the whole change in one transaction. */
  commit(namespace: string, change: NamespaceChange): Promise<void>;
  /** Names of the namespaces that hold anything. */
  namespaces(): Promise<string[]>;
  close(): Promise<void>;
}

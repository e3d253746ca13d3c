// One LMDB environment per state directory. Every durable record the daemon keeps (trusted metadata, decisions,
// the blob index, …) lives in a named database of this one environment, so a single write transaction can span
// several of them and a single read snapshot sees them all at one point in time.
//
// Settings, and why:
// - Durable: no `noSync`, no `noMetaSync`, and `overlappingSync: false`, so a `transaction()` returns only after
//   LMDB has fsync'ed the data pages and then the meta page (classic LMDB commit). With lmdb-js's default
//   overlapping sync the commit is visible before it is flushed; we prefer "returned means on disk".
//   Every process that opens the environment must use the same flags, which is why everyone goes through here.
// - Several processes may open the same environment at once (LMDB's lock file coordinates them; the prebuilt
//   binding uses robust mutexes, so a process killed while holding the write lock does not wedge the others, and
//   stale reader slots of dead processes are cleared when an environment is opened).
// - The environment is a directory `<stateDir>/portcullis.lmdb/` holding `data.mdb` and `lock.mdb`.
// - Values default to raw `binary` (Buffers in, Buffers out): callers that need structure encode it themselves
//   in a versioned layout rather than relying on an implicit serialiser. Other encodings can be chosen per db.
//
// This module knows nothing of TUF, OCI or any record kind: it only hands out named databases.

import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { open, type Database, type Key, type RootDatabase } from 'lmdb';

export type LmdbValueEncoding = 'binary' | 'ordered-binary' | 'string' | 'json' | 'msgpack';
export type LmdbKeyEncoding = 'binary' | 'ordered-binary' | 'uint32';

export interface LmdbDbOptions {
  /** How values are (de)serialised. Default `binary`: values are Buffers/Uint8Arrays, read back as Buffers. */
  readonly encoding?: LmdbValueEncoding;
  /** How keys are (de)serialised. Default `ordered-binary` (lmdb-js's default: strings, numbers, arrays…). */
  readonly keyEncoding?: LmdbKeyEncoding;
}

export interface LmdbEnvOptions {
  /** File name of the environment directory inside the state directory. Default `portcullis.lmdb`. */
  readonly name?: string;
  /** Maximum number of named databases. Default 64. */
  readonly maxDbs?: number;
  /** Initial map size in bytes (lmdb-js grows it on demand). Default: lmdb-js's default. */
  readonly mapSize?: number;
}

export const LMDB_ENV_DIR_NAME = 'portcullis.lmdb';

interface OpenDb {
  readonly db: Database<unknown, Key>;
  readonly encoding: LmdbValueEncoding;
  readonly keyEncoding: LmdbKeyEncoding;
}

export class LmdbEnv {
  readonly #root: RootDatabase<unknown, Key>;
  readonly #dbs = new Map<string, OpenDb>();
  #closed: Promise<void> | undefined;

  /** Path of the environment directory (`<stateDir>/portcullis.lmdb`). */
  readonly path: string;

  private constructor(path: string, root: RootDatabase<unknown, Key>) {
    this.path = path;
    this.#root = root;
  }

  /** Opens (creating if needed) the environment under `stateDir`. Synchronous: LMDB opens synchronously. */
  static open(stateDir: string, opts: LmdbEnvOptions = {}): LmdbEnv {
    const name = opts.name ?? LMDB_ENV_DIR_NAME;
    if (name === '' || name.includes('/') || name.includes('\\') || name === '.' || name === '..') {
      throw new Error(`invalid LMDB environment name ${JSON.stringify(name)}`);
    }
    mkdirSync(stateDir, { recursive: true });
    const path = join(stateDir, name);
    const root = open<unknown, Key>({
      path,
      noSubdir: false,
      maxDbs: opts.maxDbs ?? 64,
      ...(opts.mapSize !== undefined ? { mapSize: opts.mapSize } : {}),
      overlappingSync: false,
      noSync: false,
      noMetaSync: false,
      useWritemap: false,
      // the root db itself is not used for records; keep it binary so nothing implicit is ever written
      encoding: 'binary',
    });
    return new LmdbEnv(path, root);
  }

  /**
   * The named database `name`, created on first use. Asking again for the same name returns the same handle;
   * asking with different encodings is a programming error and throws.
   */
  db<V = Buffer, K extends Key = Key>(name: string, opts: LmdbDbOptions = {}): Database<V, K> {
    this.#assertOpen();
    if (typeof name !== 'string' || name === '') throw new Error('database name must be a non-empty string');
    const encoding = opts.encoding ?? 'binary';
    const keyEncoding = opts.keyEncoding ?? 'ordered-binary';
    const existing = this.#dbs.get(name);
    if (existing) {
      if (existing.encoding !== encoding || existing.keyEncoding !== keyEncoding) {
        throw new Error(
          `database ${JSON.stringify(name)} already opened with encoding ${existing.encoding}/${existing.keyEncoding}`,
        );
      }
      return existing.db as unknown as Database<V, K>;
    }
    const db = this.#root.openDB<unknown, Key>(name, { encoding, keyEncoding });
    this.#dbs.set(name, { db, encoding, keyEncoding });
    return db as unknown as Database<V, K>;
  }

  /**
   * Runs `fn` in one write transaction and commits it synchronously: when this returns, the transaction is
   * committed and flushed to disk. If `fn` throws, the transaction is aborted and the error rethrown. `fn` must
   * be synchronous (use the `*Sync` write methods, e.g. `putSync`/`removeSync`): a returned promise aborts.
   * Only one write transaction runs at a time across all processes sharing the environment.
   */
  transaction<T>(fn: () => T): T {
    this.#assertOpen();
    return this.#root.transactionSync(() => {
      const result = fn();
      if (isThenable(result)) {
        throw new Error('LmdbEnv.transaction callback must be synchronous (it returned a promise)');
      }
      return result;
    });
  }

  /**
   * Runs `fn` against one read snapshot: every read made inside `fn` with `{ transaction }` sees the environment
   * at the same instant. The snapshot is refreshed first, so it includes commits made by other processes.
   */
  read<T>(fn: (transaction: ReturnType<RootDatabase['useReadTransaction']>) => T): T {
    this.#assertOpen();
    this.#root.resetReadTxn();
    const txn = this.#root.useReadTransaction();
    try {
      const result = fn(txn);
      if (isThenable(result)) throw new Error('LmdbEnv.read callback must be synchronous (it returned a promise)');
      return result;
    } finally {
      txn.done();
    }
  }

  get closed(): boolean {
    return this.#closed !== undefined;
  }

  /** Closes the environment (idempotent). Handles from `db()` are unusable afterwards. */
  close(): Promise<void> {
    if (!this.#closed) {
      this.#dbs.clear();
      this.#closed = this.#root.close();
    }
    return this.#closed;
  }

  #assertOpen(): void {
    if (this.#closed) throw new Error(`LMDB environment ${this.path} is closed`);
  }
}

function isThenable(value: unknown): boolean {
  return (
    (typeof value === 'object' || typeof value === 'function') &&
    value !== null &&
    typeof (value as { then?: unknown }).then === 'function'
  );
}

// MetadataStore over a plain directory: the `portcullis tuf --metadata-dir D` contract.
//
// The directory holds exactly the trusted metadata files, byte-for-byte as served, one per document:
//   <encodeURIComponent(name)>.json      root.json, timestamp.json, targets%2Freleases.json, ..%2Fx.json, …
// encodeURIComponent turns every '/' and '\' into %2F/%5C, so no name can address a file outside the directory.
// Nothing else is written there except short-lived temp files `.tmp-<hex>.partial` (see below).
//
// Namespaces: one directory is one repository. By default the namespace argument is validated and otherwise
// ignored (every namespace sees the same files); pass `namespace` to bind the store to one value, and any other
// namespace is then refused. `namespaces()` reports the bound namespace (or '' when unbound) once the
// directory holds a document.
//
// Versions and high water: the files are the only state, so the version of a document is read from its bytes
// by the caller-supplied `versionOf(name, bytes)` (the trust core parses; this module knows no TUF), and the
// high-water mark of a name IS the version of the file present. `highWater` entries of a change are validated
// and otherwise ignored; removing a file forgets its mark. That is the rollback memory the TUF conformance
// contract expects from a metadata directory, and it is weaker than LmdbMetadataStore's: marks that outlive
// their document are not kept. A `put` whose stated version differs from `versionOf(name, bytes)` is refused,
// so a later load always reports the versions that were committed.
//
// Crash behaviour: each file is replaced atomically (temp file in the same directory, fsync, rename, fsync of
// the directory), but a commit touching several files is not atomic across them. Its steps happen in a fixed
// order: every temp file is written and fsync'ed first (a failure here changes nothing), then the puts are
// renamed into place in the iteration order of `change.put` (a Map: insertion order), then the removals are
// unlinked in the order of `change.remove`, with the directory fsync'ed after each step. After a crash the
// directory therefore reflects a PREFIX of that sequence; the caller orders the Map so that every prefix is a
// state it can recover from (e.g. the TUF client order: root, timestamp, snapshot, targets, delegations).
// Stale temp files left by a crash are deleted by `FileMetadataStore.open`. Commits and loads of one store
// instance are serialised; one directory must be used by one process at a time.

import { randomBytes } from 'node:crypto';
import { mkdir, open as openFile, readdir, readFile, rename, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import type { MetadataStore, NamespaceChange, StoredDocument, StoredNamespace } from './metadata-store.js';

export type VersionOf = (name: string, bytes: Buffer) => number;

export interface FileMetadataStoreOptions {
  /** Reads the version of document `name` from its bytes (throws if the bytes are not a valid document). */
  readonly versionOf: VersionOf;
  /** Bind the directory to this namespace: any other namespace is refused. Default: namespace ignored. */
  readonly namespace?: string;
}

const SUFFIX = '.json';
const TEMP_PATTERN = /^\.tmp-[0-9a-f]+\.partial$/;
/** Common file-name limit (ext4, xfs, btrfs, apfs): 255 bytes. Encoded names are ASCII. */
const MAX_FILE_NAME = 255;

export class FileMetadataStore implements MetadataStore {
  readonly dir: string;
  readonly #versionOf: VersionOf;
  readonly #namespace: string | undefined;
  #queue: Promise<unknown> = Promise.resolve();
  #closed = false;

  /** No I/O: the directory is created on the first commit. Prefer `FileMetadataStore.open`. */
  constructor(dir: string, opts: FileMetadataStoreOptions) {
    if (typeof opts?.versionOf !== 'function') throw new TypeError('versionOf must be a function');
    if (opts.namespace !== undefined) assertLabel(opts.namespace, 'namespace');
    this.dir = dir;
    this.#versionOf = opts.versionOf;
    this.#namespace = opts.namespace;
  }

  /** Creates the directory if needed and deletes temp files left behind by an interrupted commit. */
  static async open(dir: string, opts: FileMetadataStoreOptions): Promise<FileMetadataStore> {
    const store = new FileMetadataStore(dir, opts);
    await mkdir(dir, { recursive: true });
    for (const entry of await readdir(dir)) {
      if (TEMP_PATTERN.test(entry)) await unlink(join(dir, entry)).catch(ignoreMissing);
    }
    return store;
  }

  /** The file name that holds document `name` (validated; never contains a path separator). */
  static fileNameOf(name: string): string {
    assertLabel(name, 'document name');
    const file = encodeURIComponent(name) + SUFFIX;
    if (file.length > MAX_FILE_NAME) throw new Error(`document name too long for a file name: ${JSON.stringify(name)}`);
    return file;
  }

  load(namespace: string): Promise<StoredNamespace> {
    return this.#serialised(async () => {
      this.#assertNamespace(namespace);
      const documents = new Map<string, StoredDocument>();
      const highWater = new Map<string, number>();
      for (const [name, file] of await this.#listDocuments()) {
        let bytes: Buffer;
        try {
          bytes = await readFile(join(this.dir, file));
        } catch (err) {
          if (isMissing(err) || (err as NodeJS.ErrnoException)?.code === 'EISDIR') continue;
          throw err;
        }
        const version = this.#readVersion(name, bytes, file);
        documents.set(name, { bytes, version });
        highWater.set(name, version);
      }
      return { documents, highWater };
    });
  }

  commit(namespace: string, change: NamespaceChange): Promise<void> {
    return this.#serialised(async () => {
      this.#assertNamespace(namespace);
      // validate everything first: a refused change touches nothing
      const puts: Array<{ file: string; bytes: Buffer }> = [];
      const removes: string[] = [];
      const putNames = new Set<string>();
      for (const [name, doc] of change.put ?? new Map<string, StoredDocument>()) {
        const file = FileMetadataStore.fileNameOf(name);
        assertVersion(doc?.version, `version of ${JSON.stringify(name)}`);
        if (!(doc.bytes instanceof Uint8Array)) throw new TypeError(`bytes of ${JSON.stringify(name)} must be a Buffer`);
        const bytes = Buffer.from(doc.bytes); // a copy: what is checked is what is written
        const actual = this.#readVersion(name, bytes, file);
        if (actual !== doc.version) {
          throw new Error(`version of ${JSON.stringify(name)} is ${doc.version} but its bytes say ${actual}`);
        }
        puts.push({ file, bytes });
        putNames.add(name);
      }
      for (const name of change.remove ?? []) {
        const file = FileMetadataStore.fileNameOf(name);
        if (putNames.has(name)) throw new Error(`${JSON.stringify(name)} is both put and removed in one change`);
        removes.push(file);
      }
      for (const [name, mark] of change.highWater ?? new Map<string, number | null>()) {
        assertLabel(name, 'document name');
        if (mark !== null) assertVersion(mark, `high water of ${JSON.stringify(name)}`);
      }
      if (puts.length === 0 && removes.length === 0) return;

      await mkdir(this.dir, { recursive: true });
      // 1. all temp files, durable, before anything visible changes
      const temps: string[] = [];
      try {
        for (const put of puts) {
          const temp = join(this.dir, `.tmp-${randomBytes(8).toString('hex')}.partial`);
          temps.push(temp);
          const handle = await openFile(temp, 'wx', 0o644);
          try {
            await handle.writeFile(put.bytes);
            await handle.sync();
          } finally {
            await handle.close();
          }
        }
      } catch (err) {
        await Promise.all(temps.map((temp) => unlink(temp).catch(ignoreMissing)));
        throw err;
      }
      // 2. renames in Map order, 3. removals in order; the directory is fsync'ed after each step
      let renamed = 0;
      try {
        for (const [i, put] of puts.entries()) {
          await rename(temps[i]!, join(this.dir, put.file));
          renamed = i + 1;
          await syncDir(this.dir);
        }
      } catch (err) {
        await Promise.all(temps.slice(renamed).map((temp) => unlink(temp).catch(ignoreMissing)));
        throw err;
      }
      for (const file of removes) {
        try {
          await unlink(join(this.dir, file));
        } catch (err) {
          if (isMissing(err)) continue;
          throw err;
        }
        await syncDir(this.dir);
      }
    });
  }

  namespaces(): Promise<string[]> {
    return this.#serialised(async () => ((await this.#listDocuments()).size > 0 ? [this.#namespace ?? ''] : []));
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#queue.catch(() => undefined);
  }

  /** name -> file name, for every canonical `<encoded name>.json` file in the directory. */
  async #listDocuments(): Promise<Map<string, string>> {
    const found = new Map<string, string>();
    let entries;
    try {
      entries = await readdir(this.dir, { withFileTypes: true });
    } catch (err) {
      if (isMissing(err)) return found;
      throw err;
    }
    for (const entry of entries) {
      if (!entry.isFile() && !entry.isSymbolicLink()) continue;
      const file = entry.name;
      if (!file.endsWith(SUFFIX)) continue;
      const encoded = file.slice(0, -SUFFIX.length);
      let name: string;
      try {
        name = decodeURIComponent(encoded);
        // only files this store could have written: one canonical spelling per name
        if (FileMetadataStore.fileNameOf(name) !== file) continue;
      } catch {
        continue;
      }
      found.set(name, file);
    }
    return found;
  }

  #readVersion(name: string, bytes: Buffer, file: string): number {
    let version: unknown;
    try {
      version = this.#versionOf(name, bytes);
    } catch (err) {
      throw new Error(`cannot read the version of ${file} in ${this.dir}: ${(err as Error)?.message ?? String(err)}`, {
        cause: err,
      });
    }
    assertVersion(version, `version of ${file}`);
    return version;
  }

  #assertNamespace(namespace: string): void {
    assertLabel(namespace, 'namespace');
    if (this.#namespace !== undefined && namespace !== this.#namespace) {
      throw new Error(
        `metadata directory ${this.dir} holds namespace ${JSON.stringify(this.#namespace)}, not ${JSON.stringify(namespace)}`,
      );
    }
  }

  #serialised<T>(fn: () => Promise<T>): Promise<T> {
    if (this.#closed) return Promise.reject(new Error('metadata store is closed'));
    const run = this.#queue.then(fn, fn);
    this.#queue = run.catch(() => undefined);
    return run;
  }
}

/** Refuses non-strings, empty strings, NUL and ill-formed UTF-16 (which encodeURIComponent cannot encode). */
function assertLabel(value: unknown, what: string): asserts value is string {
  if (typeof value !== 'string') throw new TypeError(`${what} must be a string`);
  if (value === '') throw new Error(`${what} must not be empty`);
  if (value.includes('\0')) throw new Error(`${what} must not contain NUL: ${JSON.stringify(value)}`);
  if (/[\uD800-\uDFFF]/u.test(value)) throw new Error(`${what} is not well-formed Unicode: ${JSON.stringify(value)}`);
}

function assertVersion(value: unknown, what: string): asserts value is number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) {
    throw new Error(`${what} must be a non-negative safe integer, got ${String(value)}`);
  }
}

async function syncDir(dir: string): Promise<void> {
  const handle = await openFile(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

function isMissing(err: unknown): boolean {
  return (err as NodeJS.ErrnoException | undefined)?.code === 'ENOENT';
}

function ignoreMissing(err: unknown): void {
  if (!isMissing(err)) throw err;
}

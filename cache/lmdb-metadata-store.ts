// MetadataStore over the daemon's LMDB environment.
//
// Layout (two named databases, binary keys and values):
//   tuf-docs       key utf8(namespace) 0x00 utf8(name)   value 0x01 | u64be(version) | bytes
//   tuf-highwater  key utf8(namespace) 0x00 utf8(name)   value 0x01 | u64be(highWater)
// NUL is refused in namespaces and names, and UTF-8 never produces a 0x00 byte for anything else, so the
// split is unambiguous and a namespace's keys are exactly the range [ns 0x00, ns 0x01).
// The leading 0x01 is a layout version for the value, so a later change can be recognised.
//
// A commit is one LMDB write transaction (all of put/remove/highWater or nothing, durable when it returns);
// a load is one read snapshot of both databases.

import type { MetadataStore, NamespaceChange, StoredDocument, StoredNamespace } from './metadata-store.js';
import { LmdbEnv } from './lmdb-env.js';

export const TUF_DOCS_DB = 'tuf-docs';
export const TUF_HIGHWATER_DB = 'tuf-highwater';

const VALUE_LAYOUT = 0x01;
const HEADER_BYTES = 9;
/** LMDB (lmdb-js) refuses keys above 1978 bytes; stay well below with a documented limit. */
export const MAX_KEY_BYTES = 1024;

export interface LmdbMetadataStoreOptions {
  /** Close the environment when the store is closed. Default false (the env is shared with other records). */
  readonly ownsEnv?: boolean;
}

export class LmdbMetadataStore implements MetadataStore {
  readonly #env: LmdbEnv;
  readonly #ownsEnv: boolean;
  #closed = false;

  constructor(env: LmdbEnv, opts: LmdbMetadataStoreOptions = {}) {
    this.#env = env;
    this.#ownsEnv = opts.ownsEnv ?? false;
    // create both databases now, so a bad environment fails at construction rather than at first use
    this.#docs();
    this.#highWater();
  }

  /** Opens the environment under `stateDir` and a store that owns (and closes) it. */
  static open(stateDir: string): LmdbMetadataStore {
    return new LmdbMetadataStore(LmdbEnv.open(stateDir), { ownsEnv: true });
  }

  async load(namespace: string): Promise<StoredNamespace> {
    this.#assertOpen();
    const prefix = namespacePrefix(namespace);
    const range = { start: prefix, end: namespaceEnd(prefix) };
    const docs = this.#docs();
    const hw = this.#highWater();
    return this.#env.read((transaction) => {
      const documents = new Map<string, StoredDocument>();
      const highWater = new Map<string, number>();
      for (const { key, value } of docs.getRange({ ...range, transaction, snapshot: true })) {
        const name = nameOf(key, prefix);
        documents.set(name, decodeDocument(value, namespace, name));
      }
      for (const { key, value } of hw.getRange({ ...range, transaction, snapshot: true })) {
        const name = nameOf(key, prefix);
        highWater.set(name, decodeHighWater(value, namespace, name));
      }
      return { documents, highWater };
    });
  }

  async commit(namespace: string, change: NamespaceChange): Promise<void> {
    this.#assertOpen();
    const prefix = namespacePrefix(namespace);
    // validate and encode everything before the transaction starts: a refused change touches nothing
    const puts: Array<[Buffer, Buffer]> = [];
    const removes: Buffer[] = [];
    const marks: Array<[Buffer, Buffer | null]> = [];
    const putNames = new Set<string>();
    for (const [name, doc] of change.put ?? new Map<string, StoredDocument>()) {
      const key = documentKey(prefix, name);
      assertVersion(doc?.version, `version of ${JSON.stringify(name)}`);
      if (!(doc.bytes instanceof Uint8Array)) throw new TypeError(`bytes of ${JSON.stringify(name)} must be a Buffer`);
      puts.push([key, encodeDocument(doc)]);
      putNames.add(name);
    }
    for (const name of change.remove ?? []) {
      const key = documentKey(prefix, name);
      if (putNames.has(name)) throw new Error(`${JSON.stringify(name)} is both put and removed in one change`);
      removes.push(key);
    }
    for (const [name, mark] of change.highWater ?? new Map<string, number | null>()) {
      const key = documentKey(prefix, name);
      if (mark === null) marks.push([key, null]);
      else {
        assertVersion(mark, `high water of ${JSON.stringify(name)}`);
        marks.push([key, encodeHighWater(mark)]);
      }
    }
    if (puts.length === 0 && removes.length === 0 && marks.length === 0) return;

    const docs = this.#docs();
    const hw = this.#highWater();
    this.#env.transaction(() => {
      for (const [key, value] of puts) docs.putSync(key, value);
      for (const key of removes) docs.removeSync(key);
      for (const [key, value] of marks) {
        if (value === null) hw.removeSync(key);
        else hw.putSync(key, value);
      }
    });
  }

  async namespaces(): Promise<string[]> {
    this.#assertOpen();
    const docs = this.#docs();
    const hw = this.#highWater();
    return this.#env.read((transaction) => {
      const found = new Set<string>();
      for (const db of [docs, hw]) {
        // skip from one namespace to the next instead of walking every key
        let start: Buffer = Buffer.alloc(0);
        for (;;) {
          let next: Buffer | undefined;
          for (const key of db.getKeys({ start, limit: 1, transaction, snapshot: true })) next = Buffer.from(key);
          if (next === undefined) break;
          const nul = next.indexOf(0);
          if (nul < 0) throw new Error(`corrupt key in ${TUF_DOCS_DB}/${TUF_HIGHWATER_DB}: no separator`);
          const prefix = next.subarray(0, nul + 1);
          found.add(prefix.subarray(0, nul).toString('utf8'));
          start = namespaceEnd(prefix);
        }
      }
      return [...found].sort();
    });
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#ownsEnv) await this.#env.close();
  }

  #docs() {
    return this.#env.db<Buffer, Buffer>(TUF_DOCS_DB, { encoding: 'binary', keyEncoding: 'binary' });
  }

  #highWater() {
    return this.#env.db<Buffer, Buffer>(TUF_HIGHWATER_DB, { encoding: 'binary', keyEncoding: 'binary' });
  }

  #assertOpen(): void {
    if (this.#closed) throw new Error('metadata store is closed');
  }
}

// ---- keys ----

/** Refuses NUL and ill-formed UTF-16 (lone surrogates would silently become U+FFFD and collide). */
function assertLabel(value: unknown, what: string): asserts value is string {
  if (typeof value !== 'string') throw new TypeError(`${what} must be a string`);
  if (value === '') throw new Error(`${what} must not be empty`);
  if (value.includes('\0')) throw new Error(`${what} must not contain NUL: ${JSON.stringify(value)}`);
  if (/[\uD800-\uDFFF]/u.test(value)) throw new Error(`${what} is not well-formed Unicode: ${JSON.stringify(value)}`);
}

function namespacePrefix(namespace: string): Buffer {
  assertLabel(namespace, 'namespace');
  return Buffer.concat([Buffer.from(namespace, 'utf8'), Buffer.of(0)]);
}

/** First key after every key starting with `prefix` (which ends in the 0x00 separator). */
function namespaceEnd(prefix: Buffer): Buffer {
  const end = Buffer.from(prefix);
  end[end.length - 1] = 0x01;
  return end;
}

function documentKey(prefix: Buffer, name: string): Buffer {
  assertLabel(name, 'document name');
  const key = Buffer.concat([prefix, Buffer.from(name, 'utf8')]);
  if (key.length > MAX_KEY_BYTES) {
    throw new Error(`namespace + document name too long (${key.length} bytes, limit ${MAX_KEY_BYTES})`);
  }
  return key;
}

function nameOf(key: Buffer, prefix: Buffer): string {
  return key.subarray(prefix.length).toString('utf8');
}

// ---- values ----

function assertVersion(value: unknown, what: string): asserts value is number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) {
    throw new Error(`${what} must be a non-negative safe integer, got ${String(value)}`);
  }
}

function encodeDocument(doc: StoredDocument): Buffer {
  const out = Buffer.allocUnsafe(HEADER_BYTES + doc.bytes.length);
  out[0] = VALUE_LAYOUT;
  out.writeBigUInt64BE(BigInt(doc.version), 1);
  out.set(doc.bytes, HEADER_BYTES);
  return out;
}

function decodeDocument(value: Buffer, namespace: string, name: string): StoredDocument {
  if (value.length < HEADER_BYTES || value[0] !== VALUE_LAYOUT) {
    throw new Error(`corrupt ${TUF_DOCS_DB} entry for ${JSON.stringify(namespace)}/${JSON.stringify(name)}`);
  }
  const version = Number(value.readBigUInt64BE(1));
  assertVersion(version, `stored version of ${JSON.stringify(name)}`);
  // copy: never hand out a view of LMDB's memory map
  return { version, bytes: Buffer.from(value.subarray(HEADER_BYTES)) };
}

function encodeHighWater(mark: number): Buffer {
  const out = Buffer.alloc(HEADER_BYTES);
  out[0] = VALUE_LAYOUT;
  out.writeBigUInt64BE(BigInt(mark), 1);
  return out;
}

function decodeHighWater(value: Buffer, namespace: string, name: string): number {
  if (value.length !== HEADER_BYTES || value[0] !== VALUE_LAYOUT) {
    throw new Error(`corrupt ${TUF_HIGHWATER_DB} entry for ${JSON.stringify(namespace)}/${JSON.stringify(name)}`);
  }
  const mark = Number(value.readBigUInt64BE(1));
  assertVersion(mark, `stored high water of ${JSON.stringify(name)}`);
  return mark;
}

// Coalesces concurrent calls for one key into one call. Instance-scoped: two SingleFlight objects share nothing.
// The entry lives exactly as long as the call: once it settles, the next run() for that key calls fn again
// (a failure is not cached). For streams of bytes fanned out to many readers, see BlobFill in blob-fill.ts.

export class SingleFlight<K, V> {
  private readonly calls = new Map<K, Promise<V>>();

  /**
   * Runs fn for `key` unless a call for `key` is already running, in which case its promise is returned.
   * Every caller of one flight gets the same result or the same rejection. fn starts synchronously; a
   * synchronous throw becomes a rejection.
   */
  run(key: K, fn: () => Promise<V> | V): Promise<V> {
    const running = this.calls.get(key);
    if (running) return running;
    const call = (async () => fn())();
    this.calls.set(key, call);
    const forget = (): void => {
      if (this.calls.get(key) === call) this.calls.delete(key);
    };
    call.then(forget, forget);
    return call;
  }

  /** Number of keys with a call running. */
  get inFlight(): number {
    return this.calls.size;
  }

  /** Whether a call for `key` is running. */
  has(key: K): boolean {
    return this.calls.has(key);
  }
}

import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { fixedClock } from '../../trust/clock.js';
import { TrustError } from '../../trust/errors.js';
import { Updater } from '../../trust/updater.js';
import { DirFetcher } from '../fixtures/dir-fetcher.js';
import { MemoryMetadataStore } from '../fixtures/memory-store.js';

const SAMPLES = join(import.meta.dirname, '../../../shared/lab/notary-samples');
const GUNS: Record<string, string> = {
  'docker-cli-signer': '127.0.0.1:5000/library/pushed',
  'html-escaping': '127.0.0.1:5000/library/edge',
  'local-trust-ed25519-rsapss': '127.0.0.1:5000/library/local',
  'notary-cli-delegation-rotated': '127.0.0.1:5000/library/demo',
  'notary-cli-initial': '127.0.0.1:5000/library/demo',
};
const INSIDE = '2026-11-25T00:00:00Z';
const AFTER_TIMESTAMP_EXPIRY = '2026-12-09T00:00:00Z';

function updater(folder: string, at: string, store = new MemoryMetadataStore(), gun = GUNS[folder]!) {
  const fetcher = new DirFetcher(join(SAMPLES, folder), { notaryHashNames: true });
  return { u: new Updater({ dialect: 'notary', namespace: gun, gun, store, fetcher, clock: fixedClock(at) }), store, fetcher };
}

describe('real Notary v1 samples (notary-server 0.7.0)', () => {
  const folders = readdirSync(SAMPLES, { withFileTypes: true }).filter((d) => d.isDirectory()).map((d) => d.name);

  it.each(folders)('%s verifies: every role, key type and signature method', async (folder) => {
    const { u } = updater(folder, INSIDE);
    await u.refresh();
    const all = await u.listAll();
    expect(all[0]!.role).toBe('targets');
    const names = all.flatMap((r) => [...r.targets.keys()]);
    expect(names.length).toBeGreaterThan(0);
  });

  it('HTML-escaped names: the served bytes escape <>&, signatures cover the unescaped canonical form', async () => {
    const { u } = updater('html-escaping', INSIDE);
    await u.refresh();
    const found = await u.findTarget('a<b>&c/é ü');
    expect(found?.role).toBe('targets');
    expect(found?.target.length).toBe(1);
  });

  it('a root certificate issued for another GUN is refused (Notary requires CN = GUN)', async () => {
    const store = new MemoryMetadataStore();
    const { u } = updater('html-escaping', INSIDE, store, '127.0.0.1:5000/library/demo');
    const err = await u.refresh().catch((e) => e);
    expect((err as TrustError).reason).toBe('CERTIFICATE');
    expect(store.docs.size).toBe(0);
  });

  it('delegations: targets/releases is fetched by hash and signs multi', async () => {
    const { u, fetcher } = updater('notary-cli-delegation-rotated', INSIDE);
    await u.refresh();
    const all = await u.listAll();
    expect(all.map((r) => r.role)).toEqual(['targets', 'targets/releases']);
    expect(fetcher.requests.some((r) => /^targets\/releases\.[0-9a-f]{64}\.json$/.test(r))).toBe(true);
    expect(fetcher.requests.some((r) => /^snapshot\.[0-9a-f]{64}\.json$/.test(r))).toBe(true);
  });

  it.each(folders)('freeze: %s is refused as expired once its timestamp expires (2026-12-08)', async (folder) => {
    const { u, store } = updater(folder, AFTER_TIMESTAMP_EXPIRY);
    const err = await u.refresh().catch((e) => e);
    expect(err).toBeInstanceOf(TrustError);
    expect((err as TrustError).reason).toBe('EXPIRED');
    expect((err as TrustError).role).toBe('timestamp');
    // the root was trusted on first use, nothing after it
    expect([...(store.docs.get(GUNS[folder]!)?.keys() ?? [])]).toEqual(['root']);
  });
});

import { it, expect } from 'vitest';
import { X509Certificate } from 'node:crypto';
import { RepoBuilder } from '../fixtures/repo-builder.js';
import { Updater } from '../../trust/updater.js';
import { MemoryMetadataStore } from '../fixtures/memory-store.js';
it.each(['notary', 'tuf'] as const)('smoke %s', async (dialect) => {
  for (const keyType of (dialect === 'notary' ? ['ecdsa-x509', 'rsa-x509', 'ecdsa', 'ed25519', 'rsa'] : ['ed25519', 'ecdsa', 'rsa']) as any[]) {
    const b = new RepoBuilder({ dialect, start: new Date('2030-01-01T00:00:00Z'), keyType });
    b.addTarget('a.txt');
    b.delegate('targets', dialect === 'notary' ? 'targets/releases' : 'releases');
    b.addTarget('rb.txt', 'bbb', dialect === 'notary' ? 'targets/releases' : 'releases');
    b.publish();
    if (keyType.endsWith('x509')) {
      const c = new X509Certificate(Buffer.from(b.keys('root')[0]!.json['keyval'] && (b.keys('root')[0]!.json['keyval'] as any).public, 'base64'));
      console.log(c.subject, c.validFrom, c.validTo);
    }
    const store = new MemoryMetadataStore();
    const u = new Updater({ dialect, namespace: 'ns', gun: b.gun, store, fetcher: b.fetcher, clock: b.clock, initialRoot: b.bytes('root') });
    await u.refresh();
    expect((await u.findTarget('a.txt'))?.role).toBe('targets');
    expect((await u.findTarget('rb.txt'))?.path.length).toBe(2);
    console.log(dialect, keyType, b.fetcher.requests);
  }
});

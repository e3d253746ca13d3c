import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startLab, DELEGATION_ROLE, type Lab } from '../harness/lab.js';
import { ACCEPT_ALL, MT, fetchManifest } from '../harness/images.js';
import { httpGet, livePids } from '../harness/process.js';

let lab: Lab;

beforeAll(async () => {
  lab = await startLab({ withSigned: true });
  console.log('lab timings (ms):', lab.timings);
});

afterAll(async () => {
  await lab?.stop();
});

describe('real-peer lab', () => {
  it('notary list shows v1 in targets with the digest and size the registry serves', async () => {
    const list = await lab.notaryList();
    const v1 = list.find((e) => e.name === 'v1');
    expect(v1).toEqual({ name: 'v1', digest: lab.images.v1.sha256Hex, size: lab.images.v1.size, role: 'targets' });
    expect(list.find((e) => e.name === 'v2')).toBeUndefined();
  });

  it('notary list shows multi in targets/releases with the index digest', async () => {
    const list = await lab.notaryList(lab.gun, DELEGATION_ROLE);
    expect(list).toEqual([
      { name: 'multi', digest: lab.images.multi.sha256Hex, size: lab.images.multi.size, role: DELEGATION_ROLE },
    ]);
  });

  it('the registry serves every demo tag with the recorded digest and media type', async () => {
    const tags = await httpGet(`${lab.registryUrl}/v2/${lab.repo}/tags/list`);
    expect(JSON.parse(tags.body.toString()).tags.sort()).toEqual(['multi', 'v1', 'v1-oci', 'v2']);
    for (const tag of ['v1', 'v2', 'multi', 'v1-oci'] as const) {
      const m = await fetchManifest(lab.registryUrl, lab.repo, tag, ACCEPT_ALL);
      expect(m.digest).toBe(lab.images[tag].digest);
    }
    expect(lab.images.v1.mediaType).toBe(MT.dockerManifest);
    expect(lab.images.v2.mediaType).toBe(MT.dockerManifest);
    expect(lab.images['v1-oci'].mediaType).toBe(MT.ociManifest);
    expect(lab.images.multi.mediaType).toBe(MT.ociIndex);
    // both platforms of the index were pushed (--all)
    const index = JSON.parse(lab.images.multi.bytes.toString()) as { manifests: Array<{ digest: string; platform: { architecture: string } }> };
    expect(index.manifests.map((m) => m.platform.architecture)).toEqual(['amd64', 'arm64']);
    for (const m of index.manifests) {
      const r = await httpGet(`${lab.registryUrl}/v2/${lab.repo}/manifests/${m.digest}`, { headers: { Accept: ACCEPT_ALL } });
      expect(r.status).toBe(200);
    }
  });

  it('the notary server answers over TLS with the lab CA only', async () => {
    const ok = await httpGet(`${lab.notaryUrl}/v2/${lab.gun}/_trust/tuf/root.json`, { ca: lab.caPem });
    expect(ok.status).toBe(200);
    await expect(httpGet(`${lab.notaryUrl}/_notary_server/health`)).rejects.toThrow(/certificate/i);
  });

  it('stop() ends every process the lab started', async () => {
    const pids = [lab.registry.process.pid, lab.notaryPeer.server.pid, lab.notaryPeer.signer.pid];
    expect(pids.every((p) => livePids().includes(p))).toBe(true);
    await lab.stop();
    expect(pids.some((p) => livePids().includes(p))).toBe(false);
    for (const p of pids) expect(() => process.kill(-p, 0)).toThrow();
  });
});

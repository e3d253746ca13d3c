// The real container clients pulling through Portcullis: skopeo, podman, containerd (ctr) and dockerd, against
// real distribution 2.8 and a real notary-server. Each client: a signed tag lands on the signed digest, an
// unsigned tag is refused with the reason in its output (or, for docker and ctr, which never show a mirror's
// message, in what they do show plus the mirror's log), a multi-arch signed index pulls for this node, a second
// pull makes no upstream blob request, and with the upstream and Notary stopped a cached image still pulls.
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { podman, skopeoCopy, skopeoManifestDigest, startContainerd, startDockerd, writeHostsToml, type Containerd, type Dockerd, type Podman } from '../harness/clients.js';
import { startLab, type Lab } from '../harness/lab.js';
import { startMirror, type Mirror } from '../harness/mirror.js';
import { makeTempDir } from '../harness/process.js';

let lab: Lab;
let mirror: Mirror;
let dockerd: Dockerd;
let containerd: Containerd;
let pod: Podman;
let hostsDir: string;
let work: string;
const logLines: string[] = [];

const hubBlobGets = () => mirror.daemon.upstreams.get('docker.io')!.stats.blobGets + mirror.daemon.upstreams.get(lab.registryHost)!.stats.blobGets;
const refusedInLog = (tag: string) => logLines.some((l) => l.includes('"event":"refused"') && l.includes(`tag ${tag} of docker.io/library/demo`));

beforeAll(async () => {
  lab = await startLab({ withHubGun: true });
  // docker uses a mirror only for docker.io names: sign the multi-arch index there too
  await lab.notary('addhash', lab.hubGun!, 'multi', String(lab.images.multi.size), '--sha256', lab.images.multi.sha256Hex, '-p');
  mirror = await startMirror(lab, { logLines });
  work = makeTempDir('portcullis-clients-');
  hostsDir = join(work, 'certs.d');
  mkdirSync(hostsDir, { recursive: true });
  // server = the mirror itself: containerd would otherwise fall back to registry-1.docker.io after a refusal
  writeHostsToml(hostsDir, 'docker.io', mirror.url, { server: mirror.url });
  [dockerd, containerd] = await Promise.all([startDockerd({ mirrorUrl: mirror.url, insecureRegistries: [mirror.host] }), startContainerd()]);
  pod = podman({ mirrorHost: mirror.host, registries: ['docker.io'] });
});

afterAll(async () => {
  await Promise.allSettled([dockerd?.stop(), containerd?.stop(), pod?.cleanup()]);
  await mirror?.stop();
  await lab?.stop();
});

describe('skopeo (docker:// through the mirror, to oci:)', () => {
  it('a signed tag copies and is the signed digest; an unsigned one is refused with the reason', async () => {
    const signed = await skopeoManifestDigest(`docker://${mirror.host}/library/demo:v1`);
    expect(signed.digest).toBe(lab.images.v1.digest);
    const ok = await skopeoCopy(`docker://${mirror.host}/library/demo:v1`, join(work, 'oci-v1'));
    expect(ok.code).toBe(0);
    const bad = await skopeoCopy(`docker://${mirror.host}/library/demo:v2`, join(work, 'oci-v2'));
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toMatch(/denied: tag v2 of docker\.io\/library\/demo has no valid Notary trust data .*not signed/);
  });

  it('a multi-arch signed index copies for this node (amd64)', async () => {
    const r = await skopeoCopy(`docker://${mirror.host}/library/demo:multi`, join(work, 'oci-multi'));
    expect(r.code).toBe(0);
    const idx = await skopeoManifestDigest(`docker://${mirror.host}/library/demo:multi`);
    expect(idx.digest).toBe(lab.images.multi.digest);
  });
});

describe('podman (registries.conf mirror for docker.io)', () => {
  it('a signed tag pulls and lands on the signed digest', async () => {
    const r = await pod.pull('docker.io/library/demo:v1');
    expect(r.code, r.stderr).toBe(0);
    expect(await pod.imageDigest('docker.io/library/demo:v1')).toBe(lab.images.v1.digest);
  });
  it('an unsigned tag is refused and podman prints the reason', async () => {
    const r = await pod.pull('docker.io/library/demo:v2');
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/denied: tag v2 of docker\.io\/library\/demo has no valid Notary trust data/);
  });
  it('a multi-arch signed index pulls for this node', async () => {
    const r = await pod.pull('docker.io/library/demo:multi');
    expect(r.code, r.stderr).toBe(0);
    expect(await pod.imageDigest('docker.io/library/demo:multi')).toBe(lab.images.multi.digest);
  });
});

describe('containerd (ctr --hosts-dir, ?ns=docker.io)', () => {
  it('a signed tag pulls and lands on the signed digest, with no new upstream blob request (podman filled the cache)', async () => {
    const before = hubBlobGets();
    const r = await containerd.pull('docker.io/library/demo:v1', { hostsDir });
    expect(r.code, r.stderr).toBe(0);
    expect(await containerd.imageDigest('docker.io/library/demo:v1')).toBe(lab.images.v1.digest);
    expect(hubBlobGets()).toBe(before);
  });
  it('an unsigned tag is refused (ctr shows 403 Forbidden; the reason is in the mirror log)', async () => {
    const r = await containerd.pull('docker.io/library/demo:v2', { hostsDir });
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/403 Forbidden/);
    expect(refusedInLog('v2')).toBe(true);
  });
  it('a multi-arch signed index pulls for this node', async () => {
    const r = await containerd.pull('docker.io/library/demo:multi', { hostsDir });
    expect(r.code, r.stderr).toBe(0);
    expect(await containerd.imageDigest('docker.io/library/demo:multi')).toBe(lab.images.multi.digest);
  });
});

describe('dockerd (registry-mirrors)', () => {
  it('a signed tag pulls and lands on the signed digest', async () => {
    const r = await dockerd.pull('demo:v1');
    expect(r.code, r.combined).toBe(0);
    expect(await dockerd.repoDigests('demo:v1')).toContain(`demo@${lab.images.v1.digest}`);
  });
  it('an unsigned tag is refused: dockerd logs the mirror reason, then fails over to an unreachable docker.io', async () => {
    const r = await dockerd.pull('demo:v2');
    expect(r.code).not.toBe(0);
    expect(r.endpointErrors.join('\n')).toMatch(/denied: tag v2 of docker\.io\/library\/demo has no valid Notary trust data/);
    expect(refusedInLog('v2')).toBe(true);
  });
  it('a multi-arch signed index pulls for this node', async () => {
    const r = await dockerd.pull('demo:multi');
    expect(r.code, r.combined).toBe(0);
    expect(await dockerd.repoDigests('demo:multi')).toContain(`demo@${lab.images.multi.digest}`);
  });
});

describe('offline: upstream registry and Notary server stopped', () => {
  it('a cached signed image still pulls; an uncached one fails clearly', async () => {
    await dockerd.removeImage('demo:v1');
    await pod.removeImage('docker.io/library/demo:v1');
    await lab.registry.stop();
    await lab.notaryPeer.stop();
    const d = await dockerd.pull('demo:v1');
    expect(d.code, d.combined).toBe(0);
    const p = await pod.pull('docker.io/library/demo:v1');
    expect(p.code, p.stderr).toBe(0);
    // (the tag decision may still be in its 30 s cache; mirror-faults.test.ts checks the trust-offline path itself)
    const s = await skopeoCopy(`docker://${mirror.host}/library/demo:v1-oci`, join(work, 'oci-uncached'));
    expect(s.code).not.toBe(0);
    expect(s.stderr).toMatch(/unreachable|no valid cached trust data|not signed/);
  });
});

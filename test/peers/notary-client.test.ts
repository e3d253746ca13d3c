// NotaryClient against the real notary-server 0.7 (TLS, lab CA) with trust data published by the real notary CLI.
import { createHash } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TrustError } from '../../trust/errors.js';
import { defaultTrustLimits as L } from '../../trust/limits.js';
import { NotaryClient, notaryFetcher } from '../../trust/notary-client.js';
import { startLab, type Lab } from '../harness/lab.js';

interface Signed<T> {
  signed: T & { _type: string; version: number };
  signatures: unknown[];
}
type Meta = Record<string, { length: number; hashes: { sha256: string; sha512?: string } }>;

let lab: Lab;
let client: NotaryClient;

beforeAll(async () => {
  lab = await startLab({ withSigned: true });
  client = new NotaryClient({ baseUrl: lab.notaryUrl, ca: lab.caPem, timeoutMs: 10_000 });
});

afterAll(async () => {
  await client?.close();
  await lab?.stop();
});

function parse<T>(b: Buffer | null): Signed<T> {
  expect(b).not.toBeNull();
  return JSON.parse(b!.toString('utf8')) as Signed<T>;
}

const hex = (b64: string) => Buffer.from(b64, 'base64').toString('hex');
const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

describe('NotaryClient against notary-server', () => {
  it('fetches root.json and its versioned copies', async () => {
    const bytes = await client.fetchMetadata(lab.gun, 'root.json', L.rootMaxBytes);
    const root = parse<{ roles: Record<string, unknown> }>(bytes);
    expect(root.signed._type).toBe('Root');
    expect(Object.keys(root.signed.roles).sort()).toEqual(['root', 'snapshot', 'targets', 'timestamp']);
    // the snapshot key rotation (-r) made a second root version
    expect(root.signed.version).toBeGreaterThanOrEqual(2);
    const versioned = await client.fetchMetadata(lab.gun, `${root.signed.version}.root.json`, L.rootMaxBytes);
    expect(versioned!.equals(bytes!)).toBe(true);
    expect(parse(await client.fetchMetadata(lab.gun, '1.root.json', L.rootMaxBytes)).signed.version).toBe(1);
  });

  it('fetches timestamp.json, then snapshot.<sha256hex>.json by the hash the timestamp gives', async () => {
    const ts = parse<{ meta: Meta }>(await client.fetchMetadata(lab.gun, 'timestamp.json', L.timestampMaxBytes));
    expect(ts.signed._type).toBe('Timestamp');
    const snapMeta = ts.signed.meta.snapshot!;
    const snapHex = hex(snapMeta.hashes.sha256);
    expect(snapHex).toMatch(/^[0-9a-f]{64}$/);
    const snapBytes = await client.fetchMetadata(lab.gun, `snapshot.${snapHex}.json`, snapMeta.length);
    expect(snapBytes!.length).toBe(snapMeta.length);
    expect(sha256(snapBytes!)).toBe(snapHex);
    const snap = parse<{ meta: Meta }>(snapBytes);
    expect(snap.signed._type).toBe('Snapshot');
    expect(Object.keys(snap.signed.meta).sort()).toEqual(['root', 'targets', 'targets/releases']);

    // targets roles by hash too, the way the docker client asks for them
    const t = snap.signed.meta.targets!;
    const targetsBytes = await client.fetchMetadata(lab.gun, `targets.${hex(t.hashes.sha256)}.json`, t.length);
    expect(sha256(targetsBytes!)).toBe(hex(t.hashes.sha256));
  });

  it('fetches targets.json (v1) and targets/releases.json (multi) with the digests the registry serves', async () => {
    type Targets = { targets: Record<string, { length: number; hashes: { sha256: string } }> };
    const targets = parse<Targets>(await client.fetchMetadata(lab.gun, 'targets.json', L.targetsMaxBytes));
    expect(targets.signed._type).toBe('Targets');
    expect(hex(targets.signed.targets.v1!.hashes.sha256)).toBe(lab.images.v1.sha256Hex);
    expect(targets.signed.targets.v1!.length).toBe(lab.images.v1.size);

    const releases = parse<Targets>(await notaryFetcher(client, lab.gun).fetch('targets/releases.json', L.targetsMaxBytes));
    expect(releases.signed._type).toBe('Targets');
    expect(Object.keys(releases.signed.targets)).toEqual(['multi']);
    expect(hex(releases.signed.targets.multi!.hashes.sha256)).toBe(lab.images.multi.sha256Hex);
  });

  it('an unknown GUN or role is null (404), not an error', async () => {
    expect(await client.fetchMetadata(`${lab.registryHost}/library/nope`, 'root.json', L.rootMaxBytes)).toBeNull();
    expect(await notaryFetcher(client, 'docker.io/library/never-signed').fetch('timestamp.json', L.timestampMaxBytes)).toBeNull();
    expect(await client.fetchMetadata(lab.gun, 'targets/nobody.json', L.targetsMaxBytes)).toBeNull();
  });

  it('endless data: a real root.json over a tiny limit is refused', async () => {
    const e = await client.fetchMetadata(lab.gun, 'root.json', 64).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(TrustError);
    expect((e as TrustError).reason).toBe('ENDLESS_DATA');
  });

  it('fails with TRUST_UNAVAILABLE without the lab CA (server certificate not trusted)', async () => {
    const noCa = new NotaryClient({ baseUrl: lab.notaryUrl, timeoutMs: 10_000 });
    try {
      const e = await noCa.fetchMetadata(lab.gun, 'root.json', L.rootMaxBytes).catch((x: unknown) => x);
      expect(e).toBeInstanceOf(TrustError);
      expect((e as TrustError).reason).toBe('TRUST_UNAVAILABLE');
      expect((e as TrustError).message).toContain(lab.notaryUrl);
      expect((e as TrustError).message).toMatch(/certificate|issuer/i);
    } finally {
      await noCa.close();
    }
  });

  it('fails with TRUST_UNAVAILABLE when the notary server is down', async () => {
    const url = lab.notaryUrl;
    await lab.notaryPeer.server.stop();
    const e = await client.fetchMetadata(lab.gun, 'timestamp.json', L.timestampMaxBytes).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(TrustError);
    expect((e as TrustError).reason).toBe('TRUST_UNAVAILABLE');
    expect((e as TrustError).message).toContain(url);
  });
});

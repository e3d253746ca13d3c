// Delegations, end to end through the updater with repositories signed in-process: TUF glob paths, Notary
// prefix paths, terminating delegations, path_hash_prefixes, succinct hash bins, and the pre-order walk.
import { createHash } from 'node:crypto';
import { beforeAll, describe, expect, it } from 'vitest';
import { TrustError } from '../../trust/errors.js';
import { globMatch } from '../../trust/trusted-set.js';
import { Updater } from '../../trust/updater.js';
import { MemoryMetadataStore } from '../fixtures/memory-store.js';
import { RepoBuilder, warmKeyPool } from '../fixtures/repo-builder.js';

const START = new Date('2030-01-01T00:00:00Z');
type Dialect = 'notary' | 'tuf';

beforeAll(() => {
  warmKeyPool('ec', 12);
  warmKeyPool('ed25519', 12);
});

function repo(dialect: Dialect, configure: (b: RepoBuilder) => void) {
  const b = new RepoBuilder({ dialect, start: START });
  b.addTarget('top.txt');
  configure(b);
  b.publish();
  const u = new Updater({ dialect, namespace: 'ns', gun: b.gun, store: new MemoryMetadataStore(), fetcher: b.fetcher, clock: b.clock, initialRoot: b.bytes('root') });
  return { b, u };
}

async function refreshed(dialect: Dialect, configure: (b: RepoBuilder) => void) {
  const r = repo(dialect, configure);
  await r.u.refresh();
  r.b.fetcher.clearLog();
  return r;
}

/** The delegated roles fetched, in order, by their role name. */
function fetchedRoles(b: RepoBuilder): string[] {
  const roles = b.targetsRoles().filter((r) => r !== 'targets');
  return b.fetcher.requests.map((name) => roles.find((r) => b.fetchName(r) === name)).filter((r): r is string => r !== undefined);
}

const sha256hex = (s: string) => createHash('sha256').update(s, 'utf8').digest('hex');

// ------------------------------------------------------------------------------------------------ TUF globs

describe('TUF path patterns (globMatch)', () => {
  it.each([
    ['*', 'a.txt', true],
    ['*', 'dir/a.txt', false], // * never crosses /
    ['dir/*', 'dir/a.txt', true],
    ['dir/*', 'dir/sub/a.txt', false],
    ['dir/*/*', 'dir/sub/a.txt', true],
    ['*/*', 'dir/a.txt', true],
    ['*.txt', 'a.txt', true],
    ['*.txt', 'a.txt.sig', false],
    ['dir/*.txt', 'dir/.txt', true],
    ['file?.bin', 'file1.bin', true],
    ['file?.bin', 'file12.bin', false],
    ['file?.bin', 'file/.bin', false], // ? does not match / either
    ['[ab].dat', 'a.dat', true],
    ['[ab].dat', 'b.dat', true],
    ['[ab].dat', 'c.dat', false],
    ['[!ab].dat', 'c.dat', true],
    ['[!ab].dat', 'a.dat', false],
    ['[a-c]x', 'bx', true],
    // sets read as Python's fnmatch reads them (python-tuf): "^" is a member, not a negation
    ['[^a]', 'b', false],
    ['[^a]', '^', true],
    ['[]a]', ']', true], // "]" first in a set is a member
    ['[!]a]x', 'bx', true],
    ['[!]a]x', ']x', false],
    ['[[]', '[', true],
    ['[\\]', '\\', true], // one backslash in the set, one in the name
    ['[ab', '[ab', true], // an unclosed "[" is literal
    ['[a-c]x', 'dx', false],
    ['a.b', 'axb', false], // regex metacharacters are literal
    ['a+b(c)', 'a+b(c)', true],
    ['a+b(c)', 'aab(c)', false],
    ['$x^', '$x^', true],
    ['dir/', 'dir/', true],
    ['dir', 'dir/a', false],
    ['', '', true],
    ['*', '', true],
  ])('%j matches %j: %s', (pattern, target, expected) => {
    expect(globMatch(pattern, target)).toBe(expected);
  });

  it('end to end: a role delegated "files/*.txt" signs files/a.txt but not files/sub/a.txt or files/a.bin', async () => {
    const { u } = await refreshed('tuf', (b) => {
      b.delegate('targets', 'files', { paths: ['files/*.txt'] });
      for (const t of ['files/a.txt', 'files/sub/a.txt', 'files/a.bin']) b.addTarget(t, t, 'files');
    });
    expect((await u.findTarget('files/a.txt'))?.role).toBe('files');
    expect(await u.findTarget('files/sub/a.txt')).toBeUndefined();
    expect(await u.findTarget('files/a.bin')).toBeUndefined();
    const all = await u.listAll();
    expect([...all.find((r) => r.role === 'files')!.targets.keys()]).toEqual(['files/a.txt']);
  });

  it('end to end: "?" and "[ab]" patterns', async () => {
    const { u } = await refreshed('tuf', (b) => {
      b.delegate('targets', 'q', { paths: ['v?/app'] });
      b.delegate('targets', 'set', { paths: ['[ab]/*'] });
      for (const t of ['v1/app', 'v10/app']) b.addTarget(t, t, 'q');
      for (const t of ['a/x', 'b/x', 'c/x']) b.addTarget(t, t, 'set');
    });
    expect((await u.findTarget('v1/app'))?.role).toBe('q');
    expect(await u.findTarget('v10/app')).toBeUndefined();
    expect((await u.findTarget('a/x'))?.role).toBe('set');
    expect((await u.findTarget('b/x'))?.role).toBe('set');
    expect(await u.findTarget('c/x')).toBeUndefined();
  });
});

// ------------------------------------------------------------------------------------------------ Notary

describe('Notary prefix paths', () => {
  it('a path is a plain prefix: it crosses "/", and "" delegates everything', async () => {
    const { u } = await refreshed('notary', (b) => {
      b.delegate('targets', 'targets/releases', { paths: ['releases/'] });
      b.delegate('targets', 'targets/all', { paths: [''] });
      b.delegate('targets', 'targets/rel', { paths: ['rel'] });
      for (const t of ['releases/a', 'releases/deep/er/b', 'releasesX', 'other']) b.addTarget(t, t, 'targets/releases');
      b.addTarget('anything/at/all', 'x', 'targets/all');
      b.addTarget('release-notes', 'x', 'targets/rel');
    });
    expect((await u.findTarget('releases/a'))?.role).toBe('targets/releases');
    expect((await u.findTarget('releases/deep/er/b'))?.role).toBe('targets/releases');
    expect(await u.findTarget('releasesX')).toBeUndefined(); // not under "releases/"
    expect(await u.findTarget('other')).toBeUndefined();
    expect((await u.findTarget('anything/at/all'))?.role).toBe('targets/all');
    expect((await u.findTarget('release-notes'))?.role).toBe('targets/rel'); // "rel" is a prefix of "release-notes"
    const all = await u.listAll();
    expect([...all.find((r) => r.role === 'targets/releases')!.targets.keys()].sort()).toEqual(['releases/a', 'releases/deep/er/b']);
  });

  it('several paths on one delegation: any of them', async () => {
    const { u } = await refreshed('notary', (b) => {
      b.delegate('targets', 'targets/ab', { paths: ['a/', 'b/'] });
      for (const t of ['a/1', 'b/2', 'c/3']) b.addTarget(t, t, 'targets/ab');
    });
    expect((await u.findTarget('a/1'))?.role).toBe('targets/ab');
    expect((await u.findTarget('b/2'))?.role).toBe('targets/ab');
    expect(await u.findTarget('c/3')).toBeUndefined();
  });

  it('a Notary delegation must be a direct child of its delegator', async () => {
    const { u } = await refreshed('notary', (b) => {
      b.delegate('targets', 'targets/a/b', { paths: [''] });
      b.addTarget('x', 'x', 'targets/a/b');
    });
    const e = await u.findTarget('x').catch((err: unknown) => err);
    expect(e).toBeInstanceOf(TrustError);
    expect((e as TrustError).reason).toBe('DELEGATION');
  });
});

// ------------------------------------------------------------------------------------------------ both dialects

describe.each<Dialect>(['notary', 'tuf'])('%s: the delegation walk', (dialect) => {
  const n = (path: string) => (dialect === 'notary' ? `targets/${path}` : path.replaceAll('/', '-'));
  const all = dialect === 'notary' ? '' : '*';

  it('is pre-order and depth-first: targets, a, a/1, a/2, b, b/1', async () => {
    const { b, u } = await refreshed(dialect, (b) => {
      b.delegate('targets', n('a'), { paths: [all] });
      b.delegate('targets', n('b'), { paths: [all] });
      b.delegate(n('a'), n('a/1'), { paths: [all] });
      b.delegate(n('a'), n('a/2'), { paths: [all] });
      b.delegate(n('b'), n('b/1'), { paths: [all] });
      b.addTarget('both', 'in a/2', n('a/2'));
      b.addTarget('both', 'in b', n('b'));
      b.addTarget('deepest', 'in b/1', n('b/1'));
    });
    // a target listed by a/2 and by b: a/2 comes first in pre-order
    const both = await u.findTarget('both');
    expect(both?.role).toBe(n('a/2'));
    expect(both?.path).toEqual(['targets', n('a'), n('a/2')]);
    expect(fetchedRoles(b)).toEqual([n('a'), n('a/1'), n('a/2')]);
    // the last role in pre-order is reached after all the others
    expect((await u.findTarget('deepest'))?.path).toEqual(['targets', n('b'), n('b/1')]);
    expect(fetchedRoles(b)).toEqual([n('a'), n('a/1'), n('a/2'), n('b'), n('b/1')]);
    // listAll walks the same order
    expect((await u.listAll()).map((r) => r.role)).toEqual(['targets', n('a'), n('a/1'), n('a/2'), n('b'), n('b/1')]);
  });

  it('the top-level targets role wins over any delegation', async () => {
    const { b, u } = await refreshed(dialect, (b) => {
      b.delegate('targets', n('a'), { paths: [all] });
      b.addTarget('top.txt', 'shadow', n('a'));
    });
    expect((await u.findTarget('top.txt'))?.role).toBe('targets');
    expect(fetchedRoles(b)).toEqual([]);
  });

  it('a delegated role cannot widen the paths of its delegator', async () => {
    const inner = dialect === 'notary' ? 'a/' : 'a/*';
    const { u } = await refreshed(dialect, (b) => {
      b.delegate('targets', n('a'), { paths: [inner] });
      b.delegate(n('a'), n('a/wide'), { paths: [dialect === 'notary' ? '' : '*/*'] });
      b.addTarget('a/ok', 'ok', n('a/wide'));
      b.addTarget('b/not-ok', 'no', n('a/wide'));
    });
    expect((await u.findTarget('a/ok'))?.role).toBe(n('a/wide'));
    expect(await u.findTarget('b/not-ok')).toBeUndefined();
    const listed = (await u.listAll()).find((r) => r.role === n('a/wide'))!;
    expect([...listed.targets.keys()]).toEqual(['a/ok']);
  });

  it('a delegated role signed by a key its delegator does not list is refused', async () => {
    const { b, u } = await refreshed(dialect, (b) => {
      b.delegate('targets', n('a'), { paths: [all] });
      b.addTarget('x', 'x', n('a'));
    });
    b.resign(n('a'), (t) => { t['version'] = b.version(n('a')) + 1; }, { keys: [b.newKey()], publish: true });
    await u.refresh();
    const e = await u.findTarget('x').catch((err: unknown) => err);
    expect((e as TrustError).reason).toBe('THRESHOLD');
    expect((e as TrustError).role).toBe(n('a'));
  });
});

// ------------------------------------------------------------------------------------------------ terminating (TUF)

describe('TUF terminating delegations', () => {
  it('a matching terminating delegation stops the walk: later siblings are never consulted', async () => {
    const { b, u } = await refreshed('tuf', (b) => {
      b.delegate('targets', 'stop', { paths: ['shared/*'], terminating: true });
      b.delegate('targets', 'later', { paths: ['shared/*'] });
      b.addTarget('shared/in-later', 'x', 'later');
      b.addTarget('shared/in-stop', 'x', 'stop');
    });
    expect((await u.findTarget('shared/in-stop'))?.role).toBe('stop');
    expect(await u.findTarget('shared/in-later')).toBeUndefined();
    expect(fetchedRoles(b)).not.toContain('later');
  });

  it('without terminating, the walk backtracks to the next sibling', async () => {
    const { u } = await refreshed('tuf', (b) => {
      b.delegate('targets', 'first', { paths: ['shared/*'] });
      b.delegate('targets', 'later', { paths: ['shared/*'] });
      b.addTarget('shared/in-later', 'x', 'later');
    });
    expect((await u.findTarget('shared/in-later'))?.role).toBe('later');
  });

  it('a terminating delegation that does not match the target does not stop the walk', async () => {
    const { u } = await refreshed('tuf', (b) => {
      b.delegate('targets', 'stop', { paths: ['other/*'], terminating: true });
      b.delegate('targets', 'later', { paths: ['shared/*'] });
      b.addTarget('shared/x', 'x', 'later');
    });
    expect((await u.findTarget('shared/x'))?.role).toBe('later');
  });

  it('a nested terminating delegation also cuts off the backtrack to its ancestors\' siblings', async () => {
    const { b, u } = await refreshed('tuf', (b) => {
      b.delegate('targets', 'a', { paths: ['*'] });
      b.delegate('targets', 'b', { paths: ['*'] });
      b.delegate('a', 'a1', { paths: ['*'], terminating: true });
      b.addTarget('x', 'x', 'b');
    });
    expect(await u.findTarget('x')).toBeUndefined();
    expect(fetchedRoles(b)).toEqual(['a', 'a1']);
  });

  it('the children of a terminating role are still searched', async () => {
    const { u } = await refreshed('tuf', (b) => {
      b.delegate('targets', 'stop', { paths: ['*'], terminating: true });
      b.delegate('stop', 'child', { paths: ['*'] });
      b.addTarget('x', 'x', 'child');
    });
    expect((await u.findTarget('x'))?.path).toEqual(['targets', 'stop', 'child']);
  });
});

// ------------------------------------------------------------------------------------------------ hash prefixes (TUF)

describe('TUF path_hash_prefixes', () => {
  const names = ['alpha.txt', 'beta.txt', 'gamma.txt', 'delta.txt'];

  it('a role is consulted only for targets whose sha256(name) starts with one of its prefixes', async () => {
    // sha256: alpha.txt 9b33…, beta.txt f589…, gamma.txt e167…, delta.txt 4e0d…
    const h = Object.fromEntries(names.map((t) => [t, sha256hex(t)]));
    expect([h['alpha.txt']!.slice(0, 2), h['beta.txt']![0], h['gamma.txt']![0], h['delta.txt']![0]]).toEqual(['9b', 'f', 'e', '4']);
    const { b, u } = await refreshed('tuf', (b) => {
      b.delegate('targets', 'h-9b', { pathHashPrefixes: ['9b'] });
      b.delegate('targets', 'h-f-or-e', { pathHashPrefixes: ['f', 'e1'] });
      for (const t of names) {
        b.addTarget(t, t, 'h-9b');
        b.addTarget(t, t, 'h-f-or-e');
      }
    });
    expect((await u.findTarget('alpha.txt'))?.role).toBe('h-9b');
    expect(fetchedRoles(b)).toEqual(['h-9b']);
    b.fetcher.clearLog();
    expect((await u.findTarget('beta.txt'))?.role).toBe('h-f-or-e');
    expect(fetchedRoles(b)).toEqual(['h-f-or-e']); // h-9b is already loaded, and is not consulted anyway
    expect((await u.findTarget('gamma.txt'))?.role).toBe('h-f-or-e');
    expect(await u.findTarget('delta.txt')).toBeUndefined();
    const listed = await u.listAll();
    expect([...listed.find((r) => r.role === 'h-9b')!.targets.keys()]).toEqual(['alpha.txt']);
    expect([...listed.find((r) => r.role === 'h-f-or-e')!.targets.keys()].sort()).toEqual(['beta.txt', 'gamma.txt']);
  });

  it('a role whose prefixes do not match is not even fetched', async () => {
    const { b, u } = await refreshed('tuf', (b) => {
      b.delegate('targets', 'h-00', { pathHashPrefixes: ['00'] });
      b.delegate('targets', 'h-9', { pathHashPrefixes: ['9'] });
      b.addTarget('alpha.txt', 'x', 'h-9');
    });
    expect((await u.findTarget('alpha.txt'))?.role).toBe('h-9');
    expect(fetchedRoles(b)).toEqual(['h-9']);
  });

  it('an empty prefix covers every target', async () => {
    const { u } = await refreshed('tuf', (b) => {
      b.delegate('targets', 'h-all', { pathHashPrefixes: [''] });
      b.addTarget('whatever/deep/name', 'x', 'h-all');
    });
    expect((await u.findTarget('whatever/deep/name'))?.role).toBe('h-all');
  });

  it('a role listing a target outside its hash prefixes cannot sign it', async () => {
    const h = sha256hex('alpha.txt');
    const other = ((parseInt(h[0]!, 16) + 1) % 16).toString(16);
    const { u } = await refreshed('tuf', (b) => {
      b.delegate('targets', 'h-other', { pathHashPrefixes: [other] });
      b.addTarget('alpha.txt', 'x', 'h-other');
    });
    expect(await u.findTarget('alpha.txt')).toBeUndefined();
    expect((await u.listAll()).find((r) => r.role === 'h-other')?.targets.size ?? 0).toBe(0);
  });
});

// ------------------------------------------------------------------------------------------------ succinct bins (TUF)

describe.each([4, 8])('TUF succinct hash-bin delegation, bit_length %i', (bitLength) => {
  const targets = ['app-1.0.tgz', 'app-2.0.tgz', 'lib/util.js', 'README', 'z'];
  /** Independent of the builder: the bin is the first bit_length bits of sha256(name), in hex of ceil(bits/4) digits. */
  const expectedBin = (t: string) => {
    const h = sha256hex(t);
    return bitLength === 8 ? `bins-${h.slice(0, 2)}` : `bins-${h[0]}`;
  };

  async function binRepo() {
    return refreshed('tuf', (b) => {
      const bins = b.delegateSuccinct('targets', { bitLength, namePrefix: 'bins' });
      expect(bins).toHaveLength(2 ** bitLength);
      for (const t of targets) {
        expect(b.binFor(t)).toBe(expectedBin(t));
        b.addTarget(t, `bytes of ${t}`, b.binFor(t));
      }
    });
  }

  it('each target lands in its bin and is found there, fetching only that bin', async () => {
    const { b, u } = await binRepo();
    for (const t of targets) {
      b.fetcher.clearLog();
      const found = await u.findTarget(t);
      expect(found?.role).toBe(expectedBin(t));
      expect(found?.path).toEqual(['targets', expectedBin(t)]);
      const fetched = fetchedRoles(b);
      expect(fetched.length).toBeLessThanOrEqual(1); // zero when an earlier lookup already loaded the bin
      if (fetched.length === 1) expect(fetched[0]).toBe(expectedBin(t));
    }
  });

  it('a name absent from its bin is not found, and no other bin is consulted', async () => {
    const { b, u } = await binRepo();
    expect(await u.findTarget('not-there')).toBeUndefined();
    expect(fetchedRoles(b)).toEqual([expectedBin('not-there')]);
  });

  it('a target listed in the wrong bin is not found', async () => {
    const wrongBin = (t: string) => {
      const right = expectedBin(t);
      return right === 'bins-' + '0'.repeat(bitLength / 4) ? `bins-${'1'.padStart(bitLength / 4, '0')}` : `bins-${'0'.repeat(bitLength / 4)}`;
    };
    const { u } = await refreshed('tuf', (b) => {
      b.delegateSuccinct('targets', { bitLength, namePrefix: 'bins' });
      b.addTarget('misplaced', 'x', wrongBin('misplaced'));
    });
    expect(await u.findTarget('misplaced')).toBeUndefined();
  });

  it('a bin signed by a key the succinct delegation does not list is refused', async () => {
    const { b, u } = await binRepo();
    const t = targets[0]!;
    const bin = expectedBin(t);
    b.resign(bin, (s) => { s['version'] = b.version(bin) + 1; }, { keys: [b.newKey()], publish: true });
    await u.refresh();
    const e = await u.findTarget(t).catch((err: unknown) => err);
    expect(e).toBeInstanceOf(TrustError);
    expect((e as TrustError).reason).toBe('THRESHOLD');
    expect((e as TrustError).role).toBe(bin);
    // the other bins are unaffected
    const other = targets.find((x) => expectedBin(x) !== bin)!;
    expect((await u.findTarget(other))?.role).toBe(expectedBin(other));
  });
});

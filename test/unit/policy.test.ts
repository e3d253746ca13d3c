import fc from 'fast-check';
import picomatch from 'picomatch';
import { describe, expect, it } from 'vitest';
import {
  CATCH_ALL,
  globProblem,
  nameProblem,
  patternHost,
  Policy,
  PolicyError,
  specificity,
  type PolicyRuleSpec,
} from '../../trust/policy.js';

const notary = { formats: ['notary'] as const };
const rule = (match: string, trust: PolicyRuleSpec['trust'] = 'deny'): PolicyRuleSpec => ({ match, trust });

describe('Policy.match: the most specific rule wins', () => {
  const rules = [rule('**', 'deny'), rule('docker.io/**', 'none'), rule('docker.io/library/*', notary)];

  it('picks docker.io/library/* over docker.io/** over **, whatever the list order', () => {
    for (const order of [rules, [...rules].reverse(), [rules[1]!, rules[0]!, rules[2]!]]) {
      const p = new Policy(order);
      expect(p.match('docker.io/library/nginx').match).toBe('docker.io/library/*');
      expect(p.match('docker.io/myorg/app').match).toBe('docker.io/**');
      expect(p.match('quay.io/org/app').match).toBe('**');
    }
  });

  it('returns the rule index, trust and signers as given', () => {
    const p = new Policy([
      { match: 'reg.example.com/team/**', trust: notary, signers: ['targets/releases', 'targets/qa'], threshold: 2 },
      { match: 'reg.example.com/**', trust: notary, signers: ['targets/releases'] },
      rule('**'),
    ]);
    const team = p.match('reg.example.com/team/app');
    expect(team).toMatchObject({ index: 0, trust: { formats: ['notary'] }, signers: ['targets/releases', 'targets/qa'], threshold: 2 });
    // threshold defaults to 1 when signers are given
    expect(p.match('reg.example.com/other/app')).toMatchObject({ index: 1, threshold: 1 });
    expect(p.match('docker.io/library/x')).toEqual({ index: 2, match: '**', trust: 'deny' });
  });

  it('* does not cross /', () => {
    const p = new Policy([rule('docker.io/library/*', 'none'), rule('docker.io/**', 'deny'), rule('**')]);
    expect(p.match('docker.io/library/a').index).toBe(0);
    expect(p.match('docker.io/library/a/b').index).toBe(1);
    const q = new Policy([rule('*/team/*', 'none'), rule('**')]);
    expect(q.match('reg.example.com/team/app').index).toBe(0);
    expect(q.match('reg.example.com/x/team/app').index).toBe(1);
  });

  it('* inside a segment stays within it; ** spans any number of segments', () => {
    const p = new Policy([rule('reg.io/app-*', 'none'), rule('reg.io/**/base', notary), rule('**')]);
    expect(p.match('reg.io/app-web').index).toBe(0);
    expect(p.match('reg.io/app-web/sub').index).toBe(2);
    expect(p.match('reg.io/base').index).toBe(1);
    expect(p.match('reg.io/a/b/c/base').index).toBe(1);
  });

  it('* beats ** when literal counts are equal', () => {
    const p = new Policy([rule('reg.io/**', 'deny'), rule('reg.io/*', 'none'), rule('**')]);
    expect(p.match('reg.io/app').index).toBe(1);
    expect(p.match('reg.io/a/b').index).toBe(0);
  });

  it('more literal segments beat more literal characters', () => {
    // 'reg.io/library/*': 2 literal segments, 13 characters; '*/*/nginx-web-extra-long': 1 segment, 19 characters
    const p = new Policy([rule('*/*/nginx-web-extra-long', 'none'), rule('reg.io/library/*', 'deny'), rule('**')]);
    expect(p.match('reg.io/library/nginx-web-extra-long').index).toBe(1);
    expect(p.match('other.io/library/nginx-web-extra-long').index).toBe(0);
  });

  it('with equal literal segments, more literal characters win', () => {
    const p = new Policy([rule('reg.io/*/nginx', 'none'), rule('reg.io/library/*', 'deny'), rule('**')]);
    // 'reg.io' + 'library' (13) beats 'reg.io' + 'nginx' (11)
    expect(p.match('reg.io/library/nginx').index).toBe(1);
    expect(p.match('reg.io/team/nginx').index).toBe(0);
  });

  it('ties go to the earlier rule', () => {
    // same literal segments (2), same literal characters, no **: a true tie
    const a = rule('reg.io/a*/x', 'none');
    const b = rule('reg.io/*a/x', 'deny');
    expect(new Policy([a, b, rule('**')]).match('reg.io/aa/x').index).toBe(0);
    expect(new Policy([b, a, rule('**')]).match('reg.io/aa/x').index).toBe(0);
    expect(new Policy([b, a, rule('**')]).match('reg.io/aa/x').trust).toBe('deny');
  });

  it('the catch-all ** always ranks last, even against */** or when listed first', () => {
    const p = new Policy([rule('**', 'deny'), rule('*/**', 'none')]);
    expect(p.match('reg.io/x').index).toBe(1);
    expect(specificity(CATCH_ALL).catchAll).toBe(true);
  });

  it('answers the same object from the cache, and stays right past the cache bound', () => {
    const p = new Policy([rule('reg.io/keep/*', 'none'), rule('**')]);
    const first = p.match('reg.io/keep/a');
    expect(p.match('reg.io/keep/a')).toBe(first);
    for (let i = 0; i < 25_000; i++) {
      expect(p.match(`reg.io/other/n${i}`).index).toBe(1);
      if (i % 4999 === 0) expect(p.match('reg.io/keep/a')).toBe(first);
    }
    expect(p.match('reg.io/keep/b').index).toBe(0);
  });
});

describe('Policy.match refuses malformed names', () => {
  const p = new Policy([rule('**', 'none')]);
  it.each([
    ['', 'empty'],
    ['docker.io', 'no repository'],
    ['docker.io/../etc', 'dot-dot segment'],
    ['docker.io/a..b', 'dot-dot inside'],
    ['docker.io//x', 'empty segment'],
    ['docker.io/x/', 'trailing slash'],
    ['/docker.io/x', 'leading slash'],
    ['docker.io/./x', 'dot segment'],
    ['Docker.io/library/x', 'upper case host'],
    ['docker.io/Library/x', 'upper case path'],
    ['docker.io/x y', 'space'],
    ['docker.io/x\n', 'newline'],
    ['docker.io/x%2f', 'percent'],
    [`docker.io/${'a'.repeat(2000)}`, 'too long'],
  ])('%j (%s)', (name) => {
    expect(() => p.match(name)).toThrow(PolicyError);
    expect(nameProblem(name)).toBeDefined();
  });

  it('accepts ordinary names', () => {
    for (const n of ['docker.io/library/nginx', '127.0.0.1:5000/team/app', 'reg.io/a_b/c__d/e-f/g.h']) {
      expect(nameProblem(n)).toBeUndefined();
      expect(p.match(n).index).toBe(0);
    }
  });
});

describe('Policy constructor', () => {
  it('requires a catch-all rule', () => {
    expect(() => new Policy([rule('docker.io/**')])).toThrow(/catch-all/);
    expect(() => new Policy([])).toThrow(/catch-all/);
  });

  it.each([
    ['docker.io/{a,b}/*', /may only hold/],
    ['docker.io/[ab]/*', /may only hold/],
    ['docker.io/?/*', /may only hold/],
    ['!docker.io/**', /may only hold/],
    ['Docker.io/**', /lower case/],
    ['docker.io//x', /empty segments/],
    ['docker.io/**/', /empty segments/],
    ['docker.io/../**', /\.\./],
    ['docker.io/a**', /whole segment/],
    ['docker.io/**/**', /consecutive/],
    ['docker.io', /single segment/],
    ['', /empty/],
  ])('refuses glob %j', (glob, why) => {
    expect(globProblem(glob)).toMatch(why);
    expect(() => new Policy([rule(glob), rule('**')])).toThrow(PolicyError);
  });

  it('refuses inconsistent signers and thresholds', () => {
    expect(() => new Policy([{ match: '**', trust: 'deny', signers: ['targets/releases'] }])).toThrow(/signers only apply/);
    expect(() => new Policy([{ match: '**', trust: notary, threshold: 1 }])).toThrow(/threshold needs signers/);
    expect(() => new Policy([{ match: '**', trust: notary, signers: ['targets/a'], threshold: 2 }])).toThrow(/threshold/);
    expect(() => new Policy([{ match: '**', trust: notary, signers: ['releases'] }])).toThrow(/targets/);
    expect(() => new Policy([{ match: '**', trust: notary, signers: ['targets/a', 'targets/a'] }])).toThrow(/duplicates/);
    expect(() => new Policy([{ match: '**', trust: { formats: [] } }])).toThrow(/empty/);
    expect(() => new Policy([{ match: '**', trust: { formats: ['cosign' as 'notary'] } }])).toThrow(/unknown trust format/);
  });
});

describe('patternHost', () => {
  it('gives the literal host, or a predicate for wildcard hosts', () => {
    expect(patternHost('docker.io/library/*')).toEqual({ literal: 'docker.io' });
    expect(patternHost('127.0.0.1:5000/**')).toEqual({ literal: '127.0.0.1:5000' });
    const any = patternHost('**');
    expect('test' in any && any.test('anything.example')).toBe(true);
    const sub = patternHost('*.example.com/**');
    expect('test' in sub && sub.test('reg.example.com')).toBe(true);
    expect('test' in sub && sub.test('example.org')).toBe(false);
  });
});

describe('Policy.match properties', () => {
  const segment = fc.constantFrom('a', 'b', 'ab', 'x.y', '*', '**', 'a*', '*b');
  const glob = fc
    .array(segment, { minLength: 2, maxLength: 4 })
    .map((s) => s.join('/'))
    .filter((g) => globProblem(g) === undefined);
  const trust = fc.constantFrom<PolicyRuleSpec['trust']>('none', 'deny', { formats: ['notary'] });
  const rules = fc
    .array(fc.record({ match: glob, trust }), { maxLength: 12 })
    .chain((rs) => trust.map((t) => [...rs, { match: '**', trust: t }]));
  const name = fc.array(fc.constantFrom('a', 'b', 'ab', 'aab', 'x.y', 'b-a'), { minLength: 2, maxLength: 5 }).map((s) => s.join('/'));

  /** The documented order, written out independently as an oracle. */
  function key(match: string, index: number): number[] {
    if (match === '**') return [1, 0, 0, 0, index];
    const segs = match.split('/');
    const literalSegments = segs.filter((s) => !s.includes('*')).length;
    const literalChars = match.replace(/[*/]/g, '').length;
    const globstars = segs.filter((s) => s === '**').length;
    return [0, -literalSegments, -literalChars, globstars, index];
  }
  function lexLess(a: number[], b: number[]): boolean {
    for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return a[i]! < b[i]!;
    return false;
  }

  it('for rule sets ending with **, always returns a matching rule, deterministically, and the most specific one', () => {
    fc.assert(
      fc.property(rules, fc.array(name, { minLength: 1, maxLength: 8 }), (rs, names) => {
        const p = new Policy(rs);
        const again = new Policy([...rs]);
        for (const n of names) {
          const m = p.match(n);
          expect(m.index).toBeGreaterThanOrEqual(0);
          expect(m.index).toBeLessThan(rs.length);
          expect(p.match(n)).toBe(m);
          expect(again.match(n).index).toBe(m.index);
          expect(picomatch.isMatch(n, m.match, { dot: true })).toBe(true);
          // no matching rule ranks before it
          const best = rs
            .map((r, i) => ({ r, i }))
            .filter(({ r }) => picomatch.isMatch(n, r.match, { dot: true }))
            .reduce((acc, cur) => (lexLess(key(cur.r.match, cur.i), key(acc.r.match, acc.i)) ? cur : acc));
          expect(m.index).toBe(best.i);
        }
      }),
      { numRuns: 300 },
    );
  });
});

describe('globstar at the end', () => {
  it('"a/b/**" matches the repository "a/b" itself, as picomatch does (the prefix shortcut must not skip it)', () => {
    const p = new Policy([{ match: 'b/x.y/**', trust: 'none' }, { match: '**', trust: 'deny' }]);
    expect(p.match('b/x.y').index).toBe(0);
    expect(p.match('b/x.y/z').index).toBe(0);
    expect(p.match('b/x.yz').index).toBe(1);
  });
});

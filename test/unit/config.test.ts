import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { ConfigError, loadConfig, parseConfig, type ConfigIssue } from '../../daemon/config.js';
import { DEFAULT_CONFIG_SOURCE, DEFAULT_CONFIG_YAML } from '../../daemon/default-config.js';
import { Policy } from '../../trust/policy.js';

const SRC = '/etc/portcullis/config.yaml';
const env = { HOME: '/home/test' };

function issuesOf(text: string): readonly ConfigIssue[] {
  try {
    parseConfig(text, SRC, { env });
  } catch (err) {
    if (err instanceof ConfigError) return err.issues;
    throw err;
  }
  throw new Error('expected a ConfigError');
}

/** The one issue at `path`; fails when there is none. */
function issueAt(text: string, path: string): ConfigIssue {
  const all = issuesOf(text);
  const found = all.find((i) => i.path === path);
  if (found === undefined) throw new Error(`no issue at ${path}; got:\n${all.map((i) => `${i.path}: ${i.message}`).join('\n')}`);
  return found;
}

const base = (policy: string, upstreams = '  docker.io: {}\n') => `upstreams:\n${upstreams}policy:\n${policy}`;
const denyAll = '  - match: "**"\n    trust: deny\n';

describe('the embedded default', () => {
  it('parses, serves nothing, and has no Notary default for Docker Hub', async () => {
    const c = parseConfig(DEFAULT_CONFIG_YAML, DEFAULT_CONFIG_SOURCE, { env });
    expect(c.listen).toEqual({ host: '127.0.0.1', port: 5050 });
    expect([...c.upstreams.keys()]).toEqual(['docker.io']);
    expect(c.upstreams.get('docker.io')).toEqual({ host: 'docker.io', url: 'https://registry-1.docker.io', allowedHosts: ['auth.docker.io', 'production.cloudflare.docker.com'] });
    expect(c.policy).toEqual([{ match: '**', trust: 'deny' }]);
    expect(c.offline.maxStalenessMs).toBe(0);
    expect(c.logging.level).toBe('info');
    expect(c.warnings).toEqual([]);
    expect(new Policy(c.policy).match('docker.io/library/nginx').trust).toBe('deny');
    expect(DEFAULT_CONFIG_YAML).toMatch(/notary\.docker\.io.*2026-12-08/s);
    const loaded = await loadConfig(undefined, { env });
    expect(loaded.policy).toEqual(c.policy);
  });

  it('defaults stateDir to $STATE_DIRECTORY, then $XDG_STATE_HOME, then ~/.local/state', () => {
    const dir = (e: Record<string, string>) => parseConfig(DEFAULT_CONFIG_YAML, DEFAULT_CONFIG_SOURCE, { env: e, homeDir: '/home/u' }).stateDir;
    expect(dir({ STATE_DIRECTORY: '/var/lib/portcullis:/var/lib/other', XDG_STATE_HOME: '/x' })).toBe('/var/lib/portcullis');
    expect(dir({ XDG_STATE_HOME: '/x/state' })).toBe('/x/state/portcullis');
    expect(dir({})).toBe('/home/u/.local/state/portcullis');
  });

  it('is frozen', () => {
    const c = parseConfig(DEFAULT_CONFIG_YAML, DEFAULT_CONFIG_SOURCE, { env });
    expect(Object.isFrozen(c)).toBe(true);
    expect(Object.isFrozen(c.policy)).toBe(true);
    expect(Object.isFrozen(c.policy[0])).toBe(true);
  });
});

describe('a full configuration', () => {
  const full = `listen: "[::1]:5050"
stateDir: state
upstreams:
  docker.io: {}
  127.0.0.1:5000:
    url: http://127.0.0.1:5000/
    notary: { url: http://127.0.0.1:4443, insecure: true }
  registry.example.com:
    url: https://registry.example.com
    ca: certs/registry-ca.pem
    auth: { username: robot, passwordFile: ../secrets/pw }
    notary:
      url: https://notary.example.com:4443
      ca: /etc/ssl/notary-ca.pem
      gunPrefix: "example/"
policy:
  - match: "registry.example.com/team/**"
    trust: notary
    signers: [targets/releases, targets/qa]
    threshold: 2
  - match: "127.0.0.1:5000/library/**"
    trust: [notary]
  - match: "*.example.com/**"
    trust: notary
    signers: [targets]
  - match: "docker.io/library/*"
    trust: none
  - match: "**"
    trust: deny
offline: { maxStaleness: 0s }
logging: { level: debug }
limits: { manifestMaxBytes: 1048576, maxDelegations: 8 }
`;

  it('parses into normalized values, resolving relative paths against the config directory', () => {
    const c = parseConfig(full, SRC, { env });
    expect(c.listen).toEqual({ host: '::1', port: 5050 });
    expect(c.stateDir).toBe('/etc/portcullis/state');
    expect(c.upstreams.get('127.0.0.1:5000')).toEqual({
      host: '127.0.0.1:5000',
      url: 'http://127.0.0.1:5000',
      notary: { url: 'http://127.0.0.1:4443', gunPrefix: '127.0.0.1:5000/', insecure: true },
      allowedHosts: [],
    });
    expect(c.upstreams.get('registry.example.com')).toEqual({
      host: 'registry.example.com',
      url: 'https://registry.example.com',
      ca: '/etc/portcullis/certs/registry-ca.pem',
      auth: { kind: 'password-file', username: 'robot', passwordFile: '/etc/secrets/pw' },
      notary: { url: 'https://notary.example.com:4443', ca: '/etc/ssl/notary-ca.pem', gunPrefix: 'example/', insecure: false },
      allowedHosts: [],
    });
    expect(c.policy).toEqual([
      { match: 'registry.example.com/team/**', trust: { formats: ['notary'] }, signers: ['targets/releases', 'targets/qa'], threshold: 2 },
      { match: '127.0.0.1:5000/library/**', trust: { formats: ['notary'] } },
      { match: '*.example.com/**', trust: { formats: ['notary'] }, signers: ['targets'], threshold: 1 },
      { match: 'docker.io/library/*', trust: 'none' },
      { match: '**', trust: 'deny' },
    ]);
    expect(c.logging.level).toBe('debug');
    expect(c.limits).toEqual({ manifestMaxBytes: 1048576, maxDelegations: 8 });
    expect(c.warnings).toEqual([]);
    const p = new Policy(c.policy);
    expect(p.match('registry.example.com/team/app').index).toBe(0);
    expect(p.match('registry.example.com/other/app').index).toBe(2);
  });

  it('loadConfig resolves against the file directory and checks the named files are readable', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'portcullis-config-'));
    try {
      const text = `upstreams:
  reg.example.com:
    url: https://reg.example.com
    ca: ca.pem
    auth: { tokenFile: token }
policy:
  - { match: "**", trust: deny }
`;
      await writeFile(path.join(dir, 'config.yaml'), text);
      const err = await loadConfig(path.join(dir, 'config.yaml'), { env }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(ConfigError);
      const issues = (err as ConfigError).issues;
      expect(issues.map((i) => [i.path, i.line, i.col])).toEqual([
        ['upstreams["reg.example.com"].ca', 4, 9],
        ['upstreams["reg.example.com"].auth.tokenFile', 5, 24],
      ]);
      expect(issues[0]!.message).toContain(path.join(dir, 'ca.pem'));
      await writeFile(path.join(dir, 'ca.pem'), 'x');
      await writeFile(path.join(dir, 'token'), 'x');
      const c = await loadConfig(path.join(dir, 'config.yaml'), { env });
      expect(c.upstreams.get('reg.example.com')?.ca).toBe(path.join(dir, 'ca.pem'));
      expect(c.upstreams.get('reg.example.com')?.auth).toEqual({ kind: 'token-file', tokenFile: path.join(dir, 'token') });
      expect(c.source).toBe(path.join(dir, 'config.yaml'));
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('loadConfig reports a missing file as a ConfigError', async () => {
    await expect(loadConfig('/nonexistent/portcullis.yaml')).rejects.toThrow(/cannot read/);
  });
});

describe('errors name the key path and line:column', () => {
  it('unknown key, top level and nested, with a suggestion', () => {
    const text = `upstreams:
  docker.io: { url: https://registry-1.docker.io, nottary: {} }
policy:
  - match: "**"
    trust: deny
    signer: [targets]
lisen: 127.0.0.1:5050
`;
    const issues = issuesOf(text);
    expect(issues).toContainEqual(expect.objectContaining({ path: 'upstreams["docker.io"].nottary', line: 2, col: 51 }));
    expect(issues.find((i) => i.path === 'upstreams["docker.io"].nottary')?.message).toMatch(/unknown key.*did you mean "notary"/);
    expect(issues).toContainEqual(expect.objectContaining({ path: 'policy[0].signer', line: 6, col: 5 }));
    expect(issues).toContainEqual(expect.objectContaining({ path: 'lisen', line: 7, col: 1 }));
    expect(issues.find((i) => i.path === 'lisen')?.message).toMatch(/did you mean "listen"/);
  });

  it('wrong type', () => {
    expect(issueAt(`listen: 5050\n${base(denyAll)}`, 'listen')).toMatchObject({ line: 1, col: 9, message: 'must be a string (got number 5050)' });
    expect(issueAt(`upstreams: [docker.io]\npolicy:\n${denyAll}`, 'upstreams')).toMatchObject({ line: 1, col: 12, message: 'must be a mapping (got a list)' });
    expect(issueAt(base('  match: "**"\n'), 'policy')).toMatchObject({ line: 4, message: 'must be a list of rules (got a mapping)' });
    expect(issueAt(base(`  - match: "docker.io/**"\n    trust: deny\n    threshold: one\n${denyAll}`), 'policy[0].threshold').message).toMatch(
      /must be an integer >= 1 \(got "one"\)/,
    );
    expect(issueAt(`logging: { level: 3 }\n${base(denyAll)}`, 'logging.level').line).toBe(1);
  });

  it('bad trust value, in the exact format of the message', () => {
    const text = base(`  - match: "docker.io/library/*"\n    trust: none\n  - match: "**"\n    trust: notray\n`);
    try {
      parseConfig(text, 'config.yaml', { env });
      expect.unreachable();
    } catch (err) {
      expect(err).toBeInstanceOf(ConfigError);
      expect((err as ConfigError).message).toContain(
        'config.yaml:7:12: policy[1].trust: must be one of notary, none, deny (got "notray"); did you mean "notary"?',
      );
      expect((err as ConfigError).issues).toHaveLength(1);
    }
    expect(issueAt(base(`  - match: "**"\n    trust: notation\n`), 'policy[0].trust').message).toMatch(/not supported yet/);
    expect(issueAt(base(`  - match: "**"\n    trust: [notary, cosign]\n`), 'policy[0].trust[1]').message).toMatch(/not supported yet/);
    expect(issueAt(base(`  - match: "**"\n    trust: [deny]\n`), 'policy[0].trust[0]').message).toMatch(/not a signature format/);
    expect(issueAt(base(`  - match: "**"\n    trust: []\n`), 'policy[0].trust').message).toMatch(/must not be empty/);
  });

  it('missing default rule', () => {
    const i = issueAt(base(`  - match: "docker.io/**"\n    trust: deny\n`), 'policy[0].match');
    expect(i).toMatchObject({ line: 4, col: 12 });
    expect(i.message).toMatch(/the last rule must be an explicit default: match: "\*\*"/);
    // a catch-all that is not last does not count, and would also shadow the rules after it
    const j = issuesOf(base(`${denyAll}  - match: "docker.io/**"\n    trust: none\n`));
    expect(j.map((x) => x.path)).toEqual(['policy[1].match']);
    expect(issueAt(base('  []\n'), 'policy').message).toMatch(/must not be empty/);
  });

  it('missing required keys point at the enclosing mapping', () => {
    expect(issueAt('policy:\n' + denyAll, 'upstreams')).toMatchObject({ line: 1, col: 1, message: 'is required' });
    expect(issueAt(base(denyAll, '  reg.example.com: {}\n'), 'upstreams["reg.example.com"].url')).toMatchObject({ line: 2, message: 'is required' });
    expect(issueAt(base('  - trust: deny\n'), 'policy[0].match')).toMatchObject({ line: 4, col: 5 });
  });

  it('bad url', () => {
    const up = (url: string) => base(denyAll, `  reg.example.com:\n    url: ${url}\n`);
    expect(issueAt(up('ftp://reg.example.com'), 'upstreams["reg.example.com"].url')).toMatchObject({ line: 3, col: 10 });
    expect(issueAt(up('ftp://reg.example.com'), 'upstreams["reg.example.com"].url').message).toMatch(/scheme must be https or http/);
    expect(issueAt(up('https://reg.example.com/v2'), 'upstreams["reg.example.com"].url').message).toMatch(/must not have a path/);
    expect(issueAt(up('https://reg.example.com/?x=1'), 'upstreams["reg.example.com"].url').message).toMatch(/query/);
    expect(issueAt(up('reg.example.com'), 'upstreams["reg.example.com"].url').message).toMatch(/absolute http\(s\) URL/);
  });

  it('url with credentials, without echoing them', () => {
    const i = issueAt(base(denyAll, '  reg.example.com:\n    url: https://bob:hunter2@reg.example.com\n'), 'upstreams["reg.example.com"].url');
    expect(i).toMatchObject({ line: 3, col: 10 });
    expect(i.message).toMatch(/must not contain credentials/);
    expect(i.message).not.toContain('hunter2');
  });

  it('notary rule without a notary upstream: literal host and wildcard host', () => {
    const ups = '  docker.io: {}\n  reg.example.com:\n    url: https://reg.example.com\n    notary: { url: https://notary.example.com }\n';
    const lit = issueAt(base(`  - match: "docker.io/library/*"\n    trust: notary\n${denyAll}`, ups), 'policy[0].trust');
    expect(lit).toMatchObject({ line: 8, col: 12 });
    expect(lit.message).toBe('rule "docker.io/library/*" needs Notary, but upstream "docker.io" has no notary block');
    const wild = issueAt(base(`  - match: "*/team/**"\n    trust: [notary]\n${denyAll}`, ups), 'policy[0].trust');
    expect(wild.message).toMatch(/upstream "docker.io" has no notary block \(narrow the match/);
    const all = issueAt(base('  - match: "**"\n    trust: notary\n', ups), 'policy[0].trust');
    expect(all.message).toMatch(/"docker.io"/);
    // covering only upstreams with Notary is fine
    expect(() => parseConfig(base(`  - match: "reg.*/**"\n    trust: notary\n${denyAll}`, ups), SRC, { env })).not.toThrow();
  });

  it('a pattern must name a configured upstream and be able to match', () => {
    expect(issueAt(base(`  - match: "dockr.io/**"\n    trust: deny\n${denyAll}`), 'policy[0].match').message).toMatch(
      /host "dockr.io" is not a configured upstream.*did you mean "docker.io"/,
    );
    expect(issueAt(base(`  - match: "library/nginx"\n    trust: none\n${denyAll}`), 'policy[0].match').message).toMatch(/for Docker Hub write "docker.io\/library\/nginx"/);
    expect(issueAt(base(`  - match: "nginx"\n    trust: none\n${denyAll}`), 'policy[0].match').message).toMatch(/docker.io\/library\/nginx/);
    expect(issueAt(base(`  - match: "docker.io/nginx"\n    trust: none\n${denyAll}`), 'policy[0].match').message).toMatch(/two path segments/);
    expect(issueAt(base(`  - match: "*.example.com/**"\n    trust: none\n${denyAll}`), 'policy[0].match').message).toMatch(/matches no configured upstream/);
    expect(issueAt(base(`  - match: "docker.io/{a,b}/*"\n    trust: none\n${denyAll}`), 'policy[0].match').message).toMatch(/may only hold/);
    expect(issueAt(base(`  - match: "docker.io/**"\n    trust: none\n  - match: "docker.io/**"\n    trust: deny\n${denyAll}`), 'policy[1].match').message).toMatch(
      /same pattern as policy\[0\]/,
    );
  });

  it('signers and threshold', () => {
    const ups = '  reg.example.com:\n    url: https://reg.example.com\n    notary: { url: https://notary.example.com }\n';
    const r = (extra: string, trust = 'notary') => base(`  - match: "reg.example.com/**"\n    trust: ${trust}\n${extra}${denyAll}`, ups);
    expect(issueAt(r('    signers: [targets/a]\n', 'none'), 'policy[0].signers').message).toMatch(/applies only to a rule that checks signatures/);
    expect(issueAt(r('    signers: [targets/a]\n    threshold: 2\n'), 'policy[0].threshold').message).toMatch(/at most the number of signers \(1\)/);
    expect(issueAt(r('    threshold: 1\n'), 'policy[0].threshold').message).toMatch(/needs signers/);
    expect(issueAt(r('    signers: [releases]\n'), 'policy[0].signers[0]').message).toMatch(/"targets" or a delegation/);
    expect(issueAt(r('    signers: [targets/a, targets/a]\n'), 'policy[0].signers[1]').message).toMatch(/twice/);
    // signers are checked even when trust itself is wrong: all problems at once
    const both = issuesOf(r('    signers: [targets/a]\n    threshold: 3\n', 'notray')).map((i) => i.path);
    expect(both).toEqual(['policy[0].trust', 'policy[0].threshold']);
  });

  it('upstream hosts, listen, notary transport, offline', () => {
    expect(issueAt(base(denyAll, '  index.docker.io: {}\n'), 'upstreams["index.docker.io"]').message).toMatch(/Docker Hub is named docker.io/);
    expect(issueAt(base(denyAll, '  Reg.Example.com: { url: https://x.example.com }\n'), 'upstreams["Reg.Example.com"]').message).toMatch(/lower case/);
    expect(issueAt(base(denyAll, '  "reg.example.com/x": { url: https://x.example.com }\n'), 'upstreams["reg.example.com/x"]').message).toMatch(/registry host/);
    expect(issueAt(`listen: "::1:5050"\n${base(denyAll)}`, 'listen').message).toMatch(/needs brackets/);
    expect(issueAt(`listen: 127.0.0.1:99999\n${base(denyAll)}`, 'listen').message).toMatch(/port/);
    expect(issueAt(`listen: localhost\n${base(denyAll)}`, 'listen').message).toMatch(/host:port/);
    const n = (notary: string) => base(denyAll, `  127.0.0.1:5000:\n    url: http://127.0.0.1:5000\n    notary: ${notary}\n`);
    expect(issueAt(n('{ url: http://127.0.0.1:4443 }'), 'upstreams["127.0.0.1:5000"].notary.url').message).toMatch(/insecure: true/);
    expect(issueAt(n('{ url: http://notary.example.com, insecure: true }'), 'upstreams["127.0.0.1:5000"].notary.url').message).toMatch(/loopback/);
    expect(issueAt(n('{ url: http://127.0.0.1:4443, insecure: true, ca: /x.pem }'), 'upstreams["127.0.0.1:5000"].notary.ca').message).toMatch(/https/);
    expect(issueAt(n('{ url: https://n.example.com, gunPrefix: "x" }'), 'upstreams["127.0.0.1:5000"].notary.gunPrefix').message).toMatch(/end with/);
    expect(issueAt(n('{ ca: /x.pem }'), 'upstreams["127.0.0.1:5000"].notary.url').message).toBe('is required');
    expect(issueAt(base(denyAll, '  reg.example.com:\n    url: http://reg.example.com\n    auth: { username: u, passwordFile: /p }\n'), 'upstreams["reg.example.com"].auth').message).toMatch(
      /clear text/,
    );
    expect(issueAt(base(denyAll, '  reg.example.com:\n    url: https://reg.example.com\n    auth: { username: u }\n'), 'upstreams["reg.example.com"].auth').message).toMatch(
      /needs either/,
    );
    expect(issueAt(`offline: { maxStaleness: 1h }\n${base(denyAll)}`, 'offline.maxStaleness').message).toMatch(/only 0s/);
    expect(issueAt(`offline: { maxStaleness: soon }\n${base(denyAll)}`, 'offline.maxStaleness').message).toMatch(/duration/);
  });

  it('YAML syntax errors and duplicate keys have positions too', () => {
    const syntax = issuesOf('upstreams:\n  docker.io: {\npolicy: []\n');
    expect(syntax[0]!.line).toBeGreaterThan(0);
    expect(syntax[0]!.message).toMatch(/^YAML: /);
    const dup = issueAt(`upstreams:\n  docker.io: {}\npolicy:\n${denyAll}policy:\n${denyAll}`, 'policy');
    expect(dup).toMatchObject({ line: 6, col: 1, message: 'duplicate key (first at line 3)' });
    expect(issuesOf('')[0]!.message).toMatch(/empty/);
    expect(issuesOf('just a string')[0]!.message).toMatch(/must be a mapping/);
  });

  it('collects every problem, sorted by position, in a readable message', () => {
    const text = `listen: nope
upstreams:
  docker.io: { url: ftp://x }
policy:
  - match: "docker.io/library/*"
    trust: notray
logging: { level: loud }
`;
    let err: ConfigError | undefined;
    try {
      parseConfig(text, 'config.yaml', { env });
    } catch (e) {
      err = e as ConfigError;
    }
    expect(err).toBeInstanceOf(ConfigError);
    expect(err!.issues.map((i) => i.path)).toEqual([
      'listen',
      'upstreams["docker.io"].url',
      'policy[0].match',
      'policy[0].trust',
      'logging.level',
    ]);
    expect(err!.message.split('\n')[0]).toBe('invalid configuration config.yaml (5 problems):');
    expect(err!.message).toContain('\n  config.yaml:1:9: listen: must be host:port');
  });
});

describe('warnings', () => {
  let c: ReturnType<typeof parseConfig>;
  beforeAll(() => {
    c = parseConfig(
      `listen: 0.0.0.0:5050\n${base(denyAll, '  reg.example.com:\n    url: https://reg.example.com\n    auth: { username: u, password: secret }\n')}`,
      SRC,
      { env },
    );
  });

  it('are accepted but reported: non-loopback listen, inline password', () => {
    expect(c.warnings.map((w) => [w.path, w.line])).toEqual([
      ['listen', 1],
      ['upstreams["reg.example.com"].auth.password', 5],
    ]);
    expect(c.upstreams.get('reg.example.com')?.auth).toEqual({ kind: 'password', username: 'u', password: 'secret' });
  });
});

describe('upstream allowedHosts (the only other hosts an upstream may send the daemon to)', () => {
  const base = (extra: string) => `listen: 127.0.0.1:5050\nstateDir: /tmp/x\nupstreams:\n  docker.io:\n    url: https://registry-1.docker.io\n${extra}policy:\n  - { match: "**", trust: deny }\n`;
  it('the embedded default names Docker Hub token and CDN hosts, and nothing else', () => {
    const c = parseConfig(DEFAULT_CONFIG_YAML, DEFAULT_CONFIG_SOURCE, { env: {} , homeDir: '/home/x' });
    expect(c.upstreams.get('docker.io')!.allowedHosts).toEqual(['auth.docker.io', 'production.cloudflare.docker.com']);
  });
  it('defaults to none', () => {
    expect(parseConfig(base(''), 'c.yaml', { env: {} }).upstreams.get('docker.io')!.allowedHosts).toEqual([]);
  });
  it('a URL or a path is not a host: refused with key path and line', () => {
    let err: unknown;
    try {
      parseConfig(base('    allowedHosts: [auth.docker.io, "https://evil.example/x"]\n'), 'c.yaml', { env: {} });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as ConfigError).message).toMatch(/c\.yaml:6:\d+: upstreams.*allowedHosts\[1\]: must be a hostname/);
  });
});

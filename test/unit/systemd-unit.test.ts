// systemd/portcullis.service: the hardening it promises is really in the file, it fits what the daemon does
// (state in $STATE_DIRECTORY, an unprivileged default port, a stop timeout longer than the drain), and
// `systemd-analyze verify` has nothing to say about it.
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../daemon/config.js';
import { DEFAULT_CONFIG_SOURCE, DEFAULT_CONFIG_YAML } from '../../daemon/default-config.js';

const REPO = join(import.meta.dirname, '../..');
const UNIT_PATH = join(REPO, 'systemd/portcullis.service');
const UNIT_TEXT = readFileSync(UNIT_PATH, 'utf8');

/** section → key → every value assigned, in order (systemd list settings accumulate; an empty one resets). */
type Unit = Map<string, Map<string, string[]>>;

function parseUnit(text: string): Unit {
  const unit: Unit = new Map();
  let section: Map<string, string[]> | undefined;
  // A backslash at the end of a line continues it (systemd joins the lines with a space).
  const lines = text.replace(/\\\n/g, ' ').split('\n');
  lines.forEach((raw, i) => {
    const line = raw.trim();
    if (line === '' || line.startsWith('#') || line.startsWith(';')) return;
    const header = /^\[([^\]]+)\]$/.exec(line);
    if (header) {
      section = new Map();
      unit.set(header[1]!, section);
      return;
    }
    const eq = line.indexOf('=');
    if (eq <= 0 || !section) throw new Error(`line ${i + 1}: not a key=value inside a section: ${raw}`);
    const key = line.slice(0, eq).trim();
    const values = section.get(key) ?? [];
    values.push(line.slice(eq + 1).trim());
    section.set(key, values);
  });
  return unit;
}

const unit = parseUnit(UNIT_TEXT);
const service = unit.get('Service') ?? new Map<string, string[]>();

/** The effective value of a single-valued setting: the last assignment. */
function value(key: string): string | undefined {
  return service.get(key)?.at(-1);
}

/** The effective list of a list setting: the words assigned since the last empty assignment. */
function list(key: string): string[] {
  const all = service.get(key) ?? [];
  const from = all.lastIndexOf('');
  return all.slice(from + 1).flatMap((v) => v.split(/\s+/).filter(Boolean));
}

describe('systemd/portcullis.service', () => {
  it('has the [Unit], [Service] and [Install] sections', () => {
    expect([...unit.keys()]).toEqual(['Unit', 'Service', 'Install']);
    expect(unit.get('Install')?.get('WantedBy')).toEqual(['multi-user.target']);
  });

  it('runs `portcullis serve`, with arguments from the optional /etc/default/portcullis', () => {
    expect(value('ExecStart')).toBe('/usr/local/bin/portcullis serve $PORTCULLIS_ARGS');
    expect(value('EnvironmentFile')).toBe('-/etc/default/portcullis');
  });

  it.each([
    ['DynamicUser', 'yes'],
    ['StateDirectory', 'portcullis'],
    ['ConfigurationDirectory', 'portcullis'],
    ['NoNewPrivileges', 'yes'],
    ['ProtectSystem', 'strict'],
    ['ProtectHome', 'yes'],
    ['PrivateTmp', 'yes'],
    ['PrivateDevices', 'yes'],
    ['ProtectKernelTunables', 'yes'],
    ['ProtectKernelModules', 'yes'],
    ['ProtectKernelLogs', 'yes'],
    ['ProtectControlGroups', 'yes'],
    ['RestrictNamespaces', 'yes'],
    ['LockPersonality', 'yes'],
    ['SystemCallArchitectures', 'native'],
    ['SystemCallErrorNumber', 'EPERM'],
    ['KillSignal', 'SIGTERM'],
    ['TimeoutStopSec', '30'],
    ['Restart', 'on-failure'],
    ['LimitNOFILE', '65536'],
  ])('%s=%s', (key, expected) => {
    expect(service.get(key), `${key} is set exactly once`).toHaveLength(1);
    expect(value(key)).toBe(expected);
  });

  it('keeps no capability at all', () => {
    expect(service.has('CapabilityBoundingSet')).toBe(true);
    expect(list('CapabilityBoundingSet')).toEqual([]);
    expect(list('AmbientCapabilities')).toEqual([]);
  });

  it('allows IPv4, IPv6 and Unix sockets only', () => {
    expect(list('RestrictAddressFamilies').sort()).toEqual(['AF_INET', 'AF_INET6', 'AF_UNIX']);
  });

  it('filters system calls to @system-service, minus @privileged and @resources', () => {
    const filters = service.get('SystemCallFilter') ?? [];
    expect(filters).toContain('@system-service');
    expect(filters).toContain('~@privileged @resources');
  });

  it('leaves MemoryDenyWriteExecute off, and says why (V8 JIT needs W+X pages)', () => {
    expect(value('MemoryDenyWriteExecute')).toBe('no');
    const before = UNIT_TEXT.slice(0, UNIT_TEXT.indexOf('MemoryDenyWriteExecute=no'));
    const comment = before.split('\n').slice(-4).join('\n');
    expect(comment).toMatch(/V8/);
    expect(comment).toMatch(/W\+X/);
  });

  it('fits the daemon: state in $STATE_DIRECTORY, an unprivileged default port, time to drain', () => {
    const c = parseConfig(DEFAULT_CONFIG_YAML, DEFAULT_CONFIG_SOURCE, { env: { STATE_DIRECTORY: '/var/lib/portcullis' } });
    expect(c.stateDir).toBe('/var/lib/portcullis');
    // no capabilities: the default listen address must not need CAP_NET_BIND_SERVICE
    expect(c.listen.port).toBeGreaterThanOrEqual(1024);
    // ProxyServer.shutdown() drains for up to 25 s; systemd must not SIGKILL before that.
    expect(Number(value('TimeoutStopSec'))).toBeGreaterThan(25);
  });
});

function findSystemdAnalyze(): string | undefined {
  try {
    return execFileSync('sh', ['-c', 'command -v systemd-analyze'], { encoding: 'utf8' }).trim() || undefined;
  } catch {
    return undefined;
  }
}

const analyze = findSystemdAnalyze();
const SKIP_REASON = analyze ? '' : ' [skipped: systemd-analyze is not installed; apt-get install systemd]';

describe('systemd-analyze verify', () => {
  const dir = mkdtempSync(join(tmpdir(), 'portcullis-unit-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  /**
   * Writes `text` as `<dir>/<name>/portcullis.service` with ExecStart on the repository's bin/portcullis (verify
   * needs the binary to exist) and returns what verify printed about it.
   */
  function verify(name: string, text: string): { code: number | null; about: string[]; output: string } {
    const sub = join(dir, name);
    rmSync(sub, { recursive: true, force: true });
    mkdirSync(sub, { recursive: true });
    const file = join(sub, 'portcullis.service');
    const local = text.replace(/^ExecStart=\/usr\/local\/bin\/portcullis /m, `ExecStart=${join(REPO, 'bin/portcullis')} `);
    expect(local).not.toBe(text);
    writeFileSync(file, local);
    const r = spawnSync(analyze!, ['verify', '--man=no', file], { encoding: 'utf8', timeout: 60_000 });
    const output = `${r.stdout}${r.stderr}`;
    // Only what concerns this unit: a host's own units may have warnings of their own.
    const about = output.split('\n').filter((l) => l.includes(file) || l.includes('portcullis.service'));
    return { code: r.status, about, output };
  }

  it.skipIf(!analyze)(`the unit verifies clean${SKIP_REASON}`, () => {
    const r = verify('good', UNIT_TEXT);
    expect(r.about, r.output).toEqual([]);
    expect(r.code, r.output).toBe(0);
  });

  it.skipIf(!analyze)(`a broken copy does not (the check can fail)${SKIP_REASON}`, () => {
    const broken = UNIT_TEXT.replace(/^ProtectSystem=strict$/m, 'ProtectSystem=strictly').replace(/^LockPersonality=/m, 'LockPersonalty=');
    const r = verify('broken', broken);
    expect(r.about.some((l) => l.includes('strictly')), r.output).toBe(true);
    expect(r.about.some((l) => l.includes('LockPersonalty')), r.output).toBe(true);
  });
});

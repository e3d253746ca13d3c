// `npm run demo`, as a newcomer runs it: three lines to read, a signed ref that serves and an unsigned one that is
// refused, and Ctrl-C stops everything it started and removes its temp dir.
import { spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { request } from 'node:http';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

const ROOT = join(import.meta.dirname, '../..');

function get(url: string): Promise<{ status: number; body: string; digest: string | undefined }> {
  return new Promise((resolve, reject) => {
    const req = request(url, { headers: { accept: 'application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json' } }, (res) => {
      let body = '';
      res.on('data', (c: Buffer) => (body += c.toString()));
      res.on('end', () => resolve({ status: res.statusCode!, body, digest: res.headers['docker-content-digest'] as string | undefined }));
    });
    req.on('error', reject);
    req.end();
  });
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

describe('npm run demo', () => {
  it('prints MIRROR/SIGNED/UNSIGNED, serves the signed ref, refuses the unsigned one, and Ctrl-C stops only what it started', async () => {
    const child = spawn('npm', ['run', '-s', 'demo'], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    let out = '';
    let err = '';
    child.stderr.on('data', (c: Buffer) => (err += c.toString()));
    const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
    try {
      await new Promise<void>((resolve, reject) => {
        const t = setTimeout(() => reject(new Error(`demo did not print its lines in 120 s:\n${out}\n${err}`)), 120_000);
        child.stdout.on('data', (c: Buffer) => {
          out += c.toString();
          if (/^UNSIGNED=.*$/m.test(out) && /# lab dir:/.test(out)) {
            clearTimeout(t);
            resolve();
          }
        });
        child.on('exit', () => reject(new Error(`demo exited early:\n${out}\n${err}`)));
      });
      const lines = out.split('\n');
      expect(lines[0]).toMatch(/^MIRROR=http:\/\/127\.0\.0\.1:\d+$/);
      expect(lines[1]).toMatch(/^SIGNED=127\.0\.0\.1:\d+\/.+:v1$/);
      expect(lines[2]).toMatch(/^UNSIGNED=127\.0\.0\.1:\d+\/.+:v2$/);
      const mirror = lines[0]!.slice('MIRROR='.length);
      const path = (ref: string) => {
        const [, repo, tag] = /^[^/]+\/(.+):([^:]+)$/.exec(ref)!;
        return `${mirror}/v2/${repo}/manifests/${tag}`;
      };
      const signed = await get(path(lines[1]!.slice('SIGNED='.length)));
      expect(signed.status).toBe(200);
      expect(signed.digest).toMatch(/^sha256:[0-9a-f]{64}$/);
      const unsigned = await get(path(lines[2]!.slice('UNSIGNED='.length)));
      expect(unsigned.status).toBe(403);
      expect(JSON.parse(unsigned.body).errors[0].detail.reason).toBe('NOT_SIGNED');
      const labDir = /# lab dir:\s+(\S+)/.exec(out)![1]!;
      expect(existsSync(labDir)).toBe(true);
      // Ctrl-C reaches the whole foreground process group
      process.kill(-child.pid!, 'SIGINT');
      await exited;
      await new Promise((r) => setTimeout(r, 500));
      expect(existsSync(labDir)).toBe(false);
      // nothing it started survives: no process still refers to the lab dir (registry, notary-server/signer)
      const survivors = readdirSync('/proc').filter((p) => /^\d+$/.test(p)).filter((p) => {
        try {
          return readFileSync(`/proc/${p}/cmdline`, 'utf8').includes(labDir);
        } catch {
          return false;
        }
      });
      expect(survivors).toEqual([]);
      await expect(get(`${mirror}/v2/`)).rejects.toThrow();
    } finally {
      if (child.pid && alive(child.pid)) process.kill(-child.pid, 'SIGKILL');
    }
  });
});

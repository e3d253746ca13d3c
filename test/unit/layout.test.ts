// The design's "never" boundaries are security properties, so they are checked on every run rather than trusted to
// review: the serving path never loads signing keys, the trust core never grows a server or a CLI, the cache knows
// nothing of ours. Static and dynamic imports are both read (hsm/ is loaded lazily by the CLI).
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

const ROOT = join(import.meta.dirname, '..', '..');
const FOLDERS = ['daemon', 'proxy', 'trust', 'cache', 'hsm'] as const;
type Folder = (typeof FOLDERS)[number];

function sources(folder: Folder): Array<{ file: string; text: string }> {
  return readdirSync(join(ROOT, folder))
    .filter((f) => f.endsWith('.ts'))
    .map((f) => ({ file: `${folder}/${f}`, text: readFileSync(join(ROOT, folder, f), 'utf8') }));
}

/** Every module specifier a file imports: `from '…'`, `import '…'`, `import('…')`. */
function specifiers(text: string): string[] {
  const out: string[] = [];
  for (const m of text.matchAll(/(?:from\s+|import\s*\(\s*|import\s+)'([^']+)'/g)) out.push(m[1]!);
  return out;
}

/** The project folders a file reaches (relative imports only), with the specifier that reaches each. */
function projectImports(folder: Folder): Array<{ file: string; target: string; spec: string }> {
  const out: Array<{ file: string; target: string; spec: string }> = [];
  for (const { file, text } of sources(folder)) {
    for (const spec of specifiers(text)) {
      const m = /^\.\.\/([a-z]+)\//.exec(spec);
      if (m) out.push({ file, target: m[1]!, spec });
    }
  }
  return out;
}

function offenders(folder: Folder, forbidden: readonly string[]): string[] {
  return projectImports(folder)
    .filter((i) => forbidden.includes(i.target))
    .map((i) => `${i.file} imports ${i.spec}`);
}

describe('layout: the never boundaries of the design', () => {
  it('proxy/ never imports hsm/: the serving path never touches signing keys', () => {
    expect(offenders('proxy', ['hsm', 'daemon'])).toEqual([]);
  });

  it('trust/ never imports the server, the CLI, config or signing code; it reaches cache/ only through the metadata-store interface', () => {
    expect(offenders('trust', ['proxy', 'daemon', 'hsm'])).toEqual([]);
    const cache = projectImports('trust').filter((i) => i.target === 'cache');
    expect(cache.map((i) => i.spec).filter((s) => s !== '../cache/metadata-store.js')).toEqual([]);
    for (const { file, text } of sources('trust')) {
      expect(specifiers(text).filter((s) => /^(node:)?(http|https|http2|net)$/.test(s)), file).toEqual([]);
    }
  });

  it('cache/ imports nothing of ours', () => {
    expect(offenders('cache', ['proxy', 'daemon', 'hsm', 'trust'])).toEqual([]);
  });

  it('hsm/ never imports the serving code', () => {
    expect(offenders('hsm', ['proxy', 'daemon'])).toEqual([]);
  });

  it('the CLI loads hsm/ only lazily, so `serve` and `trust inspect` never load the PKCS#11 addon', () => {
    for (const { file, text } of sources('daemon')) {
      const staticHsm = [...text.matchAll(/^import\s+(?!type\b)[^;]*from\s+'\.\.\/hsm\/[^']+'/gm)].map((m) => m[0]);
      expect(staticHsm, file).toEqual([]);
    }
  });

  it('finds imports at all (the scan is not vacuous)', () => {
    expect(projectImports('proxy').some((i) => i.target === 'trust')).toBe(true);
    expect(projectImports('daemon').some((i) => i.target === 'hsm')).toBe(true);
  });
});

import { existsSync, writeFileSync } from 'node:fs';
import { it } from 'vitest';
import { startLab, labEnv } from '../harness/lab.js';

it('explore', async () => {
  const lab = await startLab({ withSigned: true });
  writeFileSync('/tmp/explore/env.json', JSON.stringify({ ...labEnv(lab), pass: lab.notaryPeer.cliEnv && Object.fromEntries(Object.entries(lab.notaryPeer.cliEnv).filter(([k]) => k.startsWith('NOTARY_'))), deleg: lab.delegationKeys }, null, 2));
  const t0 = Date.now();
  while (!existsSync('/tmp/explore/done') && Date.now() - t0 < 1_500_000) await new Promise((r) => setTimeout(r, 500));
  await lab.stop();
}, 1_600_000);

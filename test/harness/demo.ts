// `npm run demo`: the whole lab on loopback (distribution 2.8 upstream, notary-server + notary-signer, demo:v1
// signed, demo:v2 unsigned) with Portcullis in front of it, running until Ctrl-C / SIGTERM. Then it stops what it
// started, and only that, and removes its temp dir (kept with PORTCULLIS_LAB_KEEP=1).
//
// stdout starts with exactly three lines a script can read (MIRROR=, SIGNED=, UNSIGNED=), then commands to try.
// Progress goes to stderr; the mirror's log goes to <lab dir>/portcullis.log.
//
// package.json runs it as `exec node --import tsx test/harness/demo.ts`: `exec` so that npm's sh is replaced and a
// signal npm forwards reaches this process; `node --import tsx` rather than the `tsx` command, whose wrapper process
// re-sends a signal it thinks was missed and SIGKILLs the child 60 ms later, i.e. in the middle of stopping.
//
// The refs use the Docker-mirror addressing (`<mirror>/library/demo:tag`, upstream `docker.io`, which the lab
// serves from its registry and signs as docker.io/library/demo): the explicit-prefix form
// `<mirror>/<registry host>/library/demo` cannot be written as an image reference, as the lab registry's host
// has a port, but it works over plain HTTP (see the last curl printed).
import { closeSync, mkdirSync, openSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { startLab } from './lab.js';
import { startMirror } from './mirror.js';
import { keepLabDirs, onCleanup, stopAllOnSignals } from './process.js';

/** startMirror collects log lines in an array; this one appends each line to a file instead of holding it. */
class LogFileLines extends Array<string> {
  constructor(private readonly fd: number) {
    super();
  }

  override push(...lines: string[]): number {
    for (const line of lines) writeSync(this.fd, line.endsWith('\n') ? line : `${line}\n`);
    return 0;
  }
}

const progress = (message: string) => process.stderr.write(`demo: ${message}\n`);

// Installed first: a Ctrl-C while the lab is still starting stops what has started so far.
stopAllOnSignals();
// stopAllOnSignals() listens once. A Ctrl-C can reach this process twice (from the terminal, and forwarded by npm),
// and a repeat with no listener left would kill it halfway through stopping: keep listening, and ignore repeats.
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(sig, () => {});

const lab = await startLab({ withHubGun: true, log: progress });
const stateDir = join(lab.dir, 'portcullis');
mkdirSync(stateDir, { recursive: true });
const logFile = join(lab.dir, 'portcullis.log');
const logFd = openSync(logFile, 'a');
const mirror = await startMirror(lab, { stateDir, logLines: new LogFileLines(logFd) }).catch(async (e: unknown) => {
  closeSync(logFd);
  await lab.stop();
  throw e;
});
// Cleanups run in reverse order: the mirror drains and closes its log before the lab (and its dir) goes.
onCleanup(async () => {
  await mirror.stop();
  closeSync(logFd);
});

const host = mirror.host;
const signed = `${host}/${lab.repo}:v1`;
const unsigned = `${host}/${lab.repo}:v2`;
process.stdout.write(
  [
    `MIRROR=${mirror.url}`,
    `SIGNED=${signed}`,
    `UNSIGNED=${unsigned}`,
    '',
    `# lab dir:    ${lab.dir}${keepLabDirs() ? ' (kept: PORTCULLIS_LAB_KEEP=1)' : ' (removed on exit)'}`,
    `# mirror log: ${logFile}`,
    `# config:     ${mirror.configPath}`,
    `# upstream:   ${lab.registryUrl} (signed in Notary as docker.io/${lab.repo} and ${lab.gun})`,
    `# notary:     ${lab.notaryUrl} (CA ${lab.caPath})`,
    '',
    '# Try (in another shell, after pasting the three lines above):',
    `curl -si $MIRROR/v2/${lab.repo}/manifests/v1 | head -n 12    # 200, the signed digest`,
    `curl -s $MIRROR/v2/${lab.repo}/manifests/v2; echo            # 403 DENIED, reason NOT_SIGNED`,
    `skopeo inspect --tls-verify=false docker://$SIGNED`,
    `skopeo copy --src-tls-verify=false docker://$UNSIGNED oci:/tmp/x:v2    # refused: denied`,
    `curl -s $MIRROR/v2/${lab.registryHost}/${lab.repo}/manifests/v2; echo   # same refusal, explicit upstream`,
    '',
    '# Ctrl-C (or SIGTERM) stops everything the demo started.',
    '',
  ].join('\n'),
);
progress(`ready; Ctrl-C to stop`);
// Nothing else to do: the mirror's server and the child processes keep the event loop alive until a signal.

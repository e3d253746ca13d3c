// The audit trail of signing: every publishing operation (trust init, signer add, sign, revoke, key rotate) writes
// exactly one JSON line through pino, whether it published or not: which key(s) signed (their display URIs, PIN
// removed), for which role, GUN, tag and digest, and the versions it published per role. A failed operation is
// logged too (outcome "failed" with the error), because a signature may have been made even if nothing landed.
import { pino, type DestinationStream, type Logger } from 'pino';

export type AuditOperation = 'trust-init' | 'signer-add' | 'sign' | 'revoke' | 'key-rotate';

export interface AuditRecord {
  readonly operation: AuditOperation;
  readonly gun: string;
  /** The role the operation is about (the one signed into, delegated, or rotated). */
  readonly role: string;
  /** The URI of the key that signed `role` (or, for root operations, the root key). */
  readonly keyUri: string | undefined;
  /** Every key used, by the role it signed: {"root": "pkcs11:…", "targets": "/keys/t.key"}. */
  readonly keys: Readonly<Record<string, string>>;
  readonly tag?: string | undefined;
  /** "sha256:<hex>" */
  readonly digest?: string | undefined;
  /** The versions published per role (empty when nothing was published). */
  readonly versions: Readonly<Record<string, number>>;
  readonly outcome: 'published' | 'failed';
  readonly attempts: number;
  readonly error?: string | undefined;
  /** Notary server URL. */
  readonly server: string;
}

/**
 * A logger for the audit lines: NDJSON on stderr by default (the CLI's stdout stays for results), written
 * synchronously so the line is out before the process exits.
 */
export function createAuditLogger(destination?: DestinationStream): Logger {
  return pino(
    {
      level: 'info',
      base: { name: 'portcullis-audit' },
      timestamp: pino.stdTimeFunctions.isoTime,
      // belt and braces: nothing in a record should ever carry these
      redact: { paths: ['pin', '*.pin', 'password', '*.password', 'authorization', '*.authorization'], censor: '[redacted]' },
    },
    destination ?? pino.destination({ fd: 2, sync: true }),
  );
}

/**
 * Removes anything secret from a key URI a Signer reports (displayUri should already be clean; this is a second
 * line of defence): the value of `pin-value` (path attribute or query parameter) and URL user info. `pin-source`
 * stays: it names a file or an environment variable, not the PIN.
 */
export function redactKeyUri(uri: string): string {
  let out = uri.replace(/([;?&]pin-value=)[^;&?#]*/gi, '$1[redacted]');
  out = out.replace(/^([a-z][a-z0-9+.-]*:\/\/)[^/@]*@/i, '$1[redacted]@');
  return out;
}

/** Writes one audit line. Never throws (an audit failure must not hide the operation's own result). */
export function writeAudit(logger: Logger, rec: AuditRecord): void {
  const keys: Record<string, string> = {};
  for (const [role, uri] of Object.entries(rec.keys)) keys[role] = redactKeyUri(uri);
  const line = {
    event: 'notary-publish',
    operation: rec.operation,
    outcome: rec.outcome,
    gun: rec.gun,
    role: rec.role,
    keyUri: rec.keyUri === undefined ? undefined : redactKeyUri(rec.keyUri),
    keys,
    tag: rec.tag,
    digest: rec.digest,
    versions: rec.versions,
    attempts: rec.attempts,
    server: rec.server,
    error: rec.error,
  };
  try {
    if (rec.outcome === 'published') logger.info(line, `${rec.operation} ${rec.gun}${rec.tag ? `:${rec.tag}` : ''} ${rec.role}: published`);
    else logger.warn(line, `${rec.operation} ${rec.gun}${rec.tag ? `:${rec.tag}` : ''} ${rec.role}: failed`);
  } catch {
    // nothing sensible to do
  }
}

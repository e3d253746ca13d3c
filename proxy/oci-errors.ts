// The closed set of errors the mirror answers with, and the one function that writes them. What the client
// reads and what the log says come from the same call, so they cannot drift apart.
import type { ServerResponse } from 'node:http';
import type { Logger } from 'pino';

/** OCI distribution error codes (plus distribution's UNAVAILABLE), each with its HTTP status. */
export const ociCodes = {
  BLOB_UNKNOWN: 404,
  MANIFEST_UNKNOWN: 404,
  NAME_UNKNOWN: 404,
  NAME_INVALID: 400,
  DIGEST_INVALID: 400,
  MANIFEST_INVALID: 400,
  RANGE_INVALID: 416,
  DENIED: 403,
  UNAUTHORIZED: 401,
  UNSUPPORTED: 405,
  TOOMANYREQUESTS: 429,
  UNAVAILABLE: 503,
} as const;
export type OciCode = keyof typeof ociCodes;

/** Why a request was DENIED: the machine-readable `detail.reason`, one sentence of advice each. */
export const denyReasons = {
  NOT_SIGNED: 'sign the tag (docker trust sign / notary add) or change the policy rule',
  DIGEST_MISMATCH: 'the registry serves other bytes than the signed digest: re-push the signed image or re-sign',
  EXPIRED: 're-sign or refresh the trust data (notary publish); until then nothing from it is served',
  ROLLBACK: 'the trust server offered older metadata than already trusted; check the server for tampering',
  THRESHOLD: 'more of the required signers must sign this tag',
  SIGNER_NOT_ALLOWED: 'the tag is signed, but not by a role the policy requires',
  TRUST_UNAVAILABLE: 'the trust server is unreachable and no valid cached trust data exists',
  TRUST_INVALID: 'the trust data failed verification; see the log line for the check that failed',
  POLICY_DENY: 'the policy denies this repository',
  NOT_REACHABLE: 'pull by a signed tag first: only content reachable from an allowed manifest is served',
} as const;
export type DenyReason = keyof typeof denyReasons;

export interface OciErrorSpec {
  readonly code: OciCode;
  readonly message: string;
  readonly reason?: DenyReason;
  /** Extra fields for the log line only (rule, roles, digest, upstream error). */
  readonly log?: Record<string, unknown>;
}

export class OciError extends Error {
  override readonly name = 'OciError';
  constructor(readonly spec: OciErrorSpec) {
    super(spec.message);
  }
}

export function ociError(code: OciCode, message: string, reason?: DenyReason, log?: Record<string, unknown>): OciError {
  return new OciError({ code, message, ...(reason ? { reason } : {}), ...(log ? { log } : {}) });
}

/** Writes `{"errors":[…]}` and logs the same code and message. HEAD responses get the headers only. */
export function sendError(res: ServerResponse, log: Logger, spec: OciErrorSpec, head = false): void {
  const status = ociCodes[spec.code];
  const detail = spec.reason ? { reason: spec.reason, advice: denyReasons[spec.reason] } : undefined;
  const body = JSON.stringify({ errors: [{ code: spec.code, message: spec.message, ...(detail ? { detail } : {}) }] });
  const level = status >= 500 ? 'error' : status === 403 ? 'warn' : 'info';
  log[level]({ event: 'refused', status, code: spec.code, reason: spec.reason, ...spec.log }, spec.message);
  if (res.headersSent) {
    // Mid-body: the only honest signal left is an aborted transfer, never a clean end.
    res.destroy(new Error(spec.message));
    return;
  }
  res.writeHead(status, {
    'Content-Type': 'application/json; charset=utf-8',
    'Content-Length': Buffer.byteLength(body),
    'Docker-Distribution-API-Version': 'registry/2.0',
  });
  res.end(head ? undefined : body);
}

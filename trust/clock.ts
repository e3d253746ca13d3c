// The one source of "now" for verification. Callers read it once per operation and pass the Date down, so a
// refresh cannot see two different times (python-tuf's reference_time, tuf-js's isExpired(referenceTime)).
export type Clock = () => Date;

export const systemClock: Clock = () => new Date();

export function fixedClock(iso: string | Date): Clock {
  const t = typeof iso === 'string' ? new Date(iso) : iso;
  if (Number.isNaN(t.getTime())) throw new Error(`fixedClock: not a time: ${String(iso)}`);
  return () => new Date(t.getTime());
}

// Signature verifications per second on one thread: node:crypto (OpenSSL, KeyObject parsed once) against
// @noble/curves (pure JS). Decides which one trust/keys.ts uses. Run: node bench/verify-speed.mjs
import { generateKeyPairSync, sign, verify, createPublicKey, constants } from 'node:crypto';
import { p256 } from '@noble/curves/nist.js';
import { ed25519 } from '@noble/curves/ed25519.js';

const msg = Buffer.from(JSON.stringify({ signed: { _type: 'Targets', version: 7, targets: { v1: { length: 426 } } } }));
function rate(label, f, ms = 1500) {
  for (let i = 0; i < 50; i++) f();
  let n = 0;
  const t0 = performance.now();
  while (performance.now() - t0 < ms) { for (let i = 0; i < 20; i++) f(); n += 20; }
  const r = n / ((performance.now() - t0) / 1000);
  console.log(`${label.padEnd(44)} ${Math.round(r).toLocaleString('en-US').padStart(9)} verify/s`);
  return r;
}
const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const ecSig = sign('sha256', msg, { key: ec.privateKey, dsaEncoding: 'ieee-p1363' });
const ecPem = ec.publicKey.export({ type: 'spki', format: 'pem' });
const ed = generateKeyPairSync('ed25519');
const edSig = sign(null, msg, ed.privateKey);
const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 });
const rsaSig = sign('sha256', msg, { key: rsa.privateKey, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 });
const ecRaw = ec.publicKey.export({ type: 'spki', format: 'der' }).subarray(-65);
const edRaw = ed.publicKey.export({ type: 'spki', format: 'der' }).subarray(-32);
const results = {
  'node:crypto P-256 (KeyObject)': rate('node:crypto P-256 ECDSA (KeyObject once)', () => verify('sha256', msg, { key: ec.publicKey, dsaEncoding: 'ieee-p1363' }, ecSig)),
  'node:crypto P-256 (PEM each call)': rate('node:crypto P-256 ECDSA (PEM parsed per call)', () => verify('sha256', msg, { key: createPublicKey(ecPem), dsaEncoding: 'ieee-p1363' }, ecSig)),
  'noble P-256': rate('@noble/curves P-256 ECDSA', () => p256.verify(ecSig, msg, ecRaw, { prehash: true })),
  'node:crypto Ed25519': rate('node:crypto Ed25519 (KeyObject once)', () => verify(null, msg, ed.publicKey, edSig)),
  'noble Ed25519': rate('@noble/curves Ed25519', () => ed25519.verify(edSig, msg, edRaw)),
  'node:crypto RSA-PSS 2048': rate('node:crypto RSA-PSS 2048 (KeyObject once)', () => verify('sha256', msg, { key: rsa.publicKey, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 }, rsaSig)),
};
if (!p256.verify(ecSig, msg, ecRaw, { prehash: true }) || !ed25519.verify(edSig, msg, edRaw)) throw new Error('noble did not verify');
console.log(`node:crypto / noble: P-256 ${(results['node:crypto P-256 (KeyObject)'] / results['noble P-256']).toFixed(1)}x, Ed25519 ${(results['node:crypto Ed25519'] / results['noble Ed25519']).toFixed(1)}x`);

import { inspect } from 'node:util';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { HsmError, Pkcs11Uri, parsePkcs11Uri, readSecret, parseSecretSource } from '../../hsm/pkcs11-uri.js';

function refusal(text: string, opts = {}): HsmError {
  try {
    parsePkcs11Uri(text, opts);
  } catch (err) {
    expect(err).toBeInstanceOf(HsmError);
    expect((err as HsmError).code).toBe('BAD_URI');
    return err as HsmError;
  }
  throw new Error(`parsed: ${text}`);
}

describe('RFC 7512 examples parse', () => {
  it('the empty URI matches everything', () => {
    const u = parsePkcs11Uri('pkcs11:');
    expect(u.token).toBeUndefined();
    expect(u.selectsToken).toBe(false);
    expect(u.toString()).toBe('pkcs11:');
  });

  it('object and type', () => {
    const u = parsePkcs11Uri('pkcs11:object=my-pubkey;type=public');
    expect(u.object).toBe('my-pubkey');
    expect(u.type).toBe('public');
  });

  it('a full token description with percent-encoding, an id and an empty serial', () => {
    const u = parsePkcs11Uri(
      'pkcs11:token=The%20Software%20PKCS%2311%20Softtoken;manufacturer=Snake%20Oil,%20Inc.;model=1.0;' +
        'object=my-certificate;type=cert;id=%69%95%3E%5C%F4%BD%EC%91;serial=?pin-source=file:/etc/token_pin',
    );
    expect(u.token).toBe('The Software PKCS#11 Softtoken');
    expect(u.manufacturer).toBe('Snake Oil, Inc.');
    expect(u.model).toBe('1.0');
    expect(u.object).toBe('my-certificate');
    expect(u.type).toBe('cert');
    expect(u.id?.toString('hex')).toBe('69953e5cf4bdec91');
    expect(u.serial).toBe('');
    expect(u.pinSource).toEqual({ kind: 'file', path: '/etc/token_pin' });
  });

  it('module-name and module-path', () => {
    expect(parsePkcs11Uri('pkcs11:object=my-sign-key;type=private?module-name=mypkcs11').moduleName).toBe('mypkcs11');
    expect(parsePkcs11Uri('pkcs11:object=my-sign-key;type=private?module-path=/mnt/libmypkcs11.so.1').modulePath).toBe(
      '/mnt/libmypkcs11.so.1',
    );
  });

  it('library and slot attributes', () => {
    const u = parsePkcs11Uri(
      'pkcs11:library-manufacturer=Snake%20Oil,%20Inc.;library-description=Soft%20Token%20Library;library-version=1.23;' +
        'slot-description=Sun%20Metaslot;slot-manufacturer=Sun;slot-id=1743866393',
    );
    expect(u.libraryManufacturer).toBe('Snake Oil, Inc.');
    expect(u.libraryDescription).toBe('Soft Token Library');
    expect(u.libraryVersion).toBe('1.23');
    expect(u.slotDescription).toBe('Sun Metaslot');
    expect(u.slotManufacturer).toBe('Sun');
    expect(u.slotId).toBe(1743866393n);
    expect(u.selectsToken).toBe(true);
  });

  it('percent signs, semicolons and UTF-8 in values; mixed-case hex in id', () => {
    expect(parsePkcs11Uri('pkcs11:token=My%20token%25%20created%20by%20Joe;library-version=3;id=%01%02%03%Ba%dd%Ca%fe%04%05%06').id?.toString('hex'))
      .toBe('010203baddcafe040506');
    expect(parsePkcs11Uri('pkcs11:token=A%20name%20with%20a%20substring%20%25%3B;object=my-certificate;type=cert').token)
      .toBe('A name with a substring %;');
    expect(parsePkcs11Uri('pkcs11:token=Name%20with%20a%20small%20A%20with%20acute:%20%C3%A1;object=my-certificate;type=cert').token)
      .toBe('Name with a small A with acute: á');
  });

  it('vendor attributes (x-…) are kept and written back', () => {
    const u = parsePkcs11Uri('pkcs11:token=my-token;x-vend_aaa=value-a?pin-source=file:/etc/token_pin&x-vend-bbb=value-b');
    expect(u.toString()).toBe('pkcs11:token=my-token;x-vend_aaa=value-a?pin-source=file:/etc/token_pin&x-vend-bbb=value-b');
  });

  it('the scheme is case-insensitive; reserved characters RFC 7512 allows literally are accepted', () => {
    const u = parsePkcs11Uri("PKCS11:object=a:b[c]@d!$'()*+,=&e");
    expect(u.object).toBe("a:b[c]@d!$'()*+,=&e");
    expect(parsePkcs11Uri('pkcs11:object=x?module-path=/a/b|c?d').modulePath).toBe('/a/b|c?d');
  });
});

describe('malformed URIs are refused with the attribute named', () => {
  it("an unknown attribute: unknown attribute 'tokn' in pkcs11 URI", () => {
    expect(refusal('pkcs11:tokn=Notary;object=root').message).toBe("unknown attribute 'tokn' in pkcs11 URI");
    expect(refusal('pkcs11:token=a?pin-sauce=file:/x').message).toBe("unknown attribute 'pin-sauce' in pkcs11 URI");
    // vendor attributes must be x- prefixed
    expect(refusal('pkcs11:token=my-token;vendor-aaa=value-a').message).toContain("'vendor-aaa'");
  });

  it('attributes in the wrong part', () => {
    expect(refusal('pkcs11:token=a;pin-source=file:/x').message).toContain("'pin-source' belongs in the query part");
    expect(refusal('pkcs11:?token=a').message).toContain("'token' belongs in the path part");
  });

  it('repeated attributes, missing "=", stray separators, fragments', () => {
    expect(refusal('pkcs11:token=a;token=b').message).toContain("'token' appears more than once");
    expect(refusal('pkcs11:token').message).toContain("'token'");
    expect(refusal('pkcs11:token=a;;object=b').message).toContain("stray ';'");
    expect(refusal('pkcs11:token=a?pin-source=env:A&&module-name=x').message).toContain("stray '&'");
    expect(refusal('pkcs11:token=a#frag').message).toContain('fragment');
    expect(refusal('https://example.com').message).toContain("must start with 'pkcs11:'");
  });

  it('bad percent-encoding, unencoded characters, invalid UTF-8', () => {
    expect(refusal('pkcs11:token=a%2').message).toContain("attribute 'token'");
    expect(refusal('pkcs11:token=a%zz').message).toContain('invalid percent-encoding');
    expect(refusal('pkcs11:token=My Token').message).toBe(
      `character " " in pkcs11 URI attribute 'token' must be percent-encoded (write %20)`,
    );
    expect(refusal('pkcs11:object=docker.io/library/x').message).toContain('(write %2F)');
    expect(refusal('pkcs11:token=%C3').message).toContain('not valid UTF-8');
    // id is raw bytes, not text
    expect(parsePkcs11Uri('pkcs11:id=%C3').id).toEqual(Buffer.from([0xc3]));
  });

  it('typed attributes are checked', () => {
    expect(refusal('pkcs11:type=secret').message).toContain("'type'");
    expect(refusal('pkcs11:slot-id=0x10').message).toContain("'slot-id'");
    expect(refusal('pkcs11:slot-id=99999999999999999999999').message).toContain("'slot-id'");
    expect(refusal('pkcs11:library-version=1.2.3').message).toContain("'library-version'");
    expect(refusal('pkcs11:id=').message).toContain("'id'");
    expect(refusal('pkcs11:object=a?module-path=lib/x.so').message).toContain("'module-path' must be an absolute path");
    expect(refusal('pkcs11:object=a?module-name=/usr/lib/x').message).toContain("'module-name'");
  });

  it('pin-source must be a local absolute file or an environment variable', () => {
    expect(parsePkcs11Uri('pkcs11:?pin-source=file:///run/pin').pinSource).toEqual({ kind: 'file', path: '/run/pin' });
    expect(parsePkcs11Uri('pkcs11:?pin-source=file://localhost/run/pin').pinSource).toEqual({ kind: 'file', path: '/run/pin' });
    expect(parsePkcs11Uri('pkcs11:?pin-source=/run/pin').pinSource).toEqual({ kind: 'file', path: '/run/pin' });
    expect(parsePkcs11Uri('pkcs11:?pin-source=env:HSM_PIN').pinSource).toEqual({ kind: 'env', name: 'HSM_PIN' });
    expect(refusal('pkcs11:?pin-source=file:run/pin').message).toContain('absolute');
    expect(refusal('pkcs11:?pin-source=file://evil.example/pin').message).toContain("host 'evil.example'");
    expect(refusal('pkcs11:?pin-source=https://evil.example/pin').message).toContain("scheme 'https:'");
    expect(refusal('pkcs11:?pin-source=%7C/usr/bin/pinreader').message).toContain('not supported');
    expect(refusal('pkcs11:?pin-source=env:1BAD').message).toContain('environment variable name');
  });
});

describe('pin-value', () => {
  const PIN = 'pin-7Qz!91';

  it('is refused unless the caller allows it, and the refusal does not echo the PIN', () => {
    const err = refusal(`pkcs11:token=T?pin-value=${PIN}`);
    expect(err.message).toContain('pin-source');
    expect(err.message).not.toContain(PIN);
  });

  it('when allowed, it is reachable only through pinValue(); no string form shows it', () => {
    const u = parsePkcs11Uri(`pkcs11:token=T;object=k?pin-value=${PIN}&module-name=softhsm2`, { allowPinValue: true });
    expect(u.pinValue()).toBe(PIN);
    expect(u.hasPinValue).toBe(true);
    expect(u.toString()).toBe('pkcs11:token=T;object=k?module-name=softhsm2');
    expect(u.redacted()).toBe('pkcs11:token=T;object=k?pin-value=REDACTED&module-name=softhsm2');
    for (const shown of [String(u), `${u}`, JSON.stringify(u), JSON.stringify({ u }), inspect(u), inspect({ deep: { u } }), u.redacted()]) {
      expect(shown).not.toContain(PIN);
    }
    expect(Object.keys(u)).toEqual([]);
    expect(u.withObject({ object: 'other' }).pinValue()).toBe(PIN);
  });

  it('a malformed pin-value is refused without showing it', () => {
    const err = refusal('pkcs11:token=T?pin-value=my%20secret pin', { allowPinValue: true });
    expect(err.message).not.toContain('secret');
    expect(err.message).toContain("'pin-value'");
  });

  it('pin-value and pin-source together are refused', () => {
    expect(refusal(`pkcs11:?pin-value=${PIN}&pin-source=env:X`, { allowPinValue: true }).message).toContain('both');
  });
});

describe('Pkcs11Uri', () => {
  it('is branded: only parsePkcs11Uri constructs one', () => {
    const ctor = Pkcs11Uri as unknown as new (...a: unknown[]) => unknown;
    expect(() => new ctor(Symbol('Pkcs11Uri'), {}, undefined)).toThrow(/parsePkcs11Uri/);
    expect(() => (Pkcs11Uri as unknown as { fromFields: (...a: unknown[]) => unknown }).fromFields(Symbol('x'), {}, undefined)).toThrow();
  });

  it('toString() writes a canonical URI that parses back to the same attributes', () => {
    fc.assert(
      fc.property(
        fc.string({ unit: 'grapheme', maxLength: 20 }),
        fc.string({ unit: 'grapheme', maxLength: 20 }),
        fc.uint8Array({ minLength: 1, maxLength: 16 }),
        fc.option(fc.constantFrom('public', 'private', 'cert') as fc.Arbitrary<'public' | 'private' | 'cert'>, { nil: undefined }),
        (token, object, id, type) => {
          const u0 = parsePkcs11Uri('pkcs11:').withObject({ object, id: Buffer.from(id), ...(type ? { type } : {}) });
          const text = `pkcs11:token=${encodeURIComponent(token)};${u0.toString().slice('pkcs11:'.length)}`;
          const u = parsePkcs11Uri(text);
          expect(u.token).toBe(token);
          expect(u.object).toBe(object);
          expect(u.id).toEqual(Buffer.from(id));
          expect(u.type).toBe(type);
          expect(parsePkcs11Uri(u.toString()).toString()).toBe(u.toString());
        },
      ),
      { numRuns: 300 },
    );
  });

  it('withObject replaces or drops object attributes and keeps the rest', () => {
    const u = parsePkcs11Uri('pkcs11:token=T;object=a;type=private;id=%01?pin-source=env:P&module-name=softhsm2');
    expect(u.withObject({ object: 'b', id: null, type: null }).toString()).toBe('pkcs11:token=T;object=b?pin-source=env:P&module-name=softhsm2');
  });
});

describe('secret sources', () => {
  it('reads env and files, drops one trailing newline, refuses empty or missing ones without showing values', async () => {
    process.env['PORTCULLIS_TEST_PIN'] = 'p1 ';
    expect(await readSecret(parseSecretSource('env:PORTCULLIS_TEST_PIN'), 'PIN')).toBe('p1 ');
    delete process.env['PORTCULLIS_TEST_PIN'];
    await expect(readSecret(parseSecretSource('env:PORTCULLIS_TEST_PIN'), 'PIN')).rejects.toMatchObject({ code: 'PIN_MISSING' });
    const { mkdtemp, writeFile, rm } = await import('node:fs/promises');
    const { tmpdir } = await import('node:os');
    const dir = await mkdtemp(`${tmpdir()}/portcullis-pin-`);
    try {
      await writeFile(`${dir}/pin`, 'abc\r\n');
      expect(await readSecret(parseSecretSource(`file:${dir}/pin`), 'PIN')).toBe('abc');
      await writeFile(`${dir}/empty`, '\n');
      await expect(readSecret(parseSecretSource(`file:${dir}/empty`), 'PIN')).rejects.toMatchObject({ code: 'PIN_MISSING' });
      await expect(readSecret(parseSecretSource(`file:${dir}/none`), 'PIN')).rejects.toThrow(/ENOENT/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

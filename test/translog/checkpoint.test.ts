// C2SP signed notes and checkpoints: the golang.org/x/mod/sumdb/note example key and note (interop),
// round trips, tampering, unknown keys, and malformed input refused with a clear error.
import { describe, expect, it } from 'vitest';
import {
  TranslogError, formatCheckpoint, generateNoteKey, leafHash, noteSignerFromKey, noteVerifierFromKey, openCheckpoint,
  openNote, parseCheckpoint, rootOf, signNote, type NoteSigner,
} from '../../src/translog/index.js';

// The example key pair and note of golang.org/x/mod/sumdb/note. Ed25519 is deterministic (RFC 8032), so
// signing the text with the signer key must reproduce the published signature byte for byte.
const GO_VKEY = 'PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW';
const GO_SKEY = 'PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz';
const GO_TEXT = 'If you think cryptography is the answer to your problem,\nthen you don\'t know what your problem is.\n';
const GO_NOTE = `${GO_TEXT}\n\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n`;

// The example checkpoint body of c2sp.org/tlog-checkpoint.
const SPEC_BODY = 'example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n';

function refused(f: () => unknown, code: string, message?: RegExp): void {
  let err: unknown;
  try {
    f();
  } catch (e) {
    err = e;
  }
  expect(err, 'expected a TranslogError').toBeInstanceOf(TranslogError);
  expect((err as TranslogError).code).toBe(code);
  if (message) expect((err as Error).message).toMatch(message);
}

describe('signed notes: the Go sumdb/note example', () => {
  it('loads the example keys and reproduces the example note byte for byte', () => {
    const signer = noteSignerFromKey(GO_SKEY);
    const verifier = noteVerifierFromKey(GO_VKEY);
    expect(signer.name).toBe('PeterNeumann');
    expect(signer.keyHash).toBe(0xc74f20a3);
    expect(verifier.keyHash).toBe(0xc74f20a3);
    expect(signNote(GO_TEXT, signer)).toBe(GO_NOTE);
  });

  it('opens the example note with the example verifier key', () => {
    const opened = openNote(GO_NOTE, [noteVerifierFromKey(GO_VKEY)]);
    expect(opened.text).toBe(GO_TEXT);
    expect(opened.signatures).toEqual([{ name: 'PeterNeumann', keyHash: 0xc74f20a3, verified: true }]);
  });

  it('refuses every truncation and every single-character change of the verifier key', () => {
    for (let i = 0; i <= GO_VKEY.length; i++) {
      for (let j = i + 1; j <= GO_VKEY.length; j++) {
        if (i === 0 && j === GO_VKEY.length) continue;
        refused(() => noteVerifierFromKey(GO_VKEY.slice(i, j)), 'key');
      }
    }
    for (let i = 0; i < GO_VKEY.length; i++) {
      const mangled = GO_VKEY.slice(0, i) + String.fromCharCode(GO_VKEY.charCodeAt(i) + 1) + GO_VKEY.slice(i + 1);
      refused(() => noteVerifierFromKey(mangled), 'key');
    }
    // Wrong key length and unknown key type, each with a key hash that would match.
    refused(() => noteVerifierFromKey('PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY=='), 'key');
    refused(() => noteVerifierFromKey('PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW'), 'key', /unsupported key type/);
  });

  it('refuses every single-character change of the signer key', () => {
    for (let i = 0; i < GO_SKEY.length; i++) {
      const mangled = GO_SKEY.slice(0, i) + String.fromCharCode(GO_SKEY.charCodeAt(i) + 1) + GO_SKEY.slice(i + 1);
      refused(() => noteSignerFromKey(mangled), 'key');
    }
    refused(() => noteSignerFromKey(GO_VKEY), 'key', /PRIVATE\+KEY/);
    refused(() => noteSignerFromKey(GO_SKEY.slice(0, -4)), 'key');
  });
});

describe('signed notes: keys, round trips, tampering', () => {
  const a = generateNoteKey('example.com/log');
  const b = generateNoteKey('witness.example/w1');
  const signerA = noteSignerFromKey(a.signerKey);
  const signerB = noteSignerFromKey(b.signerKey);
  const verifierA = noteVerifierFromKey(a.verifierKey);
  const verifierB = noteVerifierFromKey(b.verifierKey);
  const text = 'example.com/log\n3\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n';

  it('generates keys in the sumdb/note formats whose hashes agree', () => {
    expect(a.signerKey).toMatch(/^PRIVATE\+KEY\+example\.com\/log\+[0-9a-f]{8}\+[A-Za-z0-9+/]{44}$/);
    expect(a.verifierKey).toMatch(/^example\.com\/log\+[0-9a-f]{8}\+[A-Za-z0-9+/]{44}$/);
    expect(a.verifierKey.split('+')[1]).toBe(a.signerKey.split('+')[3]);
    expect(signerA.keyHash).toBe(verifierA.keyHash);
    refused(() => generateNoteKey('has space'), 'key');
    refused(() => generateNoteKey('has+plus'), 'key');
    refused(() => generateNoteKey(''), 'key');
  });

  it('round-trips a note with one and with several signers', () => {
    expect(openNote(signNote(text, signerA), [verifierA]).text).toBe(text);
    const both = signNote(text, [signerA, signerB]);
    expect(openNote(both, [verifierA, verifierB]).signatures.map((s) => s.verified)).toEqual([true, true]);
    // Text with blank lines of its own: the last blank line separates the signatures.
    const blanks = 'one\n\ntwo\n\n';
    expect(openNote(signNote(blanks, signerA), [verifierA]).text).toBe(blanks);
  });

  it('lists signatures by unknown keys unverified and otherwise ignores them', () => {
    const both = signNote(text, [signerB, signerA]);
    expect(openNote(both, [verifierA]).signatures).toEqual([
      { name: 'witness.example/w1', keyHash: signerB.keyHash, verified: false },
      { name: 'example.com/log', keyHash: signerA.keyHash, verified: true },
    ]);
    // Same name, other key hash: an unknown key, not a failed signature.
    const impostor: NoteSigner = { name: signerA.name, keyHash: (signerA.keyHash + 1) >>> 0, sign: (m) => signerB.sign(m) };
    const withImpostor = signNote(text, [impostor, signerA]);
    expect(openNote(withImpostor, [verifierA]).signatures.map((s) => s.verified)).toEqual([false, true]);
  });

  it('refuses a note without a signature by a known key', () => {
    refused(() => openNote(signNote(text, signerB), [verifierA]), 'note', /no signature by a known key/);
    refused(() => openNote(signNote(text, signerA), []), 'note', /no signature by a known key/);
  });

  it('refuses altered text, signatures, key names and key hashes', () => {
    const note = signNote(text, signerA);
    refused(() => openNote(note.replace('\n3\n', '\n4\n'), [verifierA]), 'note', /does not verify/);
    const line = note.slice(note.lastIndexOf('\u2014'));
    const blob = Buffer.from(line.split(' ')[2] as string, 'base64');
    const withBlob = (bytes: Buffer): string => `${text}\n\u2014 ${signerA.name} ${bytes.toString('base64')}\n`;
    for (const at of [4, 20, 67]) {
      const bad = Buffer.from(blob);
      bad.writeUInt8(bad.readUInt8(at) ^ 0x01, at);
      refused(() => openNote(withBlob(bad), [verifierA]), 'note', /does not verify/);
    }
    // A changed key hash or key name makes the signature one by an unknown key: nothing known verifies.
    const badHash = Buffer.from(blob);
    badHash.writeUInt8(badHash.readUInt8(0) ^ 0x80, 0);
    refused(() => openNote(withBlob(badHash), [verifierA]), 'note', /no signature by a known key/);
    refused(() => openNote(note.replace(`\u2014 ${signerA.name} `, '\u2014 example.com/other '), [verifierA]), 'note', /no signature by a known key/);
    // A known key's bad signature fails the note even when another known key's verifies.
    const forged = `${signNote(text, signerB)}${withBlob(Buffer.concat([blob.subarray(0, 4), Buffer.alloc(64)])).slice(text.length + 1)}`;
    refused(() => openNote(forged, [verifierA, verifierB]), 'note', /does not verify/);
    // A truncated signature by a known key.
    refused(() => openNote(withBlob(blob.subarray(0, 40)), [verifierA]), 'note', /does not verify/);
  });

  it('refuses two verifiers for the same name and key hash', () => {
    refused(() => openNote(signNote(text, signerA), [verifierA, noteVerifierFromKey(a.verifierKey)]), 'key', /ambiguous/);
  });

  it('refuses malformed notes with a message saying what is wrong', () => {
    const note = signNote(text, signerA);
    const sigLine = note.slice(text.length + 1);
    const sig = (sigLine.split(' ')[2] as string).trimEnd();
    const cases: Array<[string, string, RegExp]> = [
      ['no final newline', note.slice(0, -1), /must end with a newline/],
      ['no blank line', `${text}${sigLine}`, /no blank line/],
      ['no signature lines', `${text}\n`, /no signature lines/],
      ['hyphen, not em dash', `${text}\n- ${signerA.name} ${sig}\n`, /em dash/],
      ['extra field', `${text}\n\u2014 ${signerA.name} extra ${sig}\n`, /must be "— <key name> <base64 signature>"/],
      ['double space', `${text}\n\u2014  ${signerA.name} ${sig}\n`, /signature line 1/],
      ['bad base64', `${text}\n\u2014 ${signerA.name} ${sig.slice(0, -2)}!=\n`, /canonical base64/],
      ['unpadded base64', `${text}\n\u2014 ${signerA.name} ${sig.replace(/=+$/, '')}\n`, /canonical base64/],
      ['signature too short', `${text}\n\u2014 ${signerA.name} AAAAAA==\n`, /canonical base64 of a 4-byte key hash/],
      ['name with plus', `${text}\n\u2014 a+b ${sig}\n`, /must not contain spaces, '\+'/],
      ['carriage return', note.replace('\n3\n', '\r\n3\n'), /control character U\+000d/],
      ['NUL byte', `a\u0000${note}`, /control character U\+0000/],
      ['lone surrogate', `\ud800${note}`, /lone UTF-16 surrogate/],
      ['too many signatures', `${text}\n${sigLine.repeat(101)}`, /101 signature lines; at most 100/],
      ['too large', `${'x'.repeat(1 << 20)}\n${note}`, /larger than 1048576 bytes/],
    ];
    for (const [what, bad, msg] of cases) {
      try {
        refused(() => openNote(bad, [verifierA]), 'note', msg);
      } catch (err) {
        throw new Error(`${what}: ${(err as Error).message}`, { cause: err });
      }
    }
    expect(openNote(`${text}\n${sigLine.repeat(100)}`, [verifierA]).signatures).toHaveLength(100);
  });

  it('refuses to sign text a verifier could not read back', () => {
    refused(() => signNote('no newline', signerA), 'note', /must end with a newline/);
    refused(() => signNote('tab\there\n', signerA), 'note', /control character/);
    refused(() => signNote(text, []), 'note', /1 to 100 signers/);
  });
});

describe('checkpoints', () => {
  const key = generateNoteKey('example.com/log');
  const signer = noteSignerFromKey(key.signerKey);
  const verifier = noteVerifierFromKey(key.verifierKey);
  const root = rootOf(['a', 'b', 'c'].map((s) => leafHash(Buffer.from(s))));

  it('parses the spec example and round-trips through formatCheckpoint', () => {
    const cp = parseCheckpoint(SPEC_BODY);
    expect(cp).toEqual({ origin: 'example.com/behind-the-sofa', size: 20852163, root: Buffer.from('CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=', 'base64') });
    expect(formatCheckpoint(cp)).toBe(SPEC_BODY);
    const withExt = formatCheckpoint({ origin: 'example.com/log', size: 0, root, extensions: ['ext one', 'two'] });
    expect(withExt).toBe(`example.com/log\n0\n${root.toString('base64')}\next one\ntwo\n`);
    expect(parseCheckpoint(withExt).extensions).toEqual(['ext one', 'two']);
    expect(parseCheckpoint(formatCheckpoint({ origin: 'o', size: Number.MAX_SAFE_INTEGER, root })).size).toBe(Number.MAX_SAFE_INTEGER);
  });

  it('refuses malformed bodies', () => {
    const r64 = root.toString('base64');
    const cases: Array<[string, RegExp]> = [
      [`o\n3\n${r64}`, /must end with a newline/],
      [`o\n3\n`, /needs origin, tree size and root hash/],
      [`\n3\n${r64}\n`, /origin \(line 1\) is empty/],
      [`o\n03\n${r64}\n`, /tree size \(line 2\)/],
      [`o\n-1\n${r64}\n`, /tree size/],
      [`o\n+1\n${r64}\n`, /tree size/],
      [`o\n 1\n${r64}\n`, /tree size/],
      [`o\n1.0\n${r64}\n`, /tree size/],
      [`o\n9007199254740992\n${r64}\n`, /tree size/],
      [`o\n${'9'.repeat(400)}\n${r64}\n`, /tree size/],
      [`o\n3\n${r64.slice(0, -1)}\n`, /root hash \(line 3\)/],
      [`o\n3\n${root.subarray(1).toString('base64')}\n`, /root hash/],
      [`o\n3\n${r64.slice(0, -2)}B=\n`, /root hash/],
      [`o\n3\n${r64}\n\n`, /extension line 4 is empty/],
      [`o\t\n3\n${r64}\n`, /control character/],
    ];
    for (const [body, msg] of cases) refused(() => parseCheckpoint(body), 'checkpoint', msg);
    refused(() => formatCheckpoint({ origin: 'a b', size: 1, root }), 'checkpoint', /origin/);
    refused(() => formatCheckpoint({ origin: 'a+b', size: 1, root }), 'checkpoint', /origin/);
    refused(() => formatCheckpoint({ origin: 'o', size: -1, root }), 'checkpoint', /size/);
    refused(() => formatCheckpoint({ origin: 'o', size: 1, root: root.subarray(1) }), 'checkpoint', /root/);
    refused(() => formatCheckpoint({ origin: 'o', size: 1, root, extensions: [''] }), 'checkpoint', /extension/);
  });

  it('opens a signed checkpoint of the expected log and refuses another log\'s', () => {
    const signed = signNote(formatCheckpoint({ origin: 'example.com/log', size: 3, root }), signer);
    const { checkpoint, signatures } = openCheckpoint(signed, 'example.com/log', [verifier]);
    expect(checkpoint).toEqual({ origin: 'example.com/log', size: 3, root });
    expect(signatures).toEqual([{ name: 'example.com/log', keyHash: signer.keyHash, verified: true }]);
    refused(() => openCheckpoint(signed, 'example.com/other', [verifier]), 'checkpoint', /not "example.com\/other"/);
    refused(() => openCheckpoint(signed.replace('\n3\n', '\n4\n'), 'example.com/log', [verifier]), 'note');
  });
});

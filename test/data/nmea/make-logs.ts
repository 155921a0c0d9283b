// Logs are long enough (2-9 s at gpsfake -c 0.1) to outlast the tests' read timeouts on a busy CI.
// Regenerates the NMEA 0183 logs in this folder (run: npx tsx test/data/nmea/make-logs.ts).
// Every sentence gets a correct *HH checksum: gpsd silently drops sentences with a wrong one.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { nmeaDegreesMinutes as dm, nmeaSentence as sentence } from '../../support/nmea.js';

const here = path.dirname(fileURLToPath(import.meta.url));


interface Epoch { lat?: number; lon?: number; mode: 1 | 2 | 3; hdop?: number; sats?: number }

function log(epochs: Epoch[], startSecond = 0): string {
  const out: string[] = [];
  epochs.forEach((e, i) => {
    const s = startSecond + i;
    const t = `12${String(Math.floor(s / 60)).padStart(2, '0')}${String(s % 60).padStart(2, '0')}.00`;
    const fix = e.mode >= 2 && e.lat !== undefined && e.lon !== undefined;
    const pos = fix ? `${dm(e.lat!, true)},${dm(e.lon!, false)}` : ',,,';
    const alt = e.mode === 3 ? '34.0,M,39.0,M' : ',M,,M';
    out.push(sentence(`GPGGA,${t},${pos},${fix ? 1 : 0},${String(e.sats ?? (fix ? 8 : 0)).padStart(2, '0')},${fix ? (e.hdop ?? 0.9).toFixed(1) : ''},${alt},,`));
    const used = fix ? ['01', '02', '03', '04', '05', '06', '07', '08'].slice(0, e.sats ?? 8) : [];
    while (used.length < 12) used.push('');
    out.push(sentence(`GPGSA,A,${e.mode},${used.join(',')},${fix ? '1.5' : ''},${fix ? (e.hdop ?? 0.9).toFixed(1) : ''},${fix ? '1.2' : ''}`));
    out.push(sentence(`GPRMC,${t},${fix ? 'A' : 'V'},${pos},0.0,0.0,221126,,,${fix ? 'A' : 'N'}`));
  });
  return out.join('\r\n') + '\r\n';
}

const BERLIN = { lat: 52.52, lon: 13.405 };
const PARIS = { lat: 48.8566, lon: 2.3522 };
const BUSINGEN = { lat: 47.697, lon: 8.69 };
const NEW_YORK = { lat: 40.7128, lon: -74.006 };

const repeat = (n: number, e: Epoch): Epoch[] => Array.from({ length: n }, () => ({ ...e }));

fs.writeFileSync(path.join(here, 'fix.nmea'), log(repeat(30, { ...BERLIN, mode: 3 })));
fs.writeFileSync(path.join(here, 'nofix.nmea'), log(repeat(20, { mode: 1 })));
fs.writeFileSync(path.join(here, '2d-fix.nmea'), log(repeat(30, { ...BUSINGEN, mode: 2, hdop: 2.5, sats: 3 })));
fs.writeFileSync(path.join(here, 'jump.nmea'), log([...repeat(12, { ...BERLIN, mode: 3 }), ...repeat(8, { ...PARIS, mode: 3 })]));
// New York, then one Paris fix whose HDOP (315789.5) makes gpsd report eph ≈ 6,000,000 m, then Paris:
// an error circle wider than the Earth must not carry the jump past the guard.
fs.writeFileSync(path.join(here, 'eph-jump.nmea'), log([...repeat(12, { ...NEW_YORK, mode: 3 }), { ...PARIS, mode: 3, hdop: 315789.5 }, ...repeat(8, { ...PARIS, mode: 3 })]));
// Corrupted copies of Paris fixes (checksums broken) followed by valid Berlin fixes: the
// corrupted ones must be dropped, so the first reading is Berlin.
const corrupt = log(repeat(2, { ...PARIS, mode: 3 }))
  .split('\r\n')
  .filter((l) => l !== '')
  .map((l) => l.replace(/\*([0-9A-F]{2})$/, (_m, h: string) => `*${((parseInt(h, 16) + 1) & 0xff).toString(16).toUpperCase().padStart(2, '0')}`))
  .join('\r\n');
fs.writeFileSync(path.join(here, 'bad-checksums.nmea'), `${corrupt}\r\n${log(repeat(3, { ...BERLIN, mode: 3 }), 10)}`);

// NMEA 0183 logs generated at test time, stamped with the current UTC time and spaced by the replay
// cycle, so gpsd (fed by gpsfake) reports fixes whose times track the wall clock: a location policy's
// reading-age limit then holds however late the suite runs (committed logs carry a fixed date).
import fs from 'node:fs';
import path from 'node:path';
import { nmeaDegreesMinutes as dm, nmeaSentence as sentence } from '../support/nmea.js';

const two = (n: number): string => String(n).padStart(2, '0');

export const BERLIN = { lat: 52.52, lon: 13.405 };
export const NEW_YORK = { lat: 40.7128, lon: -74.006 };

/** Writes a 3D-fix log at `where`: `epochs` fixes `stepS` apart, the first at now. Returns its path. */
export function liveNmeaLog(dir: string, name: string, where: { lat: number; lon: number }, epochs: number, stepS: number): string {
  const start = Date.now();
  const out: string[] = [];
  for (let i = 0; i < epochs; i++) {
    const t = new Date(start + i * stepS * 1000);
    const hms = `${two(t.getUTCHours())}${two(t.getUTCMinutes())}${two(t.getUTCSeconds())}.${two(Math.floor(t.getUTCMilliseconds() / 10))}`;
    const date = `${two(t.getUTCDate())}${two(t.getUTCMonth() + 1)}${two(t.getUTCFullYear() % 100)}`;
    const pos = `${dm(where.lat, true)},${dm(where.lon, false)}`;
    out.push(sentence(`GPGGA,${hms},${pos},1,08,0.9,34.0,M,39.0,M,,`));
    out.push(sentence('GPGSA,A,3,01,02,03,04,05,06,07,08,,,,,1.5,0.9,1.2'));
    out.push(sentence(`GPRMC,${hms},A,${pos},0.0,0.0,${date},,,A`));
  }
  const file = path.join(dir, name);
  fs.writeFileSync(file, out.join('\r\n') + '\r\n');
  return file;
}

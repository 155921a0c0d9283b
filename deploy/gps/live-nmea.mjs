/* global process, console */
// Writes an NMEA 0183 log for gpsfake whose fixes are stamped with the current time (deploy/gpsd.sh).
//
//   node live-nmea.mjs OUT LAT LON STEP_S EPOCHS
//
// One 3D fix every STEP_S seconds at LAT/LON (decimal degrees, south and west negative), EPOCHS of
// them, the first stamped now. Each epoch is three sentences (GGA, GSA, RMC), so gpsfake replaying it
// with a delay of STEP_S / 3 between sentences reports fixes whose time follows the wall clock; a
// location policy's reading-age limit then holds, which a log with fixed times cannot do.
import { writeFileSync } from 'node:fs';

function fail(msg) {
  console.error(`live-nmea: ${msg}`);
  process.exit(2);
}

const [out, latText, lonText, stepText, epochsText] = process.argv.slice(2);
if (out === undefined || epochsText === undefined) fail('usage: live-nmea.mjs OUT LAT LON STEP_S EPOCHS');
const number = (text, name, min, max) => {
  const v = Number(text);
  if (text.trim() === '' || !Number.isFinite(v) || v < min || v > max) fail(`${name} must be a number in [${min}, ${max}], got '${text}'`);
  return v;
};
const lat = number(latText, 'latitude', -90, 90);
const lon = number(lonText, 'longitude', -180, 180);
const step = number(stepText, 'step (seconds)', 0.05, 60);
const epochs = number(epochsText, 'epochs', 1, 1_000_000);
if (!Number.isInteger(epochs)) fail(`epochs must be a whole number, got '${epochsText}'`);

/** `$body*HH`, HH the XOR of the body's bytes: gpsd drops sentences whose checksum is wrong. */
function sentence(body) {
  let x = 0;
  for (const c of body) x ^= c.charCodeAt(0);
  return `$${body}*${x.toString(16).toUpperCase().padStart(2, '0')}`;
}

/** NMEA's ddmm.mmmm (latitude) / dddmm.mmmm (longitude) with its hemisphere letter. */
function degreesMinutes(v, isLat) {
  const a = Math.abs(v);
  let d = Math.floor(a);
  let m = Number(((a - d) * 60).toFixed(4));
  if (m >= 60) { d += 1; m = 0; } // 59.99999' rounds up to the next degree
  const hemisphere = isLat ? (v >= 0 ? 'N' : 'S') : (v >= 0 ? 'E' : 'W');
  return `${String(d).padStart(isLat ? 2 : 3, '0')}${m.toFixed(4).padStart(7, '0')},${hemisphere}`;
}

const two = (n) => String(n).padStart(2, '0');
const position = `${degreesMinutes(lat, true)},${degreesMinutes(lon, false)}`;
const start = Date.now();
const lines = [];
for (let i = 0; i < epochs; i++) {
  const t = new Date(start + Math.round(i * step * 1000));
  const time = `${two(t.getUTCHours())}${two(t.getUTCMinutes())}${two(t.getUTCSeconds())}.${two(Math.floor(t.getUTCMilliseconds() / 10))}`;
  const date = `${two(t.getUTCDate())}${two(t.getUTCMonth() + 1)}${two(t.getUTCFullYear() % 100)}`;
  // GGA: fix quality 1 (GPS), 9 satellites, HDOP 0.8, altitude 35 m; gpsd derives its error estimate from the DOPs.
  lines.push(sentence(`GPGGA,${time},${position},1,09,0.8,35.0,M,47.0,M,,`));
  lines.push(sentence('GPGSA,A,3,02,05,07,09,13,16,20,27,30,,,,1.4,0.8,1.1'));
  lines.push(sentence(`GPRMC,${time},A,${position},0.0,0.0,${date},,,A`));
}
writeFileSync(out, `${lines.join('\r\n')}\r\n`, { mode: 0o644 });

/* global process, console, setInterval, clearInterval, setTimeout, clearTimeout */
// terroir's own NMEA source for gpsd (deploy/gpsd.sh): a TCP server on 127.0.0.1 that gpsd reads as a
// network receiver (`gpsd tcp://127.0.0.1:PORT`), so no gpsfake (and none of gpsd-clients' Python and
// GTK dependencies) is needed in the gpsd image.
//
//   node live-nmea.mjs serve LAT LON STEP_S     a 3D fix at LAT/LON (decimal degrees, south and west
//                                               negative) every STEP_S seconds, stamped with the current
//                                               time: a location policy's reading-age limit then holds
//   node live-nmea.mjs replay FILE DELAY_S      FILE's sentences, one every DELAY_S seconds, in a loop
//                                               (a recorded log: its fixed times go stale)
//
// It listens on a free port of 127.0.0.1 only (gpsd is its one reader) and prints that port on the first
// line of stdout once listening. Each fix is three sentences (GGA, GSA, RMC); gpsd derives its error
// estimate from the DOPs. Stops on SIGTERM/SIGINT.
import { readFileSync } from 'node:fs';
import net from 'node:net';

function fail(msg) {
  console.error(`live-nmea: ${msg}`);
  process.exit(2);
}

const [mode, ...args] = process.argv.slice(2);
const number = (text, name, min, max, quote = "'") => {
  const v = Number(text);
  if (text === undefined || text.trim() === '' || !Number.isFinite(v) || v < min || v > max) fail(`${name} must be a number in [${min}, ${max}], got ${quote}${text}${quote}`);
  return v;
};

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

/** The three sentences of a fix at `position`, stamped `t`. */
function fix(position, t) {
  const time = `${two(t.getUTCHours())}${two(t.getUTCMinutes())}${two(t.getUTCSeconds())}.${two(Math.floor(t.getUTCMilliseconds() / 10))}`;
  const date = `${two(t.getUTCDate())}${two(t.getUTCMonth() + 1)}${two(t.getUTCFullYear() % 100)}`;
  // GGA: fix quality 1 (GPS), 9 satellites, HDOP 0.8, altitude 35 m.
  return [
    sentence(`GPGGA,${time},${position},1,09,0.8,35.0,M,47.0,M,,`),
    sentence('GPGSA,A,3,02,05,07,09,13,16,20,27,30,,,,1.4,0.8,1.1'),
    sentence(`GPRMC,${time},A,${position},0.0,0.0,${date},,,A`),
  ];
}

/** (socket) => stop: what each reader gets. */
let feed;
if (mode === 'serve') {
  if (args.length !== 3) fail('usage: live-nmea.mjs serve LAT LON STEP_S | replay FILE DELAY_S');
  const lat = number(args[0], 'latitude', -90, 90);
  const lon = number(args[1], 'longitude', -180, 180);
  const step = Number(args[2]);
  if (args[2].trim() === '' || !(step >= 0.05 && step <= 60)) fail(`GPS_STEP_S must be a number of seconds in [0.05, 60], got "${args[2]}"`);
  const position = `${degreesMinutes(lat, true)},${degreesMinutes(lon, false)}`;
  feed = (socket) => {
    const send = () => socket.write(`${fix(position, new Date()).join('\r\n')}\r\n`);
    send();
    const timer = setInterval(send, Math.round(step * 1000));
    return () => clearInterval(timer);
  };
} else if (mode === 'replay') {
  if (args.length !== 2) fail('usage: live-nmea.mjs serve LAT LON STEP_S | replay FILE DELAY_S');
  let lines;
  try {
    lines = readFileSync(args[0], 'utf8').split(/\r?\n/).filter((l) => l.startsWith('$') || l.startsWith('!'));
  } catch (err) {
    fail(`NMEA log ${args[0]} not readable: ${err.message}`);
  }
  if (lines.length === 0) fail(`NMEA log ${args[0]} holds no NMEA sentence`);
  const delay = number(args[1], 'delay (seconds)', 0.001, 60);
  feed = (socket) => {
    let i = 0;
    let timer;
    const next = () => {
      socket.write(`${lines[i]}\r\n`);
      i = (i + 1) % lines.length;
      timer = setTimeout(next, Math.round(delay * 1000));
    };
    next();
    return () => clearTimeout(timer);
  };
} else {
  fail('usage: live-nmea.mjs serve LAT LON STEP_S | replay FILE DELAY_S');
}

const server = net.createServer((socket) => {
  const stop = feed(socket);
  socket.on('close', stop);
  socket.on('error', () => socket.destroy());
  socket.resume(); // whatever gpsd writes (probes) is ignored
});
server.on('error', (err) => fail(`cannot listen: ${err.message}`));
server.listen(0, '127.0.0.1', () => console.log(server.address().port));
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => process.exit(0));

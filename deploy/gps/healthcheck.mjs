/* global process, console, setTimeout */
// The gpsd service's health check (docker-compose.yml; the native tests run it too), in place of
// gpspipe (gpsd-clients is not in the image): connects to gpsd, asks for JSON reports, and succeeds
// on the first 2D/3D fix whose time is within MAX_AGE_S of the clock, printing that TPV report.
//
//   node healthcheck.mjs [HOST] [PORT] [MAX_AGE_S]     defaults 127.0.0.1, $GPSD_PORT or 2947, 30
//
// Exit 0: a current fix; 1: none within 5 s (or gpsd unreachable), with the reason on stderr.
import net from 'node:net';

const host = process.argv[2] ?? '127.0.0.1';
const port = Number(process.argv[3] ?? process.env.GPSD_PORT ?? 2947);
const maxAgeMs = Number(process.argv[4] ?? 30) * 1000;
const fail = (msg) => {
  console.error(`gpsd healthcheck: ${msg}`);
  process.exit(1);
};
setTimeout(() => fail(`no current fix from gpsd at ${host}:${port} within 5 s`), 5000).unref();
const socket = net.connect({ host, port }, () => socket.write('?WATCH={"enable":true,"json":true};\n'));
socket.on('error', (err) => fail(`gpsd at ${host}:${port}: ${err.message}`));
let buf = '';
socket.on('data', (chunk) => {
  buf += chunk.toString('utf8');
  let nl;
  while ((nl = buf.indexOf('\n')) >= 0) {
    const line = buf.slice(0, nl).trim();
    buf = buf.slice(nl + 1);
    let report;
    try {
      report = JSON.parse(line);
    } catch {
      continue;
    }
    if (report.class !== 'TPV' || !(report.mode >= 2) || typeof report.time !== 'string') continue;
    if (Math.abs(Date.now() - Date.parse(report.time)) > maxAgeMs) continue;
    console.log(line);
    process.exit(0);
  }
});

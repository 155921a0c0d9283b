// Geolocation benchmark: country/region policy evaluations per second, geofence evaluations per
// second, and gpsd reading latency against a real gpsd fed by gpsfake. Prints its figures.
//   npx tsx bench/geo.ts
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { startGpsfake } from '../test/support/gpsfake.js';
import { borderMap } from '../src/geo/borders.js';
import {
  evaluatePolicy, GpsdSensor, parsePolicies, type EvaluationContext, type LocationPolicy, type LocationReading, type OperatorVerification,
} from '../src/geo/index.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const now = new Date('2026-11-22T12:00:00Z');

// Deterministic pseudo-random numbers (mulberry32) so every run measures the same inputs.
function rng(seed: number): () => number {
  let a = seed;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function readings(n: number, box: [number, number, number, number], errM: [number, number], seed: number): LocationReading[] {
  const r = rng(seed);
  const [minLat, minLon, maxLat, maxLon] = box;
  return Array.from({ length: n }, (_, i) => ({
    kind: 'gnss' as const,
    sensorId: `gps${i % 4}`,
    time: new Date(now.getTime() - 10_000),
    lat: minLat + r() * (maxLat - minLat),
    lon: minLon + r() * (maxLon - minLon),
    horizontalErrorM: errM[0] + r() * (errM[1] - errM[0]),
    attested: true,
  }));
}

function rate(label: string, policy: LocationPolicy, input: LocationReading[], minMs = 1500, withOperator?: OperatorVerification['result']): number {
  // With an operator answer, it is about a disk of OPERATOR_RADIUS_M around each reading (as the server asks).
  const ctxFor = (r: LocationReading): EvaluationContext => (withOperator === undefined ? { now }
    : { now, operatorResult: { result: withOperator, matchRate: 90, lastLocationTime: now, area: { lat: r.lat, lon: r.lon, radiusM: OPERATOR_RADIUS_M } } });
  const contexts = input.map(ctxFor);
  // Warm-up: JIT and the border map's per-cell cache.
  for (let i = 0; i < Math.min(input.length, 20_000); i++) evaluatePolicy(policy, [input[i]!], contexts[i]!);
  const counts: Record<string, number> = { allow: 0, deny: 0, undecided: 0 };
  let n = 0;
  const t0 = performance.now();
  let elapsed: number;
  do {
    for (let i = 0; i < input.length; i++) counts[evaluatePolicy(policy, [input[i]!], contexts[i]!).decision]!++;
    n += input.length;
    elapsed = performance.now() - t0;
  } while (elapsed < minMs);
  const perS = (n / elapsed) * 1000;
  const mix = Object.entries(counts).map(([k, v]) => `${k} ${((100 * v) / n).toFixed(0)}%`).join(', ');
  console.log(`  ${label.padEnd(58)} ${Math.round(perS).toLocaleString('en-US').padStart(10)} /s   ${(1e6 / perS).toFixed(2).padStart(6)} µs/eval   (${mix})`);
  return perS;
}

const OPERATOR_RADIUS_M = 2000;

function circleRing(lat: number, lon: number, radiusDeg: number, vertices: number): number[][] {
  const ring = Array.from({ length: vertices }, (_, i) => {
    const a = (2 * Math.PI * i) / vertices;
    return [lon + (radiusDeg * Math.cos(a)) / Math.cos((lat * Math.PI) / 180), lat + radiusDeg * Math.sin(a)];
  });
  ring.push(ring[0]!);
  return ring;
}

async function gpsdLatency(): Promise<void> {
  const g = await startGpsfake(path.join(here, '..', 'test', 'data', 'nmea', 'fix.nmea'));
  try {
    // A raw client on the same gpsd timestamps each TPV line as it arrives; the sensor's reading
    // for the same fix time is compared against it: parse + validate + deliver, without gpsd's pace.
    const arrivals = new Map<string, number>();
    const raw = net.connect(g.port, '127.0.0.1', () => raw.write('?WATCH={"enable":true,"json":true};\n'));
    let buf = '';
    raw.on('data', (d) => {
      const t = performance.now();
      buf += d.toString();
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        const m = /"class":"TPV".*"time":"([^"]+)"/.exec(line);
        if (m && !arrivals.has(m[1]!)) arrivals.set(m[1]!, t);
      }
    });
    const sensor = new GpsdSensor({ port: g.port, timeoutMs: 10_000 });
    const t0 = performance.now();
    const first = await sensor.read();
    const cold = performance.now() - t0;
    const deliveries: number[] = [];
    const periods: number[] = [];
    let prev = performance.now();
    for (let i = 0; i < 12; i++) {
      const r = await sensor.read();
      const t = performance.now();
      periods.push(t - prev);
      prev = t;
      const arrived = arrivals.get(r.time.toISOString());
      if (arrived !== undefined) deliveries.push(t - arrived);
    }
    await sensor.close();
    raw.destroy();
    const stats = (xs: number[]): string => {
      const s = [...xs].sort((a, b) => a - b);
      const q = (p: number): number => s[Math.min(s.length - 1, Math.floor(p * s.length))]!;
      return `median ${q(0.5).toFixed(2)} ms, p90 ${q(0.9).toFixed(2)} ms, max ${s[s.length - 1]!.toFixed(2)} ms (n=${s.length})`;
    };
    console.log(`  cold start (connect, WATCH, gpsd opens device, first fix):  ${cold.toFixed(0)} ms   [first fix ${first.time.toISOString()}]`);
    console.log(`  read() → reading, steady state (paced by the replay):        ${stats(periods)}`);
    console.log(`  TPV arrival → reading delivered (plugin overhead):           ${deliveries.length ? stats(deliveries) : 'n/a'}`);
  } finally {
    await g.stop();
  }
}

async function main(): Promise<void> {
  console.log(`terroir geo benchmark — node ${process.version}, ${os.cpus()[0]?.model ?? 'cpu'} ×${os.cpus().length}, load avg ${os.loadavg().map((l) => l.toFixed(2)).join(' ')}`);
  const t0 = performance.now();
  const map = borderMap();
  console.log(`border map: ${map.territories.length} territories, ${map.edgeCount.toLocaleString('en-US')} edge pieces, built in ${(performance.now() - t0).toFixed(0)} ms`);

  const set = parsePolicies(`
policies:
  de: { area: { countries: [DE] } }
  eu: { area: { regions: [EU] } }
  eu-gnss: { area: { regions: [EU] }, sensors: { required: [gnss] }, maxHorizontalErrorM: 100 }
  fence-circle: { area: { geofences: [{ name: fra, circle: { lat: 50.1109, lon: 8.6821, radiusM: 20000 } }] } }
  fence-poly-64:
    area: { geofences: [{ name: fra64, geojson: { type: Polygon, coordinates: [${JSON.stringify(circleRing(50.1109, 8.6821, 0.18, 64))}] } }] }
  fence-poly-1000:
    area: { geofences: [{ name: fra1000, geojson: { type: Polygon, coordinates: [${JSON.stringify(circleRing(50.1109, 8.6821, 0.18, 1000))}] } }] }
  eu-witnessed: { area: { regions: [EU] }, minAssurance: operator-witnessed, operator: { minMatchRate: 80 } }
  de-and-fence:
    area: { countries: [DE], geofences: [{ name: fra64, geojson: { type: Polygon, coordinates: [${JSON.stringify(circleRing(50.1109, 8.6821, 0.18, 64))}] } }] }
`);

  console.log('\ncountry/region policy evaluations (evaluatePolicy, one reading each, one core):');
  const europe = readings(100_000, [36, -10, 70, 30], [3, 50], 1);
  const germany = readings(100_000, [47.5, 6.5, 54.5, 14.5], [3, 50], 2);
  const borderTowns = readings(100_000, [47.6, 8.5, 47.8, 8.8], [50, 2000], 3);
  rate('country DE, readings across Europe (±3-50 m)', set.get('de'), europe);
  rate('country DE, readings inside Germany (±3-50 m)', set.get('de'), germany);
  rate('region EU, readings across Europe (±3-50 m)', set.get('eu'), europe);
  rate('region EU + required gnss, readings across Europe', set.get('eu-gnss'), europe);
  rate('country DE, worst case: Büsingen/Schaffhausen (±50-2000 m)', set.get('de'), borderTowns);

  console.log('\nprovenance: node reading + operator answer, the operator disk (2 km) checked inside the area and the country (goal ≥ 100,000/s):');
  // A mixed set: readings across Europe (borders and coasts within 2 km included) and in border towns.
  const mixed = [...europe.slice(0, 80_000), ...borderTowns.slice(0, 20_000)];
  const plain = rate('region EU, node reading only (no disk check)', set.get('eu'), mixed);
  const trueDisk = rate('region EU, minAssurance operator-witnessed, operator TRUE', set.get('eu-witnessed'), mixed, 1500, 'TRUE');
  const partialDisk = rate('region EU, minAssurance operator-witnessed, operator PARTIAL', set.get('eu-witnessed'), mixed, 1500, 'PARTIAL');
  const worst = Math.min(trueDisk, partialDisk);
  console.log(`  → with the disk checks: ${Math.round(worst).toLocaleString('en-US')} /s at worst (floor 100,000/s: ${worst >= 100_000 ? 'met' : 'MISSED'}), ${(plain / worst).toFixed(2)}× the cost of the node reading alone`);

  console.log('\ngeofence evaluations:');
  const frankfurt = readings(100_000, [49.9, 8.4, 50.3, 9.0], [3, 200], 4);
  rate('circle fence (20 km)', set.get('fence-circle'), frankfurt);
  rate('polygon fence, 64 vertices', set.get('fence-poly-64'), frankfurt);
  rate('polygon fence, 1000 vertices', set.get('fence-poly-1000'), frankfurt);
  rate('country DE + 64-vertex fence', set.get('de-and-fence'), frankfurt);

  console.log('\ngpsd reading latency (real gpsd fed by gpsfake -c 0.1, 3 sentences per fix):');
  await gpsdLatency();
}

await main();

// Geolocation inputs: the agent's claims document (as the server parses it), NMEA sentences and gpsd
// JSON lines (as the sensors' stream handlers see them), location policies (YAML/JSON) and GeoJSON
// geofences, and CAMARA operator responses (through the real client, over a mock transport).
import YAML from 'yaml';
import { MockAgent } from 'undici';
import {
  CamaraError, CamaraLocationVerifier, GeoError, GpsdSensor, NmeaSensor, assertValidReading, canonicalClaims, parsePolicies, type CamaraDevice,
  type LocationReading,
} from '../../src/geo/index.js';
import { PolygonFence } from '../../src/geo/geofence.js';
import { AttestationError } from '../../src/server/attestation/errors.js';
import { parseClaimsDocument } from '../../src/server/attestation/unified.js';
import { CONFIG_FILE_MS, below, chance, mutateJsonText, mutateJsonValue, mutateText, pick, type FuzzTarget, type Rng } from '../engine.js';
import { dataFile } from './seeds.js';

// --------------------------------------------------------------------------- claims document

const READING = {
  kind: 'gnss', sensorId: 'gpsd:127.0.0.1:2947', time: '2026-11-22T12:00:00.000Z', lat: 52.52, lon: 13.405, horizontalErrorM: 4.5, attested: true,
};

export const claimsDocument: FuzzTarget = {
  name: 'claims-document',
  description: 'The agent\'s claims document as the server parses it (parseClaimsDocument: UTF-8, JSON, RFC 8785 canonical form, readings)',
  async setup() {
    const seeds = [
      { v: 1, readings: [READING] },
      { v: 1, readings: [READING, { ...READING, kind: 'static', sensorId: 'static:rack-12', attested: false, horizontalErrorM: 50 }] },
      { v: 1, readings: [{ ...READING, link: 'remote', evidence: { source: 'gpsd', mode: 3, eph: 4.5 } }] },
    ];
    const dict = ['v', 'readings', 'kind', 'gnss', 'mobile', 'static', 'sensorId', 'time', 'lat', 'lon', 'horizontalErrorM', 'attested', 'link', 'remote', 'evidence', '2026-11-22T12:00:00.000Z'];
    return {
      generate(r) {
        // Mostly re-canonicalised after the edit, so inputs get past the canonical-form check.
        const v = mutateJsonValue(r, pick(r, seeds), dict);
        if (chance(r, 0.7)) {
          try { return canonicalClaims(v); } catch { /* not canonicalisable: send as is */ }
        }
        const text = JSON.stringify(v) ?? '';
        return Buffer.from(chance(r, 0.2) ? mutateText(r, text, dict) : text, 'utf8');
      },
      run: (b) => parseClaimsDocument(b),
      expected: (e) => e instanceof AttestationError,
    };
  },
};

// --------------------------------------------------------------------------- NMEA

function nmeaChecksum(body: string): string {
  let x = 0;
  for (let i = 0; i < body.length; i++) x ^= body.charCodeAt(i) & 0xff;
  return x.toString(16).toUpperCase().padStart(2, '0');
}

const NMEA_FIELDS = ['', '0', '1', '9', '-1', 'A', 'V', 'N', 'S', 'E', 'W', 'M', '99.9', '0.0', '999999', '5231.2000', '9000.0000', '18000.0000', '01324.3000', '120000.00', '235960.00', '221126', '290223', '310226', '1e9', 'NaN', '.', '-', '0000.0000'];

/** A sentence with one or more fields replaced; the checksum is recomputed most of the time so the parser sees it. */
function mutateSentence(r: Rng, line: string): string {
  const m = /^\$([^*]*)\*[0-9A-Fa-f]{2}$/.exec(line);
  if (m === null || chance(r, 0.1)) return mutateText(r, line, NMEA_FIELDS);
  const fields = (m[1] as string).split(',');
  for (let k = 1 + below(r, 3); k > 0; k--) {
    const i = below(r, fields.length);
    switch (below(r, 4)) {
      case 0: fields[i] = pick(r, NMEA_FIELDS); break;
      case 1: fields[i] = mutateText(r, fields[i] ?? ''); break;
      case 2: fields.splice(i, 1); break;
      default: fields.splice(i, 0, pick(r, NMEA_FIELDS));
    }
  }
  const body = fields.join(',');
  return `$${body}*${chance(r, 0.9) ? nmeaChecksum(body) : pick(r, ['00', 'ZZ', nmeaChecksum(body).toLowerCase()])}`;
}

/** Makes delivered readings go through the reading validator: a sensor must never deliver an invalid one. */
function checkDeliveries(sensor: object): void {
  const w = (sensor as { waiters: { deliver(r: LocationReading): void } }).waiters;
  w.deliver = (r) => assertValidReading(r);
}

// The sensors judge fixes against this clock: far enough ahead that the seed logs' times are not "future".
const FUZZ_NOW = (): number => Date.UTC(2030, 0, 1);

export const nmea: FuzzTarget = {
  name: 'nmea',
  description: 'NMEA 0183 sentences through NmeaSensor\'s stream handler (line splitting, checksums, nmea-simple, GGA+RMC fix assembly, jump guard); it must never throw',
  async setup() {
    const logs = ['fix.nmea', '2d-fix.nmea', 'bad-checksums.nmea', 'eph-jump.nmea', 'jump.nmea', 'nofix.nmea'].map((f) => dataFile(`nmea/${f}`).toString('latin1').split(/\r?\n/).filter((l) => l !== ''));
    return {
      generate(r) {
        const log = pick(r, logs);
        const start = below(r, log.length);
        const lines = log.slice(start, start + 2 + below(r, 8)).map((l) => (chance(r, 0.4) ? mutateSentence(r, l) : l));
        return Buffer.from(lines.join(pick(r, ['\r\n', '\n', '\r\n'])) + (chance(r, 0.8) ? '\r\n' : ''), 'latin1');
      },
      run(b) {
        const s = new NmeaSensor({ device: '/nonexistent/fuzz', baudRate: 9600, settleFixes: 1, now: FUZZ_NOW });
        checkDeliveries(s);
        const feed = (s as unknown as { onData(chunk: string): void });
        const text = b.toString('latin1');
        // Two chunks split inside the input: the line buffer must join them.
        const cut = text.length > 0 ? (b[0] as number) % text.length : 0;
        feed.onData(text.slice(0, cut));
        feed.onData(text.slice(cut));
      },
      // onData runs in a stream 'data' handler: anything it throws would crash the agent.
      expected: () => false,
    };
  },
};

// --------------------------------------------------------------------------- gpsd

const TPV = { class: 'TPV', device: '/dev/ttyUSB0', mode: 3, time: '2026-11-22T12:00:00.000Z', lat: 52.52, lon: 13.405, alt: 34.5, eph: 5.1, epx: 3.2, epy: 4.1, speed: 0.1 };
const GPSD_LINES: unknown[] = [
  { class: 'VERSION', release: '3.25', rev: '3.25', proto_major: 3, proto_minor: 15 },
  { class: 'DEVICES', devices: [{ class: 'DEVICE', path: '/dev/ttyUSB0', driver: 'NMEA0183', activated: '2026-11-22T12:00:00.000Z', native: 0, bps: 9600 }] },
  { class: 'WATCH', enable: true, json: true },
  TPV,
  { ...TPV, time: '2026-11-22T12:00:01.000Z', eph: undefined },
  { ...TPV, mode: 2, time: '2026-11-22T12:00:02.000Z' },
  { class: 'SKY', device: '/dev/ttyUSB0', hdop: 0.9, satellites: [{ PRN: 1, el: 45, az: 90, ss: 40, used: true }] },
  { class: 'ERROR', message: 'unrecognized command' },
];

export const gpsd: FuzzTarget = {
  name: 'gpsd',
  description: 'gpsd JSON lines through GpsdSensor\'s stream handler (line limits, JSON, TPV fields, jump guard); it must never throw',
  async setup() {
    const dict = ['class', 'TPV', 'SKY', 'ERROR', 'mode', 'time', 'lat', 'lon', 'eph', 'epx', 'epy', 'device', '/dev/ttyUSB0', 'message'];
    return {
      generate(r) {
        const lines: string[] = [];
        for (let k = 1 + below(r, 5); k > 0; k--) lines.push(chance(r, 0.5) ? mutateJsonText(r, GPSD_LINES, dict) : JSON.stringify(pick(r, GPSD_LINES)));
        return Buffer.from(`${lines.join('\n')}\n`, 'utf8');
      },
      run(b) {
        const s = new GpsdSensor({ settleFixes: 1, now: FUZZ_NOW, device: (b[0] ?? 0) & 1 ? '/dev/ttyUSB0' : undefined, maxLineBytes: 4096 });
        checkDeliveries(s);
        const socket = { destroyed: false, destroy(): void { this.destroyed = true; } };
        const inner = s as unknown as { socket: unknown; onData(s: unknown, chunk: string): void };
        inner.socket = socket;
        const text = b.toString('utf8');
        const cut = text.length > 0 ? (b[0] as number) % text.length : 0;
        inner.onData(socket, text.slice(0, cut));
        if (inner.socket === socket) inner.onData(socket, text.slice(cut));
      },
      expected: () => false,
    };
  },
};

// --------------------------------------------------------------------------- policies and GeoJSON

const POLYGON = { type: 'Polygon', coordinates: [[[8.6, 50.2], [8.7, 50.2], [8.7, 50.25], [8.6, 50.25], [8.6, 50.2]]] };
const WITH_HOLE = { type: 'Polygon', coordinates: [[[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]], [[2, 2], [2, 8], [8, 8], [8, 2], [2, 2]]] };
const MULTI = { type: 'MultiPolygon', coordinates: [POLYGON.coordinates, WITH_HOLE.coordinates] };
const FEATURES = { type: 'FeatureCollection', features: [{ type: 'Feature', properties: {}, geometry: POLYGON }, { type: 'Feature', geometry: MULTI }] };

/** GeoJSON whose Feature/geometry chain is deep (recursion in the geofence walker). */
function deepFeature(r: Rng): string {
  const depth = pick(r, [10, 1000, 10_000, 40_000]);
  return '{"type":"Feature","geometry":'.repeat(depth) + JSON.stringify(POLYGON) + '}'.repeat(depth);
}

export const geojson: FuzzTarget = {
  name: 'geojson',
  description: 'GeoJSON geofences (PolygonFence: structure, ranges, antimeridian, self-intersection sweep) and classify() of points against them',
  async setup() {
    const seeds = [POLYGON, WITH_HOLE, MULTI, FEATURES];
    const dict = ['type', 'Polygon', 'MultiPolygon', 'Feature', 'FeatureCollection', 'coordinates', 'geometry', 'features'];
    return {
      generate: (r) => Buffer.from(chance(r, 0.02) ? deepFeature(r) : mutateJsonText(r, seeds, dict), 'utf8'),
      run(b) {
        let v: unknown;
        try { v = JSON.parse(b.toString('utf8')); } catch { return; } // JSON syntax is not this target's
        const fence = new PolygonFence('fuzz', v);
        for (const [lat, lon, radius] of [[50.22, 8.65, 10], [5, 5, 1000], [0, 0, 0], [-90, 180, 5e6], [50.2, 8.6, 0.001]] as const) fence.classify(lat, lon, radius);
      },
      expected: (e) => e instanceof GeoError,
    };
  },
};

const POLICY_YAML = `policies:
  eu-strict:
    description: EU only; GNSS and the operator must agree
    area:
      regions: [EU]
      countries: [CH]
      geofences:
        - name: fra-campus
          circle: { lat: 50.1109, lon: 8.6821, radiusM: 1000 }
        - name: fra-north
          geojson: { type: Polygon, coordinates: [[[8.60, 50.20], [8.70, 50.20], [8.70, 50.25], [8.60, 50.25], [8.60, 50.20]]] }
    sensors: { required: [gnss, mobile], minAgreeing: 2, allowUnattested: false }
    maxReadingAgeS: 60
    maxHorizontalErrorM: 100
    maxSensorDistanceM: 2000
    operator: { required: true, minMatchRate: 80 }
    minAssurance: operator-witnessed
    requireWitnesses: [node, operator]
  lat:
    area: { countries: [FR, DE] }
    minAssurance: latency-bounded
    latency: { minLandmarks: 2, maxRadiusKm: 500, strength: tpm }
    sensors: { allowRemote: true }
`;

export const policy: FuzzTarget = {
  name: 'policy',
  description: 'Location policy documents, YAML or JSON (parsePolicies: YAML, zod schema, border dataset, geofences)',
  async setup() {
    const doc = YAML.parse(POLICY_YAML) as unknown;
    const dict = ['policies', 'area', 'regions', 'countries', 'geofences', 'circle', 'geojson', 'sensors', 'required', 'minAgreeing', 'operator', 'latency', 'minAssurance',
      'requireWitnesses', 'EU', 'DE', 'XK', 'ZZ', '150', 'UN', 'gnss', 'mobile', 'node', 'tpm', 'agent-key', 'latency-bounded', 'Polygon', 'Feature'];
    return {
      generate(r) {
        switch (below(r, 4)) {
          case 0: return Buffer.from(mutateText(r, POLICY_YAML, dict), 'utf8');
          case 1: {
            const v = mutateJsonValue(r, doc, dict);
            try { return Buffer.from(YAML.stringify(v, { aliasDuplicateObjects: true }), 'utf8'); } catch { return Buffer.from(JSON.stringify(v) ?? '', 'utf8'); }
          }
          default: return Buffer.from(mutateJsonText(r, [doc], dict), 'utf8');
        }
      },
      run: (b) => parsePolicies(b.toString('utf8')),
      expected: (e) => e instanceof GeoError,
      // Read from the server's configuration at start (≤ 1 MiB): deeply nested YAML takes the yaml
      // library about a second to refuse, so the bound is a configuration load's, not a request's.
      hangMs: CONFIG_FILE_MS,
    };
  },
};

// --------------------------------------------------------------------------- CAMARA

const STATUSES = [200, 200, 200, 200, 200, 400, 401, 403, 404, 422, 429, 500, 503, 302];
const CONTENT_TYPES = ['application/json', 'application/json; charset=utf-8', 'application/problem+json', 'text/html', ''];
const RETRY_AFTER = ['', '0', '1', '86401', 'Wed, 21 Oct 2015 07:28:00 GMT', 'Fri, 01 Jan 2100 00:00:00 GMT', 'soon', '99999999999'];
const DEVICES: CamaraDevice[] = [
  { phoneNumber: '+4915112345678' },
  { ipv4Address: { publicAddress: '203.0.113.7', publicPort: 5000 } },
  { ipv6Address: '2001:db8:85a3::8a2e:370:7344' },
];

export const camara: FuzzTarget = {
  name: 'camara',
  description: 'CAMARA Location Verification answers (token and /verify responses: status, headers, JSON body) through CamaraLocationVerifier over an undici MockAgent',
  async setup() {
    const verifier = new CamaraLocationVerifier({
      baseUrl: 'https://operator.fuzz/location-verification/v2', tokenUrl: 'https://operator.fuzz/oauth2/token', clientId: 'terroir', clientSecret: 's3cret',
      maxRetryWaitMs: 0, timeoutMs: 2000,
    });
    const mock = new MockAgent();
    mock.disableNetConnect();
    const inner = verifier as unknown as { dispatcher: unknown; token: unknown; quietUntil: number };
    inner.dispatcher = mock;
    let current: { tokenFuzzed: boolean; status: number; type: string; retryAfter: string; body: Buffer } | undefined;
    const goodToken = JSON.stringify({ access_token: 'tok', token_type: 'Bearer', expires_in: 3600 });
    mock.get('https://operator.fuzz').intercept({ path: () => true, method: 'POST' }).reply((opts) => {
      const c = current!;
      const isToken = String(opts.path).includes('/oauth2/token');
      if (isToken && !c.tokenFuzzed) return { statusCode: 200, data: goodToken, responseOptions: { headers: { 'content-type': 'application/json' } } };
      if (!isToken && c.tokenFuzzed) {
        return { statusCode: 200, data: JSON.stringify({ verificationResult: 'TRUE', lastLocationTime: new Date().toISOString() }), responseOptions: { headers: { 'content-type': 'application/json' } } };
      }
      const headers: Record<string, string> = {};
      if (c.type !== '') headers['content-type'] = c.type;
      if (c.retryAfter !== '') headers['retry-after'] = c.retryAfter;
      return { statusCode: c.status, data: c.body, responseOptions: { headers } };
    }).persist();
    const t = (s: number): string => new Date(Date.now() - s * 1000).toISOString();
    const verifyBodies: unknown[] = [
      { verificationResult: 'TRUE', lastLocationTime: t(5) },
      { verificationResult: 'PARTIAL', matchRate: 74, lastLocationTime: t(30) },
      { verificationResult: 'FALSE', lastLocationTime: t(1), device: { phoneNumber: '+4915112345678' } },
      { verificationResult: 'TRUE', lastLocationTime: t(2), device: { ipv4Address: { publicAddress: '203.0.113.7', publicPort: 5000 } } },
      { verificationResult: 'TRUE', lastLocationTime: t(2), device: { ipv6Address: '2001:db8:85a3::8a2e:370:7344' } },
      { status: 422, code: 'LOCATION_VERIFICATION.AREA_NOT_COVERED', message: 'not covered' },
      { status: 429, code: 'TOO_MANY_REQUESTS', message: 'slow down' },
      { access_token: 'tok', token_type: 'Bearer', expires_in: 3600 },
      { error: 'invalid_client', error_description: 'bad secret' },
    ];
    const dict = ['verificationResult', 'TRUE', 'FALSE', 'PARTIAL', 'matchRate', 'lastLocationTime', 'device', 'phoneNumber', 'ipv4Address', 'ipv6Address', 'publicAddress',
      'privateAddress', 'publicPort', 'status', 'code', 'message', 'access_token', 'token_type', 'expires_in', 'Bearer', 'fe80::1%eth0', '::1', '2001:db8:85a3::8a2e:370:7344'];
    return {
      // Header bytes: token fuzzed?, status, content type, Retry-After, device, maxAge; then the body.
      generate(r) {
        const head = Buffer.from([r() & 0xff, below(r, STATUSES.length), below(r, CONTENT_TYPES.length), chance(r, 0.8) ? 0 : below(r, RETRY_AFTER.length), below(r, DEVICES.length), r() & 1]);
        return Buffer.concat([head, Buffer.from(mutateJsonText(r, verifyBodies, dict), 'utf8')]);
      },
      async run(b) {
        if (b.length < 6) return;
        current = {
          tokenFuzzed: (b[0]! & 7) === 0, status: STATUSES[b[1]! % STATUSES.length]!, type: CONTENT_TYPES[b[2]! % CONTENT_TYPES.length]!,
          retryAfter: RETRY_AFTER[b[3]! % RETRY_AFTER.length]!, body: b.subarray(6),
        };
        inner.token = undefined;
        inner.quietUntil = 0;
        await verifier.verify(DEVICES[b[4]! % DEVICES.length]!, { lat: 48.8566, lon: 2.3522, radiusM: 2000 }, b[5]! & 1 ? { maxAgeS: 60 } : {});
      },
      expected: (e) => e instanceof CamaraError,
      async close() {
        await mock.close();
      },
    };
  },
};

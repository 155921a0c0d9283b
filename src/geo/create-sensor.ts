import { z } from 'zod';
import { SensorError } from './errors.js';
import { GpsdSensor, isLoopbackHost, notLoopback } from './gpsd.js';
import { BAUD_RATES, NmeaSensor } from './nmea.js';
import type { SensorPlugin } from './sensor.js';
import { StaticSensor } from './static-sensor.js';

const id = z.string().min(1).max(128).optional();
const timeoutMs = z.int().min(1).max(600_000).optional();
const maxSpeedMps = z.number().positive().max(10_000).optional();
const settleFixes = z.int().min(0).max(100).optional();
/** Bound on a trusted fix's horizontal error (metres; default 1000): a wider fix is refused by the jump guard. */
const maxErrorM = z.number().positive().max(100_000).optional();
/** How far ahead of the agent's clock a fix may be stamped (ms; default 30 000). */
const maxFutureSkewMs = z.int().min(0).max(600_000).optional();

export const sensorConfigSchema = z.discriminatedUnion('type', [
  z.strictObject({
    type: z.literal('gpsd'),
    id,
    host: z.string().min(1).max(255).default('127.0.0.1'),
    port: z.int().min(1).max(65535).default(2947),
    /** Read a gpsd on another host (its readings say link: remote). */
    allowRemote: z.boolean().optional(),
    /** Named only to explain why it is refused: gpsd's Unix socket does not speak the JSON protocol. */
    socketPath: z.never({
      error: 'gpsd serves its JSON protocol over TCP only: its Unix socket (gpsd -F, e.g. /run/gpsd.sock) is a control socket for adding and removing devices. Use host 127.0.0.1 and port 2947',
    }).optional(),
    device: z.string().min(1).max(4096).optional(),
    minMode: z.union([z.literal(2), z.literal(3)]).optional(),
    maxSpeedMps,
    settleFixes,
    maxErrorM,
    maxFutureSkewMs,
    maxLineBytes: z.int().min(1024).max(1024 * 1024).optional(),
    timeoutMs,
  }).superRefine((c, ctx) => {
    if (c.allowRemote !== true && !isLoopbackHost(c.host)) ctx.addIssue({ code: 'custom', path: ['host'], message: notLoopback(c.host) });
  }),
  z.strictObject({
    type: z.literal('nmea'),
    id,
    device: z.string().min(1).max(4096),
    baudRate: z.union(BAUD_RATES.map((b) => z.literal(b)) as [z.ZodLiteral<number>, ...z.ZodLiteral<number>[]]),
    uereM: z.number().positive().max(1000).optional(),
    maxSpeedMps,
    settleFixes,
    maxErrorM,
    maxFutureSkewMs,
    timeoutMs,
  }),
  z.strictObject({
    type: z.literal('static'),
    id,
    lat: z.number().min(-90).max(90),
    lon: z.number().min(-180).max(180),
    horizontalErrorM: z.number().min(0).max(1_000_000).optional(),
  }),
]);

export type SensorConfig = z.input<typeof sensorConfigSchema>;

/** Validates a sensor configuration and builds its plugin; SensorError (GEO_SENSOR_CONFIG) names the bad field. */
export function createSensor(config: SensorConfig): SensorPlugin {
  const parsed = sensorConfigSchema.safeParse(config);
  if (!parsed.success) {
    const where = (p: readonly PropertyKey[]): string => (p.length ? p.map(String).join('.') : '(config)');
    const msg = parsed.error.issues.slice(0, 5).map((i) => `${where(i.path)}: ${i.message}`).join('; ');
    const type = (config as { type?: unknown } | null)?.type;
    throw new SensorError('GEO_SENSOR_CONFIG', `sensor config${typeof type === 'string' ? ` (${type})` : ''}`, `invalid: ${msg}`);
  }
  const c = parsed.data;
  switch (c.type) {
    case 'gpsd':
      return new GpsdSensor(c);
    case 'nmea':
      return new NmeaSensor(c);
    case 'static':
      return new StaticSensor(c);
  }
}

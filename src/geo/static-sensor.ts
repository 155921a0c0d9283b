import { assertLatLon, type LocationReading } from './reading.js';
import type { ReadOptions, SensorPlugin } from './sensor.js';
import { SensorError } from './errors.js';

export interface StaticSensorOptions {
  id?: string;
  lat: number;
  lon: number;
  horizontalErrorM?: number;
}

/**
 * A configured position, for development. Its readings are marked unattested: nothing measured
 * them, so policies that require a sensor never accept them.
 */
export class StaticSensor implements SensorPlugin {
  readonly kind = 'static' as const;
  readonly id: string;
  private readonly lat: number;
  private readonly lon: number;
  private readonly errM: number;
  private closed = false;

  constructor(opts: StaticSensorOptions) {
    assertLatLon(opts.lat, opts.lon, 'static sensor');
    this.id = opts.id ?? 'static';
    this.lat = opts.lat;
    this.lon = opts.lon;
    this.errM = opts.horizontalErrorM ?? 10;
  }

  async read(opts: ReadOptions = {}): Promise<LocationReading> {
    if (this.closed) throw new SensorError('GEO_SENSOR_CLOSED', this.id, 'sensor is closed');
    if (opts.signal?.aborted) throw new SensorError('GEO_SENSOR_ABORTED', this.id, 'read aborted by the caller');
    return {
      kind: 'static',
      sensorId: this.id,
      time: new Date(),
      lat: this.lat,
      lon: this.lon,
      horizontalErrorM: this.errM,
      attested: false,
      evidence: { source: 'static-config' },
    };
  }

  async close(): Promise<void> {
    this.closed = true;
  }
}

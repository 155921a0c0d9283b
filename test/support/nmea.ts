// Writing NMEA 0183 sentences for test logs (gpsd, gpsfake and the NMEA plugin read them).

/** The `*HH` checksum: XOR of every byte between `$` and `*`. gpsd silently drops sentences with a wrong one. */
export function nmeaChecksum(body: string): string {
  let x = 0;
  for (const c of body) x ^= c.charCodeAt(0);
  return x.toString(16).toUpperCase().padStart(2, '0');
}

/** `$<body>*HH`. */
export const nmeaSentence = (body: string): string => `$${body}*${nmeaChecksum(body)}`;

/** A coordinate in NMEA's degrees-and-minutes form with its hemisphere: `4852.3960,N` / `00221.1120,E`. */
export function nmeaDegreesMinutes(v: number, isLat: boolean): string {
  const a = Math.abs(v);
  const d = Math.floor(a);
  const m = (a - d) * 60;
  const hemi = isLat ? (v >= 0 ? 'N' : 'S') : v >= 0 ? 'E' : 'W';
  return `${String(d).padStart(isLat ? 2 : 3, '0')}${m.toFixed(4).padStart(7, '0')},${hemi}`;
}

const two = (n: number): string => String(n).padStart(2, '0');

/** One 3D fix as a GNSS receiver reports it: when, where, and its HDOP (gpsd's eph is about 19 × HDOP). */
export interface NmeaFix {
  time: Date;
  lat: number;
  lon: number;
  hdop?: number;
}

/**
 * A log of GGA + GSA + RMC epochs, one per fix, with whatever times the caller gives (a lying receiver
 * may stamp a fix hours ahead): for gpsfake to replay into gpsd.
 */
export function nmeaFixLog(fixes: readonly NmeaFix[]): string {
  const out: string[] = [];
  for (const f of fixes) {
    const t = f.time;
    const hms = `${two(t.getUTCHours())}${two(t.getUTCMinutes())}${two(t.getUTCSeconds())}.${two(Math.floor(t.getUTCMilliseconds() / 10))}`;
    const date = `${two(t.getUTCDate())}${two(t.getUTCMonth() + 1)}${two(t.getUTCFullYear() % 100)}`;
    const pos = `${nmeaDegreesMinutes(f.lat, true)},${nmeaDegreesMinutes(f.lon, false)}`;
    const hdop = (f.hdop ?? 0.9).toFixed(1);
    out.push(nmeaSentence(`GPGGA,${hms},${pos},1,08,${hdop},34.0,M,39.0,M,,`));
    out.push(nmeaSentence(`GPGSA,A,3,01,02,03,04,05,06,07,08,,,,,1.5,${hdop},1.2`));
    out.push(nmeaSentence(`GPRMC,${hms},A,${pos},0.0,0.0,${date},,,A`));
  }
  return out.join('\r\n') + '\r\n';
}

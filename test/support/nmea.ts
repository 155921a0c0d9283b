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

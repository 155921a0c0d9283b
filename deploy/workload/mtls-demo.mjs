/* global process, console, setTimeout, URL */
// The two demo workloads, doing mutual TLS with the X.509-SVIDs the terroir agent hands them, through
// terroir's workload library (src/workload: X509Source, createTlsServer, tlsConnect, authorizers).
//
//   node mtls-demo.mjs serve PORT CLIENT_SPIFFE_ID              the consumer
//   node mtls-demo.mjs call HOST:PORT CONSUMER_SPIFFE_ID [--once]   the client: calls the consumer every 5 s
//
// Both get their SVID from the Workload API (SPIFFE_ENDPOINT_SOCKET) and follow its rotation. TLS
// authenticates both sides against the trust bundle; then each authorizes the other:
//  - the client accepts only CONSUMER_SPIFFE_ID;
//  - the consumer accepts only CLIENT_SPIFFE_ID and, with UNIFIED_IDENTITY_ENABLED on, only a caller whose
//    SVID carries Unified Identity claims satisfying CONSUMER_REQUIRE_COUNTRY / _REGION / _POLICY
//    (comma-separated lists; each one given must hold). A plain SVID is refused, and so are claims that
//    terroir's development Keylime stand-in checked, unless CONSUMER_ALLOW_DEV_STANDIN=true. Its answers name the
//    caller's claims (country, region, policy: never coordinates, which SVIDs do not carry).
// A refused caller gets {"error":"permission denied","reason":...}, and the consumer logs the reason.
//
// Environment: TERROIR_WORKLOAD_MODULE and TERROIR_FLAGS_MODULE (the library and feature-flag modules,
// compiled or TypeScript; deploy/workload.sh sets them), SPIFFE_ENDPOINT_SOCKET, SVID_FETCH_TIMEOUT_S
// (how long to wait for a first SVID, default 120), UNIFIED_IDENTITY_ENABLED, CONSUMER_REQUIRE_*,
// CONSUMER_ALLOW_DEV_STANDIN.
import pino from 'pino';

const [mode, target, expectedId, flag] = process.argv.slice(2);

function fail(msg) {
  console.error(`mtls-demo: ${msg}`);
  process.exit(1);
}
if (!['serve', 'call'].includes(mode) || !target || !expectedId?.startsWith('spiffe://')) {
  fail('usage: mtls-demo.mjs serve PORT CLIENT_SPIFFE_ID | call HOST:PORT CONSUMER_SPIFFE_ID [--once]');
}
const lib = await import(process.env.TERROIR_WORKLOAD_MODULE ?? new URL('../../dist/src/workload/index.js', import.meta.url).pathname);
const { loadFeatureFlags } = await import(process.env.TERROIR_FLAGS_MODULE ?? new URL('../../dist/feature-flags/index.js', import.meta.url).pathname);

// The library logs (refused peers, Workload API trouble) go to stderr; the last warning explains a missing SVID.
let lastWarning = '';
const logger = pino({ name: `mtls-demo ${mode}`, level: 'warn' }, {
  write(line) {
    try {
      const rec = JSON.parse(line);
      lastWarning = [rec.msg, rec.details ?? rec.err].filter(Boolean).join(': ');
    } catch {
      lastWarning = line.trim();
    }
    process.stderr.write(line);
  },
});

/** Our X509Source, once the agent has given us an SVID (it may still be attesting, or the entry not synced yet). */
async function source() {
  const timeoutS = Number(process.env.SVID_FETCH_TIMEOUT_S ?? 120);
  try {
    return await lib.X509Source.create({ timeoutMs: timeoutS * 1000, logger });
  } catch (err) {
    fail(`no X.509-SVID from the agent within ${timeoutS} s: ${err.message}${lastWarning ? ` (last from the Workload API: ${lastWarning})` : ''}`);
  }
}

/** The Unified Identity requirement from CONSUMER_REQUIRE_*, or undefined when none is set. */
function requirement() {
  const list = (name) => {
    const v = process.env[name]?.trim();
    return v ? v.split(',').map((s) => s.trim()).filter((s) => s !== '') : undefined;
  };
  const req = { countries: list('CONSUMER_REQUIRE_COUNTRY'), regions: list('CONSUMER_REQUIRE_REGION'), policies: list('CONSUMER_REQUIRE_POLICY') };
  for (const k of Object.keys(req)) if (req[k] === undefined) delete req[k];
  if (Object.keys(req).length === 0) return undefined;
  // Claims checked by terroir's Keylime test double instead of Keylime: only when told (native demo and tests).
  if (process.env.CONSUMER_ALLOW_DEV_STANDIN === 'true') req.allowDevelopmentStandIn = true;
  // Only the trust domain of the one caller this consumer accepts vouches for its claims.
  req.trustDomain = new URL(expectedId).host;
  return req;
}

/** The coarse claims a consumer reports back: never more than the SVID says, and SVIDs carry no coordinates. */
function claimsSummary(claims) {
  if (claims === undefined) return null;
  const { country, region, policy, satisfiedPolicies, sensorKinds, assurance, witnesses, attestedAt } = claims;
  return { country, region, policy, satisfiedPolicies, sensorKinds, assurance, witnesses, attestedAt };
}

async function serve() {
  let unified;
  try {
    unified = loadFeatureFlags(undefined, process.env).flags.unifiedIdentity;
  } catch (err) {
    fail(err.message);
  }
  const req = requirement();
  if (unified && req === undefined) {
    fail('UNIFIED_IDENTITY_ENABLED is on: set CONSUMER_REQUIRE_REGION, CONSUMER_REQUIRE_COUNTRY and/or CONSUMER_REQUIRE_POLICY (the claims a caller must carry)');
  }
  // Built before any SVID is fetched, so a bad requirement (e.g. country "fr") fails at once.
  let policy;
  try {
    policy = lib.authorizeAll(lib.authorizeId(expectedId), ...(unified ? [lib.authorizeUnifiedIdentity(req)] : []));
  } catch (err) {
    fail(`CONSUMER_REQUIRE_*: ${err.message}`);
  }
  const src = await source();
  const self = src.getX509Svid().id.toString();
  // TLS admits any verified SVID of our trust domain; the policy is applied next, so a refused
  // caller is told why instead of seeing a reset connection.
  const server = lib.createTlsServer({ source: src, authorizer: lib.authorizeMemberOf(src.getX509Svid().id.trustDomain), logger }, (socket, peer) => {
    const id = peer.id.toString();
    try {
      policy(peer);
    } catch (err) {
      if (!(err instanceof lib.AuthorizationError)) throw err;
      console.log(`refused ${id}: ${err.message}`);
      socket.end(`${JSON.stringify({ error: 'permission denied', peer: id, reason: err.message })}\n`);
      return;
    }
    const claims = unified ? claimsSummary(lib.unifiedIdentityOf(peer)) : undefined;
    console.log(`served ${id}${claims ? ` (${claims.country}, ${claims.region ?? '-'}, policy ${claims.policy})` : ''}`);
    socket.end(`${JSON.stringify({
      from: self,
      to: id,
      unifiedIdentity: unified ? { checked: true, required: req, caller: claims } : 'not checked: UNIFIED_IDENTITY_ENABLED is off',
    })}\n`);
  });
  server.listen(Number(target), () => {
    const what = unified ? `${expectedId} with Unified Identity claims ${JSON.stringify(req)}` : `${expectedId} (Unified Identity off: SPIFFE ID only)`;
    console.log(`consumer ${self} listening on ${target}, allowing ${what}`);
  });
  const stop = () => {
    server.close();
    void src.close().then(() => process.exit(0));
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
}

async function call() {
  const sep = target.lastIndexOf(':');
  const host = target.slice(0, sep);
  const port = Number(target.slice(sep + 1));
  if (sep <= 0 || !Number.isInteger(port) || port < 1 || port > 65535) fail(`not HOST:PORT: ${target}`);
  const src = await source();
  const callOnce = () => new Promise((resolve, reject) => {
    // The consumer must present exactly CONSUMER_SPIFFE_ID (verified before any data is exchanged).
    const socket = lib.tlsConnect({ source: src, authorizer: lib.authorizeId(expectedId), logger, host, port });
    let body = '';
    socket.setEncoding('utf8');
    socket.setTimeout(15_000, () => socket.destroy(new Error('no answer within 15 s')));
    socket.on('data', (d) => { body += d; });
    socket.on('end', () => resolve(body.trim()));
    socket.on('error', reject);
  });
  for (;;) {
    try {
      const answer = await callOnce();
      console.log(answer);
      if (JSON.parse(answer).error !== undefined) throw new Error(`the consumer refused us: ${answer}`);
      if (flag === '--once') {
        await src.close();
        process.exit(0);
      }
    } catch (err) {
      console.error(`call failed: ${err.message}`);
      if (flag === '--once') process.exit(1);
    }
    await new Promise((r) => setTimeout(r, 5000));
  }
}

await (mode === 'serve' ? serve() : call());

/* global process, console, setTimeout, clearTimeout */
// An independent Workload API client (plain JS, the normative spec proto) that tests run as
// another user: prints one JSON line with the SPIFFE IDs it got, or the gRPC status it was refused with.
// Usage: node fetch-x509.mjs <socket path> <workloadapi.proto>
import { createRequire } from 'node:module';
const require = createRequire(import.meta.url);
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const [socketPath, protoPath] = process.argv.slice(2);
const def = protoLoader.loadSync(protoPath, { keepCase: true, defaults: true });
const Client = grpc.loadPackageDefinition(def).SpiffeWorkloadAPI;
const client = new Client(`unix://${socketPath}`, grpc.credentials.createInsecure());
const md = new grpc.Metadata();
md.set('workload.spiffe.io', 'true');
const call = client.FetchX509SVID({}, md);
const timer = setTimeout(() => { console.log(JSON.stringify({ timeout: true })); process.exit(3); }, 10_000);
call.on('data', (res) => {
  console.log(JSON.stringify({ ok: true, uid: process.getuid(), svids: res.svids.map((s) => s.spiffe_id) }));
  clearTimeout(timer);
  call.cancel();
  client.close();
});
call.on('error', (err) => {
  if (err.code === grpc.status.CANCELLED) return;
  console.log(JSON.stringify({ ok: false, uid: process.getuid(), code: err.code, details: err.details }));
  clearTimeout(timer);
  client.close();
});

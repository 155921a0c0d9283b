// One trace per node attestation across agent → server → Keylime: the agent's span travels in the
// AttestAgent gRPC metadata, the server's steps hang under it, and the Keylime request carries the
// trace to the verifier as `traceparent`. Off by default; with an OTLP endpoint the spans are exported.
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { trace } from '@opentelemetry/api';
import { InMemorySpanExporter, SimpleSpanProcessor, type ReadableSpan } from '@opentelemetry/sdk-trace-base';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NodeAttestationError } from '../../src/agent/node-attestor.js';
import { startTracing, tracer, type Tracing } from '../../src/api/tracing.js';
import { parseServerConfig } from '../../src/server/config.js';
import { startUnifiedDeployment, type UnifiedDeployment } from '../unified-identity/fixture.js';

let d: UnifiedDeployment;
let tracing: Tracing | undefined;
const exporter = new InMemorySpanExporter();

beforeAll(async () => {
  d = await startUnifiedDeployment();
}, 60_000);
afterAll(async () => {
  await tracing?.shutdown();
  await d?.stop();
});

const one = (spans: ReadableSpan[], name: string): ReadableSpan => {
  const found = spans.filter((s) => s.name === name);
  expect(found.map((s) => s.name), `spans: ${spans.map((s) => s.name).join(', ')}`).toEqual([name]);
  return found[0] as ReadableSpan;
};
const parentOf = (s: ReadableSpan): string | undefined => s.parentSpanContext?.spanId;

describe('attestation traces', () => {
  it('off by default: no provider, no spans, no traceparent sent to Keylime', async () => {
    const server = await d.startServer({ flag: true, keylime: true });
    await d.attest(server, d.provider(d.berlin));
    expect(tracer().startSpan('probe').spanContext().traceFlags).toBe(0);
    expect(d.verifier.traceparents).toEqual([]);
  }, 60_000);

  it('agent span → server span (over gRPC metadata) → pipeline → Keylime request (traceparent header)', async () => {
    tracing = startTracing({ serviceName: 'test', processors: [new SimpleSpanProcessor(exporter)] });
    const server = await d.startServer({ flag: true, keylime: true });
    exporter.reset();
    await d.attest(server, d.provider(d.berlin));
    const spans = exporter.getFinishedSpans();
    const agent = one(spans, 'terroir.agent.attest');
    const srv = one(spans, 'terroir.server.attest');
    const verify = one(spans, 'terroir.server.tpm.verify');
    const unified = one(spans, 'terroir.server.unified_identity');
    const keylime = one(spans, 'keylime POST');
    const activate = one(spans, 'terroir.agent.tpm.activate_credential');
    const evidence = one(spans, 'terroir.agent.unified_identity.evidence');
    const traceId = agent.spanContext().traceId;
    for (const s of [srv, verify, unified, keylime, activate, evidence]) expect(s.spanContext().traceId).toBe(traceId);
    expect(parentOf(agent)).toBeUndefined();
    expect(parentOf(srv)).toBe(agent.spanContext().spanId);
    expect(parentOf(activate)).toBe(agent.spanContext().spanId);
    expect(parentOf(evidence)).toBe(agent.spanContext().spanId);
    expect(parentOf(verify)).toBe(srv.spanContext().spanId);
    expect(parentOf(unified)).toBe(srv.spanContext().spanId);
    expect(parentOf(keylime)).toBe(unified.spanContext().spanId);
    expect(srv.attributes['terroir.attestation.method']).toBe('tpm');
    expect(srv.status.code).not.toBe(2); // unset: not an error
    // The verifier received the Keylime span's context.
    expect(d.verifier.traceparents).toContain(`00-${traceId}-${keylime.spanContext().spanId}-01`);
  }, 60_000);

  it('a refused attestation ends both spans with an error status', async () => {
    const server = await d.startServer({ flag: true, keylime: true });
    exporter.reset();
    const err = await d.attest(server, d.provider(d.newYork)).then(() => undefined, (e: unknown) => e);
    expect(err).toBeInstanceOf(NodeAttestationError);
    const spans = exporter.getFinishedSpans();
    expect(one(spans, 'terroir.server.attest').status).toMatchObject({ code: 2, message: expect.stringMatching(/location policy/) });
    expect(one(spans, 'terroir.agent.attest').status.code).toBe(2);
  }, 60_000);

  it('with an OTLP endpoint the spans are exported over HTTP; the config refuses a non-URL', async () => {
    await tracing?.shutdown();
    tracing = undefined;
    const bodies: string[] = [];
    const collector = http.createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => { bodies.push(`${req.method} ${req.url} ${Buffer.concat(chunks).toString('utf8')}`); res.writeHead(200, { 'content-type': 'application/json' }); res.end('{}'); });
    });
    await new Promise<void>((r) => collector.listen(0, '127.0.0.1', () => r()));
    try {
      const t = startTracing({ serviceName: 'terroir-test', otlpEndpoint: `http://127.0.0.1:${(collector.address() as AddressInfo).port}/v1/traces` });
      tracer().startSpan('terroir.export-check').end();
      await t.shutdown();
      expect(bodies.some((b) => b.startsWith('POST /v1/traces ') && b.includes('terroir.export-check') && b.includes('terroir-test'))).toBe(true);
      expect(trace.getTracerProvider().getTracer('x').startSpan('after').spanContext().traceFlags).toBe(0);
    } finally {
      await new Promise<void>((r) => collector.close(() => r()));
    }
    expect(() => parseServerConfig({ trustDomain: 'example.org', dataDir: '/tmp/x', tracing: { otlpEndpoint: 'collector:4318' } }, '/tmp', {})).toThrow(/OTLP\/HTTP/);
  }, 30_000);
});

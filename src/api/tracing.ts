// Traces across agent → server → Keylime (OpenTelemetry API). Off unless a process configures an OTLP
// endpoint (startTracing): without a registered provider every span is the API's no-op, so the cost
// in the attestation path is a few function calls. One trace per node attestation: the agent's span
// travels as a W3C `traceparent` in the AttestAgent gRPC metadata, the server's as a `traceparent`
// header on its Keylime requests.
import type * as grpc from '@grpc/grpc-js';
import {
  context, propagation, SpanKind, SpanStatusCode, trace, type Context, type Span, type Tracer,
} from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { W3CTraceContextPropagator } from '@opentelemetry/core';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-http';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { BasicTracerProvider, BatchSpanProcessor, type SpanProcessor } from '@opentelemetry/sdk-trace-base';

export { SpanKind } from '@opentelemetry/api';

/** The tracer all of terroir's spans come from. */
export function tracer(): Tracer {
  return trace.getTracer('terroir');
}

export interface Tracing {
  /** Flushes what is buffered and stops exporting. */
  shutdown(): Promise<void>;
}

/**
 * Registers the global tracer provider: spans exported to `otlpEndpoint` (OTLP over HTTP, e.g.
 * http://collector:4318/v1/traces), or to the given processors (tests). Call once per process.
 */
export function startTracing(o: { serviceName: string; otlpEndpoint?: string; processors?: SpanProcessor[] }): Tracing {
  const processors = o.processors ?? [new BatchSpanProcessor(new OTLPTraceExporter({ url: o.otlpEndpoint as string }))];
  const provider = new BasicTracerProvider({ resource: resourceFromAttributes({ 'service.name': o.serviceName }), spanProcessors: processors });
  context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
  propagation.setGlobalPropagator(new W3CTraceContextPropagator());
  trace.setGlobalTracerProvider(provider);
  return {
    shutdown: async () => {
      await provider.shutdown();
      trace.disable();
      propagation.disable();
      context.disable();
    },
  };
}

/** Puts the active span's context into gRPC metadata (`traceparent`, `tracestate`). */
export function injectIntoMetadata(md: grpc.Metadata, ctx: Context = context.active()): grpc.Metadata {
  propagation.inject(ctx, md, { set: (carrier, key, value) => { carrier.set(key, value); } });
  return md;
}

/** The remote parent carried in gRPC metadata (the root context when there is none or it is malformed). */
export function contextFromMetadata(md: grpc.Metadata): Context {
  return propagation.extract(context.active(), md, {
    get: (carrier, key) => {
      const v = carrier.get(key);
      return v.length === 0 ? undefined : v.map(String);
    },
    keys: (carrier) => Object.keys(carrier.getMap()),
  });
}

/** HTTP headers carrying the active span's context (empty when tracing is off). */
export function traceHeaders(ctx: Context = context.active()): Record<string, string> {
  const headers: Record<string, string> = {};
  propagation.inject(ctx, headers);
  return headers;
}

/**
 * Runs `fn` inside a child span of the active context named `name`; the span ends when `fn` settles,
 * with an error status (and the error's message) when it throws.
 */
export async function inSpan<T>(name: string, fn: (span: Span) => Promise<T>, attributes: Record<string, string | number | boolean> = {}, kind: SpanKind = SpanKind.INTERNAL): Promise<T> {
  return tracer().startActiveSpan(name, { kind, attributes }, async (span) => {
    try {
      return await fn(span);
    } catch (e) {
      span.setStatus({ code: SpanStatusCode.ERROR, message: (e as Error)?.message ?? String(e) });
      throw e;
    } finally {
      span.end();
    }
  });
}

/** Ends `span` with the outcome of a whole exchange: ok, or an error status with its message. */
export function endSpan(span: Span, err?: unknown): void {
  if (err !== undefined) span.setStatus({ code: SpanStatusCode.ERROR, message: (err as Error)?.message ?? String(err) });
  span.end();
}

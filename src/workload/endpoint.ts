// Which Workload API endpoint to talk to: the explicit option, else SPIFFE_ENDPOINT_SOCKET.
import * as grpc from '@grpc/grpc-js';
import { createWorkloadClient, ENDPOINT_SOCKET_ENV, parseEndpoint, type WorkloadApiClient } from '../api/workload-api.js';
import { WorkloadError } from './errors.js';

export function resolveEndpoint(explicit: string | undefined): string {
  const value = explicit ?? process.env[ENDPOINT_SOCKET_ENV];
  if (value === undefined || value === '') {
    throw new WorkloadError('no-endpoint', `no Workload API endpoint: pass { endpoint } or set ${ENDPOINT_SOCKET_ENV} (e.g. unix:///run/terroir/agent.sock)`);
  }
  try {
    parseEndpoint(value);
  } catch (e) {
    throw new WorkloadError('no-endpoint', (e as Error).message, { cause: e });
  }
  return value;
}

/** Largest Workload API message accepted (bundles of many federated domains stay far below). */
export const MAX_WORKLOAD_MESSAGE_BYTES = 4 * 1024 * 1024;

export function workloadClient(endpoint: string): WorkloadApiClient {
  return createWorkloadClient(endpoint, {
    'grpc.max_receive_message_length': MAX_WORKLOAD_MESSAGE_BYTES,
    'grpc.max_send_message_length': 64 * 1024,
  } satisfies grpc.ChannelOptions);
}

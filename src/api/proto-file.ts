// Locating and loading the project's .proto files, shared by the admin, agent and Workload API modules.
import fs from 'node:fs';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';

/**
 * The absolute path of `proto/<name>`. This module runs from <root>/src/api (tsx) or
 * <root>/dist/src/api (compiled), so proto/ is two or three levels up.
 */
export function protoFile(name: string): string {
  for (const rel of [`../../proto/${name}`, `../../../proto/${name}`]) {
    const p = fileURLToPath(new URL(rel, import.meta.url));
    if (fs.existsSync(p)) return p;
  }
  throw new Error(`proto/${name} not found next to the terroir installation; reinstall the package`);
}

/**
 * Loader options for terroir's own APIs (admin, agent): camelCase fields, int64 as JS numbers (times
 * and revisions stay far below 2^53), bytes as Buffer, enums as names, defaults present when decoding.
 */
export const TERROIR_PROTO_OPTIONS: protoLoader.Options = {
  keepCase: false,
  longs: Number,
  enums: String,
  bytes: Buffer,
  defaults: true,
  arrays: true,
  objects: true,
  oneofs: true,
};

/** Loads `proto/<file>` and returns the client constructor of the service at `servicePath` (package parts + name). */
export function loadServiceClient(file: string, servicePath: string[]): grpc.ServiceClientConstructor {
  const def = protoLoader.loadSync(protoFile(file), TERROIR_PROTO_OPTIONS);
  let node: unknown = grpc.loadPackageDefinition(def);
  for (const part of servicePath) node = (node as Record<string, unknown> | undefined)?.[part];
  if (typeof node !== 'function') throw new Error(`service ${servicePath.join('.')} missing from proto/${file}`);
  return node as grpc.ServiceClientConstructor;
}

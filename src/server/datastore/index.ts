// The server's datastore: open one by configuration, use it through the DataStore interface.
import { openPostgresDataStore } from './postgres.js';
import { openSqliteDataStore } from './sqlite.js';
import type { DataStore, DataStoreConfig } from './types.js';

export * from './types.js';
export { SCHEMA_VERSION } from './schema.js';
export { canonicalSelectors, selectorString, selectorsMatch } from './selectors.js';

/** Opens the configured backend and migrates its schema; refuses a schema newer than this build. */
export async function openDataStore(config: DataStoreConfig): Promise<DataStore> {
  switch (config.type) {
    case 'sqlite':
      return openSqliteDataStore(config.path);
    case 'postgres':
      return openPostgresDataStore(config.connectionString, config.poolSize);
  }
}

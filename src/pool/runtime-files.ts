/** Where the pool's own files are on the host. */
import path from 'node:path'
import { fileURLToPath } from 'node:url'

/** The host folder of what runs inside sandboxes (agent, worker entry, snapshot environment). */
export const RUNTIME_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../sandbox-runtime')
/** The snapshot environment module test workers load (it sends snapshot I/O to the host). */
export const SNAPSHOT_ENVIRONMENT = path.join(RUNTIME_DIR, 'snapshot-environment.js')

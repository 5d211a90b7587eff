/**
 * What one local sandbox may use: memory, disk, CPU, processes and open files, in units users
 * know (`'2g'`, `'512m'`), with defaults sized from this machine. Which of them the host can
 * enforce is `cgroups.ts` and `disk.ts`; this module only reads and checks the numbers.
 */
import os from 'node:os'
import { formatSize, invalidLimit as invalid, parseSize, positive } from '../sizes.js'

/** Limits as a user writes them: sizes as bytes or `'512m'`/`'2g'`, `cpus` as a count of cores. */
export interface LimitsInput {
  /** Memory of all the sandbox's processes together, swap included (`'2g'`). @default host memory ÷ (cores + 1), between 1 GiB and 16 GiB */
  memory?: number | string
  /** Writable disk: the sandbox's own layer, `/tmp` included (`'4g'`). @default 4 GiB, less when the state folder's disk has less free */
  disk?: number | string
  /** CPU time, in cores (`1.5`); under contention each sandbox gets a fair share of the rest. @default every core */
  cpus?: number
  /** Processes and threads at once. @default 1024 */
  processes?: number
  /** Open files per process. @default 4096 */
  openFiles?: number
}

/** Limits as the engine applies them: bytes and counts. */
export interface SandboxLimits {
  memory: number
  disk: number
  cpus: number
  processes: number
  openFiles: number
}

/** Which limits were asked for by name (these must be enforced, or nothing starts). */
export type Explicit = Partial<Record<keyof SandboxLimits, true>>

const GiB = 1024 ** 3

export { formatSize, parseSize } from '../sizes.js'

export const MIN_MEMORY = 64 * 1024 ** 2
export const MIN_DISK = 64 * 1024 ** 2
export const DEFAULT_DISK = 4 * GiB

/** Host memory ÷ (cores + 1): room for a sandbox per core and the host, between 1 and 16 GiB. */
export function defaultMemory(): number {
  return Math.min(16 * GiB, Math.max(GiB, Math.floor(os.totalmem() / (os.availableParallelism() + 1))))
}

/** Checks the user's limits and fills in the defaults; `explicit` says which were given. */
export function resolveLimits(input: LimitsInput = {}): { limits: SandboxLimits; explicit: Explicit } {
  if (typeof input !== 'object' || input === null) throw invalid('', input, 'an object such as { memory: "2g", disk: "4g", cpus: 1 }')
  const known = new Set(['memory', 'disk', 'cpus', 'processes', 'openFiles'])
  for (const key of Object.keys(input)) if (!known.has(key)) throw invalid(key, (input as Record<string, unknown>)[key], `a known limit (use ${[...known].join(', ')})`)
  const explicit: Explicit = {}
  for (const key of known) if ((input as Record<string, unknown>)[key] !== undefined) explicit[key as keyof SandboxLimits] = true
  const limits: SandboxLimits = {
    memory: input.memory === undefined ? defaultMemory() : parseSize(input.memory, 'memory'),
    disk: input.disk === undefined ? DEFAULT_DISK : parseSize(input.disk, 'disk'),
    cpus: input.cpus === undefined ? os.availableParallelism() : positive(input.cpus, 'cpus', false),
    processes: input.processes === undefined ? 1024 : positive(input.processes, 'processes', true),
    openFiles: input.openFiles === undefined ? 4096 : positive(input.openFiles, 'openFiles', true),
  }
  if (limits.memory < MIN_MEMORY) throw invalid('memory', input.memory, `enough to start Node (at least ${formatSize(MIN_MEMORY)})`)
  if (limits.disk < MIN_DISK) throw invalid('disk', input.disk, `enough for a workspace (at least ${formatSize(MIN_DISK)})`)
  return { limits, explicit }
}

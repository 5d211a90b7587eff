/**
 * What the host gateway is told of a worker's run (all of it from the host, never from the
 * worker), and what it tells the worker's owner to do with each message.
 */
import type { FileRules } from './file-rules.js'
import type { RunBudget } from './budget.js'
import type { RpcFrame } from '../../sandbox-runtime/wire.js'

/** What the gateway needs to know of the worker's run; all of it from the host. */
export interface GatewayContext {
  /** Vitest's major version on the host. */
  major: number
  rules: FileRules
  /** The host's Vite environments (`fetch`/`resolve` name one). */
  environments(): string[]
  /** The test files of the worker's current run (absolute). */
  runFiles(): string[]
  /** The task id the host's Vitest gives a test file. */
  fileTaskId(file: string): string
  /** Whether the host's Vitest has a task of this id (of any file). */
  isTask(id: unknown): boolean
  /** The test environment Vitest sent the worker (`context.environment.name`). */
  testEnvironment(): string | undefined
  projectName: string
  /** The project's root, which Vitest's test file names are relative to. */
  projectRoot: string
  /** The folder Vitest copies attachments into (`attachmentsDir`), absolute. */
  attachmentsDir: string | undefined
  /** The coverage provider the host runs, if coverage is on (`v8`, `istanbul`, `custom`). */
  coverageProvider(): string | undefined
  /**
   * Vitest 5's provider reads its workers' data from files: the screened data (JSON) written
   * where it reads them, under a name the host chooses, which the provider gets instead.
   */
  coverageFile(json: string): string | undefined
  /** The host's answer to `resolveSnapshotPath` of one of the worker's files. */
  snapshotPath(testPath: string, snapPath: string): void
  /** A benchmark result path as the host reads it (absolute), or why it is refused. */
  benchmarkPath(method: string, file: unknown): { path: string } | { refused: string }
  /** Whether a worker may see this `import.meta.env` name (Vite writes the host's whole env into modules). */
  envAllowed(name: string): boolean
  /** The run's `--bail` (0: off). */
  bail(): number
  /** Failed tests the host's Vitest has counted so far in the run. */
  failedTests(): number
  /** What the host keeps for the whole run, shared by its workers. */
  budget: RunBudget
}

/** What to do with a message. */
export interface Step {
  /** To Vitest (a call with the gateway's id, a worker response, an event). */
  toHost?: unknown
  /** To the worker (an answer the gateway gives itself). */
  toWorker?: RpcFrame
  /** To the host's file service (snapshot files): a call of the right shape, within the budget. */
  hostFile?: HostFileCall
}

/** A call of the host's file service (host-files.ts), as the worker sent it. */
export interface HostFileCall {
  id: number
  op: string
  args: unknown[]
  /** Tell the gateway the call was answered (with `result`, which waits in the host's memory until the worker reads it). */
  answered(result: unknown): void
}

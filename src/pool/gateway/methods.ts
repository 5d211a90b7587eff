/**
 * The allow-list: every method a sandboxed worker may call on the host, per Vitest major, with the
 * shape of its arguments and what the gateway does with the call. A method not here, or arguments
 * of another shape, are a protocol violation. `docs/host-rpc.md` is this table (a test checks it).
 */

/** What the gateway does with a call before Vitest's handler gets it. */
export type Rule =
  /** reads a module id: screened by module-screen.ts */
  | 'module'
  /** Vitest 5's batch of transformed modules: screened entry by entry */
  | 'warm'
  /** names tasks: every task id must be one of this worker's files' */
  | 'tasks'
  /** coverage data: every file it names must be given (coverage.ts) */
  | 'coverage'
  /** error stacks: host files that are not given are never named to the host (stacks.ts) */
  | 'errors'
  /** the test path must be the worker's own file; the answer is that file's `.snap` */
  | 'snapshot-path'
  /** cancels the run: only as `--bail` does, when the host's failed count reaches it */
  | 'bail'
  /** a host path read or written: checked by the host file service */
  | 'host-file'
  /** nothing of the host's files is involved */
  | 'plain'

/** An argument's check: undefined when it holds, else what was wrong. */
export type Check = (v: unknown) => string | undefined

/** An object that is not an array (the shape every argument and record of the protocol is checked for). */
export const isPlain = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === 'object' && !Array.isArray(v)
export const string = (max: number): Check => (v) => (typeof v !== 'string' ? 'not a string' : v.length > max ? `a string of ${v.length} characters (at most ${max})` : undefined)
export const optional = (check: Check): Check => (v) => (v === undefined || v === null ? undefined : check(v))
export const object: Check = (v) => (isPlain(v) ? undefined : 'not an object')
export const array: Check = (v) => (Array.isArray(v) ? undefined : 'not an array')
export const anything: Check = () => undefined
export const arrayOf = (check: Check, max: number): Check => (v) => {
  if (!Array.isArray(v)) return 'not an array'
  if (v.length > max) return `an array of ${v.length} (at most ${max})`
  for (const e of v) if (check(e)) return `an entry is ${check(e)}`
  return undefined
}
/** One of the host's Vite environments (checked by the gateway, which knows them). */
export const ENVIRONMENT: Check = string(256)

const ID = string(4096)
const PATH = string(4096)
const NAME = string(1024)

export interface MethodSpec {
  /** The first Vitest major that has it. */
  since: 4 | 5
  args: Check[]
  rule: Rule
  /** What the host does with it, for docs/host-rpc.md. */
  host: string
}

export const METHODS: Readonly<Record<string, MethodSpec>> = Object.freeze({
  fetch: { since: 4, args: [ID, optional(ID), ENVIRONMENT, optional(object), optional(object)], rule: 'module', host: 'resolves, loads and transforms a module with the host\'s Vite' },
  resolve: { since: 4, args: [ID, optional(ID), ENVIRONMENT], rule: 'module', host: "Vite's `resolveId`: tells which host paths exist" },
  ensureModuleGraphEntry: { since: 4, args: [ID, ID], rule: 'module', host: 'puts a file in the host\'s module graph (the host then prints code frames of it)' },
  fetchWarmModules: { since: 5, args: [ENVIRONMENT, arrayOf(ID, 100_000)], rule: 'warm', host: 'already transformed modules of the host\'s module graph' },
  onQueued: { since: 4, args: [object], rule: 'tasks', host: 'reporters: a file is queued' },
  onCollected: { since: 4, args: [array], rule: 'tasks', host: 'reporters: the collected task tree' },
  onTaskUpdate: { since: 4, args: [array, array], rule: 'tasks', host: 'reporters: task results and events' },
  onTaskArtifactRecord: { since: 4, args: [NAME, object], rule: 'tasks', host: 'records an artifact; copies `attachment.path` into the attachments folder' },
  onUserConsoleLog: { since: 4, args: [object], rule: 'tasks', host: 'console output of a test, printed by reporters' },
  onTestBenchmark: { since: 5, args: [NAME, object], rule: 'tasks', host: 'reporters: a benchmark result' },
  onUnhandledError: { since: 4, args: [anything, optional(NAME)], rule: 'errors', host: 'an error outside tests: printed with a code frame of the nearest module-graph file' },
  onAsyncLeaks: { since: 4, args: [array], rule: 'errors', host: 'async leaks: printed with a code frame of the first stack frame\'s file' },
  onAfterSuiteRun: { since: 4, args: [object], rule: 'coverage', host: 'coverage data for the host\'s coverage provider, which reads the files it names' },
  resolveSnapshotPath: { since: 4, args: [PATH], rule: 'snapshot-path', host: 'maps a test file to its `.snap` path (no file access)' },
  snapshotSaved: { since: 4, args: [object], rule: 'tasks', host: 'adds a file\'s snapshot counts and obsolete keys to the run\'s summary' },
  getCountOfFailedTests: { since: 4, args: [], rule: 'plain', host: 'a number (for `--bail`)' },
  onCancel: { since: 4, args: [optional(NAME)], rule: 'bail', host: 'cancels the run (`--bail`)' },
  onTestModuleDependencies: { since: 5, args: [PATH, arrayOf(PATH, 100_000)], rule: 'tasks', host: 'records a test file\'s module dependencies (paths, in Vitest\'s cache)' },
  readBenchmarkResult: { since: 5, args: [PATH], rule: 'host-file', host: 'reads JSON at a path' },
  writeBenchmarkResult: { since: 5, args: [PATH, anything], rule: 'host-file', host: 'writes JSON at a path' },
})

/**
 * Methods Vitest's host has and a sandboxed worker may not call: `transform` and
 * `prewarmModuleGraph` serve vm pools only (this pool is not one).
 */
export const REFUSED: Readonly<Record<string, string>> = Object.freeze({
  transform: 'vm pools only',
  prewarmModuleGraph: 'vm pools only',
})

/** The spec of `method` for a Vitest major, if a worker of that major may call it. */
export function methodSpec(method: unknown, major: number): MethodSpec | undefined {
  if (typeof method !== 'string' || !Object.hasOwn(METHODS, method)) return undefined
  const spec = METHODS[method]
  return major >= spec.since ? spec : undefined
}

/** What is wrong with the arguments of a call, or undefined. */
export function badArguments(method: string, spec: MethodSpec, args: unknown): string | undefined {
  if (!Array.isArray(args)) return `${method}: arguments are not an array`
  // Trailing undefined arguments are how a caller leaves optional ones out.
  const given = args.length
  if (given > spec.args.length) return `${method}: ${given} arguments (at most ${spec.args.length})`
  for (let i = 0; i < spec.args.length; i++) {
    const wrong = spec.args[i](args[i])
    if (wrong) return `${method}: argument ${i + 1} is ${wrong}`
  }
  return undefined
}

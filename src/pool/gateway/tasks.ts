/**
 * What a worker says of tasks: its files' trees, their results, logs, artifacts, benchmarks and
 * snapshot summaries. Vitest registers every task of a tree by id and its reporters print and
 * write each result recursively, so every task must be the worker's own, shaped as Vitest's worker
 * sends it, with its links to file and suite set from the tree and no cycles in what is printed.
 */
import path from 'node:path'
import { acyclic, valueBudget } from './errors.js'
import { ProtocolViolation } from './violation.js'
import { isPlain } from './methods.js'
import { isPlainPath } from './module-ids.js'
import { attachmentsOf } from './attachments.js'

/** What the host knows of the worker the tasks must belong to. */
export interface TaskOwner {
  /** The task ids of the worker's files. */
  ownIds(): string[]
  /**
   * The worker's file a path (absolute or relative to the workspace) names, as the host has it;
   * undefined when it names none. What the host keys and prints by is that string, never the
   * worker's (which another path reader, such as pathe with `\\`, could read as another file).
   */
  ownFile(file: unknown): string | undefined
  /** Whether the host's Vitest has a task of this id (of any file). */
  isTask(id: unknown): boolean
  /** The name Vitest gives one of the worker's files (its path relative to the project root). */
  fileName(filepath: string): string
  projectName(): string
  /** The folder Vitest copies attachments into (`attachmentsDir`), absolute. */
  attachmentsDir(): string | undefined
}

/** Is `id` a task of the worker's own files (a file's id, or one under it)? */
function ownTask(owner: TaskOwner): (id: unknown) => boolean {
  const own = owner.ownIds()
  return (id) => typeof id === 'string' && own.some((o) => id === o || id.startsWith(`${o}_`))
}

/**
 * The fields of an error the host acts on, not only prints (Vitest's `catchError`, which also
 * walks an AggregateError's `errors`): a pending signal (`code: 'VITEST_PENDING'`) marks the task
 * it names skipped, and `VITEST_TEST_PATH` names the file the error came from. Only for the
 * worker's own.
 */
export function checkErrorSignals(method: string, error: unknown, owner: TaskOwner): void {
  const isOwn = ownTask(owner)
  const walk = (e: unknown, depth: number): void => {
    if (e === null || typeof e !== 'object' || depth > 64) return
    const o = e as Record<string, unknown>
    if (o.code === 'VITEST_PENDING' && !isOwn(o.taskId)) throw new ProtocolViolation(`${method}: a skip signal for task ${JSON.stringify(String(o.taskId)).slice(0, 80)}, which is not a task of this worker's file`)
    if (o.VITEST_TEST_PATH !== undefined) {
      const own = owner.ownFile(o.VITEST_TEST_PATH)
      if (own === undefined) throw new ProtocolViolation(`${method}: an error said to come from a file that is not this worker's`)
      o.VITEST_TEST_PATH = own
    }
    if (Array.isArray(o.errors)) for (const inner of o.errors) walk(inner, depth + 1)
  }
  walk(error, 0)
}

/** Task ids a call names must belong to the worker's own files (in place: the gateway's copy). */
/**
 * What the host keeps for each task it registers besides its fields (Vitest's id map, the state's
 * and reporters' entities): 0.9 KB measured; 1.2 million tasks of 107 bytes on the wire each held
 * 1.1 GB of the host under a bound counted on the wire.
 */
const TASK_HELD = 1024

export function checkTasks(method: string, args: unknown[], owner: TaskOwner, budget = valueBudget()): void {
  const isOwn = ownTask(owner)
  const check = (id: unknown, what: string) => {
    if (!isOwn(id)) throw new ProtocolViolation(`${method}: ${what} ${JSON.stringify(String(id)).slice(0, 80)} is not a task of this worker's file`)
  }
  // Vitest registers every task of a tree by its id, and its reporters print each one under the
  // file and suite it points to: those links are set from the tree itself, never taken as sent.
  const checkTree = (task: any, file: object, parent: object | undefined, seen: Set<object>) => {
    if (task === null || typeof task !== 'object') throw new ProtocolViolation(`${method}: a task that is not an object`)
    if (seen.has(task)) throw new ProtocolViolation(`${method}: a task that is in its tree twice`)
    seen.add(task)
    check(task.id, 'task')
    budget.bytes += TASK_HELD
    if (task.type !== 'test' && task.type !== 'suite') throw new ProtocolViolation(`${method}: a task of type ${JSON.stringify(String(task.type)).slice(0, 40)}`)
    if (typeof task.name !== 'string' || !TASK_MODES.has(task.mode)) throw new ProtocolViolation(`${method}: a task without a name or mode`)
    task.file = file
    // As Vitest's worker sends them: a top-level task has no suite (the file stands for it).
    task.suite = parent === file ? undefined : parent
    task.result = taskResult(method, task.result, budget)
    task.meta = acyclic(task.meta, budget)
    if (task.type === 'test') {
      // Reporters compare and print them recursively.
      for (const list of ['annotations', 'artifacts']) task[list] = Array.isArray(task[list]) ? acyclic(task[list], budget) : []
      // Reporters read these files (the HTML reporter inlines them): only copies the host made.
      for (const artifact of [...task.annotations.map((annotation: any) => ({ type: 'internal:annotation', annotation })), ...task.artifacts]) {
        const made = attachmentPaths(artifact).find((p) => !isHostCopy(p, owner.attachmentsDir()))
        if (made !== undefined) throw new ProtocolViolation(`${method}: an attachment path ${JSON.stringify(String(made)).slice(0, 120)} that is not a copy the host made in its attachments folder`)
      }
      if (task.tasks !== undefined) throw new ProtocolViolation(`${method}: a test with tasks`)
      return
    }
    if (!Array.isArray(task.tasks)) throw new ProtocolViolation(`${method}: a suite whose tasks are not a list`)
    for (const child of task.tasks) checkTree(child, file, task, seen)
  }
  const checkFile = (file: any) => {
    if (file === null || typeof file !== 'object') throw new ProtocolViolation(`${method}: a file that is not an object`)
    check(file.id, 'file id')
    const own = owner.ownFile(file.filepath)
    if (own === undefined) throw new ProtocolViolation(`${method}: a file that is not this worker's`)
    // What reporters key, print and cache the file by, from the host.
    file.filepath = own
    file.name = owner.fileName(own)
    file.projectName = owner.projectName()
    checkTree(file, file, undefined, new Set())
  }
  switch (method) {
    case 'onQueued':
      return checkFile(args[0])
    case 'onCollected':
      return (args[0] as unknown[]).forEach(checkFile)
    case 'onTaskUpdate':
      for (const pack of args[0] as unknown[]) {
        check(Array.isArray(pack) ? pack[0] : undefined, 'task')
        ;(pack as unknown[])[1] = taskResult(method, (pack as unknown[])[1], budget)
        ;(pack as unknown[])[2] = acyclic((pack as unknown[])[2], budget)
      }
      for (const event of args[1] as unknown[]) check(Array.isArray(event) ? event[0] : undefined, 'task')
      return
    case 'onTaskArtifactRecord':
      check(args[0], 'task')
      args[1] = acyclic(args[1], budget)
      return
    case 'onTestBenchmark':
      check(args[0], 'task')
      args[1] = benchmarkReport(method, acyclic(args[1], budget))
      return
    case 'onTestModuleDependencies':
      args[0] = owner.ownFile(args[0])
      if (args[0] === undefined) throw new ProtocolViolation(`${method}: a file that is not this worker's`)
      return
    case 'snapshotSaved': {
      const own = owner.ownFile((args[0] as { filepath?: unknown }).filepath)
      if (own === undefined) throw new ProtocolViolation(`${method}: a summary of a file that is not this worker's`)
      args[0] = { ...snapshotSummary(method, args[0] as Record<string, unknown>), filepath: own }
      return
    }
    case 'onUserConsoleLog': {
      // Vitest names a log's task by the test running, else by a stack frame's path (or
      // "unknown"): text printed as the log's header. Only another file's task is refused.
      const taskId = (args[0] as { taskId?: unknown }).taskId
      if (taskId !== undefined && !isOwn(taskId) && owner.isTask(taskId)) check(taskId, 'task')
      args[0] = acyclic(args[0], budget)
      return
    }
  }
}

/** The results of every task of collected trees (their stacks are screened; the trees hold cycles). */
export function collectedResults(files: unknown[]): unknown[] {
  const out: unknown[] = []
  const walk = (task: any) => {
    out.push(task.result)
    for (const child of task.type === 'suite' ? task.tasks : []) walk(child)
  }
  files.forEach(walk)
  return out
}

/** Vitest's task modes and result states. */
const TASK_MODES: ReadonlySet<unknown> = new Set(['run', 'skip', 'only', 'todo', 'queued'])
const TASK_STATES: ReadonlySet<unknown> = new Set(['run', 'skip', 'only', 'todo', 'queued', 'pass', 'fail'])

/** A task's result as reporters read it: a known state, errors as a list, no cycles. */
function taskResult(method: string, result: unknown, budget: ReturnType<typeof valueBudget>): unknown {
  if (result === undefined) return undefined
  const r = acyclic(result, budget) as Record<string, unknown>
  if (r === null || typeof r !== 'object' || Array.isArray(r)) throw new ProtocolViolation(`${method}: a task result that is not an object`)
  if (!TASK_STATES.has(r.state)) throw new ProtocolViolation(`${method}: a task result of state ${JSON.stringify(String(r.state)).slice(0, 40)}`)
  if (r.errors !== undefined && !Array.isArray(r.errors)) throw new ProtocolViolation(`${method}: task errors that are not a list`)
  return r
}

/** The counts Vitest's snapshot summary adds up: whole numbers in range, and the keys it lists. */
function snapshotSummary(method: string, s: Record<string, unknown>): Record<string, unknown> {
  const count = (key: string) => {
    const n = s[key]
    if (!Number.isSafeInteger(n) || (n as number) < 0 || (n as number) > 1e7) throw new ProtocolViolation(`${method}: ${key} is not a count`)
    return n
  }
  const keys = s.uncheckedKeys ?? []
  if (!Array.isArray(keys) || keys.length > 100_000 || keys.some((k) => typeof k !== 'string' || k.length > 4096)) throw new ProtocolViolation(`${method}: uncheckedKeys is not a list of names`)
  return {
    filepath: s.filepath,
    added: count('added'),
    fileDeleted: s.fileDeleted === true,
    matched: count('matched'),
    unchecked: count('unchecked'),
    uncheckedKeys: keys,
    unmatched: count('unmatched'),
    updated: count('updated'),
  }
}

/** The files an artifact's attachments name (not URLs): the host copies or reads each. */
function attachmentPaths(artifact: any): unknown[] {
  return attachmentsOf(artifact)
    .map((a) => a?.path)
    .filter((p) => p !== undefined && !(typeof p === 'string' && /^https?:\/\//.test(p)))
}

/** Is `p` a file the host's Vitest copied into its attachments folder (as it answers an artifact)? */
function isHostCopy(p: unknown, attachmentsDir: string | undefined): boolean {
  return typeof p === 'string' && attachmentsDir !== undefined && isPlainPath(p) && path.dirname(p) === attachmentsDir
}

/** Rows of one benchmark's table, and the characters of a row's name (the table pads every row to the longest). */
const MAX_BENCHMARK_ROWS = 1000
const MAX_BENCHMARK_NAME = 512

/**
 * A benchmark as Vitest's worker reports it (`{ name, tasks: [{ name, latency, throughput, rank, … }] }`),
 * printed by the host as a table whose rows are padded to the longest name: at most
 * MAX_BENCHMARK_ROWS rows, names cut at MAX_BENCHMARK_NAME characters (a million-character name
 * and 2,000 rows made the host print 2 GB).
 */
function benchmarkReport(method: string, value: unknown): unknown {
  if (!isPlain(value) || typeof value.name !== 'string' || !Array.isArray(value.tasks)) throw new ProtocolViolation(`${method}: not a benchmark ({ name, tasks })`)
  if (value.tasks.length > MAX_BENCHMARK_ROWS) throw new ProtocolViolation(`${method}: a benchmark of over ${MAX_BENCHMARK_ROWS} tasks`)
  const cut = (name: string) => (name.length > MAX_BENCHMARK_NAME ? `${name.slice(0, MAX_BENCHMARK_NAME - 1)}…` : name)
  const tasks = value.tasks.map((task) => {
    if (!isPlain(task) || typeof task.name !== 'string') throw new ProtocolViolation(`${method}: a benchmark task that is not { name, … }`)
    return { ...task, name: cut(task.name) }
  })
  return { ...value, name: cut(value.name), tasks }
}

/**
 * A benchmark result as Vitest 5's worker writes one (`{ latency, throughput, period, totalTime }`,
 * the first two tinybench statistics), rebuilt of numbers only: the host writes it as JSON, so
 * nothing else (no hook or task definitions) can reach the file. Undefined if it is not one.
 */
export function benchmarkResult(d: unknown): Record<string, unknown> | undefined {
  if (!isPlain(d)) return undefined
  const stats = (v: unknown): Record<string, unknown> | undefined => {
    if (!isPlain(v)) return undefined
    const out: Record<string, unknown> = {}
    for (const [k, x] of Object.entries(v)) {
      if (typeof x === 'number') out[k] = x
      else if (Array.isArray(x) && x.length <= 1_000_000 && x.every((n) => typeof n === 'number')) out[k] = x
      else if (x instanceof Float64Array && x.length <= 1_000_000) out[k] = x
      // Unset statistics (tinybench's `samples` unless kept): JSON leaves them out.
      else if (x !== undefined) return undefined
    }
    return out
  }
  const latency = stats(d.latency)
  const throughput = stats(d.throughput)
  if (!latency || !throughput || typeof d.period !== 'number' || typeof d.totalTime !== 'number') return undefined
  return { latency, throughput, period: d.period, totalTime: d.totalTime }
}

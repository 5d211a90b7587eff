/**
 * What the host keeps of what workers send: Vitest keeps results, logs, errors for the run, Vite
 * keeps every module it transforms and Vitest every id it is asked. Bounded per worker (one
 * file's worker ends) and for the whole run over all workers (a suite of many hostile files
 * cannot make the host keep a worker's bound per file). For the run, module code and ids count
 * once per module the host newly holds (Vite's module graph keeps each for as long as it lives,
 * across watch-mode reruns); results, logs and errors per run (Vitest keeps them until the next).
 */
import { RangeTally } from './coverage.js'
import { LocationTally } from './istanbul.js'
import type { Rule } from './methods.js'
import { ProtocolViolation } from './violation.js'

const MiB = 1024 * 1024

/** Bytes of results, logs, errors and coverage one worker may send. */
export const MAX_KEPT_BYTES = 256 * MiB
/** Bytes of module code one worker may be sent, as the host holds it (`heldBytes`). */
export const MAX_MODULE_CODE = 256 * MiB
/** Bytes of module ids one worker may ask for (its externals, durations, `data:` ids too), as the host holds them (`idBytes`). */
export const MAX_MODULE_IDS = 128 * MiB
/** Calls of the host's file service (snapshot reads and writes) one worker may have in flight. */
export const MAX_HOST_FILE_CALLS = 64
/** Characters of snapshot files one worker may read: the host holds what it sends until the worker reads it. */
export const MAX_HOST_FILE_BYTES = 256 * MiB
/** Bytes of files the gateway may read per worker deciding what its stack frames name (each decision is kept). */
export const MAX_FRAME_BYTES = 1024 * MiB
/** The rules of methods whose data the host keeps for the run (coverage as files it writes and reads back for the report). */
const KEPT: ReadonlySet<Rule> = new Set(['tasks', 'errors', 'coverage'])

export interface RunLimits {
  /** Bytes of results, logs and errors all workers of a run may send. */
  kept: number
  /** Bytes of code of the distinct modules the host transforms for workers, as the host holds it (`heldBytes`). */
  moduleCode: number
  /** Bytes of the distinct module ids workers ask the host for, as the host holds them (`idBytes`). */
  moduleIds: number
  /** Bytes of coverage data all workers of a run may send (the host writes each call to a file and reads them all for the report). */
  coverage: number
  /** Bytes workers of a run may write to their stdout and stderr, printed on the host. */
  output: number
  /** Bytes of each kind of file the run's workers may have the host write, whatever the update mode. */
  written: Record<Written, number>
}

/** What the host writes into the workspace for a run's workers. */
export type Written = 'benchmark results' | 'snapshots' | 'attachments'

export const RUN_LIMITS: RunLimits = {
  kept: 1024 * MiB,
  // Each module's code is held more than once (Vite's graph, its map's sources): 2.5 times over, as
  // measured with generated TypeScript modules (their inline maps hold their source).
  moduleCode: 512 * MiB,
  moduleIds: 512 * MiB,
  coverage: 8192 * MiB,
  output: 256 * MiB,
  written: { 'benchmark results': 256 * MiB, snapshots: 1024 * MiB, attachments: 512 * MiB },
}

export class RunBudget {
  private kept = 0
  private output = 0
  private coverage = 0
  private readonly written: Record<Written, number> = { 'benchmark results': 0, snapshots: 0, attachments: 0 }
  private code = 0
  private heldIds = 0
  private readonly ids = new Set<string>()
  private readonly modules = new Set<string>()
  /** Each file's distinct coverage locations, as the provider merges them for the report. */
  locations = new LocationTally()
  /** Each url's distinct v8 ranges, as the provider merges them. */
  ranges = new RangeTally()

  constructor(private readonly limits: RunLimits = RUN_LIMITS) {}

  /** A new run (watch mode): what Vitest kept for the last one is gone. */
  newRun(): void {
    this.kept = 0
    this.output = 0
    this.coverage = 0
    this.locations = new LocationTally()
    this.ranges = new RangeTally()
  }

  /**
   * `bytes` more a worker wrote to its stdout or stderr (printed on the host's terminal, often a
   * CI log file): whether it may still be passed on. Past the bound it is dropped, once said.
   */
  passOutput(bytes: number): 'pass' | 'first-drop' | 'drop' {
    if (this.output > this.limits.output) return 'drop'
    return (this.output += bytes) > this.limits.output ? 'first-drop' : 'pass'
  }

  /** `bytes` more of `kind` the host writes for the run's workers: why it may not, past the bound. */
  write(kind: Written, bytes: number): string | undefined {
    if (this.written[kind] + bytes > this.limits.written[kind]) return `over ${this.limits.written[kind] / MiB} MiB of ${kind} written by the run's workers together`
    this.written[kind] += bytes
    return undefined
  }

  /** `bytes` more of coverage data. */
  keepCoverage(bytes: number): void {
    if ((this.coverage += bytes) > this.limits.coverage) throw new ProtocolViolation(`over ${this.limits.coverage / MiB} MiB of coverage data sent by the run's workers together (the host writes and reads it all for the report)`)
  }

  /** `bytes` more of results, logs or errors. */
  keep(bytes: number): void {
    if ((this.kept += bytes) > this.limits.kept) throw new ProtocolViolation(`over ${this.limits.kept / MiB} MiB of results, logs and errors sent by the run's workers together (Vitest keeps them for the run)`)
  }

  /** A module id asked for, in an environment. */
  askId(environment: string, id: string): void {
    const key = `${environment}\0${id}`
    if (this.ids.has(key)) return
    if ((this.heldIds += idBytes(id)) > this.limits.moduleIds) throw new ProtocolViolation(`over ${this.limits.moduleIds / MiB} MiB of distinct module ids asked for by the run's workers together (the host keeps an entry of its module graph for every id it is asked)`)
    this.ids.add(key)
  }

  /** The code of a module the host sent, by the id it was asked for (checked at the next module call). */
  sent(environment: string, id: string, bytes: number): void {
    const key = `${environment}\0${id}`
    if (!bytes || this.modules.has(key)) return
    this.modules.add(key)
    this.code += bytes
  }

  /** Before a module call: is there room for more module code? */
  checkCode(): void {
    if (this.code > this.limits.moduleCode) throw new ProtocolViolation(`over ${this.limits.moduleCode / MiB} MiB of code of distinct modules sent to the run's workers together (the host keeps every module it transforms)`)
  }
}

/** One worker's bounds, and its share of the run's. */
export class WorkerBudget {
  private kept = 0
  private code = 0
  private ids = 0
  private hostFiles = 0
  private hostFileBytes = 0
  private frameBytes = 0

  constructor(private readonly run: RunBudget) {}

  /** A call of a method of `rule`, `bytes` long on the wire, before the host sees it. */
  call(rule: Rule, bytes: number, args: unknown[]): void {
    this.keep(rule, bytes)
    if (rule !== 'module' && rule !== 'warm') return
    if (this.code > MAX_MODULE_CODE) throw new ProtocolViolation(`over ${MAX_MODULE_CODE / MiB} MiB of module code asked for (the host keeps every module it transforms)`)
    this.run.checkCode()
    const [environment, ids] = moduleIds(rule, args)
    for (const id of ids) {
      this.ids += idBytes(id)
      this.run.askId(environment, id)
    }
    if (this.ids > MAX_MODULE_IDS) throw new ProtocolViolation(`over ${MAX_MODULE_IDS / MiB} MiB of module ids asked for (the host keeps an entry of its module graph for every id it is asked)`)
  }

  /** `extra` bytes more than the call had on the wire, made by copying it (shared parts once per use). */
  copied(rule: Rule, extra: number): void {
    if (extra > 0) this.keep(rule, extra)
  }

  /** Bytes the gateway read deciding what its stack frames may name (a file and the map it names). */
  frameRead(bytes: number): void {
    if ((this.frameBytes += bytes) > MAX_FRAME_BYTES) throw new ProtocolViolation(`its stack frames made the host read over ${MAX_FRAME_BYTES / MiB} MiB of files`)
  }

  /** A call of the host's file service. */
  hostFileCall(): void {
    if (this.hostFiles >= MAX_HOST_FILE_CALLS) throw new ProtocolViolation(`over ${MAX_HOST_FILE_CALLS} host-file calls in flight`)
    if (this.hostFileBytes > MAX_HOST_FILE_BYTES) throw new ProtocolViolation(`over ${MAX_HOST_FILE_BYTES / MiB} MiB of snapshot files read`)
    this.hostFiles++
  }

  /** Its answer, sent back to the worker. */
  hostFileAnswered(result: unknown): void {
    this.hostFiles--
    if (typeof result === 'string') this.hostFileBytes += result.length
  }

  private keep(rule: Rule, bytes: number): void {
    if (KEPT.has(rule) && (this.kept += bytes) > MAX_KEPT_BYTES) throw new ProtocolViolation(`over ${MAX_KEPT_BYTES / MiB} MiB of results, logs, errors and coverage (Vitest keeps them for the run)`)
    if (rule === 'tasks' || rule === 'errors') this.run.keep(bytes)
    if (rule === 'coverage') this.run.keepCoverage(bytes)
  }

  /** The host's answer to a module call (`args` as the host was asked). */
  answered(method: string, rule: Rule, args: unknown[], result: unknown): void {
    const bytes = codeBytes(result)
    this.code += bytes
    if (method === 'resolve') return
    const [environment, [id]] = moduleIds(rule, args)
    this.run.sent(environment, id, bytes)
  }
}

/** The environment and ids of a module call (`fetch(id, importer, env)`, `fetchWarmModules(env, ids)`). */
function moduleIds(rule: Rule, args: unknown[]): [string, string[]] {
  return rule === 'warm' ? [String(args[0]), (args[1] as unknown[]).map(String)] : [String(args[2] ?? ''), [String(args[0])]]
}

/** The bytes of module code in an answer (a fetch's, or each of a warm batch's), as the host holds it. */
function codeBytes(result: unknown): number {
  if (!result || typeof result !== 'object') return 0
  const code = (result as { code?: unknown }).code
  if (typeof code === 'string') return heldBytes(code)
  return Object.values(result).reduce<number>((n, entry) => n + (entry && typeof entry === 'object' && typeof (entry as { code?: unknown }).code === 'string' ? heldBytes((entry as { code: string }).code) : 0), 0)
}

/** What the host holds for a module id besides its text: an entry of Vite's module graph (2.2 to 2.6 KB, measured). */
const ID_ENTRY_BYTES = 2560

/** The bytes the host holds for a module id it is asked (counted by its characters, 1.5 million short ids of one worker grew the host to 3.7 GiB). */
export function idBytes(id: string): number {
  return ID_ENTRY_BYTES + heldBytes(id)
}

/** The bytes a string takes on the host's heap: two a character once one is past Latin-1 (a sandbox sent text of those to count half). */
export function heldBytes(text: string): number {
  return /[^\0-\xff]/.test(text) ? 2 * text.length : text.length
}

/**
 * The host gateway of one sandboxed worker: everything the worker sends the host passes here,
 * and the sandbox is a hostile client of a narrow, typed API.
 *
 * - The host owns the conversation: each call gets the gateway's own id before Vitest sees it,
 *   and the gateway keeps its own record of what it asked and what the answer must satisfy. The
 *   worker's ids only come back to it on the answers.
 * - Allow-list (methods.ts): a method not on it, arguments of another shape, a duplicate id in
 *   flight, an answer-shaped or unknown message are protocol violations (`ProtocolViolation`):
 *   the worker is ended and its file fails naming the violation.
 * - File ids are read and screened before the host touches them (module-screen.ts); coverage
 *   (coverage.ts), error stacks (stacks.ts), attachments, benchmark and snapshot paths by the
 *   rule of their method. A worker names only its own file's tasks.
 * - What the host keeps is bounded per worker and per run (budget.ts); Vitest's worker responses
 *   pass only when the host waits for them (responses.ts).
 */
import path from 'node:path'
import { badArguments, methodSpec, REFUSED, type MethodSpec } from './methods.js'
import { fetchOptions, mapStrings, ModuleScreen, type ScreenedCall } from './module-screen.js'
import { ABSENT } from './module-ids.js'
import { carriedBytes, stageAttachments } from './attachments.js'
import { namesSandboxModule, sandboxModuleId } from './sandbox-modules.js'
import { screenCoverage } from './coverage.js'
import { screenPaths } from './stacks.js'
import { acyclic, leakRecord, screenStacks, valueBudget } from './errors.js'
import { benchmarkResult, checkErrorSignals, checkTasks, collectedResults, type TaskOwner } from './tasks.js'
import { namesRefusedMap, type FrameRead } from './source-maps.js'
import { ProtocolViolation } from './violation.js'
import { WorkerBudget } from './budget.js'
import { Responses } from './responses.js'
import type { GatewayContext, Step } from './context.js'
import type { RpcFrame } from '../../sandbox-runtime/wire.js'

/** Calls one worker may have in flight. */
export const MAX_IN_FLIGHT = 1024
/** Bytes of calls one worker may have in flight (Vitest holds a call's arguments until it answers). */
export const MAX_IN_FLIGHT_BYTES = 256 * 1024 * 1024
/** The fields of each kind of worker message: birpc's call, Vitest's worker response, the host's file service call. */
const KEYS = {
  rpc: new Set(['t', 'i', 'm', 'a', 'o']),
  response: new Set(['__vitest_worker_response__', 'type', 'error', 'usedMemory']),
  hostFile: new Set(['__sandbox_pool__', 'id', 'op', 'args']),
}
/** The longest request id a worker may choose (birpc's are 21 characters). */
const MAX_WORKER_ID = 64
/** Frame files whose decision the gateway keeps (the least recently used goes first). */
const MAX_FRAME_DECISIONS = 10_000

export { ProtocolViolation }
export type { GatewayContext, HostFileCall, Step } from './context.js'

/** A call the gateway made for the worker. */
interface Call {
  /** The worker's id, given back on the answer. */
  workerId: string | number
  method: string
  spec: MethodSpec
  screened?: ScreenedCall
  /** For resolveSnapshotPath: the worker's own test file. */
  testPath?: string
  /** The size of the worker's message, counted against MAX_IN_FLIGHT_BYTES. */
  bytes: number
}

export class Gateway {
  private nextId = 0
  private bytesInFlight = 0
  private readonly calls = new Map<string, Call>()
  /** The task ids of the worker's files, for the files they were worked out for. */
  private own = { files: '', ids: [] as string[] }
  private readonly workerIds = new Set<string | number>()
  /** The worker responses the host waits for (worker.ts tells it each request it sends). */
  readonly responses = new Responses()
  private readonly screen: ModuleScreen
  private readonly budget: WorkerBudget

  constructor(private readonly ctx: GatewayContext) {
    this.screen = new ModuleScreen(ctx.rules, ctx.envAllowed)
    this.budget = new WorkerBudget(ctx.budget)
  }

  /**
   * May a stack frame name this file? The host reads a frame's file, and the source map it names
   * when the file is not in its module graph (Vitest's stack mapping).
   */
  private readonly mayFrame = (file: string): boolean => {
    const known = this.frames.get(file)
    if (known) {
      // Most recently used last: the oldest decision goes first when the cache is full.
      this.frames.delete(file)
      this.frames.set(file, known)
      return known.answer
    }
    const read: FrameRead = { bytes: 0, files: [] }
    const answer = this.ctx.rules.mayName(file) && !namesRefusedMap(file, this.ctx.rules, read)
    this.budget.frameRead(read.bytes)
    if (this.frames.size >= MAX_FRAME_DECISIONS) this.frames.delete(this.frames.keys().next().value!)
    this.frames.set(file, { answer, files: read.files })
    return answer
  }
  /** Each frame file's decision, and the files it depends on (a write to one decides it again). */
  private readonly frames = new Map<string, { answer: boolean; files: string[] }>()

  /** Calls in flight (for tests and the bound). */
  get inFlight(): number {
    return this.calls.size
  }

  /** A message from the worker, `bytes` long on the wire. Throws ProtocolViolation. */
  fromWorker(msg: unknown, bytes = 0): Step {
    if (msg === null || typeof msg !== 'object') throw new ProtocolViolation('a message that is not an object')
    const m = msg as Record<string, unknown>
    // One kind of message, by all of its keys: a reader that looks at another key first (the
    // agent's module cache reads `t`) must read it as the same kind.
    const kind = m.__sandbox_pool__ === true ? 'hostFile' : m.__vitest_worker_response__ === true ? 'response' : 'rpc'
    if (kind === 'rpc' && m.t === 's') throw new ProtocolViolation('an answer, but the host asked the worker nothing')
    const extra = Object.keys(m).find((key) => !KEYS[kind].has(key))
    if (extra !== undefined) throw new ProtocolViolation(`a message with a field ${JSON.stringify(extra.slice(0, 80))} that its kind does not have`)
    if (kind === 'hostFile') {
      if (!Number.isSafeInteger(m.id) || typeof m.op !== 'string' || !Array.isArray(m.args)) throw new ProtocolViolation('a host-file call of the wrong shape')
      this.budget.hostFileCall()
      const op = m.op
      const written = typeof m.args[0] === 'string' ? path.resolve(m.args[0]) : undefined
      const answered = (result: unknown) => {
        this.budget.hostFileAnswered(result)
        // A file made or changed in the run (a snapshot) may now name a source map, or be one:
        // the decisions that read it are made again.
        if (op !== 'snapshot:read') {
          for (const [file, decision] of this.frames) if (decision.files.includes(written!)) this.frames.delete(file)
          this.ctx.rules.changed()
        }
      }
      return { hostFile: { id: m.id as number, op, args: m.args, answered } }
    }
    if (kind === 'response') return { toHost: this.responses.response(m, (error) => this.screenedError(String(m.type), error), this.owner.ownIds()) }
    if (m.t === 'q') return this.call(m as RpcFrame, bytes)
    throw new ProtocolViolation('a message of no known kind')
  }

  private call(frame: RpcFrame, bytes: number): Step {
    const method = frame.m
    const spec = methodSpec(method, this.ctx.major)
    if (!spec) {
      const name = typeof method === 'string' ? method.slice(0, 80) : typeof method
      const why = typeof method === 'string' && Object.hasOwn(REFUSED, method) ? ` (${REFUSED[method]})` : ''
      throw new ProtocolViolation(`a call of ${JSON.stringify(name)}, which is not on the host gateway's list for Vitest ${this.ctx.major}${why}`)
    }
    const wrong = badArguments(method!, spec, frame.a)
    if (wrong) throw new ProtocolViolation(wrong)
    // An attachment's file goes to disk (bounded there), not into what Vitest keeps.
    this.budget.call(spec.rule, method === 'onTaskArtifactRecord' ? bytes - carriedBytes((frame.a as unknown[])[1]) : bytes, frame.a as unknown[])
    const args = [...(frame.a as unknown[])]
    const event = frame.i === undefined
    if (!event) {
      const id = frame.i
      if ((typeof id !== 'string' && typeof id !== 'number') || String(id).length > MAX_WORKER_ID || id === '' || id === 0) throw new ProtocolViolation('a call id that is not a short string or number')
      if (this.workerIds.has(id)) throw new ProtocolViolation(`a second call with id ${JSON.stringify(String(id))} while the first is in flight`)
      if (this.calls.size >= MAX_IN_FLIGHT) throw new ProtocolViolation(`over ${MAX_IN_FLIGHT} calls in flight`)
      if (this.bytesInFlight + bytes > MAX_IN_FLIGHT_BYTES) throw new ProtocolViolation(`over ${MAX_IN_FLIGHT_BYTES / 1024 / 1024} MiB of calls in flight`)
    }
    const call: Call = { workerId: frame.i as string | number, method: method!, spec, bytes }
    const copied = valueBudget()
    const early = this.apply(call, args, copied)
    // A part the wire holds once can be copied at each use: the host keeps the copy.
    this.budget.copied(spec.rule, copied.bytes - bytes)
    if (early) {
      if (event) return {}
      return { toWorker: { t: 's', i: frame.i, ...early } }
    }
    if (event) return { toHost: { t: 'q', m: method, a: call.screened?.args ?? args } }
    return { toHost: this.ask(call) }
  }

  /** Give the call a host id and record it. */
  private ask(call: Call): RpcFrame {
    const id = `g${++this.nextId}`
    this.calls.set(id, call)
    this.workerIds.add(call.workerId)
    this.bytesInFlight += call.bytes
    return { t: 'q', i: id, m: call.method, a: call.screened!.args }
  }

  /**
   * The method's rule, applied to the arguments (in place: they are the gateway's copy). Returns
   * an answer when the gateway answers the call itself, without the host.
   */
  private apply(call: Call, args: unknown[], copied: ReturnType<typeof valueBudget>): { r?: unknown; e?: unknown } | undefined {
    const ctx = this.ctx
    call.screened = { method: call.method, asked: args, args }
    switch (call.spec.rule) {
      case 'module': {
        if (call.method !== 'ensureModuleGraphEntry' && !ctx.environments().includes(args[2] as string)) throw new ProtocolViolation(`${call.method}: environment ${JSON.stringify(String(args[2]).slice(0, 80))} is not one of the host's`)
        // A module a test wrote in its sandbox, sent again with its text: loaded from that text.
        const own = call.method === 'fetch' ? sandboxModuleId((args[3] as { sandboxModule?: unknown } | undefined)?.sandboxModule, ctx.rules, ctx.projectRoot) : undefined
        if (call.method === 'fetch') args.splice(3, 2, ...fetchOptions(args[3], args[4]))
        if (namesSandboxModule(args[0])) return { e: refusal(`Cannot find module '${String(args[0]).slice(0, 200)}'`) }
        if (own) args[0] = own.id
        call.screened = this.screen.call(call.method, args)
        if (own) Object.assign(call.screened, { map: [[own.query, ''], ...(call.screened.map ?? [])], results: own.results })
        return call.screened.answer ? { e: call.screened.answer.error } : undefined
      }
      case 'warm':
        if (!ctx.environments().includes(args[0] as string)) throw new ProtocolViolation(`${call.method}: environment ${JSON.stringify(String(args[0]).slice(0, 80))} is not one of the host's`)
        call.screened = this.screen.warmCall(args)
        return undefined
      case 'tasks':
        checkTasks(call.method, args, this.owner, copied)
        if (call.method === 'onTaskArtifactRecord') {
          // Vitest 5 parses a trace entry's `stack` (reading its file and the map it names) where it has no `location`.
          screenStacks(args[1], this.mayFrame, false)
          // Vitest copies each file into its attachments folder: the sandbox's bytes, never a host file.
          const refused = stageAttachments(args[1], ctx.projectRoot, (bytes) => {
            const over = ctx.budget.write('attachments', bytes)
            if (over) throw new ProtocolViolation(over)
          })
          if (refused) return { e: refusal(`vitest-pool-sandbox: ${refused}`) }
        }
        if (call.method === 'onTaskUpdate') this.responses.updated(args[0] as unknown[], this.owner.ownIds())
        if (call.method === 'onTaskUpdate' || call.method === 'onCollected') {
          screenStacks(call.method === 'onTaskUpdate' ? args[0] : collectedResults(args[0] as unknown[]), this.mayFrame)
          screenPaths(args, ctx.rules.mayName)
        }
        return undefined
      case 'errors':
        if (call.method === 'onAsyncLeaks') args[0] = screenPaths((args[0] as unknown[]).map((leak) => leakRecord(leak, this.mayFrame, ctx.projectName)), ctx.rules.mayName)
        else args[0] = this.screenedError(call.method, args[0], copied)
        if (args[1] !== undefined) args[1] = screenPaths(args[1], ctx.rules.mayName)
        return undefined
      case 'coverage': {
        const meta = args[0] as Record<string, unknown>
        // Vitest keys the data by the worker's Vite environment (`ssr`, `client`) or, failing
        // that, its test environment's name: one of those, never a name the worker makes up.
        const environment = [...ctx.environments(), ctx.testEnvironment()].find((name) => name !== undefined && name === meta.environment)
        if (environment === undefined) throw new ProtocolViolation(`onAfterSuiteRun: environment ${JSON.stringify(String(meta.environment).slice(0, 80))} is neither a Vite environment of the host nor the test environment`)
        const coverage = screenCoverage(meta.coverage, ctx.coverageProvider(), ctx.rules.isGiven, ctx.budget.locations, ctx.budget.ranges)
        // The host keeps each call's data (Vitest 4 in a file it writes, Vitest 5 in the file
        // written here) and reads them all for the report: the rebuilt data (parts shared on the
        // wire written at each use), counted before it is written.
        const text = JSON.stringify(coverage ?? null)
        this.budget.copied(call.spec.rule, text.length - call.bytes)
        // Every other field the host's provider reads, from the host.
        args[0] = {
          coverage: ctx.major >= 5 && coverage ? ctx.coverageFile(text) : coverage,
          testFiles: ctx.runFiles().map((file) => path.relative(ctx.projectRoot, file)).sort(),
          environment,
          projectName: ctx.projectName,
        }
        return undefined
      }
      case 'snapshot-path': {
        const testPath = path.resolve(ctx.rules.root, args[0] as string)
        if (!ctx.runFiles().includes(testPath)) return { e: refusal(`vitest-pool-sandbox: resolveSnapshotPath of ${String(args[0]).slice(0, 200)} refused: not this worker's test file`) }
        call.testPath = testPath
        args[0] = testPath // Vitest gets the path that was checked, not one it would read its own way
        return undefined
      }
      case 'bail': {
        // What Vitest's worker does: cancel when a failed test brings the run's count to --bail.
        const bail = ctx.bail()
        if (args[0] !== 'test-failure' || !bail || ctx.failedTests() + 1 < bail) throw new ProtocolViolation(`onCancel: the run is cancelled only for --bail (set to ${bail || 'off'}), after a failure that reaches it`)
        return undefined
      }
      case 'host-file': {
        // Vitest gets the path that was checked, not one it would read again its own way.
        const checked = ctx.benchmarkPath(call.method, args[0])
        if ('refused' in checked) return { e: refusal(`vitest-pool-sandbox: ${checked.refused}`) }
        args[0] = checked.path
        if (call.method === 'writeBenchmarkResult') {
          // What Vitest's worker writes, and nothing else: statistics as numbers.
          const data = benchmarkResult(args[1])
          if (!data) return { e: refusal('vitest-pool-sandbox: writeBenchmarkResult: the data is not a benchmark result (latency, throughput, period, totalTime as numbers)') }
          // Written whatever the update mode: bounded for the run, as the JSON Vitest writes (indented).
          const over = ctx.budget.write('benchmark results', JSON.stringify(data, null, 2).length + 1)
          if (over) throw new ProtocolViolation(over)
          args[1] = data
        }
        return undefined
      }
      case 'plain':
        return undefined
    }
  }

  /** An error for the host to catch and print: copied without cycles, its signals the worker's own, its frames and paths screened. */
  private screenedError(method: string, error: unknown, copied = valueBudget()): unknown {
    const copy = acyclic(error, copied)
    checkErrorSignals(method, copy, this.owner)
    screenStacks(copy, this.mayFrame)
    return screenPaths(copy, this.ctx.rules.mayName)
  }

  /** The worker's files and their task ids (worked out again only when its files change). */
  private readonly owner: TaskOwner = {
    ownIds: () => {
      const files = this.ctx.runFiles()
      const key = files.join('\0')
      if (this.own.files !== key) this.own = { files: key, ids: files.map((f) => this.ctx.fileTaskId(f)) }
      return this.own.ids
    },
    ownFile: (file) => (typeof file === 'string' ? this.ctx.runFiles().find((own) => own === path.resolve(this.ctx.rules.root, file)) : undefined),
    isTask: (id) => this.ctx.isTask(id),
    fileName: (filepath) => path.relative(this.ctx.projectRoot, path.resolve(this.ctx.rules.root, filepath)).split(path.sep).join('/'),
    projectName: () => this.ctx.projectName,
    attachmentsDir: () => this.ctx.attachmentsDir,
  }

  /**
   * A message Vitest sends the worker. Answers to the gateway's calls go back under the worker's
   * id, after the call's rule; answers to nothing the gateway asked are dropped.
   */
  fromHost(frame: RpcFrame): Step {
    if (frame.t !== 's') return { toWorker: frame }
    const id = typeof frame.i === 'string' ? frame.i : undefined
    const call = id === undefined ? undefined : this.calls.get(id)
    if (!call) return {}
    this.calls.delete(id!)
    this.workerIds.delete(call.workerId)
    this.bytesInFlight -= call.bytes
    const answer = (a: { result?: unknown; error?: unknown }): Step => ({ toWorker: a.error !== undefined ? { t: 's', i: call.workerId, e: a.error } : { t: 's', i: call.workerId, r: a.result } })
    // The host's own exception for a call that is not a module's: its text may quote what the
    // host read (a parse error quotes the file), so the worker gets one fixed message.
    const failed = frame.e === undefined ? undefined : refusal(`vitest-pool-sandbox: the host could not carry out ${call.method}`)
    switch (call.spec.rule) {
      case 'module':
      case 'warm': {
        const screened = this.screen.answer(call.screened!, frame.r, frame.e)
        if ('retry' in screened) return { toHost: this.ask({ ...call, screened: screened.retry }) }
        // Counted as sent: Vitest 5's cached modules are read in by the screen (their `tmp` file).
        this.budget.answered(call.method, call.spec.rule, call.screened!.args, screened.result)
        return answer(screened)
      }
      case 'snapshot-path':
        if (frame.e === undefined && typeof frame.r === 'string') this.ctx.snapshotPath(call.testPath!, path.resolve(frame.r))
        return answer({ result: frame.r, error: failed })
      case 'tasks':
        // Vitest answers an artifact with itself, trace locations filled in from the screened
        // stacks: a path moved under ABSENT reads as written, like one where nothing is.
        if (call.method === 'onTaskArtifactRecord') return answer({ result: mapStrings(frame.r, (t) => t.split(ABSENT).join('')), error: failed })
        return answer({ result: frame.r, error: failed })
      default:
        return answer({ result: frame.r, error: failed })
    }
  }
}

/** An error the gateway answers with: no host stack (it would name the host's install paths). */
export function refusal(message: string): Error {
  const error = new Error(message)
  error.stack = `Error: ${message}`
  return error
}


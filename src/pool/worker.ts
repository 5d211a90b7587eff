/**
 * SandboxPoolWorker: Vitest's PoolWorker for one test file, backed by a worker process inside a
 * sandbox (a channel on that sandbox's agent link). It relays Vitest's messages (encoded as
 * codec.ts decides) and answers on the host what must happen on the host:
 *
 * - snapshot reads and writes (`-u`, inline and file snapshots), limited to files the sandbox
 *   was given, so a test can neither read nor write anything else on the host;
 * - module code: a `fetch` answer carrying the source of a host file outside the workspace (say
 *   `import('/etc/shadow?raw')`) is replaced by an error, since the host's Vite would otherwise
 *   read any file for the sandbox.
 */
import { EventEmitter } from 'node:events'
import fs from 'node:fs'
import fsp from 'node:fs/promises'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import type { PoolOptions, PoolWorker, WorkerRequest } from 'vitest/node'
import type { Fleet, Lease } from './fleet.js'
import { chooseCodec, loadCodec, type Codec, type CodecName } from '../sandbox-runtime/codec.js'
import { createMessageSplitter, lengthPrefixed } from '../sandbox-runtime/wire.js'
import { STAGING } from './sandbox-exec.js'
import { debug } from '../debug.js'

const log = debug('worker')
const SNAPSHOT_ENVIRONMENT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../sandbox-runtime/snapshot-environment.js')
const SIGKILL_AFTER_MS = 500
/** Reruns of one file after its sandbox was lost (before it reported any result). */
const MAX_RERUNS = 2
/** Worker-to-host RPC calls that report results: after one of them a file is not rerun. */
const RESULT_METHODS = new Set(['onCollected', 'onTaskUpdate', 'onAfterSuiteRun', 'snapshotSaved', 'onTaskArtifactRecord', 'onTestBenchmark'])

/**
 * V8 serialization between equal Node majors, devalue otherwise. `VITEST_SANDBOX_CODEC`
 * (v8 | devalue) forces one, to debug a codec problem.
 */
function codecFor(sandboxNode: string): CodecName {
  const forced = process.env.VITEST_SANDBOX_CODEC
  if (forced === 'v8' || forced === 'devalue') return forced
  if (forced) throw new Error(`VITEST_SANDBOX_CODEC must be 'v8' or 'devalue' (got '${forced}')`)
  return chooseCodec(process.versions.node, sandboxNode)
}

/** Vitest 5 stores a cached module as its code, this marker, and its source map (one line of JSON). */
const CACHED_SOURCE_MAP = '\n//# vitestSourceMap='

/**
 * `{ cached, tmp, ...rest }` (or a warm entry `{ tmp, ...rest }`) as `{ code, sourceMap, ...rest }`:
 * exactly what Vitest 5's worker makes of it after reading `tmp` itself.
 */
function inlineCached(result: Record<string, any>): Record<string, any> {
  if (typeof result.tmp !== 'string') return result
  const { cached: _cached, tmp, ...rest } = result
  log('inlined cached module %s', rest.file ?? tmp)
  const content = fs.readFileSync(tmp, 'utf8')
  const at = content.lastIndexOf(CACHED_SOURCE_MAP)
  if (at === -1) return { ...rest, code: content, sourceMap: undefined }
  return { ...rest, code: content.slice(0, at), sourceMap: content.slice(at + CACHED_SOURCE_MAP.length) || undefined }
}

/** Variables Vitest sets for its workers (it also sets some of them in its own process). */
const VITEST_KEYS = new Set(['TEST', 'VITEST', 'NODE_ENV', 'VITEST_MODE', 'FORCE_TTY'])

/**
 * Vitest's own variables and the project's `test.env` reach workers; the host's environment
 * reaches them only for the names listed in `env`.
 */
export function workerEnv(env: Partial<NodeJS.ProcessEnv>, forward: string[], configured: Set<string>): Record<string, string> {
  const out: Record<string, string> = {}
  for (const [key, value] of Object.entries(env)) {
    if (value === undefined) continue
    // A key the host process does not have (or has with another value) was added by Vitest for
    // this worker; an identical one is the host's environment leaking through.
    if (forward.includes(key) || configured.has(key) || VITEST_KEYS.has(key) || process.env[key] !== value) out[key] = value
  }
  return out
}

type RpcFrame = { t?: string; i?: string | number; m?: string; r?: any; e?: unknown }

export class SandboxPoolWorker implements PoolWorker {
  readonly name = 'sandbox'
  private readonly events = new EventEmitter()
  private lease?: Lease
  private channel?: number
  private exited?: Promise<void>
  private markExited?: () => void
  private stopping = false
  private inTask = false
  private currentFile?: string
  private sawStarted = false
  private startupStderr = ''
  private attempt = 0
  private replaying = false
  private replayStarted?: () => void
  private resultsSeen = false
  private codec?: Codec
  private startRequest?: WorkerRequest
  private runRequest?: WorkerRequest
  private readonly fetchRequests = new Map<string | number, string>()
  private readonly stdout: NodeJS.WritableStream
  private readonly stderr: NodeJS.WritableStream

  constructor(private readonly fleet: Fleet, private readonly options: PoolOptions, private readonly forwardEnv: string[]) {
    this.events.setMaxListeners(0)
    this.stdout = options.project.vitest.logger.outputStream
    this.stderr = options.project.vitest.logger.errorStream
  }

  on(event: string, callback: (...args: any[]) => void): void {
    this.events.on(event, callback)
  }

  off(event: string, callback: (...args: any[]) => void): void {
    this.events.off(event, callback)
  }

  deserialize(data: unknown): unknown {
    return data
  }

  async start(): Promise<void> {
    await this.launch()
  }

  /** Lease a slot and fork a worker on it; used for the start and for a rerun after a loss. */
  private async launch(): Promise<void> {
    this.lease = await this.fleet.lease()
    const { host } = this.lease
    this.exited = new Promise((r) => (this.markExited = r))
    this.sawStarted = false
    this.startupStderr = ''
    const root = this.fleet.workspace.root
    const attempt = this.attempt
    const codec = (this.codec = await loadCodec(codecFor(host.node)))
    // Events of a worker that was replaced after a loss are dropped.
    const current = () => attempt === this.attempt
    const { channel, started } = host.link.fork(
      {
        entry: `${STAGING}/worker.js`,
        args: [path.join(this.options.distPath, 'worker.js'), codec.name],
        execArgv: this.options.execArgv,
        env: workerEnv(this.options.env, this.forwardEnv, new Set([...Object.keys(this.options.project.vitest.config.env ?? {}), ...Object.keys(this.options.project.config.env ?? {})])),
        // Where forks would run it: the host's cwd (the same path exists in the sandbox).
        cwd: this.fleet.workspace.relative(process.cwd()) !== undefined ? process.cwd() : root,
      },
      {
        spawned: () => {},
        failed: () => current() && this.finished(),
        data: createMessageSplitter((payload) => current() && this.onWorkerMessage(codec.decode(payload))),
        stdout: (b) => current() && this.stdout.write(b),
        stderr: (b) => {
          if (!current()) return
          if (!this.sawStarted) this.startupStderr = (this.startupStderr + b.toString()).slice(-2000)
          this.stderr.write(b)
        },
        exit: (code, signal) => {
          if (!current()) return
          this.finished()
          if (!this.sawStarted && !this.replaying) {
            // Vitest only listens for exits once start() has returned, and 4.1 then waits 60 s
            // for 'started': answer the start with the reason instead.
            const why = `the test worker in sandbox ${host.sandbox.id} (provider ${this.fleet.providerName}) exited ${signal ? `with ${signal}` : `with code ${code}`} before it started${this.startupStderr ? `:\n${this.startupStderr.trim()}` : ''}`
            this.events.emit('message', { __vitest_worker_response__: true, type: 'started', error: new Error(why) })
          }
          this.events.emit('exit', code, signal)
        },
        lost: (reason) => current() && this.onLost(host.sandbox.id, reason),
      },
    )
    this.channel = channel
    try {
      await started
    } catch (err) {
      throw new Error(`could not start a test worker in sandbox ${host.sandbox.id} (provider ${this.fleet.providerName}): ${(err as Error).message}`)
    }
  }

  /**
   * The sandbox (or the link to it) died under this worker. A file that has not reported any
   * result yet is rerun on another sandbox (at most MAX_RERUNS times): the recorded `start` and
   * `run` requests are replayed to a new worker there. Otherwise the file fails with an error
   * that names the provider, the sandbox and the file.
   */
  private onLost(sandboxId: string, reason: string): void {
    this.finished()
    const file = this.currentFile ? path.relative(this.fleet.workspace.root, this.currentFile) : undefined
    if (this.inTask && !this.stopping && !this.resultsSeen && this.attempt < MAX_RERUNS && this.startRequest && this.runRequest) {
      this.attempt++
      this.fleet.logger.log(`sandbox ${sandboxId} (provider ${this.fleet.providerName}) was lost before ${file ?? 'the file'} reported results (${reason}); running it again on another sandbox (rerun ${this.attempt} of ${MAX_RERUNS})`)
      void this.rerun().catch((err) => this.events.emit('error', new Error(`could not rerun ${file} after sandbox ${sandboxId} (provider ${this.fleet.providerName}) was lost: ${(err as Error).message}`)))
      return
    }
    const error = new Error(`sandbox ${sandboxId} (provider ${this.fleet.providerName}) was lost${file ? ` while running ${file}` : ''}: ${reason}`)
    if (this.inTask && !this.stopping) this.events.emit('error', error)
    else log('%s', error.message)
  }

  private async rerun(): Promise<void> {
    this.replaying = true
    await this.launch()
    // The host already has its 'started': the new worker's is swallowed in onWorkerMessage, and
    // the run request waits for it, as Vitest itself waits before sending 'run'.
    const started = new Promise<void>((resolve) => (this.replayStarted = resolve))
    this.transmit(this.startRequest!)
    await started
    this.transmit(this.runRequest!)
  }

  /**
   * The worker process is gone: free its slot now. Vitest does not call stop() for a worker that
   * exited unexpectedly, so waiting for stop() would leak the slot.
   */
  private finished(): void {
    this.markExited?.()
    this.lease?.release()
  }

  private onWorkerMessage(message: any): void {
    if (message?.__sandbox_pool__) return void this.answerHostCall(message)
    if (message?.__vitest_worker_response__ && message.type === 'started') {
      this.sawStarted = true
      if (this.replaying) {
        this.replaying = false
        this.replayStarted?.()
        return
      }
    }
    if (message?.t === 'q' && RESULT_METHODS.has(message.m)) this.resultsSeen = true
    if (message?.t === 'q' && message.m === 'onTaskArtifactRecord') {
      const refused = this.refusedAttachment(message.a?.[1])
      if (refused) {
        // Vitest would copy that host file into the attachments folder, inside the workspace,
        // where a later run's sandbox could read it.
        if (message.i !== undefined) this.transmit({ t: 's', i: message.i, e: new Error(`vitest-pool-sandbox: attachment path ${refused} is outside the workspace given to the sandbox; attach the content as \`body\` instead`) })
        return
      }
    }
    if (message?.t === 'q' && (message.m === 'fetch' || message.m === 'fetchWarmModules') && message.i !== undefined) this.fetchRequests.set(message.i, message.m)
    if (message?.__vitest_worker_response__ && message.type === 'testfileFinished') this.inTask = false
    this.events.emit('message', message)
  }

  send(message: WorkerRequest | RpcFrame): void {
    const m = message as any
    if (m?.__vitest_worker_request__) {
      if (m.type === 'start') {
        if (!m.context.config.snapshotEnvironment) m.context.config.snapshotEnvironment = SNAPSHOT_ENVIRONMENT
        this.startRequest = m
      }
      if (m.type === 'run' || m.type === 'collect') {
        this.inTask = true
        this.resultsSeen = false
        this.runRequest = m
        this.currentFile = m.context.files?.[0]?.filepath
      }
    } else if (m?.t === 's' && this.fetchRequests.has(m.i)) {
      const method = this.fetchRequests.get(m.i)
      this.fetchRequests.delete(m.i)
      message = method === 'fetchWarmModules' ? this.prepareWarmModules(m) : this.prepareModule(m)
    }
    this.transmit(message)
  }

  private transmit(message: unknown): void {
    if (this.channel === undefined || !this.lease) return
    this.lease.host.link.toWorker(this.channel, lengthPrefixed(this.codec!.encode(message)))
  }

  /**
   * A `fetch` answer, made fit for a sandbox: Vitest 5's module cache answers with the path of a
   * host file (`{ cached, tmp }`) that the worker would read from its own disk, so its content is
   * inlined as code; and code of a file the sandbox was not given never leaves the host.
   */
  private prepareModule(frame: RpcFrame): RpcFrame {
    if (frame.e !== undefined || !frame.r || typeof frame.r !== 'object') return frame
    const result = inlineCached(frame.r)
    if (this.refusesCode(result)) {
      return { t: 's', i: frame.i, e: new Error(`vitest-pool-sandbox: ${result.file} is outside the workspace given to the sandbox (or ignored by .gitignore / workspace.exclude), so its content stays on the host`) }
    }
    return { ...frame, r: result }
  }

  /** Vitest 5's batch of already transformed modules: inlined like `fetch`, screened entry by entry. */
  private prepareWarmModules(frame: RpcFrame): RpcFrame {
    if (frame.e !== undefined || !frame.r || typeof frame.r !== 'object') return frame
    const out: Record<string, unknown> = {}
    for (const [id, entry] of Object.entries(frame.r as Record<string, any>)) {
      const result = entry && typeof entry === 'object' ? inlineCached(entry) : entry
      // A refused entry is left out: the worker then fetches it, and gets the error from prepareModule.
      if (this.refusesCode(result)) continue
      out[id] = result
    }
    return { ...frame, r: out }
  }

  /** The first attachment path of an artifact that points at a host file the sandbox was not given. */
  private refusedAttachment(artifact: any): string | undefined {
    const attachments = artifact?.type === 'internal:annotation' ? [artifact.annotation?.attachment] : Array.isArray(artifact?.attachments) ? artifact.attachments : []
    for (const a of attachments) {
      const p = a?.path
      if (typeof p !== 'string' || /^https?:\/\//.test(p)) continue
      if (!this.isGiven(path.resolve(this.options.project.config.root, p))) return p
    }
    return undefined
  }

  /** A host file the sandbox was given (inside the workspace, not ignored or excluded). */
  private isGiven(file: string): boolean {
    const rel = this.fleet.workspace.relative(file)
    return rel !== undefined && this.fleet.workspace.includes(rel)
  }

  /** A module answer carrying the code of a host file the sandbox may not see. */
  private refusesCode(result: any): boolean {
    const file = result?.file
    if (typeof file !== 'string' || result.code === undefined || !path.isAbsolute(file)) return false
    // Vitest's own runtime and this package's snapshot environment are served as code too, and
    // dependencies are in the template anyway.
    if (file === SNAPSHOT_ENVIRONMENT || file.startsWith(path.dirname(this.options.distPath) + path.sep)) return false
    const rel = this.fleet.workspace.relative(file)
    return !(rel !== undefined && (this.fleet.workspace.includes(rel) || rel.split('/').includes('node_modules')))
  }

  private async answerHostCall(msg: { id: number; op: string; args: unknown[] }): Promise<void> {
    let reply: Record<string, unknown>
    try {
      const file = String(msg.args[0])
      if (!path.isAbsolute(file) || !this.isGiven(file)) {
        throw new Error(`${msg.op} of ${file}: snapshots must be inside the workspace given to the sandbox (${this.fleet.workspace.root}) and not ignored`)
      }
      let result: unknown = null
      switch (msg.op) {
        case 'snapshot:read':
          result = await fsp.readFile(file, 'utf8').catch((e) => (e.code === 'ENOENT' ? null : Promise.reject(e)))
          break
        case 'snapshot:write':
          await fsp.mkdir(path.dirname(file), { recursive: true })
          await fsp.writeFile(file, String(msg.args[1]), 'utf8')
          break
        case 'snapshot:remove':
          await fsp.rm(file, { force: true })
          break
        case 'snapshot:mkdir':
          await fsp.mkdir(file, { recursive: true })
          break
        default:
          throw new Error(`unknown host call ${msg.op}`)
      }
      reply = { __sandbox_pool__: true, id: msg.id, result }
    } catch (err) {
      reply = { __sandbox_pool__: true, id: msg.id, error: (err as Error).message }
    }
    this.transmit(reply)
  }

  async stop(): Promise<void> {
    this.stopping = true
    const lease = this.lease
    if (!lease || this.channel === undefined) return
    if (lease.host.link.alive) {
      lease.host.link.kill(this.channel, 'SIGTERM')
      const timer = setTimeout(() => lease.host.link.kill(this.channel!, 'SIGKILL'), SIGKILL_AFTER_MS)
      await this.exited
      clearTimeout(timer)
    }
    lease.release()
  }
}

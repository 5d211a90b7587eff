/**
 * SandboxPoolWorker: Vitest's PoolWorker for one test file, backed by a worker process inside a
 * sandbox (a channel on that sandbox's agent link). It relays Vitest's messages (encoded as
 * codec.ts decides) through the host gateway (gateway/), which every message of the worker
 * passes, and answers on the host what must happen there: snapshot files (host-files.ts).
 *
 * The sandbox worker starts when Vitest sends the file to run, not when Vitest starts the
 * PoolWorker: Vitest bounds a start at 90 s, and the first start of a run may have to wait for
 * the template to be built. So `start()` returns at once, Vitest's `start` request is answered
 * here and replayed to the real worker together with the `run` request. A file whose worker
 * cannot start is reported as a failed file with the reason.
 */
import { EventEmitter } from 'node:events'
import path from 'node:path'
import type { PoolOptions, PoolWorker, WorkerRequest } from 'vitest/node'
import { failedFileCalls, fileTaskId } from './failed-file.js'
import type { Fleet, SandboxHost } from './fleet.js'
import type { Lease } from './slots.js'
import { HostFileRefusal, HostFiles, type UpdateMode } from './host-files.js'
import { Gateway, ProtocolViolation, type HostFileCall } from './gateway/gateway.js'
import { RUN_LIMITS } from './gateway/budget.js'
import { screenLoads, type LoadingEnvironment } from './gateway/load-screen.js'
import { projectRules, servesWorkers } from './gateway/host-screens.js'
import { screenConfigEnv } from './gateway/config-env.js'
import { writeCoverageFile } from './gateway/coverage.js'
import { nameAttachmentsAsForks } from './gateway/attachments.js'
import { printable } from './gateway/printable.js'
import { UNREAD_LIMIT } from './agent-link.js'
import { loadCodec, type Codec } from '../sandbox-runtime/codec.js'
import { CACHED_METHODS } from '../sandbox-runtime/module-cache.js'
import { codecFor, workerEnv } from './worker-env.js'
import { createMessageSplitter, lengthPrefixed, MAX_FRAME, type RpcFrame } from '../sandbox-runtime/wire.js'
import { RUNTIME_DIR, SNAPSHOT_ENVIRONMENT } from './runtime-files.js'
import type { ProviderSandbox } from '../providers/types.js'
import { DEFAULT_INSPECTOR_PORT } from './inspector.js'
import { debug } from '../debug.js'

const log = debug('worker')
const SIGKILL_AFTER_MS = 500
/** How long a forked worker may take to answer its start (Vitest's own bound, minus the wait for a sandbox). */
const WORKER_START_TIMEOUT_MS = 90_000
/** Reruns of one file after its sandbox was lost (before it reported any result). */
const MAX_RERUNS = 2
/** Worker-to-host RPC calls that report results: after one of them a file is not rerun. */
const RESULT_METHODS = new Set(['onCollected', 'onTaskUpdate', 'onAfterSuiteRun', 'snapshotSaved', 'onTaskArtifactRecord', 'onTestBenchmark'])

/**
 * Where the worker is in its life. `idle`: Vitest started the PoolWorker, no sandbox worker yet;
 * `launching`: waiting for a sandbox slot and the worker's own start; `running`: relaying;
 * `failed`: the file was reported failed without a worker; `stopped`.
 */
type State = 'idle' | 'launching' | 'running' | 'failed' | 'stopped'

/** The sandbox went away under a worker that had not reported any result yet: worth another sandbox. */
class SandboxLost extends Error {}

export class SandboxPoolWorker implements PoolWorker {
  readonly name = 'sandbox'
  private readonly events = new EventEmitter()
  private state: State = 'idle'
  private lease?: Lease<SandboxHost>
  /** Withdraws a request for a slot still waiting in the fleet's queue when Vitest stops the worker. */
  private readonly unwanted = new AbortController()
  private channel?: number
  private exited?: Promise<void>
  private markExited?: () => void
  private workerStarted?: { resolve: () => void; reject: (e: Error) => void }
  private startupStderr = ''
  private attempt = 0
  private inTask = false
  private resultsSeen = false
  private codec?: Codec
  private startRequest?: WorkerRequest
  /** The serialized config the worker runs with (its snapshot update mode decides host writes). */
  private config?: { snapshotOptions?: { updateSnapshot?: string }; snapshotEnvironment?: string }
  private runRequest?: WorkerRequest
  private readonly snapFiles = new Set<string>()
  private readonly hostCalls = new Map<string | number, () => void>()
  private gateway?: Gateway
  private hostFiles?: HostFiles
  /** The port the worker's inspector listens on in its sandbox and the host relays (when asked for). */
  private inspectPort?: number
  private detachInspector?: () => void
  /** Its worker opens Node's inspector: its sandbox serves no later file (`Fleet.retire`). */
  private inspectable = false
  private readonly stdout: NodeJS.WritableStream
  private readonly stderr: NodeJS.WritableStream

  constructor(
    private readonly fleet: Fleet,
    private readonly options: PoolOptions,
    private readonly settings: { env: string[]; allowWrite: string[] },
  ) {
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

  /** Nothing to wait for: the sandbox worker starts with the file (see the header). */
  async start(): Promise<void> {
    this.fleet.init().catch(() => {}) // started early; its error is reported with the file
  }

  /** The test files of the current run request (one, unless Vitest batches files with isolate: false). */
  private get runFiles(): string[] {
    const files = (this.runRequest as any)?.context?.files
    return Array.isArray(files) ? files.map((f: { filepath: string }) => path.resolve(f.filepath)) : []
  }

  private get relativeFiles(): string | undefined {
    const files = this.runFiles
    return files.length ? files.map((f) => path.relative(this.options.project.config.root, f)).join(', ') : undefined
  }

  private emitSoon(message: unknown): void {
    // Never synchronously inside send(): Vitest 4.1's init reads state it declares after subscribing.
    setImmediate(() => this.events.emit('message', message))
  }

  send(message: WorkerRequest | RpcFrame): void {
    const m = message as any
    if (m?.__vitest_worker_request__) return this.request(m)
    if (m?.t === 's') {
      const done = this.hostCalls.get(m.i)
      if (done) {
        this.hostCalls.delete(m.i)
        return done()
      }
    }
    if (!this.gateway) return
    const step = this.gateway.fromHost(m)
    if (step.toHost) this.emitSoon(step.toHost)
    if (step.toWorker) this.transmit(step.toWorker)
  }

  private request(m: any): void {
    // The worker's config comes with 'start' (4.1+) or with 'run' (4.0).
    const config = m.context?.config
    if (config) {
      config.snapshotEnvironment ??= SNAPSHOT_ENVIRONMENT
      this.config = config
    }
    switch (m.type) {
      case 'start':
        this.startRequest = m
        // Answered here; the real worker gets it with the file (a sandbox may not exist yet).
        return this.emitSoon({ __vitest_worker_response__: true, type: 'started' })
      case 'run':
      case 'collect':
        this.inTask = true
        this.resultsSeen = false
        this.runRequest = m
        if (this.state === 'running') return this.transmitRequest(m)
        if (this.state === 'idle') void this.launchAndRun()
        return
      case 'stop':
        if (this.state === 'running') return this.transmitRequest(m)
        this.state = 'stopped'
        this.unwanted.abort()
        return this.emitSoon({ __vitest_worker_response__: true, type: 'stopped' })
      default:
        return this.transmit(m)
    }
  }

  /** Start the sandbox worker, replay Vitest's start request to it, then the run request. */
  private async launchAndRun(): Promise<void> {
    this.state = 'launching'
    try {
      await this.launch()
      if (this.stopped()) return
      this.transmitRequest(this.startRequest!)
      await this.waitForWorkerStart()
      if (this.stopped()) return
      this.state = 'running'
      this.transmitRequest(this.runRequest!)
    } catch (err) {
      if (this.stopped()) return
      if (!(err instanceof SandboxLost && this.rerun(`${err.message}, while starting ${this.relativeFiles ?? 'the file'}`))) await this.failFile(err as Error)
    }
  }

  /** Vitest stopped this worker while it was being launched (a cancelled run): drop what was started. */
  private stopped(): boolean {
    if (this.state !== 'stopped') return false
    if (this.channel !== undefined && this.lease?.host.link.alive) this.lease.host.link.kill(this.channel, 'SIGKILL')
    this.finished()
    return true
  }

  private waitForWorkerStart(): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`the test worker did not start within ${WORKER_START_TIMEOUT_MS / 1000}s`)), WORKER_START_TIMEOUT_MS)
      this.workerStarted = {
        resolve: () => (clearTimeout(timer), resolve()),
        reject: (e) => (clearTimeout(timer), reject(e)),
      }
    })
  }

  /** Lease a slot and fork a worker on it; used for the first run and for a rerun after a loss. */
  private async launch(): Promise<void> {
    this.lease = await this.fleet.lease(this.unwanted.signal)
    const { host } = this.lease
    this.exited = new Promise((r) => (this.markExited = r))
    this.startupStderr = ''
    const workspace = this.fleet.workspace
    const project = this.options.project
    const runtimeDirs = [path.dirname(this.options.distPath), RUNTIME_DIR]
    const rules = projectRules(workspace, runtimeDirs, { root: project.config.root, publicDir: project.vite?.config?.publicDir })
    // The Vite environments a worker loads modules from; Vitest's own serve the host.
    const environments = Object.keys(project.vite?.environments ?? {}).filter(servesWorkers)
    // Every project's, and the root project's: coverage of untested files goes through each.
    for (const other of new Set([...project.vitest.projects, project.vitest.getRootProject()])) {
      const own = other === project ? rules : projectRules(workspace, runtimeDirs, { root: other.config.root, publicDir: other.vite?.config?.publicDir })
      for (const [name, environment] of Object.entries(other.vite?.environments ?? {})) if (servesWorkers(name)) screenLoads(environment as unknown as LoadingEnvironment, () => own)
    }
    // Attachments the gateway stages from a sandbox's bytes get forks' names in Vitest's folder.
    nameAttachmentsAsForks((project.vitest as unknown as { _testRun?: unknown })._testRun)
    this.gateway = new Gateway({
      major: Number(project.vitest.version.split('.')[0]),
      rules,
      environments: () => environments,
      runFiles: () => this.runFiles,
      fileTaskId: (file) => fileTaskId(project, file),
      isTask: (id) => typeof id === 'string' && project.vitest.state.idMap.has(id),
      testEnvironment: () => (this.runRequest as any)?.context?.environment?.name,
      projectName: project.name,
      projectRoot: project.config.root,
      attachmentsDir: (project.config as { attachmentsDir?: string }).attachmentsDir,
      coverageProvider: () => (project.vitest.config.coverage?.enabled ? project.vitest.config.coverage.provider : undefined),
      coverageFile: (json) => writeCoverageFile((project.vitest as unknown as { coverageProvider?: { coverageFilesDirectory?: string } }).coverageProvider?.coverageFilesDirectory, json),
      snapshotPath: (testPath, snapPath) => void (this.runFiles.includes(testPath) && this.snapFiles.add(snapPath)),
      benchmarkPath: (method, file) => this.hostFiles?.benchmarkPath(method, file) ?? { refused: 'no host files yet' },
      envAllowed: this.envAllowed(),
      budget: this.fleet.budget,
      bail: () => project.config.bail ?? 0,
      failedTests: () => project.vitest.state.getCountOfFailedTests(),
    })
    this.hostFiles = new HostFiles({
      workspace,
      mode: () => (this.config?.snapshotOptions?.updateSnapshot ?? 'none') as UpdateMode,
      testFiles: () => this.runFiles,
      snapFiles: () => this.snapFiles,
      protectedFiles: this.protectedFiles(),
      allowWrite: this.settings.allowWrite,
      projectRoot: project.config.root,
      written: (bytes) => this.fleet.budget.write('snapshots', bytes),
    })
    const inspector = project.vitest.config.inspector
    if (inspector?.enabled) this.inspectPort = await this.fleet.inspector.listen(inspector.port ?? DEFAULT_INSPECTOR_PORT)
    const attempt = this.attempt
    const codec = (this.codec = await loadCodec(codecFor(host.node)))
    // Events of a worker that was replaced after a loss are dropped.
    const current = () => attempt === this.attempt
    const env = workerEnv(this.options.env, this.settings.env, this.configuredEnv())
    this.inspectable = this.inspectPort !== undefined || opensInspector(this.options.execArgv, env)
    const { channel, started } = host.link.fork(
      {
        entry: `${this.fleet.runtimeDir}/worker.js`,
        args: [path.join(this.options.distPath, 'worker.js'), codec.name],
        codec: codec.name,
        cacheScope: JSON.stringify([project.config.root, project.name]),
        execArgv: this.options.execArgv,
        env,
        // Where forks would run it: the host's cwd (the same path exists in the sandbox).
        cwd: workspace.relative(process.cwd()) !== undefined ? process.cwd() : workspace.root,
      },
      {
        spawned: () => {},
        failed: () => current() && this.finished(),
        data: this.reader(current, codec),
        stdout: (b) => current() && this.output(this.stdout, b),
        stderr: (b) => {
          if (!current()) return
          if (this.state === 'launching') this.startupStderr = (this.startupStderr + b.toString()).slice(-2000)
          this.output(this.stderr, b)
        },
        exit: (code, signal) => {
          if (!current()) return
          this.finished()
          const limit = signal === 'SIGKILL' ? host.sandbox.limitHit?.() : undefined
          if (this.state === 'launching') {
            const why = `the test worker in sandbox ${host.sandbox.id} (provider ${this.fleet.providerName}) exited ${signal ? `with ${signal}` : `with code ${code}`} before it started${limit ? `: ${limit}` : this.startupStderr ? `:\n${printable(this.startupStderr.trim())}` : ''}`
            return this.workerStarted?.reject(new Error(why))
          }
          if (limit && this.inTask && this.state === 'running') return this.endedWith(new Error(limit))
          this.events.emit('exit', code, signal)
        },
        lost: (reason) => current() && this.onLost(host.sandbox, reason),
      },
    )
    this.channel = channel
    if (this.inspectPort !== undefined) this.detachInspector = this.fleet.inspector.attach(host.link, this.inspectPort)
    try {
      await started
    } catch (err) {
      const message = `could not start a test worker in sandbox ${host.sandbox.id} (provider ${this.fleet.providerName}): ${(err as Error).message}`
      throw host.link.alive ? new Error(message) : new SandboxLost(message)
    }
  }

  /** A worker's own output, on the host's terminal, within the run's bound (a log file can fill a disk). */
  private output(stream: NodeJS.WritableStream, bytes: Buffer): void {
    const decision = this.fleet.budget.passOutput(bytes.length)
    if (decision === 'pass') stream.write(bytes)
    else if (decision === 'first-drop') this.fleet.logger.error(`sandbox: the run's test workers wrote over ${RUN_LIMITS.output / 1024 ** 2} MiB to their stdout and stderr; the rest of it is not printed (the host's terminal and logs are kept from filling)`)
  }

  /** Host files no sandbox may write: the config files and globalSetup files Vitest loads on the host. */
  private protectedFiles(): Set<string> {
    const project = this.options.project
    const files = [project.vite?.config?.configFile, project.vitest.vite?.config?.configFile, ...(project.config.globalSetup ?? [])]
    return new Set(files.filter((f): f is string => typeof f === 'string').map((f) => path.resolve(project.config.root, f)))
  }

  /** Report the files of the run as failed with `error` (see failed-file.ts), then the run as finished. */
  private async failFile(error: Error): Promise<void> {
    this.state = 'failed'
    this.finished()
    if (!this.inTask) return
    let n = 0
    for (const filepath of this.runFiles) {
      for (const { method, args } of failedFileCalls(filepath, this.options.project, error)) {
        await new Promise<void>((resolve) => {
          const i = `vitest-sandbox-fail-${++n}`
          this.hostCalls.set(i, resolve)
          this.emitSoon({ t: 'q', i, m: method, a: args })
        })
      }
    }
    this.inTask = false
    this.emitSoon({ __vitest_worker_response__: true, type: 'testfileFinished' })
  }

  /**
   * The sandbox (or the link to it) died under this worker. A file that has not reported any
   * result yet is rerun on another sandbox (at most MAX_RERUNS times). Otherwise the file fails
   * with an error that names the provider, the sandbox and the file.
   */
  private onLost(sandbox: ProviderSandbox, reason: string): void {
    this.finished()
    const sandboxId = sandbox.id
    const file = this.relativeFiles
    // A sandbox that went over a limit does it again anywhere: the file fails with the limit.
    const limit = sandbox.limitHit?.()
    if (limit) reason = limit
    if (this.state === 'launching') return this.workerStarted?.reject(new SandboxLost(`sandbox ${sandboxId} (provider ${this.fleet.providerName}) was lost: ${reason}`))
    if (this.inTask && this.state === 'running' && !this.resultsSeen && !limit && this.rerun(`sandbox ${sandboxId} (provider ${this.fleet.providerName}) was lost before ${file ?? 'the file'} reported results (${reason})`)) return
    const error = new Error(`sandbox ${sandboxId} (provider ${this.fleet.providerName}) was lost${file ? ` while running ${file}` : ''}: ${reason}`)
    if (this.inTask && this.state === 'running') this.events.emit('error', error)
    else log('%s', error.message)
  }

  /** Run the file again on another sandbox after a loss, if reruns are left; says whether it does. */
  private rerun(why: string): boolean {
    if (this.attempt >= MAX_RERUNS) return false
    this.attempt++
    this.fleet.logger.log(`${why}; running it again on another sandbox (rerun ${this.attempt} of ${MAX_RERUNS})`)
    void this.launchAndRun()
    return true
  }

  /**
   * The worker process is gone: free its slot now. Vitest does not call stop() for a worker that
   * exited unexpectedly, so waiting for stop() would leak the slot.
   */
  private finished(): void {
    this.detachInspector?.()
    this.markExited?.()
    if (this.inspectable && this.lease) this.fleet.retire(this.lease.host)
    this.lease?.release()
  }

  /** The worker's bytes as messages: over MAX_FRAME, or not decodable, is a protocol violation. */
  private reader(current: () => boolean, codec: Codec): (chunk: Buffer) => void {
    const split = createMessageSplitter((payload) => {
      let message: unknown
      try {
        message = codec.decode(payload)
      } catch (err) {
        throw new ProtocolViolation(`a message that does not decode (${(err as Error).message})`)
      }
      this.onWorkerMessage(message, payload.length)
    }, MAX_FRAME)
    return (chunk) => {
      if (!current()) return
      try {
        split(chunk)
      } catch (err) {
        this.violation((err as Error).message)
      }
    }
  }

  /** A request as the sandbox gets it: its config with only Vitest's own variables, test.env and the names in `env` (README, "env"), and the inspector on the sandbox's loopback. */
  private forSandbox(request: WorkerRequest): WorkerRequest {
    const config = (request as any).context?.config
    if (!config) return request
    const env = screenConfigEnv(config.env, { forward: this.settings.env, configured: this.configuredEnv(), workspace: this.fleet.workspace, envDir: this.options.project.vite?.config?.envDir })
    // The inspector listens on the sandbox's loopback only (the host relays it), at the host's port.
    const inspector = this.inspectPort === undefined ? config.inspector : { ...config.inspector, port: this.inspectPort, host: '127.0.0.1' }
    return { ...request, context: { ...(request as any).context, config: { ...config, env, inspector } } } as WorkerRequest
  }

  /**
   * The `import.meta.env` names a worker may see: those `config.env` crosses with (below), and the
   * config's own `define`s of `import.meta.env.*`.
   */
  private envAllowed(): (name: string) => boolean {
    const config = this.options.project.vite?.config
    const env = screenConfigEnv(config?.env, { forward: this.settings.env, configured: this.configuredEnv(), workspace: this.fleet.workspace, envDir: config?.envDir })
    const defined = new Set(Object.keys(config?.define ?? {}).filter((k) => k.startsWith('import.meta.env.')).map((k) => k.slice('import.meta.env.'.length)))
    return (name) => name === 'SSR' || Object.hasOwn(env, name) || defined.has(name)
  }

  /** Variables the project's config sets for workers (`test.env`). */
  private configuredEnv(): Set<string> {
    return new Set([...Object.keys(this.options.project.vitest.config.env ?? {}), ...Object.keys(this.options.project.config.env ?? {})])
  }

  /**
   * The worker broke the host gateway's protocol: it is ended at once (its later messages are
   * dropped), and its file fails naming the violation; the run goes on.
   */
  private violation(what: string): void {
    if (this.state === 'failed' || this.state === 'stopped') return
    const lease = this.lease
    const channel = this.channel
    this.attempt = MAX_RERUNS + 1 // events of the ended worker are no longer current
    if (lease && channel !== undefined && lease.host.link.alive) lease.host.link.kill(channel, 'SIGKILL')
    const error = new Error(`vitest-pool-sandbox: the test worker broke the host gateway's protocol and was ended: ${printable(what)}`)
    log('%s (%s)', error.message, this.relativeFiles)
    if (this.state === 'launching') this.workerStarted?.reject(error)
    else this.endedWith(error)
  }

  /** The worker is gone for `error`: its file fails with it, and Vitest's stop is answered for it. */
  private endedWith(error: Error): void {
    void this.failFile(error)
    // Vitest asked it to stop: the ended worker will not say it did.
    if (this.gateway?.responses.awaits('stopped')) this.emitSoon({ __vitest_worker_response__: true, type: 'stopped' })
  }

  private onWorkerMessage(message: any, bytes: number): void {
    const step = this.gateway!.fromWorker(message, bytes)
    if (step.hostFile) return void this.answerHostCall(step.hostFile)
    if (step.toWorker) return this.transmit(step.toWorker)
    const out = step.toHost as any
    if (out?.__vitest_worker_response__ && out.type === 'started') {
      // Vitest already has its 'started' (see the header).
      if (out.error) this.workerStarted?.reject(out.error instanceof Error ? out.error : new Error(printable(String(out.error?.message ?? out.error))))
      else this.workerStarted?.resolve()
      return
    }
    if (out?.t === 'q') {
      if (RESULT_METHODS.has(out.m)) this.resultsSeen = true
      if (CACHED_METHODS.has(out.m) && this.lease) this.lease.host.usage.moduleRequests++
    }
    if (out?.__vitest_worker_response__ && out.type === 'testfileFinished') this.inTask = false
    if (out) this.events.emit('message', out)
  }

  /** A request of Vitest's to the worker, its env screened; the gateway then waits for its response. */
  private transmitRequest(m: any): void {
    this.gateway?.responses.requested(m.type)
    this.transmit(this.forSandbox(m))
  }

  private transmit(message: unknown): void {
    // An ended worker gets nothing more: an answer in flight could still reach its sandbox's module cache.
    if (this.channel === undefined || !this.lease || this.attempt > MAX_RERUNS) return
    const link = this.lease.host.link
    link.toWorker(this.channel, lengthPrefixed(this.codec!.encode(message)))
    // What it leaves unread the host holds: a worker that stops reading its answers is ended.
    const unread = link.unread(this.channel)
    if (unread > UNREAD_LIMIT) this.violation(`it left ${Math.round(unread / 1024 ** 2)} MiB of the host's answers unread (at most ${UNREAD_LIMIT / 1024 ** 2} MiB)`)
  }

  private async answerHostCall(msg: HostFileCall): Promise<void> {
    let reply: Record<string, unknown>
    let result: unknown
    try {
      result = (await this.hostFiles!.call(msg.op, msg.args)) ?? null
      reply = { __sandbox_pool__: true, id: msg.id, result }
    } catch (err) {
      if (err instanceof HostFileRefusal) log('%s', err.message)
      reply = { __sandbox_pool__: true, id: msg.id, error: `vitest-pool-sandbox: ${(err as Error).message}` }
    }
    msg.answered(result)
    this.transmit(reply)
  }

  async stop(): Promise<void> {
    const state = this.state
    this.state = 'stopped'
    this.unwanted.abort()
    this.workerStarted?.reject(new Error('the run was stopped'))
    const lease = this.lease
    if (!lease || this.channel === undefined || (state !== 'running' && state !== 'launching')) return this.finished()
    if (lease.host.link.alive) {
      lease.host.link.kill(this.channel, 'SIGTERM')
      const timer = setTimeout(() => lease.host.link.kill(this.channel!, 'SIGKILL'), SIGKILL_AFTER_MS)
      await this.exited
      clearTimeout(timer)
    }
    lease.release()
  }
}

/** Does a worker started so open Node's inspector (Vitest's `--inspect`, a flag of `test.execArgv`, or `NODE_OPTIONS`)? */
function opensInspector(execArgv: string[] = [], env: Record<string, string | undefined> = {}): boolean {
  const flag = /^--inspect(-brk|-wait)?(=|$)/
  return [...execArgv, ...(env.NODE_OPTIONS ?? '').split(/\s+/)].some((arg) => flag.test(arg))
}

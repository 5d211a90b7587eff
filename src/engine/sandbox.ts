/**
 * One local sandbox: a bubblewrap instance whose root is an overlayfs (its own upper directory over
 * the template layers), running `sandbox-init` as its first process. The engine talks to the init
 * over its stdin/stdout; processes, files and signals all go through it, so every path is resolved
 * inside the sandbox's own view of the filesystem. How it is isolated is `policy.ts`.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { EventEmitter } from 'node:events'
import fsp from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import type { Duplex, Readable } from 'node:stream'
import { HostChannel } from './channel.js'
import { createFrameDecoder, encodeFrame, type Header } from './frames.js'
import { IN_USE_FILE, SANDBOX_HOME, startTicks, type HostLayerUpper } from './layers.js'
import type { SandboxGroup } from './cgroups.js'
import { formatSize } from './limits.js'
import { DEFAULT_PATH, sandboxCommand, sandboxPath, writableDir, type SandboxPolicy } from './policy.js'
import { SandboxProcess, type ExitInfo, type ProcessLink, type ProcessSpec } from './process.js'
import { buildSeccompFilter } from './seccomp.js'
import { debug } from '../debug.js'

const log = debug('engine')
/** With the protocol server's request log: each process start, whoever asked for it. */
const requestLog = debug('requests')

/** What the engine made for a sandbox (its cgroups, its filesystem), taken back when it ends. */
export interface SandboxResources {
  /** Its cgroups, where the host enforces them. */
  group?: SandboxGroup
  /** Makes its writable folder (its own filesystem where disk is limited). */
  prepare(): Promise<void>
  release(): Promise<void>
  releaseSync(): void
}

/** How long the init may leave its pipe full before its sandbox is ended. */
const STALLED_INIT_MS = 60_000

export interface SandboxOptions extends Omit<SandboxPolicy, 'channelSocket' | 'cgroupProcs'> {
  id: string
  /** Give it a direct channel (`channel.ts`) to this process. */
  channel: boolean
  /** Layer ids of the snapshot the sandbox started from (newest first), for snapshots of it. */
  layers: string[]
  metadata: Record<string, string>
  envs: Record<string, string>
  template: string
  timeoutSec: number
  resources: SandboxResources
}

export class SandboxError extends Error {
  constructor(message: string, readonly code: string) {
    super(message)
  }
}

export class LocalSandbox extends EventEmitter<{ exit: [reason: string] }> {
  readonly id: string
  readonly metadata: Record<string, string>
  readonly envs: Record<string, string>
  readonly template: string
  readonly layers: string[]
  readonly network: 'none' | 'host'
  readonly createdAt = new Date()
  expiresAt: Date
  readonly processes = new Map<string, SandboxProcess>()
  /** Why the sandbox ended, once it has. */
  ended?: string
  /** Its direct channel to this process, where the engine gives one. */
  channel?: HostChannel
  private child?: ChildProcess
  /** The init's link (its fd 4): requests out, frames in. */
  private initLink?: Duplex
  /** The sandbox's pid 1 on the host, as bubblewrap tells it. */
  private pid1?: HostProcess
  private readonly requests = new Map<string, { resolve: (h: Header) => void; reject: (e: Error) => void; onData?: (b: Buffer) => void; onStart?: (h: Header) => void }>()
  private nextReq = 0
  private nextProc = 0
  private expiry?: NodeJS.Timeout
  private linkWaiters: Array<() => void> = []
  private killing?: Promise<void>
  /** Output its processes keep for late readers, together: 64 MiB (each process 8 MiB). */
  private readonly outputKept = { bytes: 0, limit: 64 * 1024 * 1024 }
  /** The kernel's count of processes it killed for the memory limit, when last asked. */
  private oomKillsSeen = 0
  /** The memory limit's reason, when it is what ended the sandbox. */
  private endedOutOfMemory?: string

  constructor(private readonly opts: SandboxOptions) {
    super()
    this.id = opts.id
    this.metadata = opts.metadata
    this.envs = opts.envs
    this.template = opts.template
    this.layers = opts.layers
    this.network = opts.network
    this.expiresAt = new Date(Date.now() + opts.timeoutSec * 1000)
  }

  get upperDir(): string {
    return path.join(writableDir(this.opts.stateDir), 'upper')
  }

  /** The sandbox's own layer over each host folder (what a snapshot keeps of its changes). */
  get hostUppers(): HostLayerUpper[] {
    return this.opts.hostLayers.map((h, i) => ({ target: h.target, upper: path.join(writableDir(this.opts.stateDir), `host-${i}`, 'upper') }))
  }

  /**
   * Whether the kernel killed processes in the sandbox for its memory limit since the last call:
   * the reason a test of it failed, for its report. The count is the sandbox's, not a process's:
   * a test that runs its sandbox out of memory while another file's worker dies says so for both.
   */
  outOfMemory(): string | undefined {
    if (!this.running) return this.endedOutOfMemory
    const kills = this.opts.resources.group?.oomKills() ?? 0
    if (kills <= this.oomKillsSeen) return undefined
    this.oomKillsSeen = kills
    return `the sandbox ran out of memory while this ran (limit ${formatSize(this.opts.limits.memory)}; raise \`local({ limits: { memory } })\`)`
  }

  get running(): boolean {
    return this.ended === undefined
  }

  /** Host pid of the sandbox (the bubblewrap process); everything in it descends from it. */
  get hostPid(): number | undefined {
    return this.child?.pid
  }

  /** Start bubblewrap and wait for the init's `ready` frame. */
  async start(): Promise<void> {
    const { stateDir, host } = this.opts
    await fsp.mkdir(stateDir, { recursive: true, mode: 0o755 })
    await this.opts.resources.prepare()
    const dirs = ['rw', 'rw/upper', 'rw/work', 'merged', ...this.opts.hostLayers.flatMap((_, i) => [`host-${i}`, `rw/host-${i}`, `rw/host-${i}/upper`, `rw/host-${i}/work`, `host-${i}/lower`])]
    for (const d of dirs) await fsp.mkdir(path.join(stateDir, d), { recursive: true, mode: 0o755 })
    await fsp.writeFile(path.join(stateDir, IN_USE_FILE), JSON.stringify(this.layers))
    // As root, the dropped sandbox uid must own its layer to mount and write it.
    const root = process.getuid?.() === 0
    if (root) for (const d of ['', ...dirs]) await fsp.chown(path.join(stateDir, d), host.uid, host.gid)
    if (this.opts.channel) this.channel = await HostChannel.open(stateDir, root ? host : undefined)

    const [file, ...args] = sandboxCommand({ ...this.opts, channelSocket: this.channel?.hostPath, cgroupProcs: this.opts.resources.group?.procsFiles })
    log('sandbox %s: %s', this.id, [file, ...args].join(' '))
    // The init's link is fd 4, never bubblewrap's stdio: bubblewrap's own init, the sandbox's pid 1,
    // keeps its stdio open, and a test that wrote into its memory read and forged the link through it.
    const child = spawn(file, args, { stdio: ['ignore', 'ignore', 'pipe', 'pipe', 'pipe', 'pipe'], env: { PATH: DEFAULT_PATH } })
    this.child = child
    const seccomp = child.stdio[3] as NodeJS.WritableStream
    seccomp.on('error', () => {})
    seccomp.end(buildSeccompFilter())
    const link = (this.initLink = child.stdio[4] as Duplex)
    readPid1((child.stdio as unknown as Readable[])[5]).then((pid1) => (this.pid1 = pid1))

    // bubblewrap's errors while it sets the sandbox up. Once the sandbox runs, its pid 1 (open to
    // the sandbox's processes) still holds this pipe: what comes later is only logged, quoted.
    let stderr = ''
    let started = false
    child.stderr!.on('data', (d: Buffer) => {
      if (!started) stderr = (stderr + d.toString()).slice(-4000)
      log('sandbox %s stderr: %j', this.id, d.toString().slice(0, 4000))
    })
    link.on('error', () => {})
    link.on('drain', () => {
      const waiters = this.linkWaiters
      this.linkWaiters = []
      for (const w of waiters) w()
    })

    const ready = new Promise<void>((resolve, reject) => {
      const onFrame = (h: Header, body: Buffer) => {
        if (h.op === 'ready') {
          started = true
          return resolve()
        }
        this.onFrame(h, body)
      }
      link.on('data', createFrameDecoder(onFrame, (err) => this.terminate(`protocol error from sandbox init: ${err.message}`)))
      child.once('exit', (code, signal) => {
        const reason = this.ended ?? (this.endedOutOfMemory = this.outOfMemory()) ?? `sandbox process exited (${signal ?? `code ${code}`})${stderr ? `: ${stderr.trim()}` : ''}`
        reject(new SandboxError(`sandbox ${this.id} failed to start: ${reason}`, 'sandbox_start_failed'))
        this.finish(reason)
      })
      child.once('error', (err) => reject(new SandboxError(`sandbox ${this.id} failed to start: ${err.message}`, 'sandbox_start_failed')))
    })
    await ready
    this.setTimeout(this.opts.timeoutSec)
  }

  private onFrame(h: Header, body: Buffer): void {
    switch (h.op) {
      case 'started': {
        const p = this.processes.get(String(h.id))
        if (p) {
          p.pid = Number(h.pid)
          p.emit('started')
        }
        return
      }
      case 'spawn_error': {
        const p = this.processes.get(String(h.id))
        if (p) {
          p.spawnError = `${h.code}: ${h.message}`
          p.markExited({ exitCode: 127, signal: null, error: String(h.message) })
        }
        return
      }
      case 'stdout':
      case 'stderr':
        return void this.processes.get(String(h.id))?.pushOutput(h.op, Buffer.from(body))
      case 'exit':
        return void this.processes.get(String(h.id))?.markExited(exitInfo(h.code, h.signal))
      case 'read_start':
        return void this.requests.get(String(h.req))?.onStart?.(h)
      case 'data':
        return void this.requests.get(String(h.req))?.onData?.(Buffer.from(body))
      case 'reply': {
        const r = this.requests.get(String(h.req))
        if (!r) return
        this.requests.delete(String(h.req))
        if (h.ok) r.resolve(h)
        else r.reject(new SandboxError(String(h.message), String(h.code)))
        return
      }
      default:
        log('sandbox %s: unexpected frame %o', this.id, h)
    }
  }

  private assertRunning(): void {
    if (this.ended) throw new SandboxError(`sandbox ${this.id} is not running (${this.ended})`, 'sandbox_not_running')
  }

  /**
   * Write a frame to the init once its pipe has room (waiting before writing, so that frames
   * waiting their turn are held by their callers, each one at a time, not queued here), and wait
   * while it is full.
   */
  private async post(header: Header, body?: Uint8Array): Promise<void> {
    this.assertRunning()
    while (this.initLink!.writableNeedDrain) {
      await this.drained()
      this.assertRunning()
    }
    if (!this.initLink!.write(encodeFrame(header, body))) await this.drained()
  }

  /** Until the init's pipe has room; an init that takes nothing for a minute (stopped from inside) ends its sandbox. */
  private drained(): Promise<void> {
    return new Promise<void>((resolve) => {
      const stalled = setTimeout(() => void this.kill('its init took no request for 60 s (stopped from inside?)'), STALLED_INIT_MS)
      stalled.unref()
      this.linkWaiters.push(() => {
        clearTimeout(stalled)
        resolve()
      })
    })
  }

  private request(header: Header, hooks: { onData?: (b: Buffer) => void; onStart?: (h: Header) => void } = {}): { req: string; done: Promise<Header> } {
    const req = String(++this.nextReq)
    const done = new Promise<Header>((resolve, reject) => this.requests.set(req, { resolve, reject, ...hooks }))
    this.post({ ...header, req }).catch((err) => this.requests.get(req)?.reject(err))
    return { req, done }
  }

  private readonly link: ProcessLink = {
    stdin: (id, data) => this.post({ op: 'stdin', id }, data),
    closeStdin: (id) => void this.post({ op: 'close_stdin', id }).catch(() => {}),
    signal: (id, signal, group) => void this.post({ op: 'signal', id, signal, group }).catch(() => {}),
    setPaused: (id, paused) => void this.post({ op: paused ? 'pause' : 'resume', id }).catch(() => {}),
  }

  /**
   * Start a process. Resolves once it is running (or rejects with the reason it could not start).
   * Its environment is the sandbox's defaults, then the sandbox-level `envs`, then `spec.env`.
   */
  async spawn(spec: ProcessSpec & { id?: string }): Promise<SandboxProcess> {
    this.assertRunning()
    const id = spec.id ?? `proc_${++this.nextProc}`
    requestLog('start %s %s: %s %s', this.id, this.metadata.role ?? '-', spec.cmd, JSON.stringify(spec.args))
    if (this.processes.get(id)?.running) throw new SandboxError(`a process with id ${id} is already running`, 'process_exists')
    const env = { PATH: sandboxPath(this.opts.host), HOME: SANDBOX_HOME, USER: 'sandbox', LANG: 'C.UTF-8', TMPDIR: '/tmp', ...this.envs, ...spec.env }
    const proc = new SandboxProcess(id, { ...spec, env }, this.link, this.outputKept)
    this.processes.set(id, proc)
    this.pruneExited()
    const started = new Promise<void>((resolve, reject) => {
      proc.once('started', () => resolve())
      proc.once('exit', () => (proc.pid ? resolve() : reject(new SandboxError(`cannot start ${spec.cmd}: ${proc.spawnError ?? proc.exit?.error}`, 'spawn_failed'))))
    })
    started.catch(() => {}) // observed below, unless the request never reaches the init
    try {
      await this.post({ op: 'spawn', id, cmd: spec.cmd, args: spec.args, cwd: spec.cwd, env, stdin: spec.stdin })
    } catch (err) {
      this.processes.delete(id) // never started (a request over the init's limit): no record of it
      throw err
    }
    await started
    return proc
  }

  /** Keep the records of at most 256 exited processes (for late reconnects and status calls). */
  private pruneExited(): void {
    const exited = [...this.processes.values()].filter((p) => !p.running)
    for (const p of exited.slice(0, Math.max(0, exited.length - 256))) {
      p.forget()
      this.processes.delete(p.id)
    }
  }

  /** Write a file inside the sandbox from a stream or buffer; parent directories are created. */
  async writeFile(file: string, data: Readable | Uint8Array, mode?: number): Promise<Header> {
    const { req, done } = this.request({ op: 'write_open', path: file, mode })
    done.catch(() => {}) // observed below; an early error stops the upload
    let failed = false
    done.then(() => {}, () => (failed = true))
    const chunks: AsyncIterable<Uint8Array> | Uint8Array[] = data instanceof Uint8Array ? [data] : data
    for await (const chunk of chunks) {
      if (failed) break
      for (let off = 0; off < chunk.length; off += 1024 * 1024) {
        await this.post({ op: 'write_chunk', req }, chunk.subarray(off, off + 1024 * 1024))
      }
    }
    if (!failed) await this.post({ op: 'write_close', req })
    return (await done).entry as Header
  }

  /**
   * Read a file inside the sandbox; `onStart` gets its size before the first chunk. The reader sets
   * the pace: when `onData` returns a promise (it holds what it could not pass on), the sandbox
   * reads no further until it settles; an aborted `signal` ends the read.
   */
  readFile(file: string, onStart: (info: { size: number }) => void, onData: (chunk: Buffer) => Promise<void> | unknown, signal?: AbortSignal): Promise<void> {
    let waiting = false
    const { req, done } = this.request(
      { op: 'read', path: file },
      {
        onStart: (h) => onStart({ size: Number(h.size) }),
        onData: (chunk) => {
          const slow = onData(chunk)
          if (!(slow instanceof Promise) || waiting) return
          waiting = true
          void this.post({ op: 'read_pause', req }).catch(() => {})
          void slow.then(() => {
            waiting = false
            return this.post({ op: 'read_resume', req })
          }).catch(() => {})
        },
      },
    )
    const cancel = () => void this.post({ op: 'read_cancel', req }).catch(() => {})
    signal?.addEventListener('abort', cancel, { once: true })
    return done.then(() => {}).finally(() => signal?.removeEventListener('abort', cancel))
  }

  /** stat / list / mkdir / remove, resolved inside the sandbox. */
  async fs(kind: 'stat' | 'list' | 'mkdir' | 'remove', file: string): Promise<Header> {
    return this.request({ op: 'fs', kind, path: file }).done
  }

  setTimeout(seconds: number): void {
    clearTimeout(this.expiry)
    this.expiresAt = new Date(Date.now() + seconds * 1000)
    this.expiry = setTimeout(() => void this.kill(`timed out after ${seconds}s`), seconds * 1000)
    this.expiry.unref()
  }

  /** Synchronous kill for process exit handlers. */
  killSync(): void {
    this.terminate('engine exited')
    this.opts.resources.releaseSync()
  }

  private terminate(reason: string): void {
    if (!this.ended) this.ended = reason
    this.killPid1()
    try {
      this.child?.kill('SIGKILL')
    } catch {
      // Already gone.
    }
  }

  /**
   * The sandbox's pid 1 is killed on the host by its pid: its processes can write into it, and one
   * that cleared its parent-death signal outlived bubblewrap's kill (or bubblewrap's own exit)
   * with its whole sandbox. Killing a pid namespace's init kills everything in it.
   */
  private killPid1(): void {
    if (!this.pid1?.alive()) return
    try {
      process.kill(this.pid1.pid, 'SIGKILL')
    } catch {
      // Already gone.
    }
  }

  private finish(reason: string): void {
    this.ended ??= reason
    this.killPid1()
    clearTimeout(this.expiry)
    this.channel?.close()
    for (const p of this.processes.values()) p.markExited({ exitCode: -9, signal: 'SIGKILL', error: `sandbox ended: ${this.ended}` })
    for (const r of this.requests.values()) r.reject(new SandboxError(`sandbox ${this.id} ended: ${this.ended}`, 'sandbox_not_running'))
    this.requests.clear()
    for (const w of this.linkWaiters) w()
    this.linkWaiters = []
    this.emit('exit', this.ended)
  }

  /** Kill everything in the sandbox and delete its writable layer (once, however often called). */
  kill(reason = 'killed'): Promise<void> {
    this.killing ??= this.doKill(reason)
    return this.killing
  }

  private async doKill(reason: string): Promise<void> {
    const child = this.child
    if (child && child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((r) => child.once('exit', r))
      this.terminate(reason)
      await exited
    } else {
      this.ended ??= reason
    }
    await this.opts.resources.release()
    await removeTree(this.opts.stateDir)
  }
}

/** Exit codes as the runtime protocol reports them: the code, or minus the signal number. */
function exitInfo(code: unknown, signal: unknown): ExitInfo {
  if (typeof signal === 'string' && signal) {
    return { exitCode: -((os.constants.signals as Record<string, number>)[signal] ?? 0), signal, error: signal === 'SIGKILL' ? 'killed' : `signal ${signal}` }
  }
  return { exitCode: Number(code), signal: null }
}

/** rm -rf that also copes with directories a sandbox made unreadable (chmod 000) for its owner. */
async function removeTree(dir: string): Promise<void> {
  try {
    await fsp.rm(dir, { recursive: true, force: true })
  } catch {
    await new Promise((r) => spawn('chmod', ['-R', 'u+rwx', dir], { stdio: 'ignore' }).once('exit', r))
    await fsp.rm(dir, { recursive: true, force: true })
  }
}

/** A host process known by its pid and its start time (a pid alone may be another process's by now). */
interface HostProcess {
  pid: number
  alive(): boolean
}

/** bubblewrap's `--info-fd` report: `{ "child-pid": N }`, the host pid of the sandbox's pid 1. */
async function readPid1(info: Readable): Promise<HostProcess | undefined> {
  let text = ''
  for await (const chunk of info) {
    text += chunk
    if (text.length > 4096) break
  }
  const pid = Number(/"child-pid"\s*:\s*(\d+)/.exec(text)?.[1])
  const started = Number.isInteger(pid) ? startTicks(pid) : undefined
  if (started === undefined) return undefined
  return { pid, alive: () => startTicks(pid) === started }
}

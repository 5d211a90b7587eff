/**
 * Client for the process runtime protocol (Watasu runtime v1 plus its control plane), used by the
 * pool for the local engine and for Watasu. HTTP goes through undici, process streams through ws.
 *
 *   const rt = new RuntimeClient({ url, token })
 *   const sbx = await rt.createSandbox({ timeout: 600 })
 *   const proc = await sbx.start({ cmd: 'node', args: ['-v'] })
 *   proc.on('stdout', (b) => process.stdout.write(b))
 *   const { exitCode } = await proc.exited
 */
import { randomBytes } from 'node:crypto'
import { EventEmitter } from 'node:events'
import { Agent, type Dispatcher } from 'undici'
import WebSocket from 'ws'
import { debug } from '../debug.js'
import { type Body, boundedText, Http, HttpError as RuntimeError, isGone, reopen } from '../net/http.js'
import { type ClientFrame, MAX_WS_FRAME, type ServerFrame } from './frames.js'

const log = debug('client')

export { HttpError as RuntimeError } from '../net/http.js'

export interface ClientOptions {
  /**
   * The control plane: an origin such as `http://127.0.0.1:8787` (routes under `/v1`), or a base
   * that already ends in `/v1`, as Watasu's SDK takes `WATASU_API_URL`.
   */
  url: string
  /** Bearer token of the control plane. */
  token: string
  /** Data-plane URL to use instead of the one each sandbox's session names (`WATASU_SANDBOX_URL`). */
  sandboxUrl?: string
  /** Milliseconds a request answered 429/5xx, or not at all, is tried again for. @default 90_000 */
  retryForMs?: number
  dispatcher?: Dispatcher
}

export interface SandboxInfo {
  id: string
  template_id?: string
  state?: string
  metadata: Record<string, string>
  started_at?: string
  end_at?: string
  allow_internet_access?: boolean
}

export interface SnapshotInfo {
  id: string
  name: string | null
  size_bytes: number
  created_at: string
  /** The local engine's extension: when a sandbox last started from it. */
  last_used_at?: string | null
  metadata: Record<string, string>
}

export interface EntryInfo {
  name: string
  path: string
  type: 'file' | 'dir' | 'symlink'
  bytes: number
  mode: number
  modified_time: string
  symlink_target: string | null
}

/** The runtime protocol's error body: `{ error: <code>, message }`. */
const parseError = (body: unknown) => {
  const b = body as { error?: unknown; message?: unknown }
  return { code: typeof b.error === 'string' ? b.error : undefined, message: typeof b.message === 'string' ? b.message : undefined }
}

function bearer(base: string, token: string, retryForMs: number | undefined, dispatcher: Dispatcher): Http {
  return new Http({ base, headers: { authorization: `Bearer ${token}` }, retryForMs, dispatcher, parseError })
}

/** The control plane: create, list, kill and snapshot sandboxes. */
export class RuntimeClient {
  private readonly http: Http
  private readonly dispatcher: Dispatcher
  constructor(private readonly opts: ClientOptions) {
    this.dispatcher = opts.dispatcher ?? new Agent({ keepAliveTimeout: 10_000 })
    const base = opts.url.replace(/\/+$/, '')
    this.http = bearer(base.endsWith('/v1') ? base : `${base}/v1`, opts.token, opts.retryForMs, this.dispatcher)
  }

  /** `hostLayers` is the local engine's extension (see its `allowHostLayers`). */
  async createSandbox(opts: { template?: string; timeout?: number; metadata?: Record<string, string>; envs?: Record<string, string>; allowInternetAccess?: boolean; hostLayers?: string[]; readOnly?: string[]; limits?: { memory?: number; disk?: number; cpus?: number } } = {}): Promise<SandboxClient> {
    const res = await this.http.json<{ sandbox: SandboxInfo; session: { data_plane_url: string; token: string } }>('POST', '/sandboxes', {
      template: opts.template ?? 'base',
      timeout: opts.timeout ?? 300,
      metadata: opts.metadata ?? {},
      envs: opts.envs ?? {},
      allow_internet_access: opts.allowInternetAccess ?? false,
      ...(opts.hostLayers?.length ? { host_layers: opts.hostLayers } : {}),
      ...(opts.readOnly?.length ? { read_only: opts.readOnly } : {}),
      ...(opts.limits && Object.keys(opts.limits).length ? { limits: opts.limits } : {}),
    })
    return this.sandboxClient(res.sandbox, res.session)
  }

  /** A data-plane client for an existing sandbox (a fresh session via resume). */
  async connect(id: string): Promise<SandboxClient> {
    const res = await this.http.json<{ sandbox: SandboxInfo; session: { data_plane_url: string; token: string } }>('POST', `/sandboxes/${encodeURIComponent(id)}/resume`, {})
    return this.sandboxClient(res.sandbox, res.session)
  }

  private sandboxClient(info: SandboxInfo, session: { data_plane_url: string; token: string }): SandboxClient {
    const dataPlane = this.opts.sandboxUrl ?? session.data_plane_url
    return new SandboxClient(info, { ...session, data_plane_url: dataPlane }, this.opts.retryForMs, this.dispatcher)
  }

  async listSandboxes(metadata: Record<string, string> = {}): Promise<SandboxInfo[]> {
    const out: SandboxInfo[] = []
    let next: string | null = null
    do {
      const q = new URLSearchParams(Object.entries(metadata).map(([k, v]): [string, string] => [`query[metadata][${k}]`, v]))
      if (next) q.set('next_token', next)
      const res: { sandboxes: SandboxInfo[]; next_token?: string | null } = await this.http.json('GET', `/sandboxes?${q}`)
      out.push(...res.sandboxes)
      next = res.next_token ?? null
    } while (next)
    return out
  }

  async getSandbox(id: string): Promise<SandboxInfo> {
    return (await this.http.json<{ sandbox: SandboxInfo }>('GET', `/sandboxes/${encodeURIComponent(id)}`)).sandbox
  }

  /** Kill a sandbox; false if it was already gone. */
  async killSandbox(id: string): Promise<boolean> {
    try {
      await this.http.json('DELETE', `/sandboxes/${encodeURIComponent(id)}`)
      return true
    } catch (err) {
      if (err instanceof RuntimeError && err.status === 404) return false
      throw err
    }
  }

  async setTimeout(id: string, seconds: number): Promise<void> {
    await this.http.json('POST', `/sandboxes/${encodeURIComponent(id)}/timeout`, { timeout: seconds })
  }

  async snapshot(id: string, opts: { name?: string; metadata?: Record<string, string> } = {}): Promise<SnapshotInfo> {
    const res = await this.http.json<{ sandbox_checkpoint: SnapshotInfo }>('POST', `/sandboxes/${encodeURIComponent(id)}/snapshots`, opts)
    return res.sandbox_checkpoint
  }

  async listSnapshots(): Promise<SnapshotInfo[]> {
    return (await this.http.json<{ snapshots: SnapshotInfo[] }>('GET', '/sandbox_snapshots')).snapshots
  }

  /** Delete a snapshot; false if it was already gone. */
  async deleteSnapshot(id: string): Promise<boolean> {
    try {
      await this.http.json('DELETE', `/sandbox_snapshots/${encodeURIComponent(id)}`)
      return true
    } catch (err) {
      if (err instanceof RuntimeError && err.status === 404) return false
      throw err
    }
  }

  async health(): Promise<Record<string, unknown>> {
    return this.http.json('GET', '/health')
  }

  async close(): Promise<void> {
    if (!this.opts.dispatcher) await this.dispatcher.close()
  }
}

export interface StartOptions {
  cmd: string
  args?: string[]
  cwd?: string
  env?: Record<string, string>
  /** Keep stdin open for `write`. @default false */
  stdin?: boolean
  /** Kill the process after this many ms (0: never). @default 0 */
  timeoutMs?: number
  /** A stable id of your choosing; the server picks one otherwise. */
  id?: string
}

/** The data plane of one sandbox: files and processes. */
export class SandboxClient {
  readonly id: string
  private readonly http: Http
  readonly wsBase: string

  constructor(readonly info: SandboxInfo, readonly session: { data_plane_url: string; token: string }, retryForMs: number | undefined, dispatcher: Dispatcher) {
    this.id = info.id
    this.http = bearer(`${session.data_plane_url.replace(/\/+$/, '')}/runtime/v1`, session.token, retryForMs, dispatcher)
    this.wsBase = session.data_plane_url.replace(/^http/, 'ws').replace(/\/+$/, '')
  }

  async writeFile(path: string, data: Body): Promise<EntryInfo> {
    const res = await this.http.call('PUT', `/files?path=${encodeURIComponent(path)}`, { body: data })
    return (JSON.parse(await boundedText(res.body, 1024 * 1024, `PUT ${path}`)) as { file: EntryInfo }).file
  }

  async readFile(path: string): Promise<Buffer> {
    const res = await this.http.call('GET', `/files?path=${encodeURIComponent(path)}`)
    return Buffer.from(await res.body.arrayBuffer())
  }

  async stat(path: string): Promise<EntryInfo> {
    return (await this.http.json<{ file: EntryInfo }>('GET', `/files/stat?path=${encodeURIComponent(path)}`)).file
  }

  async list(path: string): Promise<EntryInfo[]> {
    return (await this.http.json<{ entries: EntryInfo[] }>('GET', `/directories?path=${encodeURIComponent(path)}`)).entries
  }

  async mkdir(path: string): Promise<void> {
    await this.http.json('POST', `/directories?path=${encodeURIComponent(path)}`, {})
  }

  async remove(path: string): Promise<void> {
    await this.http.json('DELETE', `/files?path=${encodeURIComponent(path)}`)
  }

  /**
   * Start a process; resolves once the server says it is running. A socket cut before that is
   * retried without starting twice: the process has an id of ours, so the retry first attaches
   * to it, and starts it only if the server has no such process.
   */
  async start(opts: StartOptions): Promise<RemoteProcess> {
    const id = opts.id ?? `proc_${randomBytes(8).toString('hex')}`
    const frame: ClientFrame = {
      type: 'start',
      id,
      cmd: opts.cmd,
      args: opts.args ?? [],
      cwd: opts.cwd,
      environment: opts.env ?? {},
      envs: opts.env ?? {},
      stdin: opts.stdin ?? false,
      timeout_ms: opts.timeoutMs ?? 0,
    }
    let last: unknown
    for (const [attempt, delay] of [0, 250, 1000, 2000].entries()) {
      await new Promise((r) => setTimeout(r, delay))
      try {
        if (attempt > 0) {
          try {
            return await this.attach(id)
          } catch (err) {
            if (!(err instanceof RuntimeError && err.status === 404)) throw err
          }
        }
        return await new RemoteProcess(this, undefined).open(frame)
      } catch (err) {
        last = err
        if (!(err instanceof RuntimeError && (err.code === 'closed' || err.code === 'network_error'))) throw err
        log('process %s: start cut (%s), retrying', id, err.message)
      }
    }
    throw last
  }

  /** Attach to a running (or finished) process, replaying output from cursor `since`. */
  attach(pid: string, since = 0): Promise<RemoteProcess> {
    return new RemoteProcess(this, pid).reconnect(since)
  }

  async processes(): Promise<Array<{ id: string; status: string; exit_code: number | null }>> {
    return (await this.http.json<{ processes: Array<{ id: string; status: string; exit_code: number | null }> }>('GET', '/process')).processes
  }

  async kill(pid: string, signal = 'SIGKILL'): Promise<void> {
    await this.http.json('DELETE', `/process/${encodeURIComponent(pid)}?signal=${signal}&kill_group=true`)
  }

  /** Run a command to completion and collect its output. */
  async run(cmd: string, args: string[] = [], opts: Omit<StartOptions, 'cmd' | 'args'> & { input?: Uint8Array | string } = {}): Promise<{ exitCode: number; stdout: string; stderr: string }> {
    const proc = await this.start({ ...opts, cmd, args, stdin: opts.input !== undefined })
    const out: Buffer[] = []
    const err: Buffer[] = []
    proc.on('stdout', (b) => out.push(b))
    proc.on('stderr', (b) => err.push(b))
    if (opts.input !== undefined) {
      await proc.write(typeof opts.input === 'string' ? Buffer.from(opts.input) : opts.input)
      await proc.closeStdin()
    }
    const { exitCode } = await proc.exited
    return { exitCode, stdout: Buffer.concat(out).toString(), stderr: Buffer.concat(err).toString() }
  }

  authHeaders(): Record<string, string> {
    return { authorization: `Bearer ${this.session.token}` }
  }
}

export interface ProcessExit {
  exitCode: number
  error: string | null
  signal: string | null
}

/**
 * A process in a sandbox over its WebSocket. Emits `stdout` / `stderr` with Buffers in order. A
 * dropped socket is reopened with `since=` the next cursor (up to 12 times), so no output is lost
 * or repeated across reconnects.
 */
export class RemoteProcess extends EventEmitter<{ stdout: [Buffer]; stderr: [Buffer]; reconnect: [number] }> {
  pid?: string
  readonly exited: Promise<ProcessExit>
  private resolveExit!: (e: ProcessExit) => void
  private rejectExit!: (e: Error) => void
  private ws?: WebSocket
  private nextCursor = 0
  private done = false
  /** Input sent and not yet acknowledged, in order: sent again after a reconnect. */
  private acks: Array<{ type: 'stdin_ack' | 'close_stdin_ack'; frame: string; resolve: () => void; reject: (e: Error) => void }> = []

  constructor(private readonly sandbox: SandboxClient, pid: string | undefined) {
    super()
    this.pid = pid
    this.exited = new Promise((resolve, reject) => {
      this.resolveExit = resolve
      this.rejectExit = reject
    })
    this.exited.catch(() => {}) // callers that never await exit must not crash the host
  }

  /** Open a socket, send `first` if given, resolve at `started`. */
  private connectSocket(path: string, first?: ClientFrame): Promise<this> {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(`${this.sandbox.wsBase}${path}`, { headers: this.sandbox.authHeaders(), maxPayload: MAX_WS_FRAME })
      this.ws = ws
      let started = false
      let held: ServerFrame[] | undefined
      ws.on('unexpected-response', (_req, res) => {
        let text = ''
        res.on('data', (d: Buffer) => (text += d))
        res.on('end', () => {
          let code = `http_${res.statusCode}`
          let message = text
          try {
            const j = JSON.parse(text)
            code = j.error ?? code
            message = j.message ?? text
          } catch {
            // Not JSON.
          }
          reject(new RuntimeError(message || `WebSocket upgrade refused (${res.statusCode})`, res.statusCode ?? 0, code))
        })
      })
      ws.on('open', () => first && ws.send(JSON.stringify(first)))
      ws.on('message', (data) => {
        let frame: ServerFrame
        try {
          frame = JSON.parse(data.toString())
        } catch {
          return
        }
        if (!started) {
          if (frame.type === 'started') {
            started = true
            this.pid = String(frame.pid)
            // Frames in the same TCP chunk as 'started' are parsed before the caller's `await`
            // resumes; hold them until it has had the chance to add its listeners.
            held = []
            setImmediate(() => {
              for (const f of held!) this.onFrame(f)
              held = undefined
            })
            resolve(this)
          } else if (frame.type === 'error') {
            reject(new RuntimeError(frame.message, 400, frame.code))
          }
          return
        }
        if (held) held.push(frame)
        else this.onFrame(frame)
      })
      ws.on('error', (err) => {
        if (!started) reject(new RuntimeError(err.message, 0, 'network_error'))
      })
      ws.on('close', () => {
        if (!started) return reject(new RuntimeError('process socket closed before the process started', 0, 'closed'))
        // After any held frames (an 'exit' among them means there is nothing to reconnect to).
        if (this.ws === ws) setImmediate(() => void this.onClose())
      })
    })
  }

  open(start: ClientFrame): Promise<this> {
    return this.connectSocket('/runtime/v1/process', start)
  }

  reconnect(since: number): Promise<this> {
    this.nextCursor = since
    return this.connectSocket(`/runtime/v1/process/${encodeURIComponent(this.pid!)}/connect?since=${since}`)
  }

  private onFrame(frame: ServerFrame): void {
    switch (frame.type) {
      case 'stdout':
      case 'stderr':
        if (frame.cursor < this.nextCursor) return // already delivered before a reconnect
        this.nextCursor = frame.cursor + 1
        return void this.emit(frame.type, Buffer.from(frame.data, 'base64'))
      case 'stdin_ack':
      case 'close_stdin_ack': {
        const i = this.acks.findIndex((a) => a.type === frame.type)
        if (i >= 0) this.acks.splice(i, 1)[0].resolve()
        return
      }
      case 'exit':
        this.done = true
        for (const a of this.acks) a.reject(new RuntimeError('process exited', 0, 'exited'))
        this.acks = []
        this.resolveExit({ exitCode: frame.exit_code, error: frame.error, signal: frame.signal ?? null })
        this.ws?.close()
        return
      case 'error': {
        const err = new RuntimeError(frame.message, 400, frame.code)
        const ack = this.acks.shift()
        if (ack) ack.reject(err)
        else log('process %s: %s', this.pid, frame.message)
        return
      }
    }
  }

  private async onClose(): Promise<void> {
    if (this.done) return
    let lastError: unknown
    try {
      await reopen(
        async (i) => {
          this.emit('reconnect', i + 1)
          await this.reconnect(this.nextCursor)
          // Whether the server got input whose ack was lost cannot be known: it goes again.
          for (const a of this.acks) this.ws!.send(a.frame)
        },
        { fatal: isGone },
      )
      return
    } catch (err) {
      lastError = err
    }
    this.done = true
    for (const a of this.acks) a.reject(new RuntimeError('process socket closed', 0, 'closed'))
    this.acks = []
    this.rejectExit(new RuntimeError(`lost the connection to process ${this.pid} in sandbox ${this.sandbox.id}: ${(lastError as Error)?.message}`, 0, 'connection_lost'))
  }

  private sendWithAck(frame: ClientFrame, type: 'stdin_ack' | 'close_stdin_ack'): Promise<void> {
    if (this.done) return Promise.reject(new RuntimeError(`process ${this.pid} has exited`, 0, 'exited'))
    return new Promise((resolve, reject) => {
      const text = JSON.stringify(frame)
      this.acks.push({ type, frame: text, resolve, reject })
      // While reconnecting it waits; a send that fails is sent again after the reconnect.
      if (this.ws?.readyState === WebSocket.OPEN) this.ws.send(text, () => {})
    })
  }

  /**
   * Write to stdin; resolves when the sandbox has passed the bytes to the process. Input not yet
   * acknowledged when the socket drops is sent again after the reconnect, so a chunk can reach the
   * process twice (never out of order, never lost): the agent link numbers its chunks for that.
   */
  write(data: Uint8Array | string): Promise<void> {
    const buf = typeof data === 'string' ? Buffer.from(data) : Buffer.from(data)
    return this.sendWithAck({ type: 'stdin', data: buf.toString('base64') }, 'stdin_ack')
  }

  closeStdin(): Promise<void> {
    return this.sendWithAck({ type: 'close_stdin' }, 'close_stdin_ack')
  }

  /** Signal the process (and its group) over the socket. */
  signal(signal = 'SIGTERM'): void {
    this.ws?.send(JSON.stringify({ type: 'signal', signal }))
  }

  /** Kill the process and its group; `exited` then settles with the server's exit frame. */
  kill(): void {
    if (this.done) return
    if (this.ws?.readyState === WebSocket.OPEN) return void this.ws.send(JSON.stringify({ type: 'signal', signal: 'SIGKILL', kill_group: true }))
    // No socket to send it over: the sandbox is being given up, so is the process.
    this.done = true
    this.ws?.close()
    this.resolveExit({ exitCode: 137, error: 'killed', signal: 'SIGKILL' })
  }

  /** Drop the socket without killing the process. */
  disconnect(): void {
    this.done = true
    this.ws?.close()
  }
}

/**
 * A process in a Heyo sandbox, over its shell stream: a WebSocket to a `bash` on a PTY. Output
 * comes as `[0x02][seq u64 BE][bytes]` and is acknowledged every 100 ms; input goes as
 * `[0x01][bytes]`. The shell is told to run the line relay (line-relay.ts) in a raw terminal, which
 * makes the PTY a byte link. A dropped socket is reopened with the session id: the server replays
 * what came after the last acknowledgement (frames seen already are dropped by seq), and input the
 * relay has not acknowledged is sent again (it skips what it has).
 */
import { EventEmitter } from 'node:events'
import WebSocket from 'ws'
import { earlyEvents } from './early-events.js'
import { createLineParser, exitOfReport, INPUT_PART, relayInput, type RelaySpec } from './line-relay.js'
import type { ProcessExit, ProviderProcess } from './types.js'
import { boundedText, HttpError, isGone, reopen } from '../net/http.js'
import { debug } from '../debug.js'

const log = debug('heyo')
const STDIN = 0x01
const STDOUT = 0x02
/** How long the relay may take to say it runs (the shell starts, then node). */
const START_TIMEOUT_MS = 60_000

export interface ShellTarget {
  /** The shell stream's ws:// or wss:// URL. */
  url: string
  headers: Record<string, string>
  /** "sandbox <id>", for messages. */
  where: string
}

interface Pending {
  offset: number
  line: string
  /** Bytes this line covers (0 for end of input). */
  size: number
  resolve: () => void
  reject: (e: Error) => void
}

type State = 'starting' | 'running' | 'done'

export class HeyoProcess extends EventEmitter<{ stdout: [Buffer]; stderr: [Buffer] }> implements ProviderProcess {
  readonly exited: Promise<ProcessExit>
  private settle!: { resolve: (e: ProcessExit) => void; reject: (e: Error) => void }
  private state: State = 'starting'
  private ws?: WebSocket
  private sessionId?: string
  /** Highest output seq taken, and the highest acknowledged to the server. */
  private seq = 0
  private acked = 0
  private ackTimer?: NodeJS.Timeout
  private readonly parse: (chunk: Buffer) => void
  /** Input sent and not yet taken by the relay, in order. */
  private unacked: Pending[] = []
  private inputOffset = 0
  private eofSent = false
  private killed = false
  /** The shell's own output before the relay ran (why it did not, if it did not). */
  private noise = ''
  private readonly early = earlyEvents()
  private started!: { resolve: () => void; reject: (e: Error) => void }

  private constructor(private readonly target: ShellTarget, token: string) {
    super()
    this.exited = new Promise((resolve, reject) => (this.settle = { resolve, reject }))
    this.exited.catch(() => {})
    const deliver = (f: () => void) => this.early.deliver(f)
    this.parse = createLineParser(token, {
      ready: () => this.onReady(),
      stdout: (b) => deliver(() => this.emit('stdout', b)),
      stderr: (b) => deliver(() => this.emit('stderr', b)),
      ack: (taken, eof) => {
        while (this.unacked.length && (this.unacked[0].size ? this.unacked[0].offset + this.unacked[0].size <= taken : eof)) this.unacked.shift()!.resolve()
      },
      exit: (r) => deliver(() => this.finish(exitOfReport(r))),
      noise: (text) => {
        if (this.state === 'starting') this.noise = (this.noise + text + '\n').slice(-4000)
      },
    })
  }

  /**
   * Open the shell and run the relay with `spec` (its spec file already at `specFile`, the relay
   * at `relayFile`); resolves once the relay says it runs.
   */
  static async start(target: ShellTarget, spec: RelaySpec, relayFile: string, specFile: string): Promise<HeyoProcess> {
    const proc = new HeyoProcess(target, spec.token)
    const running = new Promise<void>((resolve, reject) => (proc.started = { resolve, reject }))
    running.catch(() => {})
    await proc.open()
    // `exec`: the relay replaces the shell, so the session ends when it does.
    proc.type(`stty raw -echo 2>/dev/null; exec node ${relayFile} ${specFile}\n`)
    const timer = setTimeout(() => proc.fail(`heyo: the process relay did not start in ${target.where} within ${START_TIMEOUT_MS / 1000}s; the shell showed:\n${proc.noise.trim()}`), START_TIMEOUT_MS)
    try {
      await running
    } finally {
      clearTimeout(timer)
    }
    proc.early.release()
    return proc
  }

  private onReady(): void {
    if (this.state !== 'starting') return
    this.state = 'running'
    this.resend()
    this.started.resolve()
  }

  /** Connect (or reconnect with the session id), retrying with backoff; resolves at `ready`. */
  private open(): Promise<void> {
    return reopen(() => this.connect(), { fatal: (err) => isGone(err) || (err instanceof HttpError && err.status === 403), stop: () => this.state === 'done' })
  }

  private connect(): Promise<void> {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(this.target.url, { headers: this.target.headers, maxPayload: 64 * 1024 * 1024 })
      this.ws = ws
      let ready = false
      ws.on('unexpected-response', (_req, res) => {
        void boundedText(res, 64 * 1024).then(
          (text) => reject(new HttpError(`heyo: opening the shell of ${this.target.where}: ${res.statusCode} ${text}`, res.statusCode ?? 0, `http_${res.statusCode}`)),
          (err: Error) => reject(err),
        )
      })
      ws.on('open', () => ws.send(JSON.stringify({ type: 'init', cols: 200, rows: 50, ...(this.sessionId ? { sessionId: this.sessionId } : {}) })))
      ws.on('message', (data: Buffer, binary) => {
        try {
          if (binary) return this.onOutput(data)
          const msg = JSON.parse(data.toString()) as { type: string; sessionId?: string; code?: number | string; message?: string }
          if (msg.type === 'ready') {
            ready = true
            this.sessionId = msg.sessionId
            this.resend()
            resolve()
          } else if (msg.type === 'exit') {
            // The relay reports the exit itself, before it ends the shell; an exit without that
            // report means the relay never ran or was killed.
            if (this.state !== 'done') setTimeout(() => this.fail(`heyo: the shell of ${this.target.where} exited (${msg.code}) without the process's exit report${this.noise ? `; it showed:\n${this.noise.trim()}` : ''}`), 500).unref()
          } else if (msg.type === 'error') {
            log('shell of %s: %s %s', this.target.where, msg.code, msg.message)
            if (msg.code === 'session_expired') this.fail(`heyo: the shell session of ${this.target.where} expired while disconnected: the process is lost`)
            else if (!ready) reject(new Error(`heyo: the shell of ${this.target.where}: ${msg.message}`))
          }
        } catch (err) {
          this.fail(`heyo: the shell of ${this.target.where} sent bad output: ${(err as Error).message}`)
        }
      })
      ws.on('error', (err) => {
        if (!ready) reject(err)
      })
      ws.on('close', (code) => {
        if (!ready) return reject(new Error(`heyo: the shell of ${this.target.where} closed (${code}) before it was ready`))
        if (this.ws === ws) void this.reopen()
      })
    })
  }

  private async reopen(): Promise<void> {
    if (this.state === 'done') return
    log('shell of %s dropped; resuming session %s after seq %d', this.target.where, this.sessionId, this.acked)
    try {
      await this.open()
    } catch (err) {
      this.fail(`heyo: lost the shell of ${this.target.where}: ${(err as Error).message}`)
    }
  }

  private onOutput(data: Buffer): void {
    if (data[0] !== STDOUT || data.length < 9) throw new Error(`an output frame of kind ${data[0]} and ${data.length} bytes`)
    const seq = Number(data.readBigUInt64BE(1))
    if (seq <= this.seq) return // replayed after a reconnect, taken already
    this.seq = seq
    this.parse(data.subarray(9))
    this.ackTimer ??= setTimeout(() => {
      this.ackTimer = undefined
      if (this.seq > this.acked && this.ws?.readyState === WebSocket.OPEN) {
        this.acked = this.seq
        this.ws.send(JSON.stringify({ type: 'ack', seq: this.seq }))
      }
    }, 100)
  }

  /** Bytes to the shell's terminal. */
  private type(text: string): void {
    if (this.ws?.readyState === WebSocket.OPEN) this.ws.send(Buffer.concat([Buffer.from([STDIN]), Buffer.from(text)]))
  }

  /** Everything the relay has not acknowledged, again (it skips what it has); only once it runs. */
  private resend(): void {
    if (this.state === 'running') for (const p of this.unacked) this.type(p.line)
  }

  private queue(offset: number, line: string, size: number): Promise<void> {
    if (this.state === 'done') return Promise.reject(new Error(`the process in ${this.target.where} has exited`))
    return new Promise((resolve, reject) => {
      const p: Pending = { offset, line, size, resolve, reject }
      this.unacked.push(p)
      if (this.state === 'running') this.type(line)
    })
  }

  write(data: Uint8Array): Promise<void> {
    const parts: Promise<void>[] = []
    for (let at = 0; at < data.length; at += INPUT_PART) {
      const part = Buffer.from(data.subarray(at, at + INPUT_PART))
      parts.push(this.queue(this.inputOffset, relayInput.part(this.inputOffset, part), part.length))
      this.inputOffset += part.length
    }
    return Promise.all(parts).then(() => {})
  }

  closeStdin(): Promise<void> {
    if (this.eofSent) return Promise.resolve()
    this.eofSent = true
    return this.queue(this.inputOffset, relayInput.end(this.inputOffset), 0)
  }

  kill(): void {
    if (this.state === 'done') return
    if (!this.killed && this.state === 'running') {
      this.killed = true
      this.type(relayInput.kill())
      // The relay reports the kill as its exit; if it cannot, the session goes.
      setTimeout(() => this.kill(), 5000).unref()
      return
    }
    this.finish({ exitCode: 137, error: 'killed', signal: 'SIGKILL' })
  }

  private stop(error: Error): void {
    this.state = 'done'
    clearTimeout(this.ackTimer)
    for (const p of this.unacked.splice(0)) p.reject(error)
    if (this.ws?.readyState === WebSocket.OPEN) {
      // `close` ends the session; the socket goes once the server answers, or after 2 s.
      this.ws.send(JSON.stringify({ type: 'close' }))
      const ws = this.ws
      setTimeout(() => ws.terminate(), 2000).unref()
    } else {
      this.ws?.terminate()
    }
  }

  private finish(exit: ProcessExit): void {
    if (this.state === 'done') return
    this.stop(new Error(`the process in ${this.target.where} has exited`))
    this.settle.resolve(this.killed ? { ...exit, error: exit.error ?? 'killed' } : exit)
  }

  private fail(message: string): void {
    if (this.state === 'done') return
    const error = new Error(message)
    this.stop(error)
    this.started?.reject(error)
    this.settle.reject(error)
  }
}

/**
 * One process in an OpenSandbox sandbox: an execd PTY session in pipe mode (`/pty/{id}/ws?pty=0`)
 * running the framed relay. A dropped WebSocket is reopened with `since=` the combined-stream
 * offset (and `takeover=1`), so output is neither lost nor repeated; input not yet acknowledged is
 * sent again and the relay skips what it already took. A session whose command has ended would
 * start it again on the next connect, so the command runs only if its run marker is new.
 */
import { randomBytes } from 'node:crypto'
import { EventEmitter } from 'node:events'
import os from 'node:os'
import WebSocket from 'ws'
import { earlyEvents } from './early-events.js'
import { createRelayParser, RELAY, shellQuote, type RelayExit } from './framed-stdio.js'
import type { ProcessExit, ProcessSpec, ProviderProcess } from './types.js'
import { boundedText, type Http, HttpError, isGone, reopen } from '../net/http.js'
import { numberedChunk } from '../sandbox-runtime/wire.js'
import { debug } from '../debug.js'

const log = debug('opensandbox')
const STDIN = 0x00
const OUT = 0x01
const ERR = 0x02
const REPLAY = 0x03

/** The shell command of a session: run once (guarded by a marker), in `cwd`, with `env`, through the relay. */
function sessionCommand(spec: ProcessSpec): string {
  const marker = `/tmp/.vitest-sandbox-run-${randomBytes(8).toString('hex')}`
  const env = Object.entries(spec.env ?? {}).map(([k, v]) => shellQuote(`${k}=${v}`))
  const argv = ['node', '-e', RELAY, spec.stdin ? '1' : '0', spec.cmd, ...(spec.args ?? [])].map(shellQuote)
  return `mkdir ${marker} 2>/dev/null || exit 0; exec ${env.length ? `env ${env.join(' ')} ` : ''}${argv.join(' ')}`
}

function exitOf(r: RelayExit): ProcessExit {
  if (r.signal) return { exitCode: 128 + (os.constants.signals[r.signal as NodeJS.Signals] ?? 0), error: null, signal: r.signal }
  return { exitCode: r.code ?? 1, error: r.error ?? null, signal: null }
}

export class OpenSandboxProcess extends EventEmitter<{ stdout: [Buffer]; stderr: [Buffer] }> implements ProviderProcess {
  readonly exited: Promise<ProcessExit>
  private resolveExit!: (e: ProcessExit) => void
  private rejectExit!: (e: Error) => void
  private ws?: WebSocket
  /** Bytes of the combined output stream received so far (the next `since`). */
  private offset = 0
  private done = false
  /** The exit code execd reported for the session's shell, when it came before the relay's own. */
  private shellExit?: number
  private readonly parse: (chunk: Buffer) => void
  /** Input sent and not yet acknowledged, in order, kept to send again after a reconnect. */
  private unacked: Array<{ offset: number; data: Buffer; resolve: () => void; reject: (e: Error) => void }> = []
  private inputOffset = 0
  private eofSent = false
  private tailFetched = false
  private killing = false
  private resendTimer?: NodeJS.Timeout

  private constructor(private readonly execd: Http, private readonly sandboxId: string, private readonly session: string) {
    super()
    this.exited = new Promise((resolve, reject) => {
      this.resolveExit = resolve
      this.rejectExit = reject
    })
    this.exited.catch(() => {})
    this.parse = createRelayParser({
      stdout: (b) => this.emit('stdout', b),
      stderr: (b) => this.emit('stderr', b),
      ack: (taken, eof) => {
        while (this.unacked.length && (this.unacked[0].data.length ? this.unacked[0].offset + this.unacked[0].data.length <= taken : eof)) this.unacked.shift()!.resolve()
      },
      exit: (r) => this.finish(exitOf(r)),
    })
  }

  static async start(execd: Http, sandboxId: string, spec: ProcessSpec): Promise<OpenSandboxProcess> {
    const res = await execd.json<{ session_id: string }>('POST', '/pty', { command: sessionCommand(spec), ...(spec.cwd ? { cwd: spec.cwd } : {}) })
    const proc = new OpenSandboxProcess(execd, sandboxId, res.session_id)
    // A socket cut before `connected` is retried like one cut later.
    await proc.open(false)
    return proc
  }

  private url(takeover: boolean): string {
    const base = this.execd.base.replace(/^http/, 'ws')
    return `${base}/pty/${encodeURIComponent(this.session)}/ws?pty=0&since=${this.offset}${takeover ? '&takeover=1' : ''}`
  }

  /** Open the session's socket; resolves at `connected`. */
  private connect(takeover: boolean): Promise<void> {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(this.url(takeover), { headers: this.execd.headers, maxPayload: 64 * 1024 * 1024 })
      this.ws = ws
      let connected = false
      // Output before `connected` waits: if this socket is cut first, the next one's replay has it.
      // After it, one more turn, so a caller that awaits `start` has added its listeners.
      const early = earlyEvents()
      ws.on('unexpected-response', (_req, res) => {
        void boundedText(res, 64 * 1024).then(
          (text) => reject(new HttpError(`opening process ${this.session} in sandbox ${this.sandboxId}: ${res.statusCode} ${text}`, res.statusCode ?? 0, `http_${res.statusCode}`)),
          (err: Error) => reject(err),
        )
      })
      ws.on('message', (data: Buffer, binary) => {
        try {
          if (binary) return early.deliver(() => this.take(data))
          const msg = JSON.parse(data.toString()) as { type: string; exit_code?: number; code?: string; error?: string }
          if (msg.type === 'connected') {
            connected = true
            this.resend()
            early.release()
            resolve()
          } else if (msg.type === 'exit') {
            this.shellExit = msg.exit_code
          } else if (msg.type === 'error') {
            log('process %s: %s %s', this.session, msg.code, msg.error)
            if (!connected) reject(new Error(`opensandbox: process ${this.session} in sandbox ${this.sandboxId}: ${msg.code}: ${msg.error}`))
          }
        } catch (err) {
          this.fail(`opensandbox: process ${this.session} sent a bad message: ${(err as Error).message}`)
        }
      })
      ws.on('error', (err) => {
        if (!connected) reject(err)
      })
      ws.on('close', (code) => {
        if (!connected) return reject(new Error(`opensandbox: the socket of process ${this.session} closed (${code}) before it connected`))
        if (this.ws === ws) setImmediate(() => void this.onClose()) // after the held output
      })
    })
  }

  private take(data: Buffer): void {
    try {
      this.onBinary(data)
    } catch (err) {
      this.fail(`opensandbox: process ${this.session} sent bad output: ${(err as Error).message}`)
    }
  }

  private onBinary(data: Buffer): void {
    const kind = data[0]
    if (kind === REPLAY) {
      const from = Number(data.readBigInt64BE(1))
      const bytes = data.subarray(9)
      if (from > this.offset) return this.fail(`opensandbox: ${from - this.offset} bytes of output of process ${this.session} fell out of execd's replay buffer while disconnected`)
      const fresh = bytes.subarray(this.offset - from)
      this.offset += fresh.length
      return this.parse(fresh)
    }
    const bytes = data.subarray(1)
    this.offset += bytes.length
    if (kind === OUT) this.parse(bytes)
    else if (kind === ERR) this.emit('stderr', Buffer.from(bytes)) // the relay itself failing (e.g. no node)
  }

  private async onClose(): Promise<void> {
    if (this.done) return
    if (this.shellExit !== undefined) {
      const code = this.shellExit
      this.shellExit = undefined
      // The relay exits 0 right after its exit frame, and execd may report that before it has
      // pumped the frame: the replay of one more connect has it (the rerun is stopped by the marker).
      if (code === 0 && !this.tailFetched) {
        this.tailFetched = true
      } else {
        return this.finish(code === -1 ? { exitCode: 137, error: 'killed', signal: 'SIGKILL' } : { exitCode: code, error: code === 0 ? 'the process ended without its exit report' : null, signal: null })
      }
    }
    try {
      await this.open(true)
    } catch (err) {
      this.fail(`opensandbox: lost the connection to process ${this.session} in sandbox ${this.sandboxId}: ${(err as Error).message}`)
    }
  }

  /** Connect, retrying with backoff; after the first attempt, with `takeover` (execd may still hold the cut socket). */
  private open(takeover: boolean): Promise<void> {
    return reopen(
      (attempt) => {
        log('process %s: connecting at offset %d', this.session, this.offset)
        return this.connect(takeover || attempt > 0)
      },
      { fatal: isGone, stop: () => this.done },
    )
  }

  /** execd's stdin message carrying one numbered input chunk for the relay. */
  private sendInput(u: { offset: number; data: Buffer }): void {
    this.ws!.send(Buffer.concat([Buffer.from([STDIN]), numberedChunk(u.offset, u.data)]))
  }

  /** After a reconnect: everything not acknowledged goes again (the relay skips what it has). */
  private resend(): void {
    for (const u of this.unacked) this.sendInput(u)
  }

  private send(data: Buffer): Promise<void> {
    if (this.done) return Promise.reject(new Error(`process ${this.session} has exited`))
    return new Promise((resolve, reject) => {
      const entry = { offset: this.inputOffset, data, resolve, reject }
      this.inputOffset += data.length
      this.unacked.push(entry)
      if (this.ws?.readyState === WebSocket.OPEN) this.sendInput(entry)
      // execd acknowledges nothing: input it dropped (a shell still starting, a socket cut in
      // flight) is sent again until the relay says it has it.
      this.resendTimer ??= setInterval(() => {
        if (!this.unacked.length) return
        if (this.ws?.readyState === WebSocket.OPEN) this.resend()
      }, 1000)
      this.resendTimer.unref()
    })
  }

  write(data: Uint8Array): Promise<void> {
    return data.length ? this.send(Buffer.from(data)) : Promise.resolve()
  }

  closeStdin(): Promise<void> {
    if (this.eofSent) return Promise.resolve()
    this.eofSent = true
    return this.send(Buffer.alloc(0))
  }

  kill(): void {
    if (this.done) return
    if (!this.killing && this.ws?.readyState === WebSocket.OPEN) {
      this.killing = true
      this.ws.send(JSON.stringify({ type: 'signal', signal: 'SIGKILL' }))
      // Signals are not acknowledged either: if no exit follows, the session goes.
      setTimeout(() => this.kill(), 5000).unref()
      return
    }
    // No socket: finishing deletes the session, which kills its process group.
    this.finish({ exitCode: 137, error: 'killed', signal: 'SIGKILL' })
  }

  /** No more input and no more resends: what is still unacknowledged fails with `error`. */
  private stop(error: Error): void {
    this.done = true
    clearInterval(this.resendTimer)
    for (const u of this.unacked.splice(0)) u.reject(error)
  }

  private finish(exit: ProcessExit): void {
    if (this.done) return
    this.stop(new Error(`process ${this.session} has exited`))
    this.resolveExit(exit)
    this.ws?.close()
    // The session would otherwise live as long as execd does (deleting it kills its process group).
    void this.execd.call('DELETE', `/pty/${encodeURIComponent(this.session)}`, { retry: false }).then((r) => r.body.dump(), () => {})
  }

  private fail(message: string): void {
    if (this.done) return
    const error = new Error(message)
    this.stop(error)
    this.rejectExit(error)
    this.ws?.terminate()
  }
}

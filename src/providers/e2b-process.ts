/**
 * A process in an E2B sandbox, through envd's process service (Connect protocol, JSON codec):
 * `Start` is a server stream of events (start with the pid, output as base64, end with the exit),
 * input goes as unary `SendInput` calls, end of input as `CloseStdin`, a kill as `SendSignal`.
 * The wire is lossless (bytes are base64 in JSON), unlike the SDK's string callbacks. Input is
 * sent one call at a time, in order; what piles up meanwhile goes together in the next call. envd
 * keeps no output for a stream that drops, so a dropped stream is a lost process.
 */
import { EventEmitter } from 'node:events'
import { earlyEvents } from './early-events.js'
import type { Http } from '../net/http.js'
import type { ProcessExit, ProcessSpec, ProviderProcess } from './types.js'

/** Connect's envelope: flags (0x02 = end of stream) and a big-endian length, then the message. */
export function envelope(message: unknown, flags = 0): Buffer {
  const body = Buffer.from(JSON.stringify(message))
  const head = Buffer.alloc(5)
  head[0] = flags
  head.writeUInt32BE(body.length, 1)
  return Buffer.concat([head, body])
}

/**
 * Largest envelope the host takes. envd sends one read of a pipe (32 KiB, a third more as base64)
 * per event, but envd runs inside the sandbox, where the tested code may have replaced it: an
 * envelope claiming gigabytes must fail the process, not grow the host's memory.
 */
export const MAX_ENVELOPE = 16 * 1024 * 1024

/** Splits a byte stream into Connect envelopes, whatever the chunking. */
export function envelopeSplitter(onEnvelope: (flags: number, message: any) => void): (chunk: Buffer) => void {
  let buf: Buffer = Buffer.alloc(0)
  return (chunk) => {
    buf = buf.length ? Buffer.concat([buf, chunk]) : chunk
    while (buf.length >= 5) {
      const n = buf.readUInt32BE(1)
      if (n > MAX_ENVELOPE) throw new Error(`envd sent an envelope of ${n} bytes, over the limit of ${MAX_ENVELOPE}`)
      if (buf.length < 5 + n) return
      const flags = buf[0]
      const text = buf.subarray(5, 5 + n).toString()
      buf = buf.subarray(5 + n)
      onEnvelope(flags, text ? JSON.parse(text) : {})
    }
  }
}

/** Bytes per SendInput call (base64 makes the request a third larger). */
const MAX_INPUT = 1 << 20
const SIGNALS: Record<string, number> = { SIGKILL: 9, SIGTERM: 15 }

/** Headers of every Connect call: the protocol version, and envd's user (root owns the workspace path). */
export const CONNECT_HEADERS = { 'connect-protocol-version': '1', authorization: `Basic ${Buffer.from('root:').toString('base64')}` }

interface EndEvent {
  exitCode?: number
  exited?: boolean
  status?: string
  error?: string
}

export class E2BProcess implements ProviderProcess {
  private readonly events = new EventEmitter<{ stdout: [Buffer]; stderr: [Buffer] }>()
  private pid!: number
  /** Input not yet sent, with the writes waiting on it. */
  private pending: { data: Buffer; done: () => void; fail: (err: Error) => void }[] = []
  private sending: Promise<void> = Promise.resolve()
  private killed = false
  private readonly early = earlyEvents()
  readonly exited: Promise<ProcessExit>
  private settle!: { resolve: (e: ProcessExit) => void; reject: (err: Error) => void }

  private constructor(private readonly envd: Http, private readonly where: string) {
    this.exited = new Promise((resolve, reject) => (this.settle = { resolve, reject }))
    this.exited.catch(() => {})
  }

  /** Starts `spec` and resolves once envd says it runs (its start event, with the pid). */
  static async start(envd: Http, where: string, spec: ProcessSpec): Promise<E2BProcess> {
    const proc = new E2BProcess(envd, where)
    const request = { process: { cmd: spec.cmd, args: spec.args ?? [], envs: spec.env ?? {}, ...(spec.cwd ? { cwd: spec.cwd } : {}) }, stdin: spec.stdin ?? false }
    // Not retried: a second Start would be a second process. No Connect-Timeout-Ms: envd would
    // kill the process when it passed.
    const res = await envd.call('POST', '/process.Process/Start', {
      body: envelope(request),
      headers: { ...CONNECT_HEADERS, 'content-type': 'application/connect+json', 'keepalive-ping-interval': '50' },
      retry: false,
    })
    if (!String(res.headers['content-type']).startsWith('application/connect+json')) {
      await res.body.dump()
      throw new Error(`e2b: envd answered a process start in ${where} with ${res.statusCode} ${res.headers['content-type']}`)
    }
    await new Promise<void>((started, failed) => {
      let ended: EndEvent | undefined
      const split = envelopeSplitter((flags, msg) => {
        if (flags & 0x02) {
          // Settles the start only if no start event came (a promise settles once).
          failed(new Error(`e2b: the process stream of ${where} ended before the process started${msg.error ? `: ${msg.error.code}: ${msg.error.message}` : ''}`))
          return proc.early.deliver(() => proc.finish(ended, msg.error ? `${msg.error.code}: ${msg.error.message}` : undefined))
        }
        const event = msg.event ?? {}
        if (event.start) {
          proc.pid = event.start.pid
          started()
          proc.early.release()
        } else if (event.data) {
          for (const kind of ['stdout', 'stderr'] as const) if (event.data[kind]) proc.early.deliver(() => proc.events.emit(kind, Buffer.from(event.data[kind], 'base64')))
        } else if (event.end) {
          ended = event.end
        }
      })
      ;(async () => {
        for await (const chunk of res.body) split(chunk as Buffer)
        failed(new Error(`e2b: the process stream of ${where} ended before the process started`))
        proc.early.deliver(() => proc.finish(ended, 'the stream ended without an end message'))
      })().catch((err: Error) => {
        failed(err)
        proc.early.deliver(() => proc.finish(ended, err.message))
      })
    })
    return proc
  }

  /** The stream is over: the exit, or (no end event) the process is lost. */
  private finish(end: EndEvent | undefined, problem: string | undefined): void {
    if (!end) return this.settle.reject(new Error(`e2b: lost the process stream of ${this.where}${this.pid ? ` (pid ${this.pid})` : ''}: ${problem}`))
    const signal = /^signal: (\w+)/.exec(end.status ?? '')?.[1]
    const name = signal === 'killed' ? 'SIGKILL' : signal === 'terminated' ? 'SIGTERM' : signal ? `SIG${signal.toUpperCase()}` : null
    this.settle.resolve({
      exitCode: name ? 128 + (SIGNALS[name] ?? 1) : (end.exitCode ?? 0),
      signal: name,
      error: this.killed ? 'killed' : null,
    })
  }

  on(event: 'stdout' | 'stderr', listener: (chunk: Buffer) => void): this {
    this.events.on(event, listener)
    return this
  }

  write(data: Uint8Array): Promise<void> {
    return new Promise((done, fail) => {
      this.pending.push({ data: Buffer.from(data), done, fail })
      this.sending = this.sending.then(() => this.flush())
    })
  }

  /** Sends what is pending (up to MAX_INPUT) in one call; a later flush sends the rest. */
  private async flush(): Promise<void> {
    if (!this.pending.length) return
    const batch: typeof this.pending = []
    let size = 0
    while (this.pending.length && (size === 0 || size + this.pending[0].data.length <= MAX_INPUT)) {
      size += this.pending[0].data.length
      batch.push(this.pending.shift()!)
    }
    try {
      await this.unary('SendInput', { process: { pid: this.pid }, input: { stdin: Buffer.concat(batch.map((b) => b.data)).toString('base64') } })
      for (const b of batch) b.done()
    } catch (err) {
      for (const b of batch) b.fail(err as Error)
    }
  }

  async closeStdin(): Promise<void> {
    await (this.sending = this.sending.then(() => this.unary('CloseStdin', { process: { pid: this.pid } })))
  }

  kill(): void {
    this.killed = true
    this.unary('SendSignal', { process: { pid: this.pid }, signal: 'SIGNAL_SIGKILL' }).catch(() => {})
  }

  private async unary(method: string, message: unknown): Promise<void> {
    await this.envd.json('POST', `/process.Process/${method}`, message, { headers: CONNECT_HEADERS })
  }
}

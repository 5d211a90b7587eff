/**
 * A process in an E2B sandbox, through envd's process service (Connect protocol, JSON codec):
 * `Start` is a server stream of events (start with the pid, output as base64, end with the exit),
 * input goes as unary `SendInput` calls. The wire is lossless (bytes are base64 in JSON), unlike
 * the SDK's string callbacks.
 *
 * envd keeps a process running when its stream drops, and `Connect` reattaches to it, but only to
 * the output written from then on. So the process runs under the replay relay (replay-relay.ts):
 * after a drop the stream is reattached and the relay sends again what the host had not taken.
 * Frames to the relay are sent one call at a time, in order; what piles up meanwhile goes
 * together in the next call.
 */
import { EventEmitter } from 'node:events'
import os from 'node:os'
import type { Dispatcher } from 'undici'
import { debug } from '../debug.js'
import { earlyEvents } from './early-events.js'
import { isGone, reopen, type Http } from '../net/http.js'
import { KIND, RelayReader, relayArgs, relayFrame } from './replay-relay.js'
import type { ProcessExit, ProcessSpec, ProviderProcess } from './types.js'

const log = debug('e2b')

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
  // Chunks are joined only once the envelope they start is whole (joining at every chunk is quadratic).
  let pending: Buffer[] = []
  let size = 0
  let need = 5
  return (chunk) => {
    pending.push(chunk)
    size += chunk.length
    if (size < need) return
    let buf = pending.length === 1 ? pending[0] : Buffer.concat(pending)
    need = 5
    while (buf.length >= 5) {
      const n = buf.readUInt32BE(1)
      if (n > MAX_ENVELOPE) throw new Error(`envd sent an envelope of ${n} bytes, over the limit of ${MAX_ENVELOPE}`)
      if (buf.length < 5 + n) {
        need = 5 + n
        break
      }
      const flags = buf[0]
      const text = buf.subarray(5, 5 + n).toString()
      buf = buf.subarray(5 + n)
      onEnvelope(flags, text ? JSON.parse(text) : {})
    }
    pending = buf.length ? [buf] : []
    size = buf.length
  }
}

/** Bytes per SendInput call (base64 makes the request a third larger). */
const MAX_INPUT = 1 << 20
/** How often the host tells the relay what output it has (so the relay can forget it). */
const ACK_EVERY_MS = 500
/** How long a kill waits for the relay to end its process before envd kills the relay itself. */
const KILL_GRACE_MS = 5000

/** Headers of every Connect call: the protocol version, and envd's user (root owns the workspace path). */
export const CONNECT_HEADERS = { 'connect-protocol-version': '1', authorization: `Basic ${Buffer.from('root:').toString('base64')}` }

interface EndEvent {
  exitCode?: number
  exited?: boolean
  status?: string
  error?: string
}

/** The relay's X frame. */
interface Report {
  code: number | null
  signal: string | null
  error?: string
}

const KILLED: Report = { code: null, signal: 'SIGKILL' }

/** A stream that must not be reattached: envd broke the protocol, or the process is gone. */
class Fatal extends Error {}

export class E2BProcess implements ProviderProcess {
  private readonly events = new EventEmitter<{ stdout: [Buffer]; stderr: [Buffer] }>()
  private pid!: number
  private readonly reader = new RelayReader((kind, data) => this.onFrame(kind, data))
  /** Frames not yet sent, with the writes waiting on them. */
  private pending: { frame: Buffer; done: () => void; fail: (err: Error) => void }[] = []
  private sending: Promise<void> = Promise.resolve()
  /** Input framed so far (the position of the next I frame). */
  private inputAt = 0
  private acked = 0
  private readonly acker: NodeJS.Timeout
  /** The stream now followed; a stream it replaced is ignored. */
  private stream?: Dispatcher.ResponseData
  /** Whether that stream is open (from its start event to its end). */
  private attached = false
  private report?: Report
  private settled = false
  private killed = false
  private readonly early = earlyEvents()
  readonly exited: Promise<ProcessExit>
  private settle!: { resolve: (e: ProcessExit) => void; reject: (err: Error) => void }

  private constructor(private readonly envd: Http, private readonly where: string) {
    this.exited = new Promise((resolve, reject) => (this.settle = { resolve, reject }))
    this.exited.catch(() => {})
    this.acker = setInterval(() => this.reader.position > this.acked && this.ack(), ACK_EVERY_MS).unref()
  }

  /** Starts `spec` under the relay and resolves once envd says it runs (its start event, with the pid). */
  static async start(envd: Http, where: string, spec: ProcessSpec): Promise<E2BProcess> {
    const proc = new E2BProcess(envd, where)
    const request = { process: { cmd: 'node', args: relayArgs(spec), envs: spec.env ?? {}, ...(spec.cwd ? { cwd: spec.cwd } : {}) }, stdin: true }
    try {
      await proc.open('Start', request)
    } catch (err) {
      clearInterval(proc.acker)
      throw err
    }
    proc.early.release()
    return proc
  }

  /**
   * Opens a stream of the process's events (`Start` or `Connect`); resolves at its start event.
   * Not retried here: a second Start would be a second process (reattaching retries in `reattach`).
   * No Connect-Timeout-Ms: envd would kill the process when it passed.
   */
  private async open(method: 'Start' | 'Connect', request: unknown): Promise<void> {
    const res = await this.envd.call('POST', `/process.Process/${method}`, {
      body: envelope(request),
      headers: { ...CONNECT_HEADERS, 'content-type': 'application/connect+json', 'keepalive-ping-interval': '50' },
      retry: false,
    })
    if (!String(res.headers['content-type']).startsWith('application/connect+json')) {
      await res.body.dump()
      throw new Error(`e2b: envd answered a process ${method === 'Start' ? 'start' : 'reattach'} in ${this.where} with ${res.statusCode} ${res.headers['content-type']}`)
    }
    this.stream = res
    const before = method === 'Start' ? 'before the process started' : 'before it reattached'
    await new Promise<void>((started, failed) => {
      let ended: EndEvent | undefined
      let problem: string | undefined
      let fatal: Error | undefined
      let began = false
      const split = envelopeSplitter((flags, msg) => {
        if (flags & 0x02) {
          if (msg.error) problem = `${msg.error.code}: ${msg.error.message}`
          // Settles only if no start event came (a promise settles once).
          return failed(new (msg.error?.code === 'not_found' ? Fatal : Error)(`e2b: the process stream of ${this.where} ended ${before}${problem ? `: ${problem}` : ''}`))
        }
        const event = msg.event ?? {}
        if (event.start) {
          this.pid = event.start.pid
          began = this.attached = true
          started()
        } else if (event.data?.stdout) {
          this.reader.push(Buffer.from(event.data.stdout, 'base64'))
        } else if (event.data?.stderr) {
          // The relay's own (its errors): the process's stderr comes in its frames.
          const data = Buffer.from(event.data.stderr, 'base64')
          this.early.deliver(() => this.events.emit('stderr', data))
        } else if (event.end) {
          ended = event.end
        }
      })
      void (async () => {
        try {
          for await (const chunk of res.body) {
            if (this.stream !== res) return
            try {
              split(chunk as Buffer)
            } catch (err) {
              fatal = err as Error
              res.body.destroy()
              break
            }
          }
          problem ??= 'the stream ended without an end message'
        } catch (err) {
          problem ??= (err as Error).message
        }
        failed(new Error(`e2b: the process stream of ${this.where} ended ${before}${problem ? `: ${problem}` : ''}`))
        if (!began || this.stream !== res) return
        this.attached = false
        this.early.deliver(() => this.over(ended, problem, fatal))
      })()
    })
  }

  /** The followed stream is over: the relay's report, the relay's own end, or a drop to reattach. */
  private over(end: EndEvent | undefined, problem: string | undefined, fatal: Error | undefined): void {
    if (this.settled) return
    if (this.report) return this.finish(this.report)
    if (fatal) return this.lose(fatal.message)
    if (end) return this.finishUnreported(end)
    // Killed (the link closed, the sandbox goes next): nothing more to hear from it.
    if (this.killed) return this.finish(KILLED)
    void this.reattach(problem)
  }

  /** Reattach with backoff, then ask the relay for everything from the position the host has. */
  private async reattach(why: string | undefined): Promise<void> {
    log('process stream of %s (pid %d) dropped (%s); reattaching at %d', this.where, this.pid, why, this.reader.position)
    try {
      await reopen(
        async () => {
          const nonce = this.reader.resync()
          await this.open('Connect', { process: { pid: this.pid } })
          try {
            await this.send(relayFrame(KIND.resend, this.reader.position, nonce))
          } catch (err) {
            this.stream?.body.destroy()
            throw err
          }
        },
        { fatal: (err) => err instanceof Fatal || isGone(err), stop: () => this.settled || this.killed },
      )
    } catch (err) {
      this.lose(`${why}; reattaching failed: ${(err as Error).message}`)
    }
    // Killed while no stream was followed: the attempts stopped.
    if (this.killed && !this.attached) this.finish(KILLED)
  }

  private onFrame(kind: number, data: Buffer): void {
    if (kind === KIND.stdout || kind === KIND.stderr) {
      const name = kind === KIND.stdout ? 'stdout' : 'stderr'
      return this.early.deliver(() => this.events.emit(name, data))
    }
    if (kind !== KIND.exit) throw new Fatal(`the relay sent a frame of kind ${kind}`)
    this.report = JSON.parse(data.toString())
    this.ack()
    this.early.deliver(() => this.finish(this.report!))
  }

  private ack(): void {
    this.acked = this.reader.position
    this.send(relayFrame(KIND.ack, this.acked)).catch(() => {})
  }

  private finish(report: Report): void {
    const signal = report.signal
    this.done()
    this.settle.resolve({
      exitCode: signal ? 128 + (os.constants.signals[signal as keyof typeof os.constants.signals] ?? 1) : (report.code ?? 0),
      signal,
      error: report.error ?? (this.killed ? 'killed' : null),
    })
  }

  /**
   * The relay ended and its report was not taken (envd killed it, it crashed, or it stopped
   * waiting for a host away for a minute after the exit): envd's end event says how.
   */
  private finishUnreported(end: EndEvent): void {
    const name = /^signal: (\w+)/.exec(end.status ?? '')?.[1]
    const signal = name === 'killed' ? 'SIGKILL' : name === 'terminated' ? 'SIGTERM' : name ? `SIG${name.toUpperCase()}` : null
    this.finish({ code: signal ? null : (end.exitCode ?? 0), signal })
  }

  private lose(problem: string): void {
    if (this.settled) return
    this.done()
    this.settle.reject(new Error(`e2b: lost the process stream of ${this.where} (pid ${this.pid}): ${problem}`))
  }

  private done(): void {
    this.settled = true
    clearInterval(this.acker)
  }

  on(event: 'stdout' | 'stderr', listener: (chunk: Buffer) => void): this {
    this.events.on(event, listener)
    return this
  }

  async write(data: Uint8Array): Promise<void> {
    const sent: Promise<void>[] = []
    // Parts of half a call, so that a call can carry a part and the frames queued around it.
    for (let off = 0; off < data.length; off += MAX_INPUT / 2) {
      const part = data.subarray(off, off + MAX_INPUT / 2)
      sent.push(this.send(relayFrame(KIND.input, this.inputAt, part)))
      this.inputAt += part.length
    }
    await Promise.all(sent)
  }

  /** Queues a frame for the relay; resolves once a SendInput call carried it. */
  private send(frame: Buffer): Promise<void> {
    return new Promise((done, fail) => {
      this.pending.push({ frame, done, fail })
      this.sending = this.sending.then(() => this.flush())
    })
  }

  /** Sends what is pending (up to MAX_INPUT) in one call; a later flush sends the rest. */
  private async flush(): Promise<void> {
    if (!this.pending.length) return
    const batch: typeof this.pending = []
    let size = 0
    while (this.pending.length && (size === 0 || size + this.pending[0].frame.length <= MAX_INPUT)) {
      size += this.pending[0].frame.length
      batch.push(this.pending.shift()!)
    }
    try {
      // Retrying is safe: the relay skips input it has, and resends once per nonce.
      await this.unary('SendInput', { process: { pid: this.pid }, input: { stdin: Buffer.concat(batch.map((b) => b.frame)).toString('base64') } })
      for (const b of batch) b.done()
    } catch (err) {
      for (const b of batch) b.fail(err as Error)
    }
  }

  closeStdin(): Promise<void> {
    return this.send(relayFrame(KIND.close, this.inputAt))
  }

  kill(): void {
    this.killed = true
    this.send(relayFrame(KIND.kill, 0)).catch(() => {})
    // A relay that does not answer (stopped, or replaced by the tested code) is killed by envd.
    setTimeout(() => this.settled || this.unary('SendSignal', { process: { pid: this.pid }, signal: 'SIGNAL_SIGKILL' }).catch(() => {}), KILL_GRACE_MS).unref()
  }

  private async unary(method: string, message: unknown): Promise<void> {
    await this.envd.json('POST', `/process.Process/${method}`, message, { headers: CONNECT_HEADERS })
  }
}

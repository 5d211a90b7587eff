/**
 * One process inside a local sandbox, as the protocol server sees it: an ordered, cursor-numbered
 * log of its output (kept for reconnects with `since=`), stdin, signals, and its exit. The log
 * keeps the newest `maxBufferedBytes`; what falls out is reported as truncated, never silently.
 */
import { EventEmitter } from 'node:events'

export type OutputKind = 'stdout' | 'stderr'

export interface OutputEvent {
  cursor: number
  type: OutputKind
  data: Buffer
}

export interface ExitInfo {
  exitCode: number
  signal: string | null
  /** Why it ended when it did not end by itself: killed, timeout, sandbox ended, spawn failure. */
  error?: string
}

export interface ProcessLink {
  stdin(id: string, data: Buffer): Promise<void>
  closeStdin(id: string): void
  signal(id: string, signal: string, group: boolean): void
  setPaused(id: string, paused: boolean): void
}

export interface ProcessSpec {
  cmd: string
  args: string[]
  cwd?: string
  env: Record<string, string>
  stdin: boolean
  tag?: string
}

/** Bytes of output the processes of one sandbox keep for late readers, and how many they may. */
export interface OutputLedger {
  bytes: number
  limit: number
}

export class SandboxProcess extends EventEmitter<{ started: []; output: [OutputEvent]; exit: [ExitInfo] }> {
  pid = 0
  readonly startedAt = Date.now()
  exit?: ExitInfo
  /** Set when the command could not be started at all. */
  spawnError?: string
  /** Cursor of the oldest event still held; events before it were dropped. */
  truncatedBefore = 0
  private log: OutputEvent[] = []
  private logBytes = 0
  private nextCursor = 0
  private pausedBy = new Set<object>()
  private timedOut = false

  constructor(
    readonly id: string,
    readonly spec: ProcessSpec,
    private readonly link: ProcessLink,
    /** The output all processes of its sandbox keep together (host memory no cgroup counts). */
    private readonly kept: OutputLedger = { bytes: 0, limit: Infinity },
    private readonly maxBufferedBytes = 8 * 1024 * 1024,
  ) {
    super()
  }

  /** Drop the output this process keeps (its record is being forgotten). */
  forget(): void {
    this.kept.bytes -= this.logBytes
    this.logBytes = 0
    this.log = []
  }

  get running(): boolean {
    return this.exit === undefined
  }

  /** The cursor the next output event will carry. */
  get cursor(): number {
    return this.nextCursor
  }

  pushOutput(type: OutputKind, data: Buffer): void {
    const event = { cursor: this.nextCursor++, type, data }
    this.log.push(event)
    this.logBytes += data.length
    this.kept.bytes += data.length
    while ((this.logBytes > this.maxBufferedBytes || this.kept.bytes > this.kept.limit) && this.log.length > 1) {
      const old = this.log.shift()!
      this.logBytes -= old.data.length
      this.kept.bytes -= old.data.length
      this.truncatedBefore = this.log[0].cursor
    }
    this.emit('output', event)
  }

  markExited(info: ExitInfo): void {
    if (this.exit) return
    this.exit = this.timedOut ? { ...info, error: 'timeout' } : info
    this.emit('exit', info)
  }

  /** Events with cursor >= since that are still held. */
  eventsSince(since: number): OutputEvent[] {
    return this.log.filter((e) => e.cursor >= since)
  }

  write(data: Buffer): Promise<void> {
    if (!this.running) return Promise.reject(new Error(`process ${this.pid} has exited`))
    if (!this.spec.stdin) return Promise.reject(new Error(`process ${this.pid} was started without stdin`))
    return this.link.stdin(this.id, data)
  }

  closeStdin(): void {
    if (this.running && this.spec.stdin) this.link.closeStdin(this.id)
  }

  /** Kill the process group because its `timeout_ms` ran out; its exit then says `timeout`. */
  markTimeout(): void {
    this.timedOut = true
    this.kill('SIGKILL', true)
  }

  kill(signal = 'SIGKILL', group = true): void {
    if (this.running) this.link.signal(this.id, signal, group)
  }

  /**
   * Flow control: a reader that cannot keep up pauses the process's output at the source (its
   * pipes fill and its writes block), so a flood never piles up in the engine. Output flows
   * again once no reader holds a pause; a reader that goes away must call `resume`.
   */
  pause(reader: object): void {
    const was = this.pausedBy.size
    this.pausedBy.add(reader)
    if (!was && this.running) this.link.setPaused(this.id, true)
  }

  resume(reader: object): void {
    if (!this.pausedBy.delete(reader)) return
    if (!this.pausedBy.size && this.running) this.link.setPaused(this.id, false)
  }
}

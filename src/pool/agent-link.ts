/**
 * Host side of one sandbox's agent: one process stream (the runtime protocol's stdin/stdout)
 * carrying every worker of that sandbox as a channel. Outgoing frames are batched per tick into
 * one stdin write; a heartbeat turns a silent link into a loss after `heartbeatTimeoutMs`. Where
 * the sandbox has a direct channel, each worker's messages take it instead (`direct.ts`); its
 * stdio, exit and signals stay on the link.
 */
import type { Socket } from 'node:net'
import type { DirectChannel, ProviderProcess } from '../providers/types.js'
import { createDeframer, DIRECT_ENV, frame, jsonFrame, Kind, numberedChunk, type ForkSpec } from '../sandbox-runtime/wire.js'
import { debug } from '../debug.js'
import { DirectClaims, type DirectClaim } from './direct.js'
import { printable } from './gateway/printable.js'
import { Tunnels, type Tunnel, type TunnelHandlers } from './tunnels.js'

const log = debug('link')

export interface ChannelHandlers {
  spawned(pid: number): void
  failed(message: string): void
  data(bytes: Buffer): void
  stdout(bytes: Buffer): void
  stderr(bytes: Buffer): void
  exit(code: number | null, signal: string | null): void
  /** The link itself died (sandbox or connection lost). */
  lost(reason: string): void
}


/** Answers a worker has not read past which its requests wait, and past which it is ended (worker.ts). */
const UNREAD_PAUSE = 8 * 1024 * 1024
export const UNREAD_LIMIT = 128 * 1024 * 1024

/**
 * Where a worker's messages go: over the link; held until its direct socket is claimed; or over
 * that socket.
 */
type Route = { kind: 'relay' } | { kind: 'claiming'; claim: DirectClaim; held: Uint8Array[] } | { kind: 'direct'; socket: Socket }

/** How long an exited worker's direct socket may take to deliver its last bytes. */
const DRAIN_AFTER_EXIT_MS = 2000

interface Channel extends ChannelHandlers {
  route: Route
}

export class AgentLink {
  private readonly channels = new Map<number, Channel>()
  private readonly tunnels = new Tunnels((f) => this.send(f), () => this.alive)
  private readonly claims?: DirectClaims
  private nextChannel = 1
  private queue: Buffer[] = []
  private writing: Promise<void> = Promise.resolve()
  private flushScheduled = false
  /** Bytes sent to the agent so far: the offset of the next numbered chunk. */
  private sent = 0
  private lastPong = Date.now()
  private readonly heartbeat: NodeJS.Timeout
  lostReason?: string
  readonly hello: Promise<{ node: string; v8: string; pid: number }>

  constructor(private readonly proc: ProviderProcess, options: { heartbeatMs?: number; heartbeatTimeoutMs?: number; direct?: DirectChannel } = {}) {
    const { heartbeatMs = 5000, heartbeatTimeoutMs = 30_000 } = options
    if (options.direct) this.claims = new DirectClaims(options.direct)
    let helloResolve!: (v: { node: string; v8: string; pid: number }) => void
    let helloReject!: (e: Error) => void
    this.hello = new Promise((res, rej) => {
      helloResolve = res
      helloReject = rej
    })
    this.hello.catch(() => {})
    const onFrame = (channel: number, kind: number, payload: Buffer) => {
      if (channel === 0) {
        if (kind === Kind.HELLO) helloResolve(JSON.parse(payload.toString()))
        else if (kind === Kind.PONG) this.lastPong = Date.now()
        return
      }
      if (this.tunnels.fromAgent(channel, kind, payload)) return
      const h = this.channels.get(channel)
      if (!h) return
      switch (kind) {
        case Kind.SPAWNED:
          return h.spawned(JSON.parse(payload.toString()).pid)
        case Kind.FAILED:
          this.drop(channel)
          return h.failed(printable(String(JSON.parse(payload.toString()).message)))
        case Kind.FROM_WORKER:
          // A worker on a direct socket sends nothing here.
          return h.route.kind === 'relay' ? h.data(payload) : undefined
        case Kind.STDOUT:
          return h.stdout(Buffer.from(payload))
        case Kind.STDERR:
          return h.stderr(Buffer.from(payload))
        case Kind.EXIT: {
          const { code, signal } = JSON.parse(payload.toString())
          // Its last messages may still be in its direct socket: they come first.
          if (h.route.kind === 'direct' && !h.route.socket.closed) return this.afterDrain(channel, h.route.socket, () => h.exit(code, signal))
          this.drop(channel)
          return h.exit(code, signal)
        }
      }
    }
    const deframe = createDeframer(onFrame)
    proc.on('stdout', (chunk) => {
      try {
        deframe(chunk)
      } catch (err) {
        this.lose(`the agent sent a corrupt frame: ${(err as Error).message}`)
      }
    })
    // The agent writes nothing to stderr itself; anything there is Node dying.
    let stderr = ''
    proc.on('stderr', (b) => (stderr = (stderr + b.toString()).slice(-4000)))
    proc.exited.then(
      ({ exitCode, error }) => {
        const why = `the agent exited (${error ?? `code ${exitCode}`})${stderr.trim() ? `: ${lastLines(stderr)}` : ''}`
        helloReject(new Error(why))
        this.lose(why)
      },
      (err: Error) => {
        helloReject(err)
        this.lose(err.message)
      },
    )
    this.heartbeat = setInterval(() => {
      if (Date.now() - this.lastPong > heartbeatTimeoutMs) {
        this.lose(`no heartbeat from the agent for ${Math.round((Date.now() - this.lastPong) / 1000)}s`)
        return
      }
      this.send(frame(0, Kind.PING))
    }, heartbeatMs)
    this.heartbeat.unref()
  }

  get alive(): boolean {
    return this.lostReason === undefined
  }

  get channelCount(): number {
    return this.channels.size
  }

  private send(buf: Buffer): void {
    if (!this.alive) return
    this.queue.push(buf)
    if (this.flushScheduled) return
    this.flushScheduled = true
    setImmediate(() => {
      this.flushScheduled = false
      const bytes = Buffer.concat(this.queue)
      const batch = numberedChunk(this.sent, bytes)
      this.sent += bytes.length
      this.queue = []
      // Writes are acknowledged in order; chaining keeps them ordered while the next batch
      // accumulates, so throughput adapts to the round-trip time.
      this.writing = this.writing.then(() => this.proc.write(batch)).catch((err) => this.lose(`writing to the agent failed: ${err.message}`))
    })
  }

  /** Fork a worker; resolves with its channel id once it has a pid. */
  fork(spec: ForkSpec, handlers: ChannelHandlers): { channel: number; started: Promise<number> } {
    const channel = this.nextChannel++
    const route = this.route(channel)
    // A worker on a direct socket is one hop from the host; a relayed one shares the agent's module cache.
    const fork = route.kind === 'claiming' ? { ...spec, env: { ...spec.env, [DIRECT_ENV]: route.claim.env } } : { ...spec, moduleCache: spec.codec !== undefined }
    let started!: Promise<number>
    started = new Promise((resolve, reject) => {
      this.channels.set(channel, {
        route,
        ...handlers,
        spawned: (pid) => {
          handlers.spawned(pid)
          resolve(pid)
        },
        failed: (message) => {
          handlers.failed(message)
          reject(new Error(message))
        },
        lost: (reason) => {
          handlers.lost(reason)
          reject(new Error(reason))
        },
      })
    })
    started.catch(() => {})
    if (!this.alive) {
      const h = this.channels.get(channel)!
      this.drop(channel)
      h.lost(this.lostReason!)
    } else {
      this.send(jsonFrame(channel, Kind.FORK, fork))
    }
    return { channel, started }
  }

  /** A new worker's route: a direct socket to claim where the sandbox has a channel. */
  private route(channel: number): Route {
    if (!this.claims) return { kind: 'relay' }
    const claim = this.claims.expect()
    const route: Route = { kind: 'claiming', claim, held: [] }
    void claim.socket.then((socket) => {
      const h = this.channels.get(channel)
      if (!h || h.route !== route) return void socket.destroy()
      h.route = { kind: 'direct', socket }
      socket.on('data', (d: Buffer) => h.data(d))
      for (const bytes of route.held) socket.write(bytes)
    })
    return route
  }

  /** Forget a worker's channel, and close its direct socket. */
  private drop(channel: number): void {
    const h = this.channels.get(channel)
    if (!h) return
    this.channels.delete(channel)
    if (h.route.kind === 'claiming') h.route.claim.cancel()
    if (h.route.kind === 'direct') h.route.socket.destroy()
  }

  private afterDrain(channel: number, socket: Socket, then: () => void): void {
    const done = () => {
      clearTimeout(timer)
      this.drop(channel)
      then()
    }
    const timer = setTimeout(done, DRAIN_AFTER_EXIT_MS)
    socket.once('close', done)
  }

  /**
   * Answers to a worker. On its direct socket the host keeps what the worker has not read: past
   * UNREAD_PAUSE its requests wait (the socket is not read) until it reads; `unread` tells the
   * caller how much is waiting. (Relayed, the agent holds it, inside the sandbox's limits.)
   */
  toWorker(channel: number, bytes: Uint8Array): void {
    const route = this.channels.get(channel)?.route
    if (route?.kind === 'direct') {
      const socket = route.socket
      socket.write(bytes)
      if (socket.writableLength > UNREAD_PAUSE && !socket.isPaused()) {
        socket.pause()
        socket.once('drain', () => socket.resume())
      }
    } else if (route?.kind === 'claiming') route.held.push(bytes)
    else this.send(frame(channel, Kind.TO_WORKER, bytes))
  }

  /** Bytes sent to a worker that it has not read, as far as the host holds them. */
  unread(channel: number): number {
    const route = this.channels.get(channel)?.route
    if (route?.kind === 'direct') return route.socket.writableLength
    if (route?.kind === 'claiming') return route.held.reduce((n, b) => n + b.byteLength, 0)
    return 0
  }

  /** Join a debugger to `port` on the sandbox's loopback, where a worker's inspector listens. */
  tunnel(port: number, handlers: TunnelHandlers): Tunnel {
    return this.tunnels.connect(port, handlers)
  }

  /** Before a watch-mode rerun: the host's module answers may have changed. */
  clearModuleCache(): void {
    this.send(frame(0, Kind.CLEAR_MODULES))
  }

  kill(channel: number, signal: string): void {
    this.send(jsonFrame(channel, Kind.KILL, { signal }))
  }

  lose(reason: string): void {
    if (this.lostReason !== undefined) return
    this.lostReason = reason
    log('link lost: %s', reason)
    clearInterval(this.heartbeat)
    this.claims?.close()
    const channels = [...this.channels.entries()]
    for (const [id] of channels) this.drop(id)
    for (const [, h] of channels) h.lost(reason)
    this.tunnels.closeAll()
    this.proc.kill()
    this.onLost?.(reason)
  }

  /** Called once when the link is lost (the fleet kills what is left of the sandbox). */
  onLost?: (reason: string) => void

  /** Close the link on purpose (the run is over); workers still open are told it is gone. */
  close(): void {
    this.lose('the sandbox pool closed')
  }
}

/** The end of what a process wrote, as the host prints it: its last lines (tar names every file it could not write). */
function lastLines(text: string, count = 5): string {
  const lines = text.trim().split('\n')
  const more = lines.length - count
  return printable(`${more > 0 ? `(${more} lines before) … ` : ''}${lines.slice(-count).join('\n')}`)
}

/**
 * The agent link: one byte stream per sandbox (the agent's stdin/stdout, carried by the runtime
 * protocol) multiplexing every worker in that sandbox.
 *
 *   frame = [u32 length of the rest][u32 channel][u8 kind][payload]
 *
 * Channel 0 is the agent itself; channel N > 0 is one worker, or for the INSPECTOR_* kinds one
 * debugger's tunnel (numbered apart from workers). Worker payloads (`DATA`) are opaque
 * to the agent: the worker and the host frame and encode them (see `codec.ts`), the agent only
 * relays bytes. Runs inside sandboxes: Node built-ins only.
 */
import type { CodecName } from './codec.js'

/** The folder of the project, which the host never has, that a sandbox's files outside the project are sent under (own-modules.ts). */
export const OUTSIDE = '.vitest-sandbox-outside'

export const Kind = {
  // host -> agent
  FORK: 1, // JSON { entry, args, execArgv, env, cwd, codec, moduleCache? }
  TO_WORKER: 2, // bytes for the worker's private channel (fd 3)
  KILL: 3, // JSON { signal }
  PING: 4,
  CLEAR_MODULES: 5, // forget the module cache's answers (a watch-mode rerun)
  INSPECTOR_OPEN: 6, // JSON { port }: connect a debugger's tunnel (its own id) to that port on the sandbox's loopback
  INSPECTOR_IN: 7, // bytes from the host's debugger to the sandbox's inspector
  INSPECTOR_CLOSE: 8, // the host's debugger left
  // agent -> host
  HELLO: 10, // JSON { node, v8, pid }
  FROM_WORKER: 11, // bytes from the worker's private channel
  STDOUT: 12,
  STDERR: 13,
  EXIT: 14, // JSON { code, signal }
  SPAWNED: 15, // JSON { pid }
  PONG: 16,
  FAILED: 17, // JSON { message } (the fork itself failed)
  INSPECTOR_OUT: 18, // bytes from the sandbox's inspector to the host's debugger
  INSPECTOR_CLOSED: 19, // the tunnel's connection in the sandbox ended (or never opened)
} as const

export const MAX_FRAME = 64 * 1024 * 1024

/** What a FORK frame asks the agent to start. */
export interface ForkSpec {
  entry: string
  args: string[]
  execArgv: string[]
  env: Record<string, string>
  cwd: string
  /** The codec of a Vitest worker's messages, for the agent's module cache; absent for other processes. */
  codec?: CodecName
  /** Answer the worker's module fetches from the sandbox's cache (set by the agent link for relayed workers). */
  moduleCache?: boolean
  /** The workers that may share cached answers: those of one project. */
  cacheScope?: string
}

/** A birpc message of Vitest's worker RPC: a call (`t: 'q'`) or its answer (`t: 's'`). */
export type RpcFrame = { t?: string; i?: string | number; m?: string; a?: unknown[]; r?: any; e?: unknown }

/** The variable that tells a worker `<socket path>#<token>` of its direct channel (it removes it before Vitest runs). */
export const DIRECT_ENV = 'VITEST_POOL_SANDBOX_CHANNEL'

export function frame(channel: number, kind: number, payload?: Uint8Array): Buffer {
  const len = payload?.length ?? 0
  const head = Buffer.allocUnsafe(9)
  head.writeUInt32BE(5 + len, 0)
  head.writeUInt32BE(channel, 4)
  head.writeUInt8(kind, 8)
  return len ? Buffer.concat([head, payload!]) : head
}

export function jsonFrame(channel: number, kind: number, value: unknown): Buffer {
  return frame(channel, kind, Buffer.from(JSON.stringify(value)))
}

/** Reassembles frames from chunks; throws on a length over MAX_FRAME (the stream is corrupt). */
export function createDeframer(onFrame: (channel: number, kind: number, payload: Buffer) => void): (chunk: Buffer) => void {
  // A frame is a length-prefixed message whose body starts with the channel and the kind.
  return createMessageSplitter((body) => {
    if (body.length < 5) throw new Error(`agent link: bad frame length ${body.length}`)
    onFrame(body.readUInt32BE(0), body.readUInt8(4), body.subarray(5))
  }, MAX_FRAME)
}

/** Length-prefixed messages on a worker's private channel: [u32 length][payload]. */
export function lengthPrefixed(payload: Uint8Array): Buffer {
  const head = Buffer.allocUnsafe(4)
  head.writeUInt32BE(payload.length, 0)
  return Buffer.concat([head, payload])
}

/**
 * Splits a byte stream into frames of a fixed-size header and a body whose length the header
 * gives. Chunks are joined only once a whole frame is there (joining on every chunk would be
 * quadratic for large frames). `bodyLength` may throw to refuse a frame.
 */
export function createFrameSplitter(headerBytes: number, bodyLength: (buf: Buffer, at: number) => number, onFrame: (frame: Buffer) => void): (chunk: Buffer) => void {
  let pending: Buffer[] = []
  let size = 0
  let needed = headerBytes
  return (chunk) => {
    pending.push(chunk)
    size += chunk.length
    if (size < needed) return
    const buf = pending.length === 1 ? pending[0] : Buffer.concat(pending, size)
    let off = 0
    while (buf.length - off >= headerBytes) {
      const len = bodyLength(buf, off)
      if (buf.length - off < headerBytes + len) break
      onFrame(buf.subarray(off, off + headerBytes + len))
      off += headerBytes + len
    }
    const rest = buf.subarray(off)
    pending = rest.length ? [rest] : []
    size = rest.length
    needed = rest.length >= headerBytes ? headerBytes + bodyLength(rest, 0) : headerBytes
  }
}

/** A message header over the splitter's limit: the stream cannot be read on. */
export class MessageTooLarge extends Error {
  constructor(readonly length: number, limit: number) {
    super(`message of ${length} bytes is over the limit of ${limit}`)
  }
}

/** Splits a byte stream of [u32 length][payload] messages. */
export function createMessageSplitter(onMessage: (payload: Buffer) => void, maxLength = Infinity): (chunk: Buffer) => void {
  const length = (buf: Buffer, at: number) => {
    const len = buf.readUInt32BE(at)
    if (len > maxLength) throw new MessageTooLarge(len, maxLength)
    return len
  }
  return createFrameSplitter(4, length, (frame) => onMessage(frame.subarray(4)))
}

/**
 * Host → agent bytes travel as numbered chunks, [u64 offset][u32 length][bytes]: after a dropped
 * connection a provider may deliver a chunk again (it cannot know whether the first copy arrived),
 * and the agent takes each byte once, in order.
 */
export function numberedChunk(offset: number, data: Uint8Array): Buffer {
  const head = Buffer.allocUnsafe(12)
  head.writeBigUInt64BE(BigInt(offset), 0)
  head.writeUInt32BE(data.length, 8)
  return Buffer.concat([head, data])
}

export function createChunkReader(onBytes: (bytes: Buffer) => void): (chunk: Buffer) => void {
  let taken = 0
  return createFrameSplitter(12, (buf, at) => buf.readUInt32BE(at + 8), (frame) => {
    const at = Number(frame.readBigUInt64BE(0))
    const end = at + frame.length - 12
    if (at > taken) throw new Error(`agent link: a chunk at ${at} skips bytes from ${taken}`)
    if (end > taken) {
      onBytes(frame.subarray(12 + (taken - at)))
      taken = end
    }
  })
}

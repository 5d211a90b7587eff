/**
 * Framing between the engine and the init process inside each sandbox, over the init's
 * stdin/stdout pipes: a length-prefixed message (see `sandbox-runtime/wire.ts`) holding
 * `[u32 header length][header JSON][body bytes]`. A JSON header keeps the messages readable in
 * DEBUG logs; the raw body keeps process output and file contents binary on this hop.
 */
import { createMessageSplitter, lengthPrefixed } from '../sandbox-runtime/wire.js'

export const MAX_HEADER = 64 * 1024
export const MAX_BODY = 16 * 1024 * 1024

export type Header = Record<string, unknown> & { op: string }

/**
 * One frame. A header over MAX_HEADER (a command's arguments and environment, a path) is refused
 * here, as bad input (`code: 'invalid_argument'`): the init would read it as a protocol error and
 * end the sandbox.
 */
export function encodeFrame(header: Header, body?: Uint8Array): Buffer {
  const head = Buffer.from(JSON.stringify(header))
  if (head.length > MAX_HEADER) throw Object.assign(new Error(`a request of ${head.length} bytes (arguments, environment and paths together) is over the sandbox's limit of ${MAX_HEADER} bytes`), { code: 'invalid_argument' })
  const prefix = Buffer.alloc(4)
  prefix.writeUInt32BE(head.length, 0)
  return lengthPrefixed(body?.length ? Buffer.concat([prefix, head, body]) : Buffer.concat([prefix, head]))
}

/**
 * Returns a push function that reassembles frames from arbitrary chunks. A frame over the limits
 * or a header that is not a JSON object is a protocol error: `onError` is called once and the
 * decoder stops, since the stream can no longer be trusted to be in sync.
 */
export function createFrameDecoder(onFrame: (header: Header, body: Buffer) => void, onError: (err: Error) => void): (chunk: Buffer) => void {
  let failed = false
  const split = createMessageSplitter((message) => {
    const headLen = message.length >= 4 ? message.readUInt32BE(0) : -1
    if (headLen < 0 || headLen > MAX_HEADER || 4 + headLen > message.length) throw new Error(`malformed frame (header length ${headLen})`)
    let header: unknown
    try {
      header = JSON.parse(message.toString('utf8', 4, 4 + headLen))
    } catch {
      header = undefined
    }
    if (!header || typeof header !== 'object' || typeof (header as Header).op !== 'string') throw new Error('malformed frame header')
    onFrame(header as Header, message.subarray(4 + headLen))
  }, 4 + MAX_HEADER + MAX_BODY)
  return (chunk) => {
    if (failed) return
    try {
      split(chunk)
    } catch (err) {
      failed = true
      onError(err as Error)
    }
  }
}

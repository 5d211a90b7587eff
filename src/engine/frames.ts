/**
 * Framing between the engine and the init process inside each sandbox, over the init's
 * stdin/stdout pipes: `[u32 header length][u32 body length][header JSON][body bytes]`.
 * A JSON header keeps the messages readable in DEBUG logs; the raw body keeps process output and
 * file contents binary without base64 on this hop.
 */

export const MAX_HEADER = 64 * 1024
export const MAX_BODY = 16 * 1024 * 1024

export type Header = Record<string, unknown> & { op: string }

export function encodeFrame(header: Header, body?: Uint8Array): Buffer {
  const head = Buffer.from(JSON.stringify(header))
  const prefix = Buffer.alloc(8)
  prefix.writeUInt32BE(head.length, 0)
  prefix.writeUInt32BE(body?.length ?? 0, 4)
  return body?.length ? Buffer.concat([prefix, head, body]) : Buffer.concat([prefix, head])
}

/**
 * Returns a push function that reassembles frames from arbitrary chunks. A frame over the limits
 * or a header that is not a JSON object is a protocol error: `onError` is called once and the
 * decoder stops, since the stream can no longer be trusted to be in sync.
 */
export function createFrameDecoder(
  onFrame: (header: Header, body: Buffer) => void,
  onError: (err: Error) => void,
): (chunk: Buffer) => void {
  let pending: Buffer[] = []
  let size = 0
  let needed = 8 // bytes required before the next parse attempt
  let failed = false
  return (chunk) => {
    if (failed) return
    pending.push(chunk)
    size += chunk.length
    // Concatenate only once a whole frame (or a length prefix) is there: large bodies arrive in
    // many small chunks, and joining them on every chunk would be quadratic.
    if (size < needed) return
    const buf = pending.length === 1 ? pending[0] : Buffer.concat(pending, size)
    let offset = 0
    while (buf.length - offset >= 8) {
      const headLen = buf.readUInt32BE(offset)
      const bodyLen = buf.readUInt32BE(offset + 4)
      if (headLen > MAX_HEADER || bodyLen > MAX_BODY) {
        failed = true
        onError(new Error(`frame too large (header ${headLen} bytes, body ${bodyLen} bytes)`))
        return
      }
      if (buf.length - offset < 8 + headLen + bodyLen) break
      let header: unknown
      try {
        header = JSON.parse(buf.toString('utf8', offset + 8, offset + 8 + headLen))
      } catch {
        header = undefined
      }
      if (!header || typeof header !== 'object' || typeof (header as Header).op !== 'string') {
        failed = true
        onError(new Error('malformed frame header'))
        return
      }
      const start = offset + 8 + headLen
      onFrame(header as Header, buf.subarray(start, start + bodyLen))
      offset = start + bodyLen
    }
    const rest = buf.subarray(offset)
    pending = rest.length ? [rest] : []
    size = rest.length
    needed = rest.length >= 8 ? 8 + rest.readUInt32BE(0) + rest.readUInt32BE(4) : 8
  }
}

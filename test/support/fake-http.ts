/** What the fake services' HTTP sides do alike: JSON answers, and reading a request's body. */
import type http from 'node:http'

/** A JSON answer; no body (and no content type) when `body` is undefined. */
export function sendJson(res: http.ServerResponse, status: number, body?: unknown, headers: Record<string, string> = {}): void {
  const text = body === undefined ? '' : JSON.stringify(body)
  res.writeHead(status, { ...(text ? { 'content-type': 'application/json' } : {}), ...headers })
  res.end(text)
}

export async function readBody(req: http.IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = []
  for await (const c of req) chunks.push(c as Buffer)
  return Buffer.concat(chunks)
}

export interface JsonBodyOptions {
  /** The service's own error for a body that is not JSON. */
  invalid: () => Error
  /** Bytes a body may have; past them, `tooLarge()` is thrown once the body is read (the connection stays usable). */
  limit?: number
  tooLarge?: () => Error
}

/** A request's JSON body; `{}` when it is empty. */
export async function readJsonBody(req: http.IncomingMessage, opts: JsonBodyOptions): Promise<Record<string, any>> {
  const body = await readBody(req)
  if (opts.limit !== undefined && body.length > opts.limit) throw opts.tooLarge!()
  const text = body.toString()
  if (!text) return {}
  try {
    return JSON.parse(text)
  } catch {
    throw opts.invalid()
  }
}

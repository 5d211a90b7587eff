/**
 * JSON-over-HTTP with the retry policy every provider shares: 429, 5xx and connection failures
 * are retried with exponential backoff and full jitter (or the server's `Retry-After`), a bounded
 * number of times, each retry logged under `DEBUG=vitest-pool-sandbox:http`. A stream body is a
 * function that makes the stream, so it is retried too.
 */
import { request, type Dispatcher } from 'undici'
import { debug } from '../debug.js'

const log = debug('http')

/** Waits (ms) before each attempt to reopen a dropped process socket: about 20 s in all. */
export const RECONNECT_DELAYS = [0, 250, 500, 1000, 2000, 2000, 2000, 2000, 2000, 2000, 2000, 2000]

export interface ReopenOptions {
  /** An error after which another attempt is pointless (the sandbox or process is gone). */
  fatal: (err: unknown) => boolean
  /** Checked before each attempt: true gives up quietly (the process ended meanwhile). */
  stop?: () => boolean
}

/** Reopen a dropped process socket: `attempt(n)` after each of RECONNECT_DELAYS until one succeeds; rejects with the last error. */
export async function reopen(attempt: (n: number) => Promise<void>, opts: ReopenOptions): Promise<void> {
  let last: unknown
  for (const [n, delay] of RECONNECT_DELAYS.entries()) {
    await new Promise((r) => setTimeout(r, delay))
    if (opts.stop?.()) return
    try {
      return await attempt(n)
    } catch (err) {
      last = err
      if (opts.fatal(err)) break
    }
  }
  throw last
}

/** A process socket refused because the sandbox or process is gone, or the key was: not worth retrying. */
export function isGone(err: unknown): boolean {
  return err instanceof HttpError && (err.status === 404 || err.status === 401)
}

export class HttpError extends Error {
  constructor(
    message: string,
    /** HTTP status, or 0 for a transport failure. */
    readonly status: number,
    /** The service's error code (e.g. `sandbox_not_found`), else `http_<status>` or the socket error code. */
    readonly code: string,
  ) {
    super(message)
    this.name = 'HttpError'
  }
}

/** A stream body is given as a function that makes it, so that a retry can send it again. */
export type Body = string | Uint8Array | (() => AsyncIterable<Uint8Array> | NodeJS.ReadableStream)

export interface HttpOptions {
  /** Base URL every path is appended to. */
  base: string
  /** Headers sent with every request (credentials). */
  headers: Record<string, string>
  /** Attempts in all for a retryable failure. @default 4 */
  attempts?: number
  dispatcher?: Dispatcher
  /** Reads the service's error code and message out of an error body. */
  parseError?: (body: unknown) => { code?: string; message?: string }
}

export interface CallOptions {
  json?: unknown
  body?: Body
  headers?: Record<string, string>
  /** false: never retry (a request that must not happen twice). */
  retry?: boolean
}

/** Statuses worth another attempt: rate limits and server-side trouble. */
function retryable(status: number): boolean {
  return status === 429 || (status >= 500 && status !== 501)
}

export class Http {
  private readonly attempts: number
  constructor(private readonly opts: HttpOptions) {
    this.attempts = opts.attempts ?? 4
  }

  get base(): string {
    return this.opts.base
  }

  /** The headers every request carries (for a WebSocket to the same service). */
  get headers(): Record<string, string> {
    return { ...this.opts.headers }
  }

  async call(method: Dispatcher.HttpMethod, path: string, call: CallOptions = {}): Promise<Dispatcher.ResponseData> {
    const headers: Record<string, string> = { ...this.opts.headers, ...call.headers }
    let body = call.body
    if (call.json !== undefined) {
      headers['content-type'] = 'application/json'
      body = JSON.stringify(call.json)
    } else if (body !== undefined) {
      headers['content-type'] ??= 'application/octet-stream'
    }
    const attempts = call.retry === false ? 1 : this.attempts
    const url = `${this.opts.base}${path}`
    for (let attempt = 1; ; attempt++) {
      let res: Dispatcher.ResponseData
      try {
        const payload = typeof body === 'function' ? body() : body
        res = await request(url, { method, headers, body: payload as Dispatcher.DispatchOptions['body'], dispatcher: this.opts.dispatcher })
      } catch (err) {
        const code = (err as { code?: string }).code ?? 'network_error'
        if (attempt >= attempts) throw new HttpError(`${method} ${url} failed: ${(err as Error).message}`, 0, code)
        log('%s %s: %s, retrying (attempt %d of %d)', method, path, code, attempt + 1, attempts)
        await backoff(attempt)
        continue
      }
      if (res.statusCode < 400) return res
      const text = await res.body.text()
      if (retryable(res.statusCode) && attempt < attempts) {
        log('%s %s: %d, retrying (attempt %d of %d)', method, path, res.statusCode, attempt + 1, attempts)
        await backoff(attempt, Number(res.headers['retry-after']))
        continue
      }
      throw this.error(method, path, res.statusCode, text)
    }
  }

  /** DELETE a resource: true if it was there, false if it was already gone (404). */
  async delete(path: string): Promise<boolean> {
    try {
      await this.call('DELETE', path).then((r) => r.body.dump())
      return true
    } catch (err) {
      if (err instanceof HttpError && err.status === 404) return false
      throw err
    }
  }

  async json<T>(method: Dispatcher.HttpMethod, path: string, json?: unknown, call: Omit<CallOptions, 'json'> = {}): Promise<T> {
    const res = await this.call(method, path, { ...call, json })
    const text = await res.body.text()
    return (text ? JSON.parse(text) : {}) as T
  }

  private error(method: string, path: string, status: number, text: string): HttpError {
    let parsed: unknown = text
    try {
      parsed = JSON.parse(text)
    } catch {
      // Not JSON: the text is the message.
    }
    const { code, message } = typeof parsed === 'object' && parsed !== null ? (this.opts.parseError?.(parsed) ?? {}) : { code: undefined, message: text }
    return new HttpError(`${method} ${path}: ${message || text || `status ${status}`}`, status, code ?? `http_${status}`)
  }
}

/** Exponential backoff with full jitter, capped at 5 s; a server's Retry-After wins (capped at 30 s). */
function backoff(attempt: number, retryAfterSec?: number): Promise<void> {
  const ms = Number.isFinite(retryAfterSec) && retryAfterSec! > 0 ? Math.min(30, retryAfterSec!) * 1000 : Math.random() * Math.min(5000, 250 * 2 ** attempt)
  return new Promise((r) => setTimeout(r, ms))
}

/**
 * JSON-over-HTTP with the retry policy every provider shares, with exponential backoff and full
 * jitter (or the server's `Retry-After`), each retry logged under `DEBUG=vitest-pool-sandbox:http`:
 * - 429, 502, 503 and 504 (the service, or its gateway, says "not now") for up to a time budget,
 *   so that a provider that answers so for a minute and recovers costs a run that minute, not its
 *   files;
 * - other server errors, and a request nothing answered (a wrong address, no network), a few
 *   times only, so that they are said at once.
 * A stream body is a function that makes the stream, so it is retried too.
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
  /** Milliseconds from a call's first attempt during which a 429, 502, 503 or 504 is tried again. @default 90_000 */
  retryForMs?: number
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

/** What of an error's body is read (its message), and the largest JSON answer taken. */
const MAX_ERROR_BODY = 64 * 1024
const MAX_JSON_BODY = 64 * 1024 * 1024

/**
 * A body's text, read no further than `max` bytes: past it the stream is destroyed and, when
 * `what` names the answer, that is an error (a JSON answer cut short is no answer); otherwise the
 * text is cut there (an error's message). A service, or a sandbox that stands in for one of its
 * endpoints, cannot make the host hold more.
 */
export async function boundedText(body: AsyncIterable<Uint8Array> & { destroy(): unknown }, max: number, what?: string): Promise<string> {
  const chunks: Buffer[] = []
  let size = 0
  for await (const chunk of body) {
    const room = max - size
    if (chunk.length > room) {
      chunks.push(Buffer.from(chunk).subarray(0, room))
      body.destroy()
      if (what) throw new HttpError(`${what}: the answer is over ${max} bytes`, 0, 'answer_too_large')
      return `${Buffer.concat(chunks).toString('utf8')}… (cut at ${max} bytes)`
    }
    chunks.push(Buffer.from(chunk))
    size += chunk.length
  }
  return Buffer.concat(chunks).toString('utf8')
}

/** Attempts in all for a request nothing answered, or answered with another server error. */
const FEW_ATTEMPTS = 4

/** Statuses that say "not now" (rate limits, a gateway or service that is down): tried again for the time budget. */
function transient(status: number): boolean {
  return status === 429 || status === 502 || status === 503 || status === 504
}

/** Other server errors: tried again a few times only (the same request may well fail the same way). */
function retryable(status: number): boolean {
  return status >= 500 && status !== 501
}

export class Http {
  private readonly retryForMs: number
  constructor(private readonly opts: HttpOptions) {
    this.retryForMs = opts.retryForMs ?? 90_000
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
    const until = Date.now() + (call.retry === false ? 0 : this.retryForMs)
    const url = `${this.opts.base}${path}`
    for (let attempt = 1; ; attempt++) {
      let res: Dispatcher.ResponseData
      try {
        const payload = typeof body === 'function' ? body() : body
        res = await request(url, { method, headers, body: payload as Dispatcher.DispatchOptions['body'], dispatcher: this.opts.dispatcher })
      } catch (err) {
        const code = (err as { code?: string }).code ?? 'network_error'
        const wait = attempt < FEW_ATTEMPTS ? delay(attempt, until) : undefined
        if (wait === undefined) throw new HttpError(`${method} ${url} failed: ${(err as Error).message}`, 0, code)
        log('%s %s: %s, retrying in %d ms (attempt %d)', method, path, code, wait, attempt + 1)
        await sleep(wait)
        continue
      }
      if (res.statusCode < 400) return res
      const text = await boundedText(res.body, MAX_ERROR_BODY)
      const wait = transient(res.statusCode) || (retryable(res.statusCode) && attempt < FEW_ATTEMPTS) ? delay(attempt, until, Number(res.headers['retry-after'])) : undefined
      if (wait !== undefined) {
        log('%s %s: %d, retrying in %d ms (attempt %d)', method, path, res.statusCode, wait, attempt + 1)
        await sleep(wait)
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
    const text = await boundedText(res.body, MAX_JSON_BODY, `${method} ${path}`)
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

/**
 * The wait before attempt `attempt + 1`: exponential backoff with full jitter, capped at 5 s; a
 * server's Retry-After wins (capped at 30 s). Undefined when it would end past `until`.
 */
function delay(attempt: number, until: number, retryAfterSec?: number): number | undefined {
  const ms = Number.isFinite(retryAfterSec) && retryAfterSec! > 0 ? Math.min(30, retryAfterSec!) * 1000 : Math.random() * Math.min(5000, 250 * 2 ** attempt)
  return Date.now() + ms < until ? ms : undefined
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms))
}

/**
 * The agent's module cache, for workers whose messages it relays (a sandbox across a network):
 * the host's answer to a worker's `fetch` (Vitest's module runner asking for a module's code) or
 * `resolve` (an id resolved by Vite) is kept, and the same request from a later worker of this
 * sandbox is answered here, so a module's code crosses the link once per sandbox instead of once
 * per test file, and so do the resolutions every worker starts with. The request is the key (see
 * `KEYS`), only answers without an error are kept, and the host clears the cache before each
 * watch-mode rerun. The bytes it relays are not changed.
 */
import type { Codec } from './codec.js'
import { createMessageSplitter, lengthPrefixed, MAX_FRAME, MessageTooLarge, type RpcFrame } from './wire.js'

/**
 * The methods whose answers are kept, and each one's key.
 * - `fetch(url, importer, environment, options, traceCarrier)`: Vitest's host resolves `url`
 *   against `importer` only when it does not start with '/' (Vite has already resolved every
 *   static import to such a URL), so the importer is part of the key only then; the trace carrier
 *   never shapes the answer. Everything else is.
 * - `resolve(id, importer, environment)`: all of it.
 */
const KEYS: Record<string, (args: unknown[]) => string> = {
  fetch: ([url, importer, environment, options]) => JSON.stringify(['fetch', url, typeof url === 'string' && url.startsWith('/') ? null : importer, environment, options]),
  resolve: (args) => JSON.stringify(['resolve', ...args]),
}

/** The key of a request, or undefined for one that has none (arguments that do not serialize: a worker's own making). */
function keyOf(method: string, args: unknown[]): string | undefined {
  try {
    return KEYS[method](args)
  } catch {
    return undefined
  }
}

/** The methods whose answers the cache keeps (the host counts the ones it answers). */
export const CACHED_METHODS: ReadonlySet<string> = new Set(Object.keys(KEYS))

/** The fields of a birpc call. */
const RPC_KEYS = new Set(['t', 'i', 'm', 'a', 'o'])

export class ModuleCache {
  private answers = new Map<string, unknown>()
  /** Bumped on each clear: an answer to a request made before it is not kept. */
  private generation = 0

  clear(): void {
    this.answers.clear()
    this.generation++
  }

  /**
   * One worker's two directions through the cache: `fromWorker` and `fromHost` take its bytes as
   * they come and pass them on to `toHost` and `toWorker`, whole messages at a time. Answers are
   * shared only between workers of one `scope` (a project: another transforms a file its own way).
   */
  tap(codec: Codec, toHost: (bytes: Buffer) => void, toWorker: (bytes: Buffer) => void, scope = ''): { fromWorker(chunk: Buffer): void; fromHost(chunk: Buffer): void } {
    // Every call of the worker in flight, whatever its method, by its id: the ids are the worker's
    // own, so an answer to another call under a fetch's id (Vitest answers an artifact with the
    // artifact the worker sent) must never be kept as the fetch's. An id with a second call in
    // flight keeps no answer until all its calls are answered.
    const inFlight = new Map<string | number, { calls: number; keep?: { key: string; generation: number } }>()
    const decode = (payload: Buffer): RpcFrame | undefined => {
      try {
        return codec.decode(payload) as RpcFrame
      } catch {
        return undefined // not ours to judge: the other end reports it
      }
    }
    const split = createMessageSplitter((payload) => {
      const msg = decode(payload)
      if (msg?.t === 'q' && msg.i !== undefined) {
        // Only a plain birpc call (its fields and no other): the host's gateway reads a message with
        // another field as another kind, and never answers it as this call.
        const cached = Array.isArray(msg.a) && typeof msg.m === 'string' && CACHED_METHODS.has(msg.m) && Object.keys(msg).every((k) => RPC_KEYS.has(k))
        const request = cached ? keyOf(msg.m!, msg.a!) : undefined
        const key = request === undefined ? undefined : `${scope}\0${request}`
        if (key !== undefined && this.answers.has(key)) return toWorker(lengthPrefixed(codec.encode({ t: 's', i: msg.i, r: this.answers.get(key) })))
        const call = inFlight.get(msg.i)
        if (call) {
          call.calls++
          call.keep = undefined
        } else {
          inFlight.set(msg.i, { calls: 1, keep: key === undefined ? undefined : { key, generation: this.generation } })
        }
      }
      toHost(lengthPrefixed(payload))
    }, MAX_FRAME)
    let overLimit = false
    return {
      fromWorker: (chunk) => {
        if (overLimit) return
        try {
          split(chunk)
        } catch (err) {
          if (!(err instanceof MessageTooLarge)) throw err
          // Not buffered here either: the host gets the header alone, and its reader ends the worker for it.
          overLimit = true
          const head = Buffer.alloc(4)
          head.writeUInt32BE(err.length)
          toHost(head)
        }
      },
      fromHost: createMessageSplitter((payload) => {
        if (inFlight.size) {
          const msg = decode(payload)
          const call = msg?.t === 's' && msg.i !== undefined ? inFlight.get(msg.i) : undefined
          if (call) {
            if (call.keep && call.calls === 1 && msg!.e === undefined && call.keep.generation === this.generation) this.answers.set(call.keep.key, msg!.r)
            if (--call.calls === 0) inFlight.delete(msg!.i!)
            else call.keep = undefined
          }
        }
        toWorker(lengthPrefixed(payload))
      }),
    }
  }
}

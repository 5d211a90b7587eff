/**
 * `watasu()`: Watasu sandboxes, over the same process runtime protocol the local engine serves.
 * Credentials and endpoints are read the way Watasu's SDK reads them; `vitest-sandbox serve` is
 * a self-hosted Watasu-compatible backend (`watasu({ apiUrl: 'http://host:8787/v1', apiKey })`).
 */
import { RuntimeClient } from '../protocol/client.js'
import { env, requireKey } from './credentials.js'
import { runtimeProtocolSession } from './runtime-protocol.js'
import { remoteLimits, type RemoteLimits } from '../sizes.js'
import type { SandboxProvider } from './types.js'

export interface WatasuOptions {
  /** API key. @default process.env.WATASU_API_KEY ?? process.env.WATASU_ACCESS_TOKEN */
  apiKey?: string
  /** Control-plane base URL. @default process.env.WATASU_API_URL ?? `https://api.${domain}/v1` */
  apiUrl?: string
  /** Watasu domain. @default process.env.WATASU_DOMAIN ?? 'watasu.io' */
  domain?: string
  /** Data-plane URL instead of the one each create response names. @default process.env.WATASU_SANDBOX_URL */
  sandboxUrl?: string
  /**
   * `timeout_ms` of the processes the pool starts (Watasu's SDK defaults to 60 s, far too short for
   * an agent that lives the whole run; the sandbox's own TTL still bounds everything).
   * @default 86_400_000 (24 h)
   */
  processTimeoutMs?: number
  /**
   * What each sandbox may use: `memory` and `disk` as sizes (`'2g'`), `cpus` in cores. Sent with
   * each create; the server enforces them (`vitest-sandbox serve` refuses more than its own).
   * @default the server's
   */
  limits?: RemoteLimits
}

export function watasu(options: WatasuOptions = {}): SandboxProvider {
  const limits = remoteLimits(options.limits, 'watasu', ['memory', 'disk', 'cpus'], '')
  return {
    name: 'watasu',
    async connect() {
      const apiKey = requireKey('watasu', options.apiKey)
      const domain = options.domain ?? env('WATASU_DOMAIN') ?? 'watasu.io'
      const client = new RuntimeClient({
        url: options.apiUrl ?? env('WATASU_API_URL') ?? `https://api.${domain}/v1`,
        token: apiKey,
        sandboxUrl: options.sandboxUrl ?? env('WATASU_SANDBOX_URL'),
      })
      return runtimeProtocolSession(client, { base: 'watasu:base', processTimeoutMs: options.processTimeoutMs ?? 86_400_000, limits })
    },
  }
}

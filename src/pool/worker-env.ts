/** What a sandbox worker process is started with: its environment and the codec of its messages. */
import { chooseCodec, type CodecName } from '../sandbox-runtime/codec.js'

/**
 * V8 serialization between equal Node majors, devalue otherwise. `VITEST_SANDBOX_CODEC`
 * (v8 | devalue) forces one, to debug a codec problem.
 */
export function codecFor(sandboxNode: string): CodecName {
  const forced = process.env.VITEST_SANDBOX_CODEC
  if (forced === 'v8' || forced === 'devalue') return forced
  if (forced) throw new Error(`VITEST_SANDBOX_CODEC must be 'v8' or 'devalue' (got '${forced}')`)
  return chooseCodec(process.versions.node, sandboxNode)
}

/** Variables Vitest sets for its workers (it also sets some of them in its own process). */
const VITEST_KEYS = new Set(['TEST', 'VITEST', 'NODE_ENV', 'VITEST_MODE', 'FORCE_TTY'])

/**
 * Vitest's own variables and the project's `test.env` reach workers; the host's environment
 * reaches them only for the names listed in `env`.
 */
export function workerEnv(env: Partial<NodeJS.ProcessEnv>, forward: string[], configured: Set<string>): Record<string, string> {
  const out: Record<string, string> = {}
  for (const [key, value] of Object.entries(env)) {
    if (value === undefined) continue
    // A key the host process does not have (or has with another value) was added by Vitest for
    // this worker; an identical one is the host's environment leaking through.
    if (forward.includes(key) || configured.has(key) || VITEST_KEYS.has(key) || process.env[key] !== value) out[key] = value
  }
  return out
}


/**
 * The variables Vitest sends a worker in its config (`config.env`, which the worker copies onto
 * `process.env` and `import.meta.env`): Vite's env holds every `VITE_*` variable of the host's
 * environment and of the `.env*` files in its envDir. Only these cross: Vite's own (`MODE`,
 * `BASE_URL`, `DEV`, `PROD`, `SSR`), `test.env`, the names in `env`, and variables of `.env*`
 * files that are given to the sandbox (`workspace.include`).
 */
import fs from 'node:fs'
import path from 'node:path'
import { parseEnv } from 'node:util'
import type { Workspace } from '../../workspace/collect.js'

const VITE_OWN = new Set(['MODE', 'BASE_URL', 'DEV', 'PROD', 'SSR'])

export interface ConfigEnvOptions {
  /** Host variables forwarded by name (`env`). */
  forward: string[]
  /** Names the project's `test.env` sets. */
  configured: Set<string>
  workspace: Workspace
  /** Vite's envDir (default: the root). */
  envDir?: string | false
}

export function screenConfigEnv(env: unknown, opts: ConfigEnvOptions): Record<string, unknown> {
  if (env === null || typeof env !== 'object') return {}
  const fromGivenFiles = givenEnvFileNames(opts)
  const out: Record<string, unknown> = {}
  for (const [key, value] of Object.entries(env)) {
    if (VITE_OWN.has(key) || opts.configured.has(key) || opts.forward.includes(key) || fromGivenFiles.has(key)) out[key] = value
  }
  return out
}

/** Variable names of the `.env*` files in envDir that the sandbox is given. */
function givenEnvFileNames(opts: ConfigEnvOptions): Set<string> {
  const names = new Set<string>()
  if (opts.envDir === false) return names
  const dir = path.resolve(opts.workspace.root, opts.envDir ?? '.')
  let entries: string[]
  try {
    entries = fs.readdirSync(dir).filter((f) => f === '.env' || f.startsWith('.env.'))
  } catch {
    return names
  }
  for (const file of entries) {
    const abs = path.join(dir, file)
    if (!opts.workspace.isGiven(abs)) continue
    try {
      for (const key of Object.keys(parseEnv(fs.readFileSync(abs, 'utf8')))) names.add(key)
    } catch {
      // Not a file of variables.
    }
  }
  return names
}

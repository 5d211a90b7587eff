/**
 * The pool speaks Vitest 4.1's and 5's pool protocol (4.0 sends the worker config with each run,
 * and lacks vitest/runtime). Checked when the config is loaded, so an older Vitest fails once with
 * the fix, rather than once per worker it asks for.
 */
import fs from 'node:fs'
import path from 'node:path'
import { SandboxOptionsError } from './options.js'

export function assertSupportedVitest(version: string): void {
  const [major, minor] = version.split('.').map(Number)
  if (major > 4 || (major === 4 && minor >= 1)) return
  throw new SandboxOptionsError(`vitest-pool-sandbox needs Vitest 4.1 or newer; this project runs Vitest ${version}. Fix: npm install --save-dev vitest@^4.1 (or pnpm add -D / yarn add -D)`)
}

/**
 * The version of the Vitest whose command line runs this process (the package around the script
 * node was started with), or undefined when Vitest was started some other way: the pool then
 * checks the instance it is given.
 */
export function runningVitestVersion(script = process.argv[1]): string | undefined {
  if (!script) return undefined
  let dir: string
  try {
    dir = path.dirname(fs.realpathSync(script))
  } catch {
    return undefined
  }
  for (let i = 0; i < 4; i++, dir = path.dirname(dir)) {
    try {
      const pkg = JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8')) as { name?: string; version?: string }
      if (pkg.name) return pkg.name === 'vitest' ? pkg.version : undefined
    } catch {}
  }
  return undefined
}

/** Refuses a Vitest older than 4.1 when the running one is known. */
export function assertRunningVitest(): void {
  const version = runningVitestVersion()
  if (version) assertSupportedVitest(version)
}

/**
 * `DEBUG=vitest-pool-sandbox:*` (or a comma-separated list such as `vitest-pool-sandbox:engine`)
 * turns on diagnostics on stderr, in the style of the `debug` package, without depending on it.
 * Nothing is ever printed inside a sandbox's test workers.
 */
import { format } from 'node:util'

const NAMESPACE = 'vitest-pool-sandbox'

function enabled(name: string): boolean {
  const patterns = (process.env.DEBUG ?? '').split(/[\s,]+/).filter(Boolean)
  let on = false
  for (const p of patterns) {
    const negate = p.startsWith('-')
    const re = new RegExp(`^${(negate ? p.slice(1) : p).replace(/[.+?^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*')}$`)
    if (re.test(name)) on = !negate
  }
  return on
}

export function debug(scope: string): (fmt: string, ...args: unknown[]) => void {
  const name = `${NAMESPACE}:${scope}`
  if (!enabled(name)) return () => {}
  return (fmt, ...args) => process.stderr.write(`${new Date().toISOString()} ${name} ${format(fmt, ...args)}\n`)
}

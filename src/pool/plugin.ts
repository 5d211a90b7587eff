/**
 * `sandboxPlugin(options)`: the Vitest plugin that makes `pool: 'sandbox'` (a string) and
 * `vitest --pool=sandbox` mean the sandbox pool with these options. A config that does not choose
 * the pool keeps its own, so a team can run forks locally and `vitest run --pool=sandbox` in CI.
 * The config's own `maxWorkers` or `fileParallelism: false` is respected, not overridden.
 */
import os from 'node:os'
import type { Plugin } from 'vitest/config'
import { createSandboxPool, sizeScheduler, WORKERS_SET } from './index.js'
import { resolveOptions, type SandboxPoolOptions } from './options.js'
import { assertSupportedVitest } from './vitest-version.js'

/** The pool the command line asks for (`--pool=x` or `--pool x`), which wins over the config's. */
function poolOnCommandLine(): string | undefined {
  const argv = process.argv
  for (let i = 0; i < argv.length; i++) {
    const m = /^--pool(?:=(.*))?$/.exec(argv[i])
    if (m) return m[1] ?? argv[i + 1]
  }
  return undefined
}

export function sandboxPlugin(options?: SandboxPoolOptions): Plugin {
  const resolved = resolveOptions(options, os.availableParallelism())
  const pool = createSandboxPool(resolved)
  return {
    name: 'vitest-pool-sandbox',
    config(config) {
      const test = (config as { test?: { pool?: unknown; maxWorkers?: unknown; fileParallelism?: unknown } }).test ?? {}
      if (test.maxWorkers !== undefined || test.fileParallelism === false) {
        // A sandbox() pool in the same config sized the scheduler already: the config decides.
        if ((globalThis as any)[WORKERS_SET] === process.env.VITEST_MAX_WORKERS) delete process.env.VITEST_MAX_WORKERS
        return
      }
      if ((poolOnCommandLine() ?? test.pool) === 'sandbox') sizeScheduler(resolved)
    },
    configureVitest({ project }) {
      const config = project.config as { pool?: string; poolRunner?: unknown }
      if (config.pool !== 'sandbox') return
      assertSupportedVitest(project.vitest.version)
      config.poolRunner ??= pool
    },
  }
}

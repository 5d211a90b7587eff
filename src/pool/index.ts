/**
 * `sandbox(options)`: the Vitest pool. Returns a PoolRunnerInitializer named `sandbox`; one fleet
 * of sandboxes per Vitest instance, torn down when Vitest closes.
 */
import os from 'node:os'
import type { PoolOptions, PoolRunnerInitializer, PoolWorker } from 'vitest/node'
import { Fleet } from './fleet.js'
import { resolveOptions, type SandboxPoolOptions } from './options.js'
import { SandboxPoolWorker } from './worker.js'

export type { SandboxPoolOptions } from './options.js'

/** True when the command line already decides how many workers run. */
function workersGivenOnCommandLine(): boolean {
  return process.argv.some((a) => /^--(max-?workers|maxWorkers|no-file-parallelism|file-?parallelism|fileParallelism)\b/i.test(a))
}

export function sandbox(options?: SandboxPoolOptions): PoolRunnerInitializer {
  const resolved = resolveOptions(options, Math.max(1, os.availableParallelism() - 1))
  // A pool cannot size Vitest's scheduler itself, and the host's CPU count says nothing about
  // sandbox capacity: Vitest reads VITEST_MAX_WORKERS when it resolves the config, right after
  // the config file (which calls this) is loaded.
  if (process.env.VITEST_MAX_WORKERS === undefined && !workersGivenOnCommandLine()) {
    process.env.VITEST_MAX_WORKERS = String(resolved.sandboxes * resolved.concurrency)
  }
  const fleets = new WeakMap<object, Fleet>()
  return {
    name: 'sandbox',
    createPoolWorker(poolOptions: PoolOptions): PoolWorker {
      const vitest = poolOptions.project.vitest
      let fleet = fleets.get(vitest)
      if (!fleet) {
        const logger = vitest.logger
        fleet = new Fleet(resolved, vitest.config.root, { log: (t) => logger.log(t) })
        fleets.set(vitest, fleet)
        const f = fleet
        vitest.onClose(() => f.close())
        vitest.onTestsRerun(() => f.sync())
      }
      return new SandboxPoolWorker(fleet, poolOptions, resolved.env)
    },
  }
}

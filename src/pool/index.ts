/**
 * `sandbox(options)`: the Vitest pool. Returns a PoolRunnerInitializer named `sandbox`; one fleet
 * of sandboxes per Vitest instance, torn down when Vitest closes.
 */
import os from 'node:os'
import path from 'node:path'
import type { PoolOptions, PoolRunnerInitializer, PoolWorker } from 'vitest/node'
import { Fleet } from './fleet.js'
import { resolveOptions, type SandboxPoolOptions } from './options.js'
import { SandboxPoolWorker } from './worker.js'

export type { SandboxPoolOptions } from './options.js'

/** True when the command line already decides how many workers run. */
function workersGivenOnCommandLine(): boolean {
  return process.argv.some((a) => /^--(max-?workers|maxWorkers|no-file-parallelism|file-?parallelism|fileParallelism)\b/i.test(a))
}

/** Files and folders this run writes under the root: never sent to a sandbox. */
function runOutputs(vitest: PoolOptions['project']['vitest']): string[] {
  const config = vitest.config as any
  const root = config.root as string
  const outputs: string[] = [config.coverage?.reportsDirectory, config.attachmentsDir ?? '.vitest-attachments']
  const outputFile = config.outputFile
  if (typeof outputFile === 'string') outputs.push(outputFile)
  else if (outputFile && typeof outputFile === 'object') outputs.push(...Object.values(outputFile).filter((v): v is string => typeof v === 'string'))
  return outputs.filter((o): o is string => typeof o === 'string' && o !== '').map((o) => path.resolve(root, o))
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
        fleet = new Fleet(resolved, vitest.config.root, { log: (t) => logger.log(t), error: (t) => logger.error(t) }, runOutputs(vitest))
        fleets.set(vitest, fleet)
        const f = fleet
        vitest.onClose(() => f.close())
        vitest.onTestsRerun(() => f.sync())
      }
      return new SandboxPoolWorker(fleet, poolOptions, { env: resolved.env, allowWrite: resolved.allowWrite })
    },
  }
}

/**
 * `sandbox(options)`: the Vitest pool. Returns a PoolRunnerInitializer named `sandbox`; one fleet
 * of sandboxes per Vitest instance, torn down when Vitest closes.
 */
import os from 'node:os'
import path from 'node:path'
import type { PoolOptions, PoolRunnerInitializer, PoolWorker } from 'vitest/node'
import { runHistory } from './durations.js'
import { FallbackWorker } from './fallback.js'
import { Fleet } from './fleet.js'
import { resolveOptions, type ResolvedOptions, type SandboxPoolOptions } from './options.js'
import { guardEvalValue } from './gateway/eval-guard.js'
import { screenHostTransforms } from './gateway/host-screens.js'
import { RUNTIME_DIR } from './runtime-files.js'
import { assertRunningVitest, assertSupportedVitest } from './vitest-version.js'
import { SandboxPoolWorker } from './worker.js'

export type { SandboxPoolOptions } from './options.js'

/** True when the command line already decides how many workers run. */
function workersGivenOnCommandLine(): boolean {
  return process.argv.some((a) => /^--(max-?workers|maxWorkers|no-file-parallelism|file-?parallelism|fileParallelism)\b/i.test(a))
}

/** Set by this package (not the user) to size Vitest's scheduler: the plugin may take it back. */
export const WORKERS_SET = Symbol.for('vitest-pool-sandbox.max-workers')

/**
 * A pool cannot size Vitest's scheduler itself, and the host's CPU count says nothing about
 * sandbox capacity: Vitest reads VITEST_MAX_WORKERS when it resolves the config, right after the
 * config file (which calls sandbox()) is loaded. With 'auto', as many as the largest fleet has
 * slots: a file waits for a slot in the fleet's queue, not in Vitest's.
 */
export function sizeScheduler(resolved: ResolvedOptions): void {
  if (process.env.VITEST_MAX_WORKERS !== undefined || workersGivenOnCommandLine()) return
  process.env.VITEST_MAX_WORKERS = String((resolved.sandboxes === 'auto' ? resolved.maxSandboxes : resolved.sandboxes) * resolved.concurrency)
  ;(globalThis as any)[WORKERS_SET] = process.env.VITEST_MAX_WORKERS
}

/** Files and folders this run writes under the root: never sent to a sandbox. */
export function runOutputs(resolvedConfig: object): string[] {
  const config = resolvedConfig as any
  const root = config.root as string
  const outputs: string[] = [config.coverage?.reportsDirectory, config.attachmentsDir ?? '.vitest-attachments']
  const outputFile = config.outputFile
  if (typeof outputFile === 'string') outputs.push(outputFile)
  else if (outputFile && typeof outputFile === 'object') outputs.push(...Object.values(outputFile).filter((v): v is string => typeof v === 'string'))
  return outputs.filter((o): o is string => typeof o === 'string' && o !== '').map((o) => path.resolve(root, o))
}

/**
 * Workers of browser-like environments (jsdom, happy-dom) load modules through Vite's client
 * environment, which serves only `server.fs.allow`: add this package's snapshot environment, which
 * lives outside the project when the package is installed elsewhere.
 */
function allowRuntimeFiles(project: PoolOptions['project']): void {
  const allow = (project.vite?.config as { server?: { fs?: { allow?: string[] } } } | undefined)?.server?.fs?.allow
  if (Array.isArray(allow) && !allow.includes(RUNTIME_DIR)) allow.push(RUNTIME_DIR)
}

/**
 * The resolved options of each sandbox() pool, by its createPoolWorker function (which survives
 * Vite's config merging, unlike the object around it), for `vitest-sandbox template` to read from
 * a project's config. Global, so another copy of this package finds them too.
 */
const REGISTRY_KEY = Symbol.for('vitest-pool-sandbox.options')
const registry: WeakMap<object, ResolvedOptions> = ((globalThis as any)[REGISTRY_KEY] ??= new WeakMap())

/** The options a config's `test.pool` was made with, if it is a sandbox() pool. */
export function sandboxOptionsOf(pool: unknown): ResolvedOptions | undefined {
  const create = (pool as { createPoolWorker?: unknown } | null)?.createPoolWorker
  return typeof create === 'function' ? registry.get(create) : undefined
}

export function sandbox(options?: SandboxPoolOptions): PoolRunnerInitializer {
  assertRunningVitest()
  const resolved = resolveOptions(options, os.availableParallelism())
  sizeScheduler(resolved)
  return createSandboxPool(resolved)
}

/** The pool itself: one fleet of sandboxes per Vitest instance. */
export function createSandboxPool(resolved: ResolvedOptions): PoolRunnerInitializer {
  // Before Vitest transforms anything on the host: it also transforms files no worker asked for
  // (coverage of untested files), through environments no worker has screened yet, also when no
  // worker starts at all.
  guardEvalValue()
  screenHostTransforms(resolved.workspace, [RUNTIME_DIR])
  const fleets = new WeakMap<object, Fleet>()
  const pool = {
    name: 'sandbox',
    createPoolWorker(poolOptions: PoolOptions): PoolWorker {
      const vitest = poolOptions.project.vitest
      allowRuntimeFiles(poolOptions.project)
      let fleet = fleets.get(vitest)
      if (!fleet) {
        assertSupportedVitest(vitest.version)
        const logger = vitest.logger
        // A live progress line for a template build, on a terminal only.
        const tty = process.stdout.isTTY ? process.stdout : undefined
        const outputs = [...runOutputs(vitest.config), ...(resolved.usageFile ? [path.resolve(vitest.config.root, resolved.usageFile)] : [])]
        fleet = new Fleet(resolved, vitest.config.root, { log: (t) => logger.log(t), error: (t) => logger.error(t), tty }, outputs, () => runHistory(vitest))
        fleets.set(vitest, fleet)
        const created = fleet
        vitest.onClose(() => created.close())
        vitest.onTestsRerun(() => {
          created.budget.newRun()
          return created.sync()
        })
      }
      const f = fleet
      const worker = () => new SandboxPoolWorker(f, poolOptions, { env: resolved.env, allowWrite: resolved.allowWrite })
      return resolved.fallback === 'forks' ? new FallbackWorker(fleet, poolOptions, worker) : worker()
    },
  }
  registry.set(pool.createPoolWorker, resolved)
  return pool
}

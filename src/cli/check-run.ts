/**
 * One run of `vitest-sandbox check`: the project's own Vitest (resolved from the project root),
 * started through its API with the given pool and a JSON report, so the arguments mean exactly
 * what they mean to `vitest run`.
 *
 *   node check-run.js <root> <forks|sandbox> <report.json> <sandbox options as JSON> [vitest args]
 *
 * A `provider` in the options is a remote provider's name, configured from its environment;
 * `local` holds `local()`'s options (the benchmarks turn its limits off with it).
 */
import { createRequire } from 'node:module'
import path from 'node:path'
import { pathToFileURL } from 'node:url'
import { sandbox } from '../pool/index.js'
import { isRemoteProvider, REMOTE_PROVIDERS } from '../providers/index.js'
import { local } from '../providers/local.js'

const [root, pool, report, sandboxOptions, ...args] = process.argv.slice(2)
const vitestDir = path.dirname(createRequire(path.join(root, 'package.json')).resolve('vitest/package.json'))
const { parseCLI, startVitest } = await import(pathToFileURL(path.join(vitestDir, 'dist/node.js')).href)
const { filter, options } = parseCLI(['vitest', 'run', ...args])
const pooled = JSON.parse(sandboxOptions)
const provider: unknown = pooled.provider
if (typeof provider === 'string' && isRemoteProvider(provider)) pooled.provider = REMOTE_PROVIDERS[provider]()
if (pooled.local) pooled.provider = local(pooled.local)
delete pooled.local
await startVitest('test', filter, {
  ...options,
  root: options.root ?? root,
  run: true,
  watch: false,
  pool: pool === 'forks' ? 'forks' : sandbox(pooled),
  reporters: ['dot', 'json'],
  outputFile: { json: report },
})

#!/usr/bin/env node
/**
 * vitest-sandbox: the command line of vitest-pool-sandbox.
 *
 *   vitest-sandbox doctor [--fix]      check (and fix) what the local engine and providers need
 *   vitest-sandbox serve [options]     run the local engine as a server other machines can use
 *   vitest-sandbox check [vitest args] run the suite with forks and in sandboxes, print differences
 *   vitest-sandbox reap [options]      kill sandboxes the pool left behind on a remote provider
 *   vitest-sandbox template ls|build|prune   the provider's cached templates
 */
import { parseArgs } from 'node:util'
import { check } from './check.js'
import { doctor } from './doctor.js'
import { reap } from './reap.js'
import { resolveOptions } from '../pool/options.js'
import { isRemoteProvider, REMOTE_PROVIDERS } from '../providers/index.js'
import { serve } from './serve.js'
import { template } from './template.js'

const USAGE = `usage: vitest-sandbox <command> [options]

commands:
  doctor [--fix]     check bubblewrap, user namespaces, AppArmor, overlayfs and provider
                     credentials; print the exact fix for each problem (--fix runs the safe ones)
      --provider P       check only remote provider P (watasu, opensandbox, e2b, heyo): reachable, key accepted
  serve              run the local sandbox engine over the process runtime protocol
      --host H           address to listen on (default 127.0.0.1)
      --port N           port (default 8787; 0 picks a free one)
      --token T          bearer token for the control plane (default: $VITEST_SANDBOX_TOKEN,
                         else a random one, printed at start)
      --tenants FILE     more clients, each with its own token, sandboxes and templates:
                         a JSON object { "team-a": "<token>", ... } (--token is the default one's)
      --state-dir D      template layers and sandbox state (default ~/.cache/vitest-pool-sandbox)
      --max-sandboxes N  sandboxes alive at once (default 64)
      --memory S         memory per sandbox, swap included ('2g'; default: host memory / (cores + 1))
      --disk S           writable disk per sandbox ('4g'; default 4g); needs root
      --cpus N           CPU cores per sandbox (default: all, at a fair share)
      --processes N      processes per sandbox (default 1024)
      --open-files N     open files per process (default 4096)
                         (clients may ask for less of each, never more)
      --allow-network    let sandboxes that ask for it (allow_internet_access) use the host network
  check [options] [-- vitest args]
                     run the project's suite with pool 'forks', then in sandboxes, and print every
                     test whose result differs and both wall times (exit 1 on any difference)
      --sandboxes N      sandboxes for the sandbox run (default 1)
      --concurrency N    test files at once per sandbox (default: CPUs - 1)
      --provider P       a remote provider (watasu, opensandbox, e2b, heyo), configured from its variables
      --dependencies D   template.dependencies: auto, host, install or copy
      --install-env A,B  template.installEnv: host variables for the install step only
      --network N        network: none (default) or allow (heyo() needs allow)
  reap [options]     list the sandboxes the pool created that are still alive on a remote
                     provider, and kill them
      --provider P       watasu, opensandbox, e2b or heyo (default: each one configured)
      --older-than D     only sandboxes created at least D ago (90s, 30m, 2h, 7d)
      --run ID           only the sandboxes of one run (its id is in DEBUG logs and labels)
      --dry-run          list them, kill nothing
  template ls        list the cached templates: key, id, size, age, last use
  template build     build the project's template now (a CI warm-up job), with progress
  template prune     delete templates no sandbox runs on, unused for --older-than (default 7d),
                     except the project's current one
      --provider P       local, watasu, opensandbox or e2b (default: the project's Vitest config)
      --older-than D     prune: unused for at least D (90s, 30m, 2h, 7d)
      --all              prune: every template no sandbox runs on, the current one too
      --dry-run          prune: list them, delete nothing
`

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv
  const log = (line: string) => process.stdout.write(`${line}\n`)
  switch (command) {
    case 'doctor': {
      const { values } = parseArgs({ args: rest, options: { fix: { type: 'boolean', default: false }, provider: { type: 'string' } } })
      return doctor({ fix: values.fix!, provider: values.provider, log })
    }
    case 'serve': {
      const { values } = parseArgs({
        args: rest,
        options: {
          host: { type: 'string', default: '127.0.0.1' },
          port: { type: 'string', default: '8787' },
          token: { type: 'string' },
          'state-dir': { type: 'string' },
          tenants: { type: 'string' },
          'max-sandboxes': { type: 'string' },
          memory: { type: 'string' },
          disk: { type: 'string' },
          cpus: { type: 'string' },
          processes: { type: 'string' },
          'open-files': { type: 'string' },
          'allow-network': { type: 'boolean', default: false },
        },
      })
      return serve({
        host: values.host!,
        port: values.port!,
        token: values.token ?? process.env.VITEST_SANDBOX_TOKEN,
        stateDir: values['state-dir'],
        tenants: values.tenants,
        maxSandboxes: values['max-sandboxes'],
        limits: { memory: values.memory, disk: values.disk, cpus: values.cpus, processes: values.processes, openFiles: values['open-files'] },
        allowNetwork: values['allow-network']!,
        log,
      })
    }
    case 'check': {
      const split = rest.indexOf('--')
      const own = split === -1 ? rest : rest.slice(0, split)
      const { values, positionals } = parseArgs({
        args: own,
        allowPositionals: true,
        options: { sandboxes: { type: 'string' }, concurrency: { type: 'string' }, provider: { type: 'string' }, dependencies: { type: 'string' }, 'install-env': { type: 'string' }, network: { type: 'string' } },
      })
      const sandboxOptions: Record<string, unknown> = {}
      if (values.network !== undefined) sandboxOptions.network = values.network
      // Validated by sandbox() itself, which names the option and what it accepts.
      if (values.dependencies !== undefined || values['install-env'] !== undefined) {
        sandboxOptions.template = { dependencies: values.dependencies, installEnv: values['install-env']?.split(',').filter(Boolean) }
      }
      if (values.provider !== undefined) {
        if (!isRemoteProvider(values.provider)) throw new Error(`check: unknown --provider '${values.provider}'; the remote providers are ${Object.keys(REMOTE_PROVIDERS).join(', ')} (local() is the default)`)
        sandboxOptions.provider = values.provider
      }
      for (const key of ['sandboxes', 'concurrency'] as const) {
        const v = values[key]
        if (v === undefined) continue
        if (!/^\d+$/.test(v)) throw new Error(`check: --${key} must be a whole number (got '${v}')`)
        sandboxOptions[key] = Number(v)
      }
      // Bad values fail now, before either run (the provider is only a name here).
      resolveOptions({ ...sandboxOptions, provider: undefined }, 1)
      return check({ root: process.cwd(), args: [...positionals, ...(split === -1 ? [] : rest.slice(split + 1))], sandbox: sandboxOptions, log })
    }
    case 'reap': {
      const { values } = parseArgs({
        args: rest,
        options: { provider: { type: 'string' }, 'older-than': { type: 'string' }, run: { type: 'string' }, 'dry-run': { type: 'boolean', default: false } },
      })
      return reap({ provider: values.provider, olderThan: values['older-than'], run: values.run, dryRun: values['dry-run']!, log })
    }
    case 'template': {
      const { values, positionals } = parseArgs({
        args: rest,
        allowPositionals: true,
        options: { provider: { type: 'string' }, 'older-than': { type: 'string' }, all: { type: 'boolean', default: false }, 'dry-run': { type: 'boolean', default: false } },
      })
      if (positionals.length !== 1) throw new Error(`template: give one action: template ls, template build or template prune (got ${positionals.length ? positionals.join(' ') : 'none'})`)
      return template({ action: positionals[0], root: process.cwd(), provider: values.provider, olderThan: values['older-than'], all: values.all!, dryRun: values['dry-run']!, log })
    }
    case undefined:
    case 'help':
    case '--help':
    case '-h':
      process.stdout.write(USAGE)
      return command === undefined ? 1 : 0
    default:
      process.stderr.write(`vitest-sandbox: unknown command '${command}'\n\n${USAGE}`)
      return 1
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    if (code !== -1) process.exitCode = code
  },
  (err) => {
    process.stderr.write(`vitest-sandbox: ${err instanceof Error ? err.message : String(err)}\n`)
    process.exitCode = 1
  },
)

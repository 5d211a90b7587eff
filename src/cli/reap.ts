/**
 * `vitest-sandbox reap`: find the sandboxes the pool created (every one carries its label) that
 * are still alive, and kill them. For a host that died before it could clean up, or a TTL set
 * long. Without `--provider`, every remote provider whose credentials are set is asked.
 */
import { keyVariable, PROVIDER_ENV, type RemoteProviderName } from '../providers/credentials.js'
import { isRemoteProvider, REMOTE_PROVIDERS } from '../providers/index.js'
import { POOL_LABEL, RUN_LABEL } from '../providers/types.js'
import { parseDuration } from './duration.js'
import { removeEach } from './remove-each.js'

export interface ReapOptions {
  provider?: string
  /** Only sandboxes created at least this long ago, e.g. `30m`. */
  olderThan?: string
  /** Only the sandboxes of this run id. */
  run?: string
  /** List, do not kill. */
  dryRun: boolean
  log: (line: string) => void
}

function configured(): RemoteProviderName[] {
  return (Object.keys(PROVIDER_ENV) as RemoteProviderName[]).filter((p) => keyVariable(p))
}

export async function reap(opts: ReapOptions): Promise<number> {
  const minAgeMs = opts.olderThan === undefined ? 0 : parseDuration('older-than', opts.olderThan)
  if (opts.provider !== undefined && !isRemoteProvider(opts.provider)) {
    throw new Error(`reap: unknown --provider '${opts.provider}'; the remote providers are ${Object.keys(REMOTE_PROVIDERS).join(', ')} (local sandboxes die with the process that made them)`)
  }
  const names = opts.provider !== undefined && isRemoteProvider(opts.provider) ? [opts.provider] : configured()
  if (!names.length) {
    throw new Error(`reap: no provider configured; pass --provider (${Object.keys(REMOTE_PROVIDERS).join(', ')}) or set ${Object.values(PROVIDER_ENV).map((v) => v[0]).join(' or ')}`)
  }
  let failed = 0
  for (const name of names) {
    const session = await REMOTE_PROVIDERS[name]().connect()
    try {
      const labels: Record<string, string> = { [POOL_LABEL]: 'pool' }
      if (opts.run) labels[RUN_LABEL] = opts.run
      const now = Date.now()
      const all = await session.listSandboxes(labels)
      const old = all.filter((s) => minAgeMs === 0 || (s.createdAt !== undefined && now - Date.parse(s.createdAt) >= minAgeMs))
      opts.log(`${name}: ${all.length} pool sandbox${all.length === 1 ? '' : 'es'} alive, ${old.length} to ${opts.dryRun ? 'reap (dry run)' : 'reap'}`)
      failed += await removeEach(old, {
        dryRun: opts.dryRun,
        name: (s) => `${s.id} (run ${s.labels[RUN_LABEL] ?? '?'}${s.labels.role ? `, ${s.labels.role}` : ''}, ${s.createdAt ? `${Math.round((now - Date.parse(s.createdAt)) / 1000)}s old` : 'age unknown'})`,
        remove: (s) => session.killSandbox(s.id),
        verb: 'kill',
        log: opts.log,
      })
    } finally {
      await session.close()
    }
  }
  return failed ? 1 : 0
}

/**
 * `vitest-sandbox template ls | build | prune`: the cached templates of a provider. The provider
 * (and for `build`, every template option) comes from the project's Vitest config, or from
 * `--provider` (then with default options).
 */
import path from 'node:path'
import { templateSpec } from '../pool/fleet.js'
import { runOutputs, sandboxOptionsOf } from '../pool/index.js'
import { resolveOptions, type ResolvedOptions } from '../pool/options.js'
import { isRemoteProvider, REMOTE_PROVIDERS } from '../providers/index.js'
import { local } from '../providers/local.js'
import { POOL_LABEL, RUN_LABEL, type ProviderSession, type TemplateSummary } from '../providers/types.js'
import { TEMPLATE_PREFIX } from '../template/key.js'
import { createProgress } from '../template/progress.js'
import { ensureTemplate, plannedTemplate, TEMPLATE_LABEL } from '../template/template.js'
import { collectWorkspace, findWorkspaceRoot } from '../workspace/collect.js'
import { parseDuration } from './duration.js'
import { removeEach } from './remove-each.js'

export interface TemplateCommandOptions {
  action: string
  /** The project folder (its Vitest config is read). */
  root: string
  provider?: string
  /** prune: templates not used for this long (default 7d). */
  olderThan?: string
  /** prune: every template no sandbox runs on. */
  all: boolean
  dryRun: boolean
  log: (line: string) => void
}

interface Project {
  options: ResolvedOptions
  /** Where the options came from, for the first line of output. */
  from: string
  /** The project's Vitest config, resolved (undefined with --provider outside a project). */
  config?: { root: string }
}

/** The sandbox() options of the project's config; with --provider, that provider instead. */
async function loadProject(opts: TemplateCommandOptions): Promise<Project> {
  let config: any
  try {
    const { resolveConfig } = await import('vitest/node')
    config = (await resolveConfig({ root: opts.root, watch: false })).vitestConfig
  } catch (err) {
    if (!opts.provider) throw new Error(`template: could not read the Vitest config in ${opts.root} (${(err as Error).message.split('\n')[0]}); run this in the project folder, or pass --provider`)
  }
  // Vitest keeps a pool given as an object in `poolRunner` (and its name in `pool`).
  const fromConfig = config ? sandboxOptionsOf(config.poolRunner ?? config.pool) : undefined
  if (opts.provider === undefined) {
    if (!fromConfig) throw new Error(`template: the Vitest config in ${opts.root} does not use pool: sandbox(); pass --provider (local, ${Object.keys(REMOTE_PROVIDERS).join(', ')})`)
    return { options: fromConfig, from: `the project's config (${fromConfig.provider.name})`, config }
  }
  const provider = opts.provider === 'local' ? local() : isRemoteProvider(opts.provider) ? REMOTE_PROVIDERS[opts.provider]() : undefined
  if (!provider) throw new Error(`template: unknown --provider '${opts.provider}'; the providers are local, ${Object.keys(REMOTE_PROVIDERS).join(', ')}`)
  const options = fromConfig ? { ...fromConfig, provider } : resolveOptions({ provider }, 1)
  return { options, from: `--provider ${opts.provider}${fromConfig ? " with the project's template options" : ''}`, config }
}

function size(bytes?: number): string {
  if (bytes === undefined) return '-'
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(0)} KiB`
  if (bytes < 1024 ** 3) return `${(bytes / 1024 ** 2).toFixed(1)} MiB`
  return `${(bytes / 1024 ** 3).toFixed(2)} GiB`
}

function ago(iso?: string): string {
  if (!iso) return '-'
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000)
  if (s < 90) return `${Math.round(s)}s ago`
  if (s < 5400) return `${Math.round(s / 60)}m ago`
  if (s < 129600) return `${Math.round(s / 3600)}h ago`
  return `${Math.round(s / 86400)}d ago`
}

const lastUse = (t: TemplateSummary) => t.lastUsedAt ?? t.createdAt

export async function template(opts: TemplateCommandOptions): Promise<number> {
  if (!['ls', 'build', 'prune'].includes(opts.action)) throw new Error(`template: unknown action '${opts.action}'; use template ls, template build or template prune`)
  const minAgeMs = parseDuration('older-than', opts.olderThan ?? '7d')
  const project = await loadProject(opts)
  const root = findWorkspaceRoot(project.config?.root ?? opts.root)
  const provider = project.options.provider
  const session = await provider.connect()
  try {
    if (opts.action === 'build') return await build(session, project, root, opts)
    // The template this project's runs use now, if it needs one.
    const current = project.config ? plannedTemplate(session, { root, ...project.options }, provider.name).name : undefined
    const all = (await session.listTemplates()).filter((t) => t.name.startsWith(TEMPLATE_PREFIX))
    if (opts.action === 'ls') {
      opts.log(`templates on ${provider.name} (from ${project.from}): ${all.length}`)
      if (!all.length) return 0
      const rows = [['KEY', 'ID', 'SIZE', 'CREATED', 'LAST USED', ''], ...all.map((t) => [t.name.slice(TEMPLATE_PREFIX.length), t.id, size(t.sizeBytes), ago(t.createdAt), ago(t.lastUsedAt), t.name === current ? "(this project's)" : ''])]
      const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)))
      for (const r of rows) opts.log(r.map((c, i) => c.padEnd(widths[i])).join('  ').trimEnd())
      return 0
    }
    // prune: not in use, and (unless --all) unused for --older-than and not this project's current one.
    const now = Date.now()
    const age = (t: TemplateSummary) => {
      const used = lastUse(t)
      return used === undefined ? 0 : now - Date.parse(used)
    }
    const doomed = all.filter((t) => opts.all || (t.name !== current && age(t) >= minAgeMs))
    opts.log(`templates on ${provider.name}: ${all.length}, ${doomed.length} to ${opts.dryRun ? 'prune (dry run)' : 'prune'}${opts.all ? '' : ` (unused for ${opts.olderThan ?? '7d'}, not this project's current one)`}`)
    const failed = await removeEach(doomed, {
      dryRun: opts.dryRun,
      name: (t) => `${t.name} (${t.id}, ${size(t.sizeBytes)}, last used ${ago(lastUse(t))})`,
      keep: async (t) => ((await session.listSandboxes({ [TEMPLATE_LABEL]: t.name })).length ? 'a sandbox runs on it' : undefined),
      remove: (t) => session.deleteTemplate(t.id),
      verb: 'delete',
      log: opts.log,
    })
    return failed ? 1 : 0
  } finally {
    await session.close()
  }
}

async function build(session: ProviderSession, project: Project, root: string, opts: TemplateCommandOptions): Promise<number> {
  const { options } = project
  const outputs = project.config ? runOutputs(project.config) : []
  const workspace = await collectWorkspace(root, { ...options.workspace, outputs })
  const tty = process.stdout.isTTY ? process.stdout : undefined
  const labels = { [POOL_LABEL]: 'pool', [RUN_LABEL]: `template-build-${Date.now().toString(36)}` }
  opts.log(`template for ${path.relative(process.cwd(), root) || '.'} on ${options.provider.name} (from ${project.from})`)
  const t = await ensureTemplate(session, templateSpec(options, workspace), options.provider.name, () => createProgress('template', { log: opts.log, tty }), labels)
  if (t.unkept) {
    opts.log(`nothing was built: ${session.noTemplates}`)
    return 1
  }
  if (!t.id) {
    opts.log(`nothing to build: ${options.provider.name} layers the host's ${t.hostLayers.length} node_modules folder${t.hostLayers.length === 1 ? '' : 's'} into each sandbox as they are (add template.setup commands to cache their result)`)
    return 0
  }
  opts.log(`template ${t.name} (${t.source}): ${t.id}`)
  return 0
}

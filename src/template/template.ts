/**
 * The cached template snapshot: where sandboxes get the workspace's dependencies from, found by
 * its key or built once, before the first worker needs it.
 *
 * - On the local engine the host's installed node_modules folders are layered copy-on-write into
 *   every sandbox: nothing is copied, so there is nothing to build unless `template.setup` has
 *   commands (their result is the template, keyed by the installed tree and the commands).
 * - Elsewhere the lockfile's package manager installs them inside a template sandbox (or, with
 *   `dependencies: 'copy'`, the host's node_modules are uploaded), then the setup runs.
 *
 * The template's name is its key, so every machine sharing the provider finds it. A failed build
 * caches nothing. Two runs building the same key build it once: on this machine through the
 * provider's lock, elsewhere by the provider's listing of builders (the oldest one builds).
 */
import { lockfilesOf, nodeModulesFolders, type WorkspaceFile } from '../workspace/collect.js'
import type { ProviderSession, SandboxSummary } from '../providers/types.js'
import { buildIn, createBuilder, filesWithLiteralCredentials, withinTimeout, type BuildPlan } from './build.js'
import { templateName, type DependencySource, type KeyInputs } from './key.js'
import { detectPackageManager } from './package-manager.js'
import type { TemplateProgress } from './progress.js'

/** The label naming the template a builder builds (and a pool sandbox runs on). */
export const TEMPLATE_LABEL = 'vitest-sandbox-template'
const BUILDER_ROLE = 'template-builder'

export interface TemplateSpec {
  root: string
  setup: string[]
  /** How dependencies get into sandboxes; 'auto' picks by provider (see `chooseSource`). */
  dependencies: DependencySource | 'auto'
  /** Names of host variables the install step gets (registry credentials), and nothing else. */
  installEnv: string[]
  /** The workspace files sandboxes are given. */
  files: WorkspaceFile[]
  /** Seconds a build may take (`template.timeout`). */
  timeoutSec: number
}

export interface Template {
  /** Template id sandboxes start from; undefined for the provider's base. */
  id?: string
  /** Its name (`vitest-sandbox-<key>`), when there is a template. */
  name?: string
  source: DependencySource
  /** Host node_modules folders layered into every sandbox (source 'host'). */
  hostLayers: string[]
  /** Where the provider keeps no templates: the build's steps, which each sandbox runs itself. */
  unkept?: BuildPlan
}

export class TemplateError extends Error {}

/** 'auto': the host's own tree on the local engine; elsewhere the lockfile's install, else a copy. */
export function chooseSource(session: ProviderSession, spec: Pick<TemplateSpec, 'root' | 'dependencies'>, provider: string): DependencySource {
  const lockfile = lockfilesOf(spec.root).length > 0
  if (spec.dependencies === 'host' && !session.sharesHost) {
    throw new TemplateError(`sandbox: template.dependencies 'host' needs sandboxes on this machine (local()); ${provider} sandboxes get dependencies with 'install' (from the lockfile) or 'copy'`)
  }
  if (spec.dependencies === 'install' && !lockfile) {
    throw new TemplateError(`sandbox: template.dependencies 'install' needs a lockfile at ${spec.root} (package-lock.json, npm-shrinkwrap.json, pnpm-lock.yaml, yarn.lock, bun.lock or bun.lockb); create one with your package manager, or use 'copy'`)
  }
  if (spec.dependencies !== 'auto') return spec.dependencies
  if (session.sharesHost) return 'host'
  if (lockfile) return 'install'
  if (process.platform !== 'linux') {
    throw new TemplateError(`sandbox: ${provider} sandboxes are Linux, and ${spec.root} has no lockfile to install their dependencies from (this ${process.platform} host's node_modules cannot run there); commit a lockfile (npm install, pnpm install, ...)`)
  }
  return 'copy'
}

export function keyInputs(session: ProviderSession, spec: Pick<TemplateSpec, 'root' | 'setup'>, source: DependencySource): KeyInputs {
  // A remote sandbox's platform is its base image's (part of `base`); a local one runs this host's Node.
  const platform = session.sharesHost
    ? { os: process.platform, arch: process.arch, node: process.versions.node.split('.')[0] }
    : { os: 'linux', arch: 'provider', node: 'provider' }
  return { root: spec.root, dependencies: source, setup: spec.setup, base: session.base, platform }
}

/** The dependency source a run takes, and the name of its template when it needs one. */
export function plannedTemplate(session: ProviderSession, spec: Pick<TemplateSpec, 'root' | 'setup' | 'dependencies'>, provider: string): { source: DependencySource; name?: string } {
  const source = chooseSource(session, spec, provider)
  // Host layers are the dependencies: with no setup there is nothing to build.
  if (source === 'host' && !spec.setup.length) return { source }
  return { source, name: templateName(keyInputs(session, spec, source)) }
}

/** Find the template, or build it now (once, however many runs ask at the same time). */
export async function ensureTemplate(session: ProviderSession, spec: TemplateSpec, provider: string, progress: () => TemplateProgress, labels: Record<string, string>): Promise<Template> {
  const { source, name } = plannedTemplate(session, spec, provider)
  const hostLayers = source === 'host' ? nodeModulesFolders(spec.root) : []
  if (!name) return { source, hostLayers }
  const found = await session.findTemplate(name)
  if (found) return { id: found, name, source, hostLayers }

  const plan: BuildPlan = {
    name,
    root: spec.root,
    source,
    setup: spec.setup,
    files: spec.files,
    hostLayers,
    packageManager: source === 'install' ? detectPackageManager(spec.root) : undefined,
    installEnv: Object.fromEntries(spec.installEnv.flatMap((n) => (process.env[n] === undefined ? [] : [[n, process.env[n]!]]))),
    labels: { ...labels, role: BUILDER_ROLE, [TEMPLATE_LABEL]: name },
  }
  const shown = progress()
  if (session.noTemplates) {
    // The sandboxes that install are the ones that run tests: what an install script leaves
    // running there would still be there, with the credentials in its environment.
    if (Object.keys(plan.installEnv).length) {
      shown.end('failed')
      throw new TemplateError(`sandbox: ${provider} keeps no templates, so each test sandbox would install its own dependencies, and template.installEnv (${Object.keys(plan.installEnv).join(', ')}) would reach sandboxes that run tests. Install on the host and use template: { dependencies: 'copy' }, or drop template.installEnv.\n${session.noTemplates}`)
    }
    const inClear = source === 'install' ? await filesWithLiteralCredentials(spec.root) : []
    if (inClear.length) {
      shown.end('failed')
      throw new TemplateError(`sandbox: ${provider} keeps no templates, so each test sandbox would install its own dependencies, and ${inClear.join(', ')} hold${inClear.length === 1 ? 's' : ''} a registry credential in clear, which install scripts in sandboxes that run tests could read. Install on the host and use template: { dependencies: 'copy' }.\n${session.noTemplates}`)
    }
    shown.end(`none can be kept on ${provider} (${session.noTemplates.split('\n')[0]}); each sandbox gets its ${sourceText(source).replace(/ once per key$/, '')} itself, before its first test file`)
    return { name, source, hostLayers, unkept: plan }
  }
  const release = await session.lockTemplate?.(name, () => shown.step('waiting for another run on this machine, which builds it'))
  try {
    for (;;) {
      const built = await session.findTemplate(name)
      if (built) {
        shown.end('built by another run meanwhile; reusing it')
        return { id: built, name, source, hostLayers }
      }
      shown.step(`building (${sourceText(source)})`)
      const builder = await createBuilder(session, plan)
      try {
        const first = release ? undefined : await oldestBuilder(session, name)
        if (first && first.id !== builder.id) {
          // Another run started building this key first: let it, then use its template.
          await builder.kill().catch(() => {})
          shown.step(`waiting for sandbox ${first.id}, which another run builds it in`)
          await builderGone(session, name, first.id)
          continue
        }
        const id = await withinTimeout((p) => buildIn(builder, plan, p), shown, spec.timeoutSec, builder)
        shown.end('ready')
        return { id, name, source, hostLayers }
      } finally {
        await builder.kill().catch(() => {})
      }
    }
  } catch (err) {
    shown.end('failed')
    throw new TemplateError(`sandbox: building the template ${name} failed; nothing was cached.\n${(err as Error).message}`)
  } finally {
    await release?.()
  }
}

function sourceText(source: DependencySource): string {
  if (source === 'install') return 'dependencies installed from the lockfile once per key'
  if (source === 'copy') return "dependencies copied from the host's node_modules once per key"
  return 'setup commands over the host node_modules, once per key'
}

/** The builder of `name` that was created first (ties broken by id), among all runs'. */
async function oldestBuilder(session: ProviderSession, name: string): Promise<SandboxSummary | undefined> {
  const builders = await session.listSandboxes({ role: BUILDER_ROLE, [TEMPLATE_LABEL]: name })
  return builders.sort((a, b) => (a.createdAt ?? '').localeCompare(b.createdAt ?? '') || a.id.localeCompare(b.id))[0]
}

async function builderGone(session: ProviderSession, name: string, id: string): Promise<void> {
  while ((await session.listSandboxes({ role: BUILDER_ROLE, [TEMPLATE_LABEL]: name })).some((s) => s.id === id)) {
    if (await session.findTemplate(name)) return
    await new Promise((r) => setTimeout(r, 2000))
  }
}

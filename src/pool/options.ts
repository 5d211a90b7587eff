/**
 * The options of `sandbox()`, documented for editors, and their validation: every problem is
 * found before any sandbox exists, and the message names the option, the value and what is
 * accepted.
 */
import type { WorkspaceOptions } from '../workspace/collect.js'
import { local } from '../providers/local.js'
import type { SandboxProvider } from '../providers/types.js'

export interface TemplateOptions {
  /**
   * Commands the template runs once after the dependencies are in place, at the workspace root,
   * with the network (e.g. `npx playwright install chromium`, `prisma generate`). What they make
   * outside the workspace's own files is kept in the template, which is keyed by the lockfiles,
   * manifests, Node major, provider and these commands.
   * @default []
   */
  setup?: string[]
  /**
   * Where sandboxes get the workspace's dependencies:
   * - `'host'`: the host's installed node_modules, layered read-only under each sandbox's own
   *   writable layer; nothing is copied (local() only);
   * - `'install'`: the lockfile's package manager runs its frozen install in the template
   *   (`npm ci`, `pnpm install --frozen-lockfile`, `yarn install --immutable`,
   *   `bun install --frozen-lockfile`, at the `packageManager` version), with the network;
   * - `'copy'`: the host's node_modules are uploaded into the template once per key;
   * - `'auto'`: `'host'` on local(), else `'install'` when there is a lockfile, else `'copy'`.
   * @default 'auto'
   */
  dependencies?: 'auto' | 'host' | 'install' | 'copy'
  /**
   * Host environment variables the install step gets, by name (registry tokens such as
   * `NPM_TOKEN` for an `.npmrc` that reads `${NPM_TOKEN}`). Only that step sees them: they are
   * not stored in the template, and tests never see them (nor the `.npmrc`).
   * @default []
   */
  installEnv?: string[]
  /**
   * Seconds a template build (or, where the provider keeps no templates, a sandbox's own install)
   * may take; past it the build is stopped, nothing is cached and the run fails with the step that
   * hung.
   * @default 1800
   */
  timeout?: number
}

export interface SandboxPoolOptions {
  /** Where sandboxes come from. @default local() */
  provider?: SandboxProvider
  /**
   * How many sandboxes to fan test files out to, or `'auto'`: the fewest whose schedule comes
   * within 10% of the best `maxSandboxes` could do, from the durations Vitest recorded at the last
   * run (a file with no record counts as 1 s).
   * @default 1
   */
  sandboxes?: number | 'auto'
  /**
   * The most sandboxes `'auto'` takes. @default 16, and on local() as many as the host's CPUs
   * fill (CPUs ÷ concurrency, at least 1)
   */
  maxSandboxes?: number
  /** Test files at once per sandbox. @default the host's CPU count - 1 (at least 1) */
  concurrency?: number
  /** The cached template snapshot: dependencies installed once, reused by every run. */
  template?: TemplateOptions
  /**
   * What of the workspace is sent: by default everything the tests would see on the host (build
   * outputs included) except node_modules, .git, Vitest's caches, this run's outputs and secrets.
   */
  workspace?: WorkspaceOptions
  /**
   * Host environment variables forwarded to test workers, by name. Nothing else of the host's
   * environment crosses (Vitest's own variables and `test.env` do).
   * @default []
   */
  env?: string[]
  /** 'none': loopback only; 'allow': the network. @default 'none' */
  network?: 'none' | 'allow'
  /** Seconds a sandbox may live (its provider TTL: nothing outlives a crashed host). @default 600 */
  timeout?: number
  /**
   * gitignore-style patterns of workspace files that file snapshots (`toMatchFileSnapshot`) may
   * create or change from inside a sandbox outside the test file's folder, or outside
   * `__snapshots__` although their names are not data (`.txt`, `.json`, `.md`, ...): code, build
   * scripts, pages. Manifests, lockfiles, Vitest/Vite configs, globalSetup
   * files, dotfiles and `node_modules` are never written from a sandbox.
   * @default []
   */
  allowWrite?: string[]
  /** Also write the usage report printed at the end of a run as JSON to this file (from the root). */
  usageFile?: string
  /**
   * `'forks'`: when the provider cannot be reached at all (connection refused, a rejected key, no
   * quota), run the files on Vitest's forks pool on this machine, with a loud warning. Only for
   * trusted code: it then runs on the host, outside any sandbox.
   * @default 'none'
   */
  fallback?: 'none' | 'forks'
}

export interface ResolvedOptions {
  provider: SandboxProvider
  sandboxes: number | 'auto'
  maxSandboxes: number
  concurrency: number
  setup: string[]
  dependencies: 'auto' | 'host' | 'install' | 'copy'
  installEnv: string[]
  /** Seconds a template build may take. */
  templateTimeout: number
  workspace: WorkspaceOptions
  env: string[]
  network: 'none' | 'allow'
  timeout: number
  allowWrite: string[]
  usageFile?: string
  fallback: 'none' | 'forks'
}

const KNOWN = ['provider', 'sandboxes', 'maxSandboxes', 'concurrency', 'template', 'workspace', 'env', 'network', 'timeout', 'allowWrite', 'usageFile', 'fallback'] as const

export class SandboxOptionsError extends Error {
  constructor(message: string) {
    super(`sandbox(): ${message}`)
    this.name = 'SandboxOptionsError'
  }
}

function show(v: unknown): string {
  try {
    return typeof v === 'string' ? `'${v}'` : JSON.stringify(v) ?? String(v)
  } catch {
    return String(v)
  }
}

function stringArray(name: string, v: unknown): string[] {
  if (v === undefined) return []
  if (!Array.isArray(v) || v.some((x) => typeof x !== 'string')) throw new SandboxOptionsError(`${name} must be an array of strings (got ${show(v)})`)
  return v
}

function wholeNumber(name: string, v: unknown, min: number, max: number, fallback: number): number {
  if (v === undefined) return fallback
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) throw new SandboxOptionsError(`${name} must be a whole number from ${min} to ${max} (got ${show(v)})`)
  return v
}

/** `cpus`: the host's (the default concurrency is one less, and local() `'auto'` fills them). */
export function resolveOptions(input: unknown, cpus: number): ResolvedOptions {
  const defaultConcurrency = Math.max(1, cpus - 1)
  if (input === undefined) input = {}
  if (typeof input !== 'object' || input === null || Array.isArray(input)) throw new SandboxOptionsError(`options must be an object (got ${show(input)})`)
  const o = input as Record<string, unknown>
  for (const key of Object.keys(o)) {
    if (!(KNOWN as readonly string[]).includes(key)) throw new SandboxOptionsError(`unknown option '${key}'; the options are ${KNOWN.join(', ')}`)
  }
  const provider = o.provider ?? local()
  if (typeof provider !== 'object' || provider === null || typeof (provider as SandboxProvider).connect !== 'function') {
    throw new SandboxOptionsError(`provider must be a provider such as local() or watasu() (got ${show(provider)})`)
  }
  const template = (o.template ?? {}) as Record<string, unknown>
  if (typeof template !== 'object' || Array.isArray(template)) throw new SandboxOptionsError(`template must be an object like { setup: ['npm ci'] } (got ${show(o.template)})`)
  for (const key of Object.keys(template)) {
    if (!['setup', 'dependencies', 'installEnv', 'timeout'].includes(key)) throw new SandboxOptionsError(`unknown option 'template.${key}'; the template options are setup, dependencies, installEnv, timeout`)
  }
  const dependencies = template.dependencies ?? 'auto'
  if (!['auto', 'host', 'install', 'copy'].includes(dependencies as string)) {
    throw new SandboxOptionsError(`template.dependencies must be 'auto', 'host', 'install' or 'copy' (got ${show(template.dependencies)})`)
  }
  const workspace = (o.workspace ?? {}) as Record<string, unknown>
  if (typeof workspace !== 'object' || Array.isArray(workspace)) throw new SandboxOptionsError(`workspace must be an object like { include: ['**'], exclude: [] } (got ${show(o.workspace)})`)
  for (const key of Object.keys(workspace)) {
    if (!['include', 'exclude', 'gitignore', 'maxBytes'].includes(key)) throw new SandboxOptionsError(`unknown option 'workspace.${key}'; the workspace options are include, exclude, gitignore, maxBytes`)
  }
  if (workspace.gitignore !== undefined && typeof workspace.gitignore !== 'boolean') throw new SandboxOptionsError(`workspace.gitignore must be true or false (got ${show(workspace.gitignore)})`)
  const network = o.network ?? 'none'
  if (network !== 'none' && network !== 'allow') throw new SandboxOptionsError(`network must be 'none' or 'allow' (got ${show(network)})`)
  if (o.sandboxes !== 'auto' && o.sandboxes !== undefined && typeof o.sandboxes !== 'number') {
    throw new SandboxOptionsError(`sandboxes must be a whole number from 1 to 1000 or 'auto' (got ${show(o.sandboxes)})`)
  }
  const concurrency = wholeNumber('concurrency', o.concurrency, 1, 256, defaultConcurrency)
  const hostSlots = Math.max(1, Math.floor(cpus / concurrency))
  if (o.usageFile !== undefined && (typeof o.usageFile !== 'string' || !o.usageFile)) throw new SandboxOptionsError(`usageFile must be a file name such as 'sandbox-usage.json' (got ${show(o.usageFile)})`)
  const fallback = o.fallback ?? 'none'
  if (fallback !== 'none' && fallback !== 'forks') throw new SandboxOptionsError(`fallback must be 'none' or 'forks' (got ${show(o.fallback)})`)
  return {
    provider: provider as SandboxProvider,
    sandboxes: o.sandboxes === 'auto' ? 'auto' : wholeNumber('sandboxes', o.sandboxes, 1, 1000, 1),
    maxSandboxes: wholeNumber('maxSandboxes', o.maxSandboxes, 1, 1000, (provider as SandboxProvider).name === 'local' ? hostSlots : 16),
    concurrency,
    setup: stringArray('template.setup', template.setup),
    dependencies: dependencies as ResolvedOptions['dependencies'],
    installEnv: stringArray('template.installEnv', template.installEnv),
    templateTimeout: wholeNumber('template.timeout', template.timeout, 1, 7 * 24 * 3600, 1800),
    workspace: {
      include: stringArray('workspace.include', workspace.include),
      exclude: stringArray('workspace.exclude', workspace.exclude),
      gitignore: workspace.gitignore === true,
      maxBytes: wholeNumber('workspace.maxBytes', workspace.maxBytes, 1, Number.MAX_SAFE_INTEGER, 512 * 1024 * 1024),
    },
    env: stringArray('env', o.env),
    network,
    timeout: wholeNumber('timeout', o.timeout, 10, 7 * 24 * 3600, 600),
    allowWrite: stringArray('allowWrite', o.allowWrite),
    ...(o.usageFile ? { usageFile: o.usageFile as string } : {}),
    fallback,
  }
}

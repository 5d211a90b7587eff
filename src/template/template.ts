/**
 * The cached template snapshot: the workspace's dependencies (every top-level node_modules under
 * the root) installed once into a sandbox, plus the `template.setup` commands, then snapshotted.
 * Its name is a hash of the lockfiles, the installed-tree marker, the Node version, the platform
 * and the setup commands, so every later run (and every machine sharing the provider) reuses it,
 * and any change to those makes a new one. A failed build caches nothing.
 */
import { createHash } from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { listFiles, lockfilesOf, type WorkspaceFile } from '../workspace/collect.js'
import { packFiles } from '../workspace/pack.js'
import type { ProviderSandbox, ProviderSession } from '../providers/types.js'
import { renewTtl, runScript, STAGING } from '../providers/exec.js'

/** Bumped when the template layout changes, so old templates are not reused. */
const FORMAT = 3

/** Seconds a template builder lives unless renewed (it is, every third of that, while it builds). */
const BUILDER_TTL = 600

/** Inside node_modules, caches that must not be frozen into a template. */
const CACHE_DIRS = ['**/node_modules/.vite/**', '**/node_modules/.vitest/**', '**/node_modules/.cache/**']

export interface TemplateSpec {
  root: string
  setup: string[]
}

/** Files whose content decides what the dependencies are. */
function markerFiles(root: string): string[] {
  const markers = ['node_modules/.package-lock.json', 'node_modules/.modules.yaml', 'node_modules/.yarn-state.yml', 'node_modules/.yarn-integrity']
  return [...lockfilesOf(root), ...markers.map((m) => path.join(root, m)).filter((f) => fs.existsSync(f))]
}

export function templateKey(spec: TemplateSpec): string {
  const h = createHash('sha256')
  h.update(JSON.stringify({ format: FORMAT, node: process.version, platform: process.platform, arch: process.arch, root: spec.root, setup: spec.setup }))
  for (const f of markerFiles(spec.root)) {
    h.update(path.relative(spec.root, f))
    h.update(fs.readFileSync(f))
  }
  return h.digest('hex').slice(0, 24)
}

export function templateName(spec: TemplateSpec): string {
  return `vitest-sandbox-${templateKey(spec)}`
}

function dependencyFiles(root: string): Promise<WorkspaceFile[]> {
  return listFiles(root, ['**/node_modules/**'], CACHE_DIRS)
}

export interface BuildProgress {
  (step: string): void
}

/** The template's id: found by name, or built now. */
export async function ensureTemplate(session: ProviderSession, spec: TemplateSpec, progress: BuildProgress, labels: Record<string, string>): Promise<string> {
  const name = templateName(spec)
  const found = await session.findTemplate(name)
  if (found) return found
  const started = Date.now()
  const step = (text: string) => progress(`template ${name}: ${text} (${((Date.now() - started) / 1000).toFixed(1)}s)`)
  step('building (dependencies are installed once per lockfile, Node version and setup commands)')
  let builder: ProviderSandbox | undefined
  let stopRenewing: (() => void) | undefined
  try {
    // A short TTL, renewed while the build goes on: a host that dies leaves no builder for long.
    builder = await session.createSandbox({ timeoutSec: BUILDER_TTL, labels: { ...labels, role: 'template-builder' }, network: spec.setup.length > 0 })
    stopRenewing = renewTtl(builder, BUILDER_TTL)
    const deps = await dependencyFiles(spec.root)
    step(`copying ${deps.length} dependency files`)
    await builder.upload(`${STAGING}/deps.tar`, () => packFiles(spec.root, deps))
    await runScript(builder, `mkdir -p '${spec.root}' && tar -xf ${STAGING}/deps.tar -C '${spec.root}' && rm ${STAGING}/deps.tar`, '/')
    for (const command of spec.setup) {
      step(`running ${JSON.stringify(command)}`)
      await runScript(builder, command, spec.root)
    }
    step('snapshotting')
    const id = await builder.snapshot(name)
    step('ready')
    return id
  } catch (err) {
    throw new Error(`sandbox: building the template failed; nothing was cached.\n${(err as Error).message}`)
  } finally {
    stopRenewing?.()
    await builder?.kill().catch(() => {})
  }
}

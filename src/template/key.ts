/**
 * The template key: what the dependencies of a sandbox are made from, hashed. It changes exactly
 * when one of these changes, and on nothing else (a source edit, an unrelated file):
 *
 * - the lockfiles, every package manifest, and the package manager's own configuration;
 * - for dependencies taken from the host's installed tree, the package manager's record of it;
 * - how the dependencies are made (host layer, install, copy) and `template.setup`;
 * - what sandboxes start from (the provider and its base image) and their OS, architecture and
 *   Node major;
 * - the workspace's absolute path (the dependencies live at the same path in every sandbox);
 * - the format of templates, bumped when their layout changes.
 *
 * The template's name carries the key, so any machine finds it on the provider with no local state.
 */
import { createHash } from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import fg from 'fast-glob'
import { lockfilesOf } from '../workspace/collect.js'
import { NEVER } from '../workspace/given.js'

/** Bumped when the template layout changes, so old templates are not reused. */
export const FORMAT = 4

/** Every template name starts with this; the key follows. */
export const TEMPLATE_PREFIX = 'vitest-sandbox-'

/**
 * How the template gets the workspace's dependencies:
 * - `host`: the host's installed node_modules folders, layered copy-on-write (local engine only);
 * - `install`: the lockfile's package manager runs a frozen install inside the template;
 * - `copy`: the host's node_modules are uploaded into the template.
 */
export type DependencySource = 'host' | 'install' | 'copy'

export interface SandboxPlatform {
  os: string
  arch: string
  /** Node major, as a string ('20'). */
  node: string
}

export interface KeyInputs {
  root: string
  dependencies: DependencySource
  setup: string[]
  /** What sandboxes start from without a template: the provider and its base image. */
  base: string
  platform: SandboxPlatform
}

/** Package manager configuration that changes what an install produces. */
const INSTALL_SETTINGS = ['pnpm-workspace.yaml', '.pnpmfile.cjs', '.npmrc', '.yarnrc', '.yarnrc.yml', 'bunfig.toml']
/** Each package manager's record of the tree it installed (host and copy read that tree). */
const INSTALLED_MARKERS = ['node_modules/.package-lock.json', 'node_modules/.modules.yaml', 'node_modules/.yarn-state.yml', 'node_modules/.yarn-integrity']

/** The files whose content the key hashes, relative to the root, sorted. */
export function keyFiles(root: string, dependencies: DependencySource): string[] {
  const manifests = fg.sync('**/package.json', { cwd: root, dot: true, ignore: NEVER.map((n) => `**/${n}/**`), suppressErrors: true, followSymbolicLinks: false })
  const named = [...INSTALL_SETTINGS, ...(dependencies === 'install' ? [] : INSTALLED_MARKERS)].filter((f) => fs.existsSync(path.join(root, f)))
  const lockfiles = lockfilesOf(root).map((f) => path.relative(root, f))
  return [...new Set([...lockfiles, ...manifests, ...named])].sort()
}

export function templateKey(inputs: KeyInputs): string {
  const h = createHash('sha256')
  const { root, dependencies, setup, base, platform } = inputs
  h.update(JSON.stringify({ format: FORMAT, root, dependencies, setup, base, platform }))
  for (const rel of keyFiles(root, dependencies)) {
    h.update(`\0${rel}\0`)
    h.update(fs.readFileSync(path.join(root, rel)))
  }
  return h.digest('hex').slice(0, 24)
}

export function templateName(inputs: KeyInputs): string {
  return `${TEMPLATE_PREFIX}${templateKey(inputs)}`
}

/**
 * What the host transforms and maps outside any worker's request is screened from the moment the
 * pool is made, not from a worker's launch: Vitest transforms files no worker asked for (coverage
 * of untested files, tried through every project and then the root project, also when no test
 * file runs), and Vite reads the source maps, globs and sheets they name.
 *
 * - Every Vite environment serving workers is screened (load-screen.ts) when it is initialized;
 *   until a worker gives it the run's own rules, by the workspace of its root.
 * - The coverage provider: the v8 provider reads a map from the code's `sourceMappingURL` (a
 *   file, or `/dev/zero`) whenever a transform has none, and the raw file's when a transform
 *   fails; it reads every source of a map, and every file, as a URL (`%2e%2e` is `..` there); its
 *   search for untested files follows links; its reporters read every file of the map from disk.
 *   So what it transforms never names a map, a failed transform gives it the file's text the same
 *   way, a map with a source that is not a given file is not passed on, and it looks for and
 *   reports on given files at plain paths only.
 *
 * The classes wrapped (once per process) are those of the Vitest running this process and its Vite.
 */
import fs from 'node:fs'
import { createRequire } from 'node:module'
import path from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { collectWorkspace, findWorkspaceRoot, type Workspace, type WorkspaceOptions } from '../../workspace/collect.js'
import { fileRules, type FileRules } from './file-rules.js'
import { isScreened, screenLoads, type LoadingEnvironment } from './load-screen.js'
import { inWorkspace } from './source-maps.js'
import { fileOf, isPlainPath } from './module-ids.js'

/** A Vite environment, as far as choosing its rules goes. */
export interface ViteEnvironment extends LoadingEnvironment {
  name: string
  config: LoadingEnvironment['config'] & { root: string; publicDir?: unknown }
}

/** Each workspace's rules by what they are made of: a worker's launch asks for every project's. */
const madeRules = new WeakMap<Workspace, Map<string, FileRules>>()

/**
 * What rules a project's environments screen with: its workspace, Vitest's and this package's
 * runtime, Vite's root and public folder. Made once per workspace (a watch-mode run packs a new
 * one) and shared, with the answers they keep, by the workers that ask.
 */
export function projectRules(workspace: Workspace, runtimeDirs: string[], config: { root: string; publicDir?: unknown }): FileRules {
  const publicDir = typeof config.publicDir === 'string' && config.publicDir ? [config.publicDir] : []
  const key = JSON.stringify([runtimeDirs, config.root, publicDir])
  let made = madeRules.get(workspace)
  if (!made) madeRules.set(workspace, (made = new Map()))
  let rules = made.get(key)
  if (!rules) made.set(key, (rules = fileRules(workspace, runtimeDirs, [config.root, ...publicDir])))
  return rules
}

/** Vitest's own environments (`__vitest__`, `__vitest_vm__`) serve the host, not workers. */
export function servesWorkers(name: string): boolean {
  return !name.startsWith('__vitest')
}

/** The running Vitest's package.json and its Vite, found from its command line, the working folder, or this package. */
function runningVitest(): { pkg: string; vite: string } | undefined {
  for (const from of [process.argv[1], path.join(process.cwd(), 'noop.js'), fileURLToPath(import.meta.url)]) {
    try {
      const pkg = createRequire(from).resolve('vitest/package.json')
      return { pkg, vite: createRequire(pkg).resolve('vite') }
    } catch {
      // Not from there.
    }
  }
  return undefined
}

let installed = false

/**
 * Wrap Vite's DevEnvironment and Vitest's coverage provider base (once per process).
 * @param runtimeDirs host folders of this package's runtime that sandboxes may always name
 */
export function screenHostTransforms(options: WorkspaceOptions, runtimeDirs: string[]): void {
  if (installed) return
  installed = true
  const found = runningVitest()
  if (!found) return
  const workspaces = new Map<string, Promise<Workspace>>()
  const rulesFor = async (config: { root: string; publicDir?: unknown }) => {
    const root = findWorkspaceRoot(config.root)
    let workspace = workspaces.get(root)
    if (!workspace) {
      workspace = collectWorkspace(root, options)
      workspaces.set(root, workspace)
      workspace.catch(() => workspaces.delete(root)) // tried again at the next transform, which fails with it
    }
    return projectRules(await workspace, [path.join(path.dirname(found.pkg), 'dist'), ...runtimeDirs], config)
  }
  const screen = async (environment: ViteEnvironment) => {
    if (!servesWorkers(environment.name) || isScreened(environment)) return
    const rules = await rulesFor(environment.config)
    // A worker's launch may have screened it with the run's rules meanwhile: those stay.
    if (!isScreened(environment)) screenLoads(environment, () => rules)
  }
  const wrapped = [
    import(pathToFileURL(found.vite).href).then(({ DevEnvironment }) => wrapEnvironments(DevEnvironment?.prototype, screen)),
    import(pathToFileURL(createRequire(found.pkg).resolve('vitest/node')).href).then(({ BaseCoverageProvider }) => wrapCoverage(BaseCoverageProvider?.prototype, rulesFor)),
  ]
  // A Vite or Vitest without these classes: the workers' launch screens their projects' environments.
  for (const w of wrapped) w.catch(() => {})
}

function wrapEnvironments(proto: any, screen: (environment: ViteEnvironment) => Promise<void>): void {
  if (typeof proto?.init !== 'function' || typeof proto.transformRequest !== 'function') return
  const { init, transformRequest } = proto
  proto.init = async function (this: ViteEnvironment, ...args: unknown[]) {
    await init.apply(this, args)
    // A workspace that cannot be collected (too large) fails the transforms, not Vite's start.
    await screen(this).catch(() => {})
  }
  proto.transformRequest = async function (this: ViteEnvironment, ...args: unknown[]) {
    await screen(this)
    return transformRequest.apply(this, args)
  }
}

type Transformed = { code?: unknown; map?: unknown } | null | undefined

function wrapCoverage(proto: any, rulesFor: (config: { root: string }) => Promise<FileRules>): void {
  if (typeof proto?.transformFile !== 'function' || typeof proto.getUntestedFiles !== 'function' || typeof proto.reportCoverage !== 'function') return
  const { transformFile, getUntestedFiles, reportCoverage } = proto
  type Provider = { ctx: { config: { root: string } } }
  proto.transformFile = async function (this: Provider, url: string, project: { config: { root: string } }, ...rest: unknown[]) {
    const rules = await rulesFor(project.config)
    const file = url.startsWith('file://') ? fileURLToPath(fileOf(url)) : fileOf(url)
    let result: Transformed
    try {
      result = await transformFile.call(this, url, project, ...rest)
    } catch {
      result = undefined
    }
    if (typeof result?.code !== 'string') return { code: inert(givenText(file, rules)), map: null }
    return { ...result, code: inert(result.code), map: mapOfGiven(result.map, file, rules) }
  }
  // The files it looks for (it follows links) and the files it reports on (it reads each as a
  // URL, and its reporters read each from disk): given files, each a plain path to itself.
  proto.getUntestedFiles = async function (this: Provider, ...args: unknown[]) {
    const rules = await rulesFor(this.ctx.config)
    return ((await getUntestedFiles.apply(this, args)) as string[]).filter((file) => reportable(file, rules))
  }
  proto.reportCoverage = async function (this: Provider, coverageMap: { filter?: (keep: (file: string) => boolean) => void } | undefined, ...rest: unknown[]) {
    const rules = await rulesFor(this.ctx.config)
    coverageMap?.filter?.((file) => reportable(file, rules))
    return reportCoverage.call(this, coverageMap, ...rest)
  }
}

/**
 * May the coverage report name and read this file? A given regular file at a plain path (one a
 * file URL reads as itself: no `%`, `\\`, `?`, `#` or control characters, no `..`), where a link
 * leads to a given file too.
 */
function reportable(file: unknown, rules: FileRules): boolean {
  if (typeof file !== 'string' || !isPlainPath(file) || !rules.isGiven(file)) return false
  try {
    const real = fs.realpathSync(file)
    return rules.isGiven(real) && fs.statSync(real).isFile()
  } catch {
    return false
  }
}

/** `sourceMappingURL` in code the provider maps is not a map's address (same length: its ranges stay). */
function inert(code: string): string {
  return code.replace(/sourceMappingURL/g, 'sourceMappingURl')
}

/** A given file's text, as the provider reads it when a transform fails; empty for anything else. */
function givenText(file: string, rules: FileRules): string {
  try {
    return reportable(file, rules) ? fs.readFileSync(file, 'utf8') : ''
  } catch {
    return ''
  }
}

/** The map when every source the provider would read (`new URL(source, file://<file>)`) is a file the sandbox may name in the workspace. */
function mapOfGiven(map: unknown, file: string, rules: FileRules): unknown {
  if (map == null || !reportable(file, rules)) return null
  const sources = (map as { sources?: unknown }).sources
  if (!Array.isArray(sources)) return null
  // As the provider makes it: `file://` and the path, not encoded.
  const base = new URL(`file://${file}`)
  const given = sources.every((source) => {
    if (source == null) return true
    if (typeof source !== 'string') return false
    let read: URL
    try {
      read = new URL(source, base)
    } catch {
      return true // the provider cannot read it either
    }
    if (read.protocol !== 'file:') return true
    const p = fileURLToPath(read)
    return inWorkspace(p, rules) && rules.mayName(p)
  })
  return given ? map : null
}

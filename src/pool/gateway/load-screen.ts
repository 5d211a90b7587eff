/**
 * What the host's Vite reads on its own while it loads a module for a sandbox. The module's id and
 * what it names are chosen by test code, so the gateway decides before Vite reads:
 *
 * - every load: each reading of the id (as written, relative to the host's working folder when
 *   nothing resolved it; `/x` under each folder Vite reads it from) must be a file the sandbox may
 *   name; a refused load and a missing file get the same error;
 * - a given file is loaded by the gateway, with the source map it may have (source-maps.ts):
 *   Vite never extracts a map from a given file's comments itself;
 * - an import the host resolves (import analysis of a given module, an alias, a link under
 *   node_modules, a path of the public folder) to a file the sandbox may not name resolves to
 *   nothing, as a missing file;
 * - `import.meta.glob` (glob-screen.ts), `new URL(…, import.meta.url)` assets and workers (below),
 *   and CSS (css-screen.ts), each just before the Vite plugin that reads files for it.
 */
import fs from 'node:fs'
import path from 'node:path'
import type { FileRules } from './file-rules.js'
import { ownSourceMap, withSourcesDecided } from './source-maps.js'
import { pathsIn } from './module-screen.js'
import { stripLiteral } from 'strip-literal'
import { aroundTransform } from './plugin-hooks.js'
import { screenWorkerOptions } from './worker-options.js'
import { defangLiterals } from './literal-scan.js'
import { guardEvalValue } from './eval-guard.js'
import { screenCss, type CssEnvironment } from './css-screen.js'
import { screenGlobs, type GlobContext } from './glob-screen.js'
import { fileOf, packageFolders } from './module-ids.js'
import { isSandboxOnly, sandboxModuleText } from './sandbox-modules.js'

/** The part of a Vite environment this screen needs. */
export interface LoadingEnvironment extends CssEnvironment {
  pluginContainer: {
    load(id: string, ...rest: unknown[]): Promise<unknown>
    resolveId(id: string, ...rest: unknown[]): Promise<{ id: string } | null | undefined>
    transform(code: string, id: string, ...rest: unknown[]): Promise<{ code: string; map?: unknown } | null | undefined>
  }
}

type HookContext = GlobContext

const screened = new WeakMap<object, { rules: () => FileRules }>()

/** Has the screen been put in front of this environment? */
export function isScreened(environment: object): boolean {
  return screened.has(environment)
}

/**
 * Puts the screen in front of the environment's resolution, loads and glob expansion (once;
 * `rules` is read each time, so a watch-mode run's new workspace counts). Only the environments
 * sandboxed workers load from: Vitest's own (`__vitest__`) serves the host.
 */
export function screenLoads(environment: LoadingEnvironment, rules: () => FileRules): void {
  const known = screened.get(environment)
  if (known) return void (known.rules = rules)
  const state = { rules }
  screened.set(environment, state)
  guardEvalValue()
  const container = environment.pluginContainer
  const load = container.load.bind(container)
  container.load = async (id: string, ...rest: unknown[]) => {
    // A module a test wrote in its sandbox: the text it sent, never the host's disk.
    const own = sandboxModuleText(id)
    const rules = state.rules()
    // Its map comments as a given file's: a map the host may not use is no map.
    if (own !== undefined) return ownSourceMap(own, fileOf(id), rules)
    if (!mayLoad(id, rules)) throw missingFile(id)
    // A missing file gets the same error as a refused one, whichever plugin (or Vite) would read it.
    let result
    try {
      result = (await load(id, ...rest)) ?? loadGiven(id, rules)
    } catch (error) {
      throw (error as { code?: unknown })?.code === 'ENOENT' ? missingFile(id) : error
    }
    if (result == null && !id.startsWith('\0') && !fs.existsSync(path.resolve(fileOf(id)))) throw missingFile(id)
    return result
  }
  // What Vite would read for the map of what the plugins made: decided by the gateway first.
  const transform = container.transform.bind(container)
  container.transform = async (code: string, id: string, ...rest: unknown[]) => {
    const result = await transform(code, id, ...rest)
    if (result?.map) result.map = withSourcesDecided(result.map, fileOf(id), state.rules())
    return result
  }
  // Imports inside given modules are resolved by the host too (import analysis, aliases, links
  // under node_modules): a file the sandbox may not name resolves to nothing, as a missing one.
  const resolveId = container.resolveId.bind(container)
  container.resolveId = async (id: string, ...rest: unknown[]) => {
    if (sandboxModuleText(id) !== undefined) return { id }
    let resolved
    try {
      resolved = await resolveId(id, ...rest)
    } catch (error) {
      // The resolver walks node_modules above the workspace too: what it threw about a package
      // there ("not exported", a manifest that is not JSON) is the answer for one that is missing.
      const rules = state.rules()
      const importer = typeof rest[0] === 'string' ? rest[0] : undefined
      if (packageFolders(id, importer, rules.roots).some((found) => !rules.mayReach(found)) || [...pathsIn(error)].some((p) => !rules.mayWord(p))) return null
      throw error
    }
    // A module a test wrote, importing another it wrote beside it (a generated client and its
    // consumer): the host has neither, so the path, which the worker's fetch gets the sandbox's text for.
    if (!resolved) return besideSandboxModule(id, rest[0], state.rules(), environment.config.root)
    const file = fileOf(resolved.id)
    if (!path.isAbsolute(file)) return resolved
    // Vite's asset plugin answers a path of the public folder as it is (`/x`) and reads it from there.
    return mayRead(file, state.rules()) ? resolved : null
  }
  screenCss(environment, () => state.rules())
  aroundTransform(environment, 'vite:import-glob', (handler) =>
    async function (this: HookContext, code, id, ...rest) {
      if (!code.includes('import.meta.glob')) return handler.call(this, code, id, ...rest)
      const scanned = forPluginScans(code, id, state.rules())
      return handler.call(this, await screenGlobs(this, scanned, id, environment.config.root, state.rules()), id, ...rest)
    },
  )
  // The worker plugin runs first and rewrites `new Worker(new URL(…))`: both are checked before
  // their plugin, and the worker's options reach its plugin as data.
  aroundTransform(environment, 'vite:worker-import-meta-url', (handler) =>
    async function (this: HookContext, code, id, ...rest) {
      if (!code.includes('import.meta.url')) return handler.call(this, code, id, ...rest)
      const scanned = forPluginScans(code, id, state.rules())
      checkAssetUrls(scanned, id, state.rules())
      return handler.call(this, screenWorkerOptions(scanned, id, environment.config.root, (c) => this.parse(c)), id, ...rest)
    },
  )
  aroundTransform(environment, 'vite:asset-import-meta-url', (handler) =>
    async function (this: HookContext, code, id, ...rest) {
      if (!code.includes('import.meta.url')) return handler.call(this, code, id, ...rest)
      const scanned = forPluginScans(code, id, state.rules())
      checkAssetUrls(scanned, id, state.rules())
      return handler.call(this, scanned, id, ...rest)
    },
  )
}

/** The module as the glob, worker and asset plugins may scan it (literal-scan.ts); refused if it cannot be tokenized. */
function forPluginScans(code: string, id: string, rules: FileRules): string {
  const scanned = defangLiterals(code)
  if (scanned === undefined) throw new Error(`vitest-pool-sandbox: ${path.relative(rules.root, fileOf(id))} cannot be tokenized, and Vite's plugins would scan it for import.meta.glob, workers and asset URLs`)
  return scanned
}

/**
 * Each `new URL('…', import.meta.url)` Vite's asset plugin turns into a URL (client environments):
 * for `?inline` or a public path it reads the file it names. Found as Vite finds them; only a
 * relative URL to a path the sandbox may name inside the workspace passes.
 */
function checkAssetUrls(code: string, id: string, rules: FileRules): void {
  const file = fileOf(id)
  const clean = stripLiteral(code) // literal-scan.ts tokenized it before
  for (const match of clean.matchAll(ASSET_URL)) {
    const [[start], [urlStart, urlEnd]] = match.indices as Array<[number, number]>
    if (/\/\*\s*@vite-ignore\s*\*\//.test(code.slice(start, urlStart))) continue
    const raw = code.slice(urlStart, urlEnd)
    if (raw[0] === '`' && raw.includes('${')) continue // becomes an import.meta.glob, checked as one
    const url = raw.slice(1, -1)
    if (/^data:/i.test(url)) continue
    const target = url.startsWith('.') ? path.resolve(path.dirname(file), fileOf(url)) : undefined
    const rel = target && path.relative(rules.root, target)
    // By the path Vite will open: a link under node_modules may lead out, whatever is there.
    if (target === undefined || !rel || rel.startsWith('..') || path.isAbsolute(rel) || !rules.mayReach(target)) {
      throw new Error(`vitest-pool-sandbox: new URL(${JSON.stringify(url).slice(0, 300)}, import.meta.url) in ${path.relative(rules.root, file)} names a file the sandbox is not given (only relative URLs to given files are turned into asset URLs)`)
    }
  }
}

/**
 * May the host load this id? What Vite and its plugins read for an id that is no virtual module:
 * the id as a path, relative to the host's working folder when it is not absolute (an id nothing
 * resolved is loaded as written), and `/x` under each folder Vite reads it from. Every reading
 * must be a file the sandbox may name (one that does not exist included).
 */
function mayLoad(id: string, rules: FileRules): boolean {
  if (id.startsWith('\0')) return true
  // A line separator keeps Vite from stripping the query (the rest is read as a path), and a path
  // with `..` climbs from where a link led, not where the path says: neither is a file Vite made.
  if (/[\n\r\u2028\u2029]/.test(id)) return false
  const file = fileOf(id)
  return (!path.isAbsolute(file) || path.posix.normalize(file) === file) && mayRead(file, rules)
}

/** May the sandbox name every file Vite may read for this path: itself (relative to the host's working folder), and `/x` under each of its roots? */
function mayRead(file: string, rules: FileRules): boolean {
  const readings = [path.resolve(file), ...(path.isAbsolute(file) ? rules.roots.map((root) => path.join(root, file)) : [])]
  return readings.every((p) => rules.mayName(p))
}

/** The error Vite gives for an id whose file is missing (Node's, as its own read would throw it). */
function missingFile(id: string): Error {
  const file = fileOf(id)
  const message = `ENOENT: no such file or directory, open '${file}'`
  return Object.assign(new Error(message), { errno: -2, code: 'ENOENT', syscall: 'open', path: file, stack: `Error: ${message}` })
}

/** A given file, read as Vite would read it, with only the source map the host may use. */
function loadGiven(id: string, rules: FileRules): unknown {
  const file = fileOf(id)
  if (id.startsWith('\0') || !path.isAbsolute(file) || !rules.isGiven(file)) return null
  let code: string
  try {
    code = fs.readFileSync(file, 'utf8')
  } catch {
    return null // Vite's own read fails the same way
  }
  return ownSourceMap(code, file, rules)
}

/** Vite's own expressions (its glob and asset plugins), matched on the module with literals stripped, as Vite does. */
const ASSET_URL = /\bnew\s+URL\s*\(\s*('[^']+'|"[^"]+"|`[^`]+`)\s*,\s*import\.meta\.url\s*(?:,\s*)?\)/dg

/** A relative import of a module a sandbox sent, of a given path the host does not have: that path. */
function besideSandboxModule(id: string, importer: unknown, rules: FileRules, projectRoot: string): { id: string } | null {
  if (typeof importer !== 'string' || sandboxModuleText(importer) === undefined || !/^\.\.?\//.test(id)) return null
  const file = path.resolve(path.dirname(fileOf(importer)), fileOf(id))
  return isSandboxOnly(file, rules, projectRoot) ? { id: file + id.slice(fileOf(id).length) } : null
}

/**
 * What the host's Vite reads on its own while it loads a module for a sandbox, beyond the module's
 * file: the files a source map names (its `.map` file, and every `sources` entry, which Vite
 * fills in from disk into the map it serves, prints and hands the coverage provider) and the
 * folders an `import.meta.glob` lists. The module's file is given, but what it names is chosen by
 * test code, so the gateway decides before Vite reads:
 *
 * - a given file is loaded by the gateway, with the source map it may have (source-maps.ts):
 *   Vite never extracts a map from a given file's comments itself;
 * - an import the host resolves (import analysis of a given module, an alias, a link under
 *   node_modules, a path of the public folder) to a file the sandbox may not name resolves to
 *   nothing, as a missing file;
 * - each `import.meta.glob` is read from Vite's own parse of the module, just before Vite's glob
 *   plugin expands it, and resolved as that plugin resolves it: a pattern whose fixed part is
 *   outside the workspace, that climbs with `..` after it, that starts with `**`, that is not a
 *   literal, or whose folder holds a link out of what is given fails the load with an error that
 *   names the pattern (which the sandbox wrote), never what is there.
 */
import fs from 'node:fs'
import path from 'node:path'
import type { FileRules } from './file-rules.js'
import { ownSourceMap } from './source-maps.js'
import { stripLiteral } from 'strip-literal'
import { realPath } from '../../workspace/collect.js'

/** The part of a Vite environment this screen needs. */
export interface LoadingEnvironment {
  config: { root: string }
  pluginContainer: {
    load(id: string, ...rest: unknown[]): Promise<unknown>
    resolveId(id: string, ...rest: unknown[]): Promise<{ id: string } | null | undefined>
  }
  plugins?: ReadonlyArray<{ name: string; transform?: unknown }>
}

/** What a plugin hook's `this` offers that the glob check uses. */
interface HookContext {
  parse(code: string): unknown
  resolve(id: string, importer?: string): Promise<{ id: string } | null>
}
type Handler = (this: HookContext, code: string, id: string, ...rest: unknown[]) => unknown

const screened = new WeakMap<object, { rules: () => FileRules }>()

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
  const container = environment.pluginContainer
  const load = container.load.bind(container)
  container.load = async (id: string, ...rest: unknown[]) => {
    const result = await load(id, ...rest)
    return result == null ? loadGiven(id, state.rules()) : result
  }
  // Imports inside given modules are resolved by the host too (import analysis, aliases, links
  // under node_modules): a file the sandbox may not name resolves to nothing, as a missing one.
  const resolveId = container.resolveId.bind(container)
  container.resolveId = async (id: string, ...rest: unknown[]) => {
    const resolved = await resolveId(id, ...rest)
    const file = resolved?.id.replace(/[?#].*$/, '')
    if (!file || !path.isAbsolute(file)) return resolved
    // Vite's asset plugin answers a path of the public folder as it is (`/x`) and reads it from there.
    const rules = state.rules()
    return [file, ...rules.roots.map((root) => path.join(root, file))].every((p) => rules.mayName(p)) ? resolved : null
  }
  before(environment, 'vite:import-glob', async function (code, id) {
    if (code.includes('import.meta.glob')) await checkGlobs(this, code, id, environment.config.root, state.rules())
  })
  // The worker plugin runs first and rewrites `new Worker(new URL(…))`: both are checked before their plugin.
  for (const name of ['vite:worker-import-meta-url', 'vite:asset-import-meta-url']) {
    before(environment, name, async function (code, id) {
      if (code.includes('import.meta.url')) checkAssetUrls(code, id, state.rules())
    })
  }
}

/** Runs `check` before the transform of the environment's plugin `name` (if it has one). */
function before(environment: LoadingEnvironment, name: string, check: (this: HookContext, code: string, id: string) => Promise<void>): void {
  const plugin = environment.plugins?.find((p) => p.name === name) as { transform?: Handler | { handler: Handler } } | undefined
  if (!plugin?.transform) return
  const wrap = (handler: Handler): Handler =>
    async function (this: HookContext, code, id, ...rest) {
      await check.call(this, code, id)
      return handler.call(this, code, id, ...rest)
    }
  if (typeof plugin.transform === 'function') plugin.transform = wrap(plugin.transform)
  else plugin.transform.handler = wrap(plugin.transform.handler)
}

/**
 * Each `new URL('…', import.meta.url)` Vite's asset plugin turns into a URL (client environments):
 * for `?inline` or a public path it reads the file it names. Found as Vite finds them; only a
 * relative URL to a path the sandbox may name inside the workspace passes.
 */
function checkAssetUrls(code: string, id: string, rules: FileRules): void {
  const file = id.replace(/[?#].*$/, '')
  let clean: string
  try {
    clean = stripLiteral(code)
  } catch {
    return // Vite's plugin fails on it too
  }
  for (const match of clean.matchAll(ASSET_URL)) {
    const [[start], [urlStart, urlEnd]] = match.indices as Array<[number, number]>
    if (/\/\*\s*@vite-ignore\s*\*\//.test(code.slice(start, urlStart))) continue
    const raw = code.slice(urlStart, urlEnd)
    if (raw[0] === '`' && raw.includes('${')) continue // becomes an import.meta.glob, checked as one
    const url = raw.slice(1, -1)
    if (/^data:/i.test(url)) continue
    const target = url.startsWith('.') ? path.resolve(path.dirname(file), url.replace(/[?#].*$/, '')) : undefined
    const rel = target && path.relative(rules.root, target)
    if (target === undefined || !rel || rel.startsWith('..') || path.isAbsolute(rel) || !rules.mayWord(target)) {
      throw new Error(`vitest-pool-sandbox: new URL(${JSON.stringify(url).slice(0, 300)}, import.meta.url) in ${path.relative(rules.root, file)} names a file the sandbox is not given (only relative URLs to given files are turned into asset URLs)`)
    }
  }
}

/** A given file, read as Vite would read it, with only the source map the host may use. */
function loadGiven(id: string, rules: FileRules): unknown {
  const file = id.replace(/[?#].*$/, '')
  if (id.startsWith('\0') || !path.isAbsolute(file) || !rules.isGiven(file)) return null
  let code: string
  try {
    code = fs.readFileSync(file, 'utf8')
  } catch {
    return null // Vite's own read fails the same way
  }
  return ownSourceMap(code, file, rules)
}

/** Characters that make a glob segment a pattern rather than a name. */
const GLOB_CHARS = /[*?{}[\]()!+@]/

function refuse(pattern: string, file: string, rules: FileRules, why: string): Error {
  return new Error(`vitest-pool-sandbox: import.meta.glob pattern ${JSON.stringify(pattern).slice(0, 300)} in ${path.relative(rules.root, file)} ${why}`)
}

/** Vite's own expressions (its glob and asset plugins), matched on the module with literals stripped, as Vite does. */
const IMPORT_GLOB = /\bimport\.meta\.glob(?:<\w+>)?\s*\(/g
const ASSET_URL = /\bnew\s+URL\s*\(\s*('[^']+'|"[^"]+"|`[^`]+`)\s*,\s*import\.meta\.url\s*(?:,\s*)?\)/dg

/** Vite's `findCorrespondingCloseParenthesisPosition`, as it is (`open` is just after the `(`). */
function closeParen(clean: string, open: number): number {
  const close = clean.indexOf(')', open)
  if (close < 0) return -1
  if (!clean.slice(open, close).includes('(')) return close
  let remaining = 0
  for (let at = open; at < clean.length; at++) {
    if (clean[at] === '(') remaining++
    else if (clean[at] === ')' && --remaining <= 0) return at
  }
  return -1
}

/** Every `import.meta.glob(...)` of the module, found and parsed exactly as Vite's glob plugin finds and parses them. */
async function checkGlobs(ctx: HookContext, code: string, id: string, root: string, rules: FileRules): Promise<void> {
  const file = id.replace(/[?#].*$/, '')
  let clean: string
  try {
    clean = stripLiteral(code)
  } catch {
    return // Vite expands nothing then
  }
  for (const match of clean.matchAll(IMPORT_GLOB)) {
    const end = closeParen(clean, match.index + match[0].length) + 1
    if (end <= 0) continue // Vite refuses it itself
    let call: Node | undefined
    try {
      call = ((ctx.parse(code.slice(match.index, end)) as { body: Node[] }).body[0]?.expression as Node | undefined)
    } catch {
      continue // Vite refuses it itself
    }
    if (call?.type !== 'CallExpression') continue
    await checkGlobCall(ctx, call, file, id, root, rules)
  }
}

/** One glob call's patterns and options, resolved as Vite's `toAbsoluteGlob` resolves them. */
async function checkGlobCall(ctx: HookContext, call: Node, file: string, id: string, root: string, rules: FileRules): Promise<void> {
  const [first, options] = call.arguments as Node[]
  const literal = (n: Node | undefined): string | undefined => (n?.type === 'Literal' && typeof n.value === 'string' ? n.value : n?.type === 'TemplateLiteral' && (n.expressions as unknown[]).length === 0 ? (n.quasis as Array<{ value: { raw: string } }>)[0].value.raw : undefined)
  const patterns = first?.type === 'ArrayExpression' ? (first.elements as Node[]).map(literal) : [literal(first)]
  let base: string | undefined
  for (const prop of options?.type === 'ObjectExpression' ? (options.properties as Node[]) : []) {
    const key = prop.key as Node | undefined
    const name = key?.type === 'Identifier' ? key.name : literal(key)
    if (name === 'base') base = literal(prop.value as Node) ?? refusedBase(file, rules)
    if (name === 'exhaustive' && !((prop.value as Node)?.type === 'Literal' && (prop.value as Node).value === false)) throw refuse('exhaustive', file, rules, 'asks to list dependencies too, whose links may lead anywhere')
  }
  for (const raw of patterns) {
    if (raw === undefined) throw refuse('import.meta.glob', file, rules, 'is not a literal pattern')
    const pattern = raw.startsWith('!') ? raw.slice(1) : raw
    const absolute = await absoluteGlob(ctx, pattern, id, root, base)
    if (absolute === undefined) throw refuse(raw, file, rules, 'is not one the sandbox pool can check (start it with ./, ../, / or an alias)')
    const parts = absolute.split('/')
    const wild = parts.findIndex((p) => GLOB_CHARS.test(p))
    const fixed = path.posix.normalize((wild < 0 ? parts : parts.slice(0, wild)).join('/') || '/')
    const inRoot = (p: string) => p === rules.root || p.startsWith(rules.root + path.sep)
    if (wild >= 0 && parts.slice(wild).join('/').includes('..')) throw refuse(raw, file, rules, 'climbs with .. after a wildcard')
    if (!inRoot(fixed) || !inRoot(realPath(fixed))) throw refuse(raw, file, rules, 'reaches outside the workspace given to the sandbox')
    // A pattern that goes deeper than one level below its fixed part walks into links there.
    const deep = wild >= 0 && (parts.length - wild > 1 || parts.slice(wild).some((p) => p.includes('**')))
    if (rules.outwardLinks.some((link) => link === fixed || (deep && link.startsWith(fixed + path.sep)))) throw refuse(raw, file, rules, 'would list a link that leads out of what the sandbox is given')
  }
}

function refusedBase(file: string, rules: FileRules): never {
  throw refuse('base', file, rules, 'has a base option that is not a literal')
}

/** The absolute pattern Vite's glob plugin lists (its `toAbsoluteGlob`), or undefined for forms it does not resolve here. */
async function absoluteGlob(ctx: HookContext, glob: string, importer: string, root: string, base: string | undefined): Promise<string | undefined> {
  const importerDir = path.posix.dirname(importer.replace(/[?#].*$/, ''))
  const dir = base === undefined ? importerDir : base.startsWith('/') ? path.posix.join(root, base) : path.posix.resolve(importerDir, base)
  if (glob.startsWith('/')) return path.posix.join(root, glob.slice(1))
  if (glob.startsWith('./')) return path.posix.join(dir, glob.slice(2))
  if (glob.startsWith('../')) return path.posix.join(dir, glob)
  if (glob.startsWith('**') || glob.startsWith('#')) return undefined
  const resolved = (await ctx.resolve(glob, importer))?.id
  return resolved && path.isAbsolute(resolved) ? resolved : undefined
}

type Node = { type: string; [key: string]: unknown }

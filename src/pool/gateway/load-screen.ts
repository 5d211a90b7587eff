/**
 * What the host's Vite reads on its own while it loads a module for a sandbox, beyond the module's
 * file: the files a source map names (its `.map` file, and every `sources` entry, which Vite
 * fills in from disk into the map it serves, prints and hands the coverage provider) and the
 * folders an `import.meta.glob` lists. The module's file is given, but what it names is chosen by
 * test code, so the gateway decides before Vite reads:
 *
 * - a source map whose file or sources are not all given (or dependencies) is dropped, comment
 *   and all: the module loads as its plain code;
 * - a glob pattern whose base is outside the workspace, or that climbs with `..` after a
 *   wildcard, fails the module's load with an error that names the pattern (which the sandbox
 *   wrote), never what is there.
 */
import fs from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import type { FileRules } from './file-rules.js'
import { debug } from '../../debug.js'

const log = debug('worker')

/** The part of a Vite environment this screen needs. */
export interface LoadingEnvironment {
  config: { root: string; resolve?: { alias?: unknown } }
  pluginContainer: { load(id: string, ...rest: unknown[]): Promise<unknown> }
}

const screened = new WeakMap<object, { rules: () => FileRules }>()

/**
 * Puts the screen in front of the environment's loads (once; `rules` is read at each load, so a
 * watch-mode run's new workspace counts).
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
    return screenLoaded(environment, id, result, state.rules())
  }
}

const SOURCE_MAP_COMMENT = /(?:\/\/|\/\*)[#@]\s*sourceMappingURL=([^\s*'"]+)[^\n]*/g

async function screenLoaded(environment: LoadingEnvironment, id: string, result: unknown, rules: FileRules): Promise<unknown> {
  const file = id.replace(/[?#].*$/, '')
  if (id.startsWith('\0') || !path.isAbsolute(file)) return result
  let code: string | undefined
  if (result == null) {
    // Vite would read the file itself and then its source map; only given files are read here.
    if (!rules.isGiven(file)) return result
    try {
      code = fs.readFileSync(file, 'utf8')
    } catch {
      return result
    }
  } else code = typeof result === 'string' ? result : typeof (result as { code?: unknown }).code === 'string' ? (result as { code: string }).code : undefined
  if (code === undefined) return result
  if (code.includes('import.meta.glob')) checkGlobs(code, file, environment.config, rules)
  const mapOk = !code.includes('sourceMappingURL') || [...code.matchAll(SOURCE_MAP_COMMENT)].every((m) => sourceMapAllowed(m[1], file, rules))
  const resultMap = result && typeof result === 'object' ? (result as { map?: unknown }).map : undefined
  if (mapOk && (resultMap == null || mapSourcesAllowed(resultMap, path.dirname(file), rules))) return result
  log('%s: its source map names files that are not given; loaded without it', file)
  const plain = code.replace(SOURCE_MAP_COMMENT, '')
  return result && typeof result === 'object' ? { ...(result as object), code: plain, map: null } : { code: plain, map: null }
}

/** A `sourceMappingURL` target: an inline map, or a map file, all of whose files are given. */
function sourceMapAllowed(url: string, file: string, rules: FileRules): boolean {
  const inline = /^data:application\/json(?:;charset=[\w-]+)?(;base64)?,(.*)$/i.exec(url)
  let text: string
  let dir = path.dirname(file)
  if (inline) {
    try {
      text = inline[1] ? Buffer.from(inline[2], 'base64').toString('utf8') : decodeURIComponent(inline[2])
    } catch {
      return false
    }
  } else {
    let mapFile: string
    try {
      mapFile = url.startsWith('file:') ? fileURLToPath(url) : path.resolve(dir, decodeURI(url))
    } catch {
      return false
    }
    if (!given(mapFile, rules)) return false
    try {
      text = fs.readFileSync(mapFile, 'utf8')
    } catch {
      return true // Vite finds nothing there either
    }
    dir = path.dirname(mapFile)
  }
  try {
    return mapSourcesAllowed(JSON.parse(text), dir, rules)
  } catch {
    return false // Vite would print the start of whatever it read
  }
}

/** Whether every source a map names, as Vite resolves it, is a file the sandbox may be given. */
function mapSourcesAllowed(map: unknown, dir: string, rules: FileRules): boolean {
  const m = (typeof map === 'string' ? safeJson(map) : map) as { sources?: unknown; sourceRoot?: unknown; sections?: unknown } | undefined
  if (!m || typeof m !== 'object') return true
  if (m.sections !== undefined) return false // index maps: not what a module's own map is
  if (m.sources === undefined) return true
  if (!Array.isArray(m.sources)) return false
  const root = typeof m.sourceRoot === 'string' ? m.sourceRoot : ''
  return m.sources.every((source) => {
    if (source === null) return true
    if (typeof source !== 'string') return false
    let p: string
    try {
      p = source.startsWith('file:') ? fileURLToPath(source) : path.resolve(dir, root, decodeURI(source))
    } catch {
      return false
    }
    return given(p, rules)
  })
}

function safeJson(text: string): unknown {
  try {
    return JSON.parse(text)
  } catch {
    return undefined
  }
}

/** Given, or a dependency (the sandbox has those too); inside the workspace either way. */
function given(p: string, rules: FileRules): boolean {
  const rel = path.relative(rules.root, p)
  return !rel.startsWith('..') && !path.isAbsolute(rel) && rules.mayName(p)
}

/** Characters that make a glob segment a pattern rather than a name. */
const GLOB_CHARS = /[*?{}[\]()!+@]/

/** Each `import.meta.glob(...)`'s patterns (and `base`) must stay inside the workspace. */
function checkGlobs(code: string, file: string, config: LoadingEnvironment['config'], rules: FileRules): void {
  for (const m of code.matchAll(/import\.meta\.glob\s*(?:<[^>]*>)?\s*\(/g)) {
    const args = callArguments(code, m.index + m[0].length)
    const patterns = stringsIn(args.first)
    const base = /\bbase\s*:\s*(['"`])([^'"`]*)\1/.exec(args.rest)?.[2]
    for (const raw of base === undefined ? patterns : [...patterns, base]) {
      const pattern = raw.replace(/^!/, '')
      const resolved = globBase(pattern, file, config, base !== undefined && raw !== base ? base : undefined)
      if (resolved === undefined) continue // not a form Vite takes: Vite says so itself
      const parts = pattern.split('/')
      const wild = parts.findIndex((p) => GLOB_CHARS.test(p))
      const climbs = wild >= 0 && parts.slice(wild).includes('..')
      const rel = path.relative(rules.root, resolved)
      if (climbs || rel.startsWith('..') || path.isAbsolute(rel)) {
        throw new Error(`vitest-pool-sandbox: import.meta.glob pattern ${JSON.stringify(raw)} in ${path.relative(rules.root, file)} reaches outside the workspace given to the sandbox`)
      }
    }
  }
}

/** The folder a glob pattern starts listing from, as Vite reads it (relative, root-relative, an alias). */
function globBase(pattern: string, file: string, config: LoadingEnvironment['config'], base: string | undefined): string | undefined {
  const from = base === undefined ? path.dirname(file) : path.resolve(path.dirname(file), base)
  if (pattern.startsWith('./') || pattern.startsWith('../')) return path.resolve(from, fixedPart(pattern))
  if (pattern.startsWith('/')) return path.join(config.root, fixedPart(pattern))
  const aliased = aliasFor(pattern, config.resolve?.alias)
  return aliased === undefined ? undefined : path.resolve(config.root, fixedPart(aliased))
}

/** A pattern's segments before the first one with a wildcard. */
function fixedPart(pattern: string): string {
  const parts = pattern.split('/')
  const wild = parts.findIndex((p) => GLOB_CHARS.test(p))
  return (wild < 0 ? parts : parts.slice(0, wild)).join('/')
}

/** `pattern` with the config's first matching alias applied, if one matches. */
function aliasFor(pattern: string, aliases: unknown): string | undefined {
  const entries = Array.isArray(aliases) ? aliases : aliases && typeof aliases === 'object' ? Object.entries(aliases).map(([find, replacement]) => ({ find, replacement })) : []
  for (const { find, replacement } of entries as Array<{ find: unknown; replacement: unknown }>) {
    if (typeof replacement !== 'string') continue
    if (typeof find === 'string' && (pattern === find || pattern.startsWith(`${find}/`))) return replacement + pattern.slice(find.length)
    if (find instanceof RegExp && find.test(pattern)) return pattern.replace(find, replacement)
  }
  return undefined
}

/** The text of a call's first argument and of the rest, from just after its `(`. */
function callArguments(code: string, at: number): { first: string; rest: string } {
  let depth = 0
  let quote: string | undefined
  let comma = -1
  for (let i = at; i < code.length; i++) {
    const c = code[i]
    if (quote) {
      if (c === '\\') i++
      else if (c === quote) quote = undefined
      continue
    }
    if (c === '"' || c === "'" || c === '`') quote = c
    else if (c === '(' || c === '[' || c === '{') depth++
    else if (c === ')' || c === ']' || c === '}') {
      if (depth === 0) return comma < 0 ? { first: code.slice(at, i), rest: '' } : { first: code.slice(at, comma), rest: code.slice(comma + 1, i) }
      depth--
    } else if (c === ',' && depth === 0 && comma < 0) comma = i
  }
  return { first: code.slice(at), rest: '' }
}

/** The string literals of an expression (a string or an array of them). */
function stringsIn(text: string): string[] {
  return [...text.matchAll(/(['"`])((?:\\.|(?!\1)[^\\])*)\1/g)].map((m) => m[2])
}

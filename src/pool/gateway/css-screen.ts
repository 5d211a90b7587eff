/**
 * Vite's CSS pipeline, for CSS a sandbox loads while the config turns CSS processing on
 * (`test.css`; Vitest empties CSS otherwise, but not `.sss`). postcss-import, url() rewriting, CSS
 * modules' `composes` and the preprocessors read files the CSS names, through resolvers and file
 * reads of their own that the gateway cannot reach. So the gateway judges what the compile did,
 * the same way whatever is on the host:
 *
 * - every file it read (what Vite records to watch) must be one the sandbox may name;
 * - every url() left in the CSS names a given place (or data:, another scheme, a fragment): Vite
 *   leaves a url it cannot resolve as written, so a missing file must be refused as an existing
 *   one is;
 * - `composes`/`@value` from another file is refused (postcss-modules reads that file and records
 *   nothing);
 * - a failed compile keeps its error only when it is located in the module's own file and names no
 *   other path; otherwise one message;
 * - `css.transformer: 'lightningcss'` reads files it does not record: refused for non-empty CSS.
 */
import fs from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import type { FileRules } from './file-rules.js'
import { aroundTransform, type PluginsOf } from './plugin-hooks.js'
import { checkCssImports, RUNS_CODE } from './css-imports.js'
import { pathsIn } from './module-screen.js'
import { fileOf } from './module-ids.js'

/** The part of a Vite environment this screen needs. */
export interface CssEnvironment extends PluginsOf {
  config: { root: string; base?: string; css?: { transformer?: string; modules?: false | Record<string, unknown> } }
}

/** Every `url(…)` of compiled CSS, and the strings of an `image-set(…)`, as Vite's url rewriting finds them. */
// Each run of blanks is taken whole (a lookahead, then its text): no backtracking into it, which
// was quadratic on `url(` and many spaces.
const CSS_URL = /url\((?=(\s*))\1(?:'([^']*)'|"([^"]*)"|([^'")\s]*))(?=(\s*))\5\)/gi
const QUOTED = /'([^']*)'|"([^"]*)"/g

/**
 * Checks the CSS compile of every module the environment's `vite:css` plugin transforms (once per
 * environment; `rules` is read each time).
 */
export function screenCss(environment: CssEnvironment, rules: () => FileRules): void {
  const css = environment.config.css
  // postcss-modules takes a Loader for files named by `composes … from` and `@value … from`.
  if (css && css.modules !== false) css.modules = { ...css.modules, Loader: RefusingLoader }
  aroundTransform(environment, 'vite:css', (handler) =>
    async function (this: any, code, id, ...rest) {
      const file = fileOf(id)
      const r = rules()
      // Less runs the JavaScript a sheet names (`@plugin`) and reads files it does not report
      // (`data-uri`, `@import (inline)`); Stylus runs JavaScript too (`use()`, `@require` of .js).
      if (RUNS_CODE.test(id)) {
        throw new Error(`vitest-pool-sandbox: ${path.relative(r.root, file)} is Less or Stylus, whose compilers run code and read files a sheet names, on the host: not compiled for a sandbox. Import its compiled CSS, or test it under pool 'forks'`)
      }
      checkCssImports(code, file, environment.config.root, r, () => refused(file, r))
      if (css?.transformer === 'lightningcss' && code.trim()) {
        throw new Error(`vitest-pool-sandbox: css.transformer 'lightningcss' is not supported for CSS a sandbox loads (${path.relative(r.root, file)}): it reads files the host gateway cannot check. Remove css.transformer from the Vite config, or leave test.css off`)
      }
      const read: string[] = []
      const context = this
      const recording = new Proxy(context, {
        get: (target, key) => {
          if (key === 'addWatchFile') return (f: string) => (read.push(f), target.addWatchFile(f))
          const value = Reflect.get(target, key, target)
          return typeof value === 'function' ? value.bind(target) : value
        },
      })
      let result: unknown
      try {
        result = await handler.call(recording, withoutMapComments(code), id, ...rest)
      } catch (error) {
        throw ownError(error, file, r) ?? refused(file, r)
      }
      // A missing file under a link out is no more the sandbox's than one that is there.
      if (read.some((f) => !r.mayName(f) || !r.mayReach(f))) throw refused(file, r)
      if (!mapOfCompile((result as { map?: unknown } | null)?.map, file, read)) throw refused(file, r)
      const out = (result as { code?: unknown } | null)?.code
      if (typeof out === 'string' && urlsOf(out).some((url) => !givenUrl(url, file, read, environment.config, r))) throw refused(file, r)
      return result
    },
  )
}

/**
 * postcss takes the last `/* # sourceMappingURL=… *\/` of a sheet, wherever it is, as the sheet's
 * map: a data: URL, or a `.map` file it reads. A sheet's map comments are blanked (its lines kept)
 * before the compile, so what the compile's map holds is only what it read.
 */
const MAP_COMMENT = /\/\*\s*[#@]\s*sourceMappingURL=[\s\S]*?\*\//g

function withoutMapComments(code: string): string {
  return code.includes('sourceMappingURL=') ? code.replace(MAP_COMMENT, (c) => c.replace(/[^\n]/g, '')) : code
}

/**
 * Does the compile's map name only the sheet and files the compile read? A sheet it imported can
 * still bring a map of its own in, naming any file, whose text Vite would read to fill it in.
 */
function mapOfCompile(map: unknown, file: string, read: string[]): boolean {
  if (map == null) return true
  let m = map as { sources?: unknown }
  if (typeof map === 'string') {
    try {
      m = JSON.parse(map)
    } catch {
      return false
    }
  }
  if (typeof m !== 'object' || m === null) return false
  if (m.sources === undefined) return true
  if (!Array.isArray(m.sources)) return false
  const known = new Set([file, ...read.map((f) => path.resolve(f))])
  return m.sources.every((source) => {
    if (source === null || (typeof source === 'string' && source.startsWith('\0'))) return true
    if (typeof source !== 'string') return false
    try {
      return known.has(path.resolve(path.dirname(file), fileOf(decodeURI(source))))
    } catch {
      return false
    }
  })
}

/** The one answer for CSS that reads, or names, what the sandbox is not given (or what is missing). */
function refused(file: string, rules: FileRules): Error {
  return new Error(`vitest-pool-sandbox: the CSS of ${path.relative(rules.root, file)} names a file the sandbox is not given, or one that is missing (through @import, url(), composes … from or a preprocessor's import), so the host does not compile it`)
}

/** A compile error located in the module's own file and naming only what the sandbox may word: kept as it is. */
function ownError(error: unknown, file: string, rules: FileRules): unknown {
  if (!(error instanceof Error)) return undefined
  const e = error as Error & { file?: unknown; loc?: { file?: unknown } }
  const at = typeof e.file === 'string' ? e.file : e.loc?.file
  if (typeof at !== 'string' || fileOf(at) !== file) return undefined
  for (const p of pathsIn(e)) if (!rules.mayWord(p)) return undefined
  return error
}

function urlsOf(code: string): string[] {
  const urls = [...code.matchAll(CSS_URL)].map((m) => m[2] ?? m[3] ?? m[4])
  for (const set of imageSets(code)) for (const m of set.matchAll(QUOTED)) urls.push(m[1] ?? m[2])
  return urls
}

/** The contents of each `image-set(…)`, to its matching parenthesis, in one pass (one nested in another is in its contents). */
function imageSets(code: string): string[] {
  const lower = code.toLowerCase()
  const sets: string[] = []
  let at = lower.indexOf('image-set(')
  while (at >= 0) {
    const start = at + 'image-set('.length
    let depth = 1
    let i = start
    for (; i < code.length && depth > 0; i++) depth += code[i] === '(' ? 1 : code[i] === ')' ? -1 : 0
    sets.push(code.slice(start, depth === 0 ? i - 1 : i))
    at = lower.indexOf('image-set(', i)
  }
  return sets
}

/**
 * May compiled CSS hold this url? What Vite made of a file it read (checked with the reads), and
 * what it left as written only when it names a place the sandbox is given.
 */
function givenUrl(raw: string, file: string, read: string[], config: CssEnvironment['config'], rules: FileRules): boolean {
  const url = raw.trim()
  if (url === '' || url.startsWith('#') || url.startsWith('//')) return true
  if (/^[a-z][a-z\d+.-]*:/i.test(url) && !/^file:/i.test(url)) return true
  let target = fileOf(url)
  try {
    target = /^file:/i.test(target) ? fileURLToPath(target) : decodeURI(target)
  } catch {
    return false
  }
  const base = (config.base ?? '/').replace(/\/?$/, '/')
  if (read.some((f) => target === `${base}@fs${f}` || target === base + path.posix.relative(config.root, f))) return true
  if (target.startsWith('/@fs/')) return rules.mayReach(target.slice(4))
  // Vite left `/x` as written: it is a public file (Vite checks those first) or names nothing it found.
  if (target.startsWith('/')) return rules.roots.some((r) => rules.isGiven(path.join(r, target)) && fs.existsSync(path.join(r, target)))
  // A bare url Vite left as written: its resolver found no package by that name, where one above
  // the workspace would have become a refused `/@fs/` url. Refused alike.
  if (!target.startsWith('.')) return false
  return rules.mayReach(path.resolve(path.dirname(file), target))
}

/** postcss-modules' loader for `composes … from` and `@value … from` another file: refused. */
class RefusingLoader {
  readonly finalSource = ''
  fetch(): Promise<never> {
    return Promise.reject(new Error('composes/@value from another file'))
  }
}

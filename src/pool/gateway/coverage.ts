/**
 * Coverage data from a worker (`onAfterSuiteRun`): the host's coverage provider reads every file
 * it names and writes reports named after them, so every file named anywhere in it must be given.
 * Rebuilt from the fields the providers use, never passed on as sent: v8's `{ result: [{ url,
 * scriptId, functions }] }`, istanbul's `{ [path]: { path, statementMap, fnMap, branchMap, s, f,
 * b, … } }` whose `path` istanbul keys entries by. Entries that name another file, or are not in
 * the shape the provider reads, are dropped: every url, source and offset checked the way the
 * host's provider will read it, not one reading of a richer form.
 */
import { randomUUID } from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { istanbulEntry, type LocationTally } from './istanbul.js'
import { isPlain } from './methods.js'


/**
 * The data as the host's provider gets it, in the shape of the provider the host runs (`v8`,
 * `istanbul`; a custom provider gets nothing); `isGiven` answers for absolute host paths.
 */
export function screenCoverage(coverage: unknown, provider: string | undefined, isGiven: (file: string) => boolean, tally: LocationTally, ranges: RangeTally): unknown {
  if (coverage === undefined || coverage === null) return coverage
  if (!isPlain(coverage) || (provider !== 'v8' && provider !== 'istanbul')) return undefined
  const given = (file: unknown): file is string => typeof file === 'string' && path.isAbsolute(file) && path.posix.normalize(file) === file && isGiven(file)
  if (provider === 'v8') {
    if (!Array.isArray(coverage.result)) return { result: [] }
    const result: unknown[] = []
    for (const r of coverage.result) {
      const file = isPlain(r) && typeof r.url === 'string' ? plainFileUrl(r.url) : undefined
      // A file the host does not have gets a stand-in source as long as the longest range: none.
      if (file === undefined || !given(file) || !fs.existsSync(file)) continue
      const bound = Math.max(MIN_OFFSET_BOUND, 8 * fs.statSync(file).size)
      const functions = v8Functions((r as Record<string, unknown>).functions, bound)
      if (functions && !ranges.fits(r.url as string, functions, bound)) continue
      const startOffset = (r as Record<string, unknown>).startOffset
      // Vitest 5 keeps a child process's script (`coverage.autoAttachSubprocess`) apart from the module runner's.
      const extended = (r as Record<string, unknown>).isExtendedContext === true ? { isExtendedContext: true } : {}
      if (functions) result.push({ scriptId: String((r as Record<string, unknown>).scriptId).slice(0, 64), url: r.url, functions, startOffset: Number.isSafeInteger(startOffset) && (startOffset as number) >= 0 ? startOffset : 0, ...extended })
    }
    return { result }
  }
  const out: Record<string, unknown> = Object.create(null)
  for (const [file, entry] of Object.entries(coverage)) {
    if (!given(file) || !isPlain(entry) || entry.path !== file || !fs.existsSync(file)) continue
    // The code it describes is the host's transform of the file: a few times the file at most.
    const kept = istanbulEntry(file, entry, 4 * fs.statSync(file).size, tally)
    if (!kept) continue
    const map = inputSourceMap(file, entry.inputSourceMap, given)
    if (map) kept.inputSourceMap = map
    out[file] = kept
  }
  return { ...out }
}

/**
 * Vitest 5: the screened data (JSON) written into the folder its provider reads its workers'
 * files from (`coverageFilesDirectory`), under a name of the host's; the file's path.
 */
export function writeCoverageFile(folder: string | undefined, json: string): string | undefined {
  if (folder === undefined) return undefined
  const file = path.join(folder, `coverage-${randomUUID()}.json`)
  fs.writeFileSync(file, json)
  return file
}

/**
 * The path of a v8 coverage url, only when the url is exactly that path's `file:` URL and the path
 * holds no `%`: the host's provider decodes it again (`decodeURIComponent`, then `fileURLToPath`),
 * so any other form could be read as another path.
 */
function plainFileUrl(url: string): string | undefined {
  try {
    const file = fileURLToPath(url)
    return !file.includes('%') && path.posix.normalize(file) === file && pathToFileURL(file).href === url ? file : undefined
  } catch {
    return undefined
  }
}

/** The least bound on a range's offsets (a module's transformed code can outgrow its file). */
const MIN_OFFSET_BOUND = 1024 * 1024

/** Ranges nested in one another in one function: V8's follow the code's blocks, a few dozen deep. */
const MAX_NESTING = 256

/**
 * v8's `functions`, rebuilt of whole, bounded offsets and counts, each function's ranges nested
 * as V8 makes them (the provider's merge recurses once per level); undefined if any part is not.
 */
function v8Functions(functions: unknown, bound: number): unknown[] | undefined {
  if (!Array.isArray(functions)) return undefined
  const offset = (n: unknown) => Number.isSafeInteger(n) && (n as number) >= 0 && (n as number) <= bound
  const out: unknown[] = []
  for (const f of functions) {
    if (!isPlain(f) || !Array.isArray(f.ranges)) return undefined
    const ranges: Array<{ startOffset: number; endOffset: number; count: number }> = []
    for (const r of f.ranges) {
      if (!isPlain(r) || !offset(r.startOffset) || !offset(r.endOffset) || (r.endOffset as number) < (r.startOffset as number) || !Number.isSafeInteger(r.count) || (r.count as number) < 0) return undefined
      ranges.push({ startOffset: r.startOffset as number, endOffset: r.endOffset as number, count: r.count as number })
    }
    if (nesting(ranges) > MAX_NESTING) return undefined
    out.push({ functionName: typeof f.functionName === 'string' ? f.functionName.slice(0, 1024) : '', ranges, isBlockCoverage: f.isBlockCoverage === true })
  }
  return out
}

type Range = { startOffset: number; endOffset: number }

/** How many ranges overlap at the deepest point (ranges that only touch do not). */
function nesting(ranges: Range[]): number {
  const events = ranges.flatMap((r) => [[r.startOffset, 1], [r.endOffset, -1]] as const).sort((a, b) => a[0] - b[0] || a[1] - b[1])
  let depth = 0
  let deepest = 0
  for (const [, step] of events) deepest = Math.max(deepest, (depth += step))
  return deepest
}

/**
 * Each url's distinct v8 ranges over the whole run: the provider merges every message's ranges
 * for a url into one tree, so ranges sent apart can nest as deep together as in one function.
 */
export class RangeTally {
  private readonly urls = new Map<string, { keys: Set<string>; ranges: Range[] }>()

  /** Whether these functions' ranges fit with those the run sent before for `url`, counting them if so. */
  fits(url: string, functions: unknown[], bound: number): boolean {
    let seen = this.urls.get(url)
    if (!seen) this.urls.set(url, (seen = { keys: new Set(), ranges: [] }))
    const fresh = new Map<string, Range>()
    for (const f of functions as Array<{ ranges: Range[] }>) {
      for (const r of f.ranges) {
        const key = `${r.startOffset}:${r.endOffset}`
        if (!seen.keys.has(key)) fresh.set(key, r)
      }
    }
    if (!fresh.size) return true
    if (seen.keys.size + fresh.size > Math.max(10_000, bound)) return false
    const all = [...seen.ranges, ...fresh.values()]
    if (nesting(all) > MAX_NESTING) return false
    for (const [key, r] of fresh) seen.keys.add(key)
    seen.ranges = all
    return true
  }
}

/**
 * An istanbul entry's input source map, rebuilt as istanbul's map library reads it: version 3,
 * string lists, each source resolved to an absolute path that must be given (the source root, of
 * whatever type, read as the library reads it, then dropped); undefined if it is not.
 */
function inputSourceMap(file: string, map: unknown, given: (file: string) => boolean): Record<string, unknown> | undefined {
  if (!isPlain(map) || map.version !== 3 || typeof map.mappings !== 'string' || !Array.isArray(map.sources) || 'sections' in map) return undefined
  if (map.sourceRoot !== undefined && map.sourceRoot !== null && typeof map.sourceRoot !== 'string') return undefined
  const root = typeof map.sourceRoot === 'string' && map.sourceRoot ? path.resolve(path.dirname(file), map.sourceRoot) : path.dirname(file)
  const sources: string[] = []
  for (const source of map.sources) {
    if (typeof source !== 'string') return undefined
    let resolved: string | undefined
    try {
      resolved = source.startsWith('file://') ? fileURLToPath(source) : /^[a-z][a-z\d+.-]*:/i.test(source) ? undefined : path.resolve(root, source)
    } catch {
      resolved = undefined
    }
    if (!resolved || !given(resolved)) return undefined
    sources.push(resolved)
  }
  const strings = (v: unknown) => Array.isArray(v) && v.every((x) => typeof x === 'string' || x === null)
  return {
    version: 3,
    sources,
    mappings: map.mappings,
    names: strings(map.names) ? map.names : [],
    ...(strings(map.sourcesContent) ? { sourcesContent: map.sourcesContent } : {}),
    ...(typeof map.file === 'string' ? { file: map.file } : {}),
  }
}

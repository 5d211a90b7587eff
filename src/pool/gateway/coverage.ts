/**
 * Coverage data from a worker (`onAfterSuiteRun`): the host's coverage provider reads every file
 * it names and writes reports named after them, so every file named anywhere in it must be given.
 * Rebuilt from the fields the providers use, never passed on as sent: v8's `{ result: [{ url,
 * scriptId, functions }] }`, istanbul's `{ [path]: { path, statementMap, fnMap, branchMap, s, f,
 * b, … } }` whose `path` istanbul keys entries by. Entries that name another file are dropped.
 */
import path from 'node:path'
import { fileURLToPath } from 'node:url'

/** Fields of an istanbul file coverage (istanbul-lib-coverage) kept as sent. */
const ISTANBUL_FIELDS = ['statementMap', 'fnMap', 'branchMap', 's', 'f', 'b', 'bT', 'hash', '_coverageSchema', 'all'] as const

const isPlain = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === 'object' && !Array.isArray(v)

/**
 * The data as the host's provider gets it, in the shape of the provider the host runs (`v8`,
 * `istanbul`; a custom provider gets nothing); `isGiven` answers for absolute host paths.
 */
export function screenCoverage(coverage: unknown, provider: string | undefined, isGiven: (file: string) => boolean): unknown {
  if (coverage === undefined || coverage === null) return coverage
  if (!isPlain(coverage) || (provider !== 'v8' && provider !== 'istanbul')) return undefined
  const given = (file: unknown): file is string => typeof file === 'string' && path.isAbsolute(file) && path.posix.normalize(file) === file && isGiven(file)
  if (provider === 'v8') {
    if (!Array.isArray(coverage.result)) return { result: [] }
    const result = coverage.result.filter((r): r is Record<string, unknown> => isPlain(r) && typeof r.url === 'string' && givenUrl(r.url, given))
    return { result: result.map((r) => ({ scriptId: r.scriptId, url: r.url, functions: r.functions, startOffset: r.startOffset })) }
  }
  const out: Record<string, unknown> = Object.create(null)
  for (const [file, entry] of Object.entries(coverage)) {
    if (!given(file) || !isPlain(entry) || entry.path !== file) continue
    const kept: Record<string, unknown> = { path: file }
    for (const field of ISTANBUL_FIELDS) if (field in entry) kept[field] = entry[field]
    const map = entry.inputSourceMap
    if (isPlain(map) && Array.isArray(map.sources) && map.sources.every((s) => given(sourcePath(file, map.sourceRoot, s)))) kept.inputSourceMap = map
    out[file] = kept
  }
  return { ...out }
}

function givenUrl(url: string, given: (file: string) => boolean): boolean {
  if (!url.startsWith('file:///')) return false
  try {
    return given(fileURLToPath(url))
  } catch {
    return false
  }
}

/** A source of a file's input source map as istanbul reads it: relative to the source root or the file's folder. */
function sourcePath(file: string, sourceRoot: unknown, source: unknown): string | undefined {
  if (typeof source !== 'string') return undefined
  const base = typeof sourceRoot === 'string' && sourceRoot ? path.resolve(path.dirname(file), sourceRoot) : path.dirname(file)
  return source.startsWith('file://') ? (() => { try { return fileURLToPath(source) } catch { return undefined } })() : path.resolve(base, source)
}

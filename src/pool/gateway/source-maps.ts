/**
 * A given file's own source map, as the host may use it. Vite (and Vitest, for stack frames of
 * files outside the module graph) extracts a map from a file's comments with convert-source-map,
 * reads a `.map` file it names, and later reads every source that has no `sourcesContent` from
 * disk; the coverage provider reports every source. Test code writes those comments, so the
 * gateway extracts the map itself, in every form convert-source-map reads, and keeps it only when
 * it can read it whole and every source is a given file (or a URL or virtual name no one reads).
 * Anything else is no map at all.
 */
import fs from 'node:fs'
import path from 'node:path'
import type { FileRules } from './file-rules.js'
import { fileOf, isPlainPath } from './module-ids.js'

// convert-source-map's own expressions (v2), which Vite and Vitest use.
const INLINE = /^\s*?\/[/*][@#]\s+?sourceMappingURL=data:(((?:application|text)\/json)(?:;charset=([^;,]+?)?)?)?(?:;(base64))?,(.*?)$/gm
const MAP_FILE = /(?:\/\/[@#][ \t]+sourceMappingURL=([^\s'"`]+?)[ \t]*$)|(?:\/\*[@#][ \t]+sourceMappingURL=([^*]+?)[ \t]*(?:\*\/){1}[ \t]*$)/gm
/**
 * A source Vite never reads: a virtual name, or a URL as Vite's own `isExternalUrl` reads one
 * (lower-case letters only: `X://…` or `x1://…` it reads as a path, and `%2e%2e` in it climbs).
 * Not `file:` (the coverage provider reads it) and not `//x` (read as `/x` elsewhere).
 */
const UNREAD_SOURCE = /^(?:dep:|browser-external:|virtual:)|\0|^(?!file:)[a-z]+:\/\//

/** `code` without its map comments, and the map the host may use (or null). */
export function ownSourceMap(code: string, file: string, rules: FileRules, read?: FrameRead): { code: string; map: object | null } {
  const plain = code.replace(INLINE, '').replace(MAP_FILE, '')
  if (plain === code) return { code, map: null }
  const map = readMap(code, file, rules, read)
  const sources = map && givenSources(map, file, rules)
  if (!map || !sources) return { code: plain, map: null }
  // Each consumer joins `sourceRoot` its own way (Vite through the real folder, Vite's map merging
  // as text, Vitest's stack maps not at all): the map goes on with the paths checked, and no root.
  const { sourceRoot: _, ...rest } = map
  return { code: plain, map: { ...rest, sources } }
}

/** The largest file whose source map comments the gateway reads for a stack frame; a larger one is not named to the host. */
export const MAX_FRAME_FILE = 16 * 1024 * 1024

/** What deciding a frame's file read: its bytes, and the files the decision depends on (itself, the map file it names). */
export interface FrameRead {
  bytes: number
  files: string[]
}

/**
 * Whether a file names a source map the host may not read (Vitest would read it for a stack
 * frame), or is too large to tell. `read` collects what the decision read.
 */
export function namesRefusedMap(file: string, rules: FileRules, read: FrameRead = { bytes: 0, files: [] }): boolean {
  read.files.push(file)
  let code: string
  try {
    const size = fs.statSync(file).size
    if (size > MAX_FRAME_FILE) return true
    read.bytes += size
    code = fs.readFileSync(file, 'utf8')
  } catch {
    return false
  }
  if (!code.includes('sourceMappingURL')) return false
  const { code: plain, map } = ownSourceMap(code, file, rules, read)
  return plain !== code && map === null
}

/** The map as convert-source-map would find it (the last inline comment, else the last map file), or undefined. */
function readMap(code: string, file: string, rules: FileRules, read?: FrameRead): Record<string, unknown> | undefined {
  // Vite expands each line of a map's mappings: a map is kept only as large as its code could need.
  const largest = Math.max(1024 * 1024, 8 * code.length)
  const inline = [...code.matchAll(INLINE)].pop()
  let text: string
  if (inline) {
    try {
      text = inline[4] ? Buffer.from(inline[5], 'base64').toString('utf8') : decodeURIComponent(inline[5])
    } catch {
      return undefined
    }
  } else {
    const named = [...code.matchAll(MAP_FILE)].pop()
    const url = named?.[1] ?? named?.[2]
    if (!url) return undefined
    const mapFile = path.resolve(path.dirname(file), url)
    read?.files.push(mapFile)
    if (!inWorkspace(mapFile, rules) || !rules.isGiven(mapFile)) return undefined
    try {
      const size = fs.statSync(mapFile).size
      if (size > largest) return undefined
      if (read) read.bytes += size
      text = fs.readFileSync(mapFile, 'utf8')
    } catch {
      return undefined
    }
  }
  if (text.length > largest) return undefined
  try {
    const map = JSON.parse(text)
    if (typeof map?.mappings === 'string' && occurrences(map.mappings, ';') > 4 * occurrences(code, '\n') + 10_000) return undefined
    return map && typeof map === 'object' && !Array.isArray(map) ? map : undefined
  } catch {
    return undefined
  }
}

/**
 * Every source, resolved as Vite's injectSourcesContent resolves it, as the absolute path checked
 * (a given file), or left as it is when no one reads it; undefined when one is neither. A path a
 * URL would read otherwise is refused (isPlainPath): the coverage provider reads sources as URLs.
 */
function givenSources(map: Record<string, unknown>, file: string, rules: FileRules): Array<string | null> | undefined {
  if (map.sections !== undefined || !Array.isArray(map.sources)) return undefined
  if (map.sourceRoot !== undefined && typeof map.sourceRoot !== 'string') return undefined
  const sourceRoot = realSourceRoot(map.sourceRoot, file)
  const sources: Array<string | null> = []
  for (const source of map.sources as unknown[]) {
    if (source === null || (typeof source === 'string' && UNREAD_SOURCE.test(source))) {
      sources.push(source)
      continue
    }
    if (typeof source !== 'string') return undefined
    let clean: string
    try {
      clean = fileOf(decodeURI(source))
    } catch {
      return undefined
    }
    const p = sourceRoot ? path.resolve(sourceRoot, clean) : path.resolve(clean)
    if (!isPlainPath(p) || !inWorkspace(p, rules) || !rules.mayName(p)) return undefined
    sources.push(p)
  }
  return sources
}

/**
 * Vite fills a transform's map with the text of each source that has none, reading it from the
 * host's disk where the map says (`injectSourcesContent`, after the transforms and inside
 * `vite:css-post`). A map can come from what a module's text says (postcss takes a sheet's map
 * comment in), so each missing text is decided here first: Vite may read it only for a plain path
 * (no scheme, no escapes, queries or backslashes, so it reads what is checked) to a file the
 * sandbox may name; any other source gets an empty text, and Vite reads nothing for it. Returns
 * the map (parsed, when it was JSON text).
 */
export function withSourcesDecided(map: unknown, file: string, rules: FileRules): unknown {
  let parsed = map
  if (typeof map === 'string') {
    try {
      parsed = JSON.parse(map)
    } catch {
      return map
    }
  }
  const m = parsed as { sources?: unknown; sourcesContent?: unknown; sourceRoot?: unknown } | null
  if (!m || typeof m !== 'object' || !Array.isArray(m.sources)) return map
  const contents: unknown[] = Array.isArray(m.sourcesContent) ? m.sourcesContent : []
  const sourceRoot = realSourceRoot(m.sourceRoot, file)
  m.sources.forEach((source, i) => {
    if (contents[i] != null) return
    if (typeof source === 'string' && mayBeRead(source, sourceRoot, rules)) contents[i] = null
    else contents[i] = ''
  })
  m.sourcesContent = contents
  return parsed
}

/** The folder Vite resolves a map's sources against (`computeSourceRoute`: the real path), if it has one. */
function realSourceRoot(sourceRoot: unknown, file: string): string | undefined {
  try {
    return fs.realpathSync(path.resolve(path.dirname(file), typeof sourceRoot === 'string' ? sourceRoot : ''))
  } catch {
    return undefined
  }
}

/** Does Vite read exactly this path for the source, and may the sandbox name it? */
function mayBeRead(source: string, sourceRoot: string | undefined, rules: FileRules): boolean {
  if (source === '' || /[%?#\\\0]|^[a-z][a-z0-9+.-]*:/i.test(source)) return false
  const p = sourceRoot ? path.resolve(sourceRoot, source) : path.resolve(source)
  return isPlainPath(p) && rules.mayName(p)
}

/** Is `p` under the workspace root? */
export function inWorkspace(p: string, rules: FileRules): boolean {
  const rel = path.relative(rules.root, p)
  return !rel.startsWith('..') && !path.isAbsolute(rel)
}

/** How often `char` is in `text` (lines of code, `;`-separated lines of mappings). */
function occurrences(text: string, char: string): number {
  let n = 0
  for (let i = text.indexOf(char); i >= 0; i = text.indexOf(char, i + 1)) n++
  return n
}

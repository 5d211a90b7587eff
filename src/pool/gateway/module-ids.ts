/**
 * Module ids as the gateway reads them, before anything on the host touches them. Every form Vite
 * or Vitest accepts is first brought to one canonical form (the same rewrite for a file that
 * exists and one that does not, so the rewrite itself reveals nothing); a form the gateway does
 * not know is refused. A canonical id then names the host paths Vite could read for it: both
 * readings of `/x` (root-relative, then absolute), with the extension and index lookups.
 */
import { randomBytes } from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'

/** Extensions Vite tries for an import without one. */
const EXTENSIONS = ['.mjs', '.js', '.mts', '.ts', '.jsx', '.tsx', '.json', '.cjs', '.cts', '.node']
/** The longest id the gateway reads: Vite has no use for longer ones. */
export const MAX_ID_LENGTH = 4096
/** A folder that does not exist: importers the worker may not name are read from under it. */
export const ABSENT = `/.vitest-sandbox-absent-${randomBytes(6).toString('hex')}`

/**
 * What an id names. `file`: host paths, where `head` + `path` + `tail` is the canonical id;
 * `other`: a bare, builtin or virtual id (its answer is screened instead); `refused`: a form
 * the gateway does not read (answered as a module that does not exist, whatever it names).
 */
export type ModuleId =
  | FileId
  | { kind: 'other'; id: string }
  | { kind: 'refused'; id: string }

/** A file id: `head` + the path part + `tail` is the canonical id; `dir` is the importer's folder of a relative one. */
export interface FileId {
  kind: 'file'
  id: string
  head: string
  path: string
  tail: string
  rootRelative: boolean
  dir?: string
}

/**
 * A code point no module id has: C0 and C1 controls (but a leading `\0` of a virtual id), DEL,
 * backslash, and the line separators (Vite's `/[?#].*$/` cannot strip a query across one, so the
 * id would be read as a path that goes on past the `?`).
 */
const NOT_IN_IDS = /[\u0001-\u001f\u007f-\u009f\\\u2028\u2029]|(?!^)\0/

function decoded(s: string): string {
  try {
    return decodeURIComponent(s)
  } catch {
    return s
  }
}

/** `/a//b/../c` as `/a/c`, percent-escapes undone: what the file system would open. */
function plainPath(p: string): string {
  return path.posix.normalize(decoded(p))
}

/** Splits `id` at its query or hash. */
function splitQuery(id: string): [string, string] {
  const at = id.search(/[?#]/)
  return at < 0 ? [id, ''] : [id.slice(0, at), id.slice(at)]
}

/**
 * A path a file URL reads as itself (the coverage provider reads files and map sources as URLs):
 * absolute, normalized, with no `%`, `\\`, `?`, `#`, control character or line separator.
 */
export function isPlainPath(file: string): boolean {
  return path.isAbsolute(file) && path.normalize(file) === file && !/[%?#\\\0-\x1f\u2028\u2029]/.test(file)
}

/** The file an id names: the id without its query and hash (Vite's `cleanUrl`). */
export function fileOf(id: string): string {
  return id.replace(/[?#].*$/, '')
}

/**
 * Reads a module id (and, for a relative one, the path of its importer, already read). Bare ids
 * with `..` segments or escaped path characters are refused: no package name has them, and a
 * resolver would walk out of `node_modules` with them.
 */
export function readModuleId(id: string, importerPath: string | undefined): ModuleId {
  if (id.length > MAX_ID_LENGTH || NOT_IN_IDS.test(id)) return { kind: 'refused', id }
  if (id.startsWith('/@id/')) {
    const inner = readModuleId(id.slice(5).replace(/^__x00__/, '\0'), importerPath)
    return inner.kind === 'file' ? { ...inner, id: '/@id/' + inner.id, head: '/@id/' + inner.head } : inner.kind === 'other' ? { kind: 'other', id } : { kind: 'refused', id }
  }
  if (id.startsWith('\0')) {
    // A virtual id that names a path (`\0/x`, as plugins make them) is read as that path: Vite's
    // answer for it tells, by its wording, whether the file exists.
    const inner = readModuleId(id.slice(1), importerPath)
    return inner.kind === 'file' ? { ...inner, id: '\0' + inner.id, head: '\0' + inner.head } : inner.kind === 'other' ? { kind: 'other', id } : { kind: 'refused', id }
  }
  const [bare, tail] = splitQuery(id)
  if (/^file:/i.test(id)) {
    // Any slash count, `localhost`, escapes: one form, file:///path.
    let file: string
    try {
      file = fileURLToPath(new URL(bare.replace(/^file:\/*(localhost\/)?/i, 'file:///')))
    } catch {
      return { kind: 'refused', id }
    }
    const p = plainPath(file)
    const head = 'file://'
    return { kind: 'file', id: pathToFileURL(p).href + tail, head, path: p, tail, rootRelative: false }
  }
  if (bare.startsWith('/@fs/')) return fileId('/@fs', bare.slice(4), tail, false)
  if (bare.startsWith('/')) return fileId('', bare, tail, true)
  if (bare === '.' || bare === '..' || bare.startsWith('./') || bare.startsWith('../')) {
    if (importerPath === undefined) return { kind: 'refused', id }
    // Canonical: the path relative to the importer's folder, in Vite's `./` form.
    const p = plainPath(path.posix.join(path.posix.dirname(importerPath), bare))
    let rel = path.posix.relative(path.posix.dirname(importerPath), p) || '.'
    if (!rel.startsWith('.')) rel = `./${rel}`
    return { kind: 'file', id: rel + tail, head: '', path: p, tail, rootRelative: false, dir: path.posix.dirname(importerPath) }
  }
  if (/^[a-z]:/i.test(bare) && !/^(node|virtual|data|npm|jsr|bun):/i.test(bare)) return { kind: 'refused', id }
  // A prefixed id whose rest is a path (`__vite-browser-external:/x`): Vite's plugins answer
  // such ids with a module naming the path, and the screen's refusal of a path that exists would
  // tell it apart from one that does not. Data URLs hold code, not a path.
  const scheme = /^([^/:\\]+):/.exec(bare)
  if (scheme && scheme[1].toLowerCase() !== 'data' && /^[/.\\~]/.test(bare.slice(scheme[0].length))) return { kind: 'refused', id }
  // No package name has an escaped slash, backslash, dot or NUL: a resolver that undid one could walk anywhere.
  // Nor does one start with a dot: `.env` is a file, read relative to the host's working folder.
  if (/%(?:2f|5c|2e|00)/i.test(bare) || bare.startsWith('.') || bare.split('/').some((s) => s === '..' || s === '.')) return { kind: 'refused', id }
  return { kind: 'other', id }
}

function fileId(prefix: string, rest: string, tail: string, rootRelative: boolean): ModuleId {
  const p = plainPath(rest)
  return { kind: 'file', id: prefix + p + tail, head: prefix, path: p, tail, rootRelative }
}

/**
 * The host paths Vite may read for a canonical file id: every reading of `/x` (under each of
 * `roots`: the workspace, Vite's root, the public folder; then absolute), with lookups.
 */
export function candidates(file: FileId, roots: string[]): string[] {
  const bases = file.rootRelative ? [...roots.map((root) => path.join(root, file.path)), file.path] : [file.path]
  return bases.flatMap((b) => [b, ...EXTENSIONS.map((e) => b + e), ...EXTENSIONS.map((e) => path.join(b, `index${e}`)), path.join(b, 'package.json')])
}

/** Strings of a twin's answer and what they stand for in the asked one. */
export type TwinMap = Array<[twin: string, asked: string]>

/**
 * A twin of a canonical file id: the same id with one name (the deepest whose part before any
 * extension has at least four characters, so that mapping it back cannot hit other text) replaced
 * by random characters of the same length, extensions kept, such that no path Vite may read for it exists. The same length keeps columns in
 * the twin's source maps true for the asked id; never a name the asked id or importer holds. Falls
 * back to a path under ABSENT.
 */
export function twinOf(file: FileId, roots: string[], asked = ''): { id: string; map: TwinMap } {
  const [idPath] = splitQuery(file.id.slice(file.head.length))
  const segments = idPath.split('/')
  for (let at = segments.length - 1; at >= 0; at--) {
    // The name without its extensions: Vite reads a file by its extension (`.txt` is an asset).
    const name = segments[at].slice(0, segments[at].indexOf('.', 1) >>> 0)
    if (name.length < 4 || name.startsWith('.')) continue
    for (let attempt = 0; attempt < 32; attempt++) {
      const random = randomHex(name.length)
      // Not in what the worker sent (a query Vite repeats in its answer would come back mapped).
      if (asked.includes(random) || file.id.includes(random)) continue
      const twinPath = [...segments.slice(0, at), random + segments[at].slice(name.length), ...segments.slice(at + 1)].join('/')
      const hostPath = plainPath(file.dir === undefined ? (file.head.endsWith('file://') ? fileURLToPath('file://' + twinPath) : twinPath) : path.posix.join(file.dir, twinPath))
      if (!candidates({ ...file, path: hostPath }, roots).some((c) => fs.existsSync(c))) {
        return { id: file.head + twinPath + file.tail, map: [[random, name]] }
      }
    }
  }
  const id = file.dir === undefined ? file.head + ABSENT + file.path + file.tail : ABSENT + file.path + file.tail
  return { id, map: [[ABSENT, '']] }
}

/** Random letters and digits, not starting with a digit. */
export function randomHex(length: number): string {
  return randomBytes(length).toString('hex').slice(0, length).replace(/^\d/, 'x')
}

/**
 * Where Node's lookup (and Vite's) may find a bare id's package: the first `node_modules/<name>` up
 * from each folder it may start in (the importer's, and each root: Vite starts there when the
 * importer is no file), and the nearest package.json when it has that name (a package imports
 * itself by its name). A subpath import (`#x`): the importer's nearest package.json (a root's
 * where the importer is none).
 */
export function packageFolders(id: string, importer: string | undefined, roots: string[]): string[] {
  const file = importer === undefined ? undefined : fileOf(importer)
  if (id.startsWith('#')) {
    const starts = file && path.isAbsolute(file) ? [path.dirname(file)] : roots
    return starts.map(nearestManifest).filter((m) => m !== undefined)
  }
  const name = packageName(id)
  if (!name) return []
  // From the importer's folder (Vite's resolver starts there whether or not the file exists) and from the roots.
  const from = [...(file && path.isAbsolute(file) ? [path.dirname(file)] : []), ...roots]
  const found: string[] = []
  for (const start of from) {
    const manifest = nearestManifest(start)
    if (manifest && manifestName(manifest) === name) found.push(manifest)
    for (let dir = start; ; dir = path.dirname(dir)) {
      const candidate = path.join(dir, 'node_modules', name)
      if (fs.existsSync(candidate)) {
        found.push(candidate)
        break
      }
      if (dir === path.dirname(dir)) break
    }
  }
  return found
}

/** The nearest package.json up from `dir` (Vite's `findNearestPackageData`), if any. */
function nearestManifest(dir: string): string | undefined {
  for (let at = dir; ; at = path.dirname(at)) {
    const manifest = path.join(at, 'package.json')
    if (fs.existsSync(manifest)) return manifest
    if (at === path.dirname(at)) return undefined
  }
}

/** Manifests' names, read again only when a manifest changed (every bare import asks). */
const names = new Map<string, { mtimeMs: number; name: unknown }>()

function manifestName(manifest: string): unknown {
  const mtimeMs = fs.statSync(manifest, { throwIfNoEntry: false })?.mtimeMs
  if (mtimeMs === undefined) return undefined
  const known = names.get(manifest)
  if (known?.mtimeMs === mtimeMs) return known.name
  let name: unknown
  try {
    name = JSON.parse(fs.readFileSync(manifest, 'utf8'))?.name
  } catch {
    name = undefined
  }
  names.set(manifest, { mtimeMs, name })
  return name
}

/** A bare id's package name: its first path segment, or two for a scope. */
function packageName(id: string): string | undefined {
  if (/^[.#/\\\0]|^[a-z][a-z0-9+.-]*:/i.test(id)) return undefined
  const parts = fileOf(id).split('/')
  const name = (id.startsWith('@') ? parts.slice(0, 2) : parts.slice(0, 1)).join('/')
  return name && !name.split('/').some((p) => p === '' || p === '.' || p === '..') ? name : undefined
}

/**
 * A bare id's twin: the same id under a package name that no folder has, so the host answers as
 * for a package that is missing (for one found above the workspace, Vite's resolver told "not
 * exported" and bad manifests apart); a subpath import (`#x`) whole, as one no package.json maps.
 * Long and random: it is mapped back in every string.
 */
export function packageTwin(id: string): { id: string; map: TwinMap } {
  const name = id.startsWith('#') ? fileOf(id) : packageName(id)!
  const twin = `vps-absent-${randomBytes(8).toString('hex')}`
  return { id: twin + id.slice(name.length), map: [[twin, name]] }
}

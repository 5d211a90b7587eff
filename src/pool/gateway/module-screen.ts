/**
 * The module calls of one worker (`fetch`, `resolve`, `ensureModuleGraphEntry`, Vitest 5's
 * `fetchWarmModules`), screened so that the host's Vite reveals nothing of host files the sandbox
 * was not given: for such a file every answer (code, error, frame, resolved path) is the answer
 * Vitest gives for a file that does not exist. That answer is Vitest's own: the call is made for
 * a twin id that names nothing (module-ids.ts), and the twin is mapped back in the answer.
 *
 * Ids are read by the gateway before the host sees them; answers are checked too (links,
 * aliases, extension lookups), and Vitest 5's cached modules are inlined as code. The gateway
 * owns the calls: this file only says what to ask and what to answer.
 */
import fs from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { ABSENT, candidates, fileOf, isPlainPath, packageFolders, packageTwin, randomHex, readModuleId, twinOf, type FileId, type TwinMap } from './module-ids.js'
import { namesSandboxModule } from './sandbox-modules.js'
import { screenImportMetaEnv } from './import-meta-env.js'
import type { FileRules } from './file-rules.js'
import { debug } from '../../debug.js'

const log = debug('worker')

/** Vitest 5 stores a cached module as its code, this marker, and its source map (one line of JSON). */
const CACHED_SOURCE_MAP = '\n//# vitestSourceMap='

/** What the screen asked the host, for a call: the arguments as sent, and how to read the answer. */
export interface ScreenedCall {
  method: string
  /** The arguments as the worker sent them. */
  asked: unknown[]
  /** The arguments as sent to the host. */
  args: unknown[]
  /** Strings of the answer to map back (a twin id or a replaced importer). */
  map?: TwinMap
  /** Strings of a result only (not of an error) to map back: paths of a sandbox's module outside the project. */
  results?: TwinMap
  /** A call already answered by the gateway (a form it refuses): the error to give. */
  answer?: { error: Error }
}

/** What the worker gets, or a second call to make first (the twin of a file the answer named). */
export type ScreenedAnswer = { result?: unknown; error?: unknown } | { retry: ScreenedCall }

/** Vitest's error for a module id that names nothing it can load. */
function notFound(id: string, importer?: string): Error {
  const message = `Cannot find module '${id}'${importer ? ` imported from '${importer}'` : ''}`
  return Object.assign(new Error(message), { code: 'ERR_MODULE_NOT_FOUND', stack: `Error: ${message}` })
}

/**
 * `{ cached, tmp, ...rest }` (or a warm entry `{ tmp, ...rest }`) as `{ code, sourceMap, ...rest }`:
 * exactly what Vitest 5's worker makes of it after reading `tmp` itself.
 */
/** The comment Vitest 5 ends a cached module's code with: its metadata, as base64 JSON. */
const CACHE_COMMENT = '\n//# vitestCache='

function inlineCached(result: Record<string, any>): Record<string, any> {
  if (typeof result.tmp !== 'string') return result
  const { cached: _cached, tmp, ...rest } = result
  // Vitest's own record of the cache entry (host paths, a twin's among them) is the host's alone.
  const read = fs.readFileSync(tmp, 'utf8')
  const meta = read.lastIndexOf(CACHE_COMMENT)
  const end = meta === -1 ? -1 : read.indexOf('\n', meta + CACHE_COMMENT.length)
  const content = meta === -1 ? read : read.slice(0, meta) + (end === -1 ? '' : read.slice(end))
  log('inlined cached module %s', rest.file ?? tmp)
  const at = content.lastIndexOf(CACHED_SOURCE_MAP)
  if (at === -1) return { ...rest, code: content, sourceMap: undefined }
  return { ...rest, code: content.slice(0, at), sourceMap: content.slice(at + CACHED_SOURCE_MAP.length) || undefined }
}

/**
 * An error of the host's for a module call, without the host's frames: which function threw
 * told one refusal (a file that exists) from another (a file that does not), word for word alike.
 */
function withoutHostFrames(error: unknown): unknown {
  if (error && typeof error === 'object' && 'stack' in error) {
    const e = error as { name?: unknown; message?: unknown; stack?: unknown }
    e.stack = `${typeof e.name === 'string' ? e.name : 'Error'}: ${typeof e.message === 'string' ? e.message : ''}`
  }
  return error
}

/** A string of a twin's answer as it reads for the asked id, in inline source maps too. */
function untwin(text: string, map: TwinMap): string {
  const swap = (t: string) => map.reduce((acc, [twin, asked]) => acc.split(twin).join(asked), t)
  return swap(
    text.replace(/(data:application\/json;(?:charset=utf-8;)?base64,)([A-Za-z0-9+/=]+)/g, (all, head: string, data: string) => {
      const json = Buffer.from(data, 'base64').toString('utf8')
      const swapped = swap(json)
      return swapped === json ? all : head + Buffer.from(swapped).toString('base64')
    }),
  )
}

/** Apply `map` to every string of an answer (errors included). */
export function mapStrings(value: unknown, map: (s: string) => string, depth = 0): unknown {
  if (depth > 8) return value
  if (typeof value === 'string') return map(value)
  if (value instanceof Error) {
    const copy = new Error(mapStrings(value.message, map) as string)
    copy.name = value.name
    copy.stack = mapStrings(value.stack, map) as string
    for (const key of Object.keys(value)) (copy as any)[key] = mapStrings((value as any)[key], map, depth + 1)
    if ('cause' in value) copy.cause = mapStrings(value.cause, map, depth + 1)
    return copy
  }
  if (Array.isArray(value)) return value.map((v) => mapStrings(v, map, depth + 1))
  if (value && typeof value === 'object') {
    const out: Record<string, unknown> = {}
    for (const [k, v] of Object.entries(value)) out[k] = mapStrings(v, map, depth + 1)
    return out
  }
  return value
}

/** Every absolute path or file URL named in the strings of an answer. */
export function pathsIn(value: unknown, out: Set<string> = new Set(), depth = 0): Set<string> {
  if (depth > 8 || value == null) return out
  if (typeof value === 'string') {
    for (const m of value.matchAll(/(?:file:\/\/)?(\/[^\s'"`()<>,;?#]+)/g)) {
      const file = pathOf(m[1].replace(/(?::\d+)+$/, '').replace(/[.:]+$/, ''))
      if (file) out.add(file)
    }
  } else if (value instanceof Error) {
    pathsIn(value.message, out, depth + 1)
    pathsIn(value.stack, out, depth + 1)
    for (const key of Object.keys(value)) pathsIn((value as any)[key], out, depth + 1)
    if ('cause' in value) pathsIn(value.cause, out, depth + 1)
  } else if (typeof value === 'object') {
    for (const v of Object.values(value)) pathsIn(v, out, depth + 1)
  }
  return out
}

/**
 * The absolute host path a module id, path or file URL of an answer names (query dropped; Vite's
 * `/@id/` and `/@fs` prefixes and percent-escapes undone): what a reader of the answer could open.
 */
function pathOf(v: unknown): string | undefined {
  if (typeof v !== 'string') return undefined
  let file = fileOf(v)
  for (let before = ''; before !== file; ) {
    before = file
    file = file.replace(/^\/@id\/(__x00__)?/, '/').replace(/^\/@fs(?=\/)/, '')
  }
  if (file.startsWith('file:')) {
    try {
      file = fileURLToPath(new URL(file.replace(/^file:\/*(localhost\/)?/i, 'file:///')))
    } catch {
      return undefined
    }
  }
  try {
    file = decodeURIComponent(file)
  } catch {}
  return path.isAbsolute(file) ? path.posix.normalize(file) : undefined
}

/** Fields of a fetch answer that hold the module's code, not paths. */
const CODE_FIELDS = new Set(['code', 'map', 'sourceMap'])

export class ModuleScreen {
  /** @param envAllowed the `import.meta.env` names a worker may see */
  constructor(
    private readonly rules: FileRules,
    private readonly envAllowed: (name: string) => boolean,
  ) {}

  /** An answer's code (and each of a warm batch's) with `import.meta.env` cut down. */
  private withScreenedEnv(result: unknown): unknown {
    if (!result || typeof result !== 'object') return result
    const r = result as Record<string, unknown>
    return typeof r.code === 'string' ? { ...r, code: screenImportMetaEnv(r.code, this.envAllowed) } : result
  }

  /**
   * An importer as the host gets it: one Vite may look for files from (a given file, a dependency,
   * Vitest itself, a virtual module, through whatever links its path has), whether it exists or
   * not, in its canonical form (Vite walks the folders of the path as written: `link/..` is the
   * link's target's parent); else the same path under a folder that does not exist, so no answer
   * tells what the host has near it.
   */
  private importer(importer: unknown): { importer: string | undefined; path?: string; from?: string; map?: TwinMap } {
    if (typeof importer !== 'string') return { importer: undefined }
    const read = readModuleId(importer, undefined)
    // Vite takes the folder of an importer as written, query and all (`x?/../../d/x.js` is `d`),
    // from the host's working folder for one that is no path (`link/x.js` is where the link leads).
    if (read.kind === 'other' && !/(^|[/?#])\.\.?([/?#]|$)/.test(importer)) {
      const from = path.resolve(fileOf(importer))
      return this.rules.mayReach(from) ? { importer, from } : this.nowhere(importer)
    }
    // As a plain path: Vite walks the folders of a `/@fs/…`, `/@id/…` or `file:` importer as written (up to `/package.json`).
    // Nor with `#` or `?` in its path (`%23` decoded): Vite cuts it there, where a link may be.
    if (read.kind === 'file' && !read.tail.includes('/') && isPlainPath(read.path) && this.rules.mayReach(read.path)) return { importer: (read.head.includes('\0') ? '\0' : '') + read.path + read.tail, path: read.path, from: read.path }
    const plain = read.kind === 'file' ? read.path : '/'
    return { importer: ABSENT + plain, path: ABSENT + plain, map: [[ABSENT, '']] }
  }

  /**
   * A bare importer whose folder leads out of the workspace (`link/x.js`), as one whose folder is
   * not there: its first such name under random characters of the same length, so the answer reads
   * as that of a missing folder's importer.
   */
  private nowhere(importer: string): { importer: string; map: TwinMap } {
    const parts = importer.split('/')
    const at = parts.findIndex((_, i) => !this.rules.mayReach(path.resolve(fileOf(parts.slice(0, i + 1).join('/')))))
    const name = fileOf(parts[at] ?? '')
    for (let attempt = 0; name.length >= 4 && attempt < 8; attempt++) {
      const random = randomHex(name.length)
      if (importer.includes(random)) continue
      const twin = [...parts.slice(0, at), random + parts[at].slice(name.length), ...parts.slice(at + 1)]
      if (!fs.existsSync(path.resolve(fileOf(twin.slice(0, at + 1).join('/'))))) return { importer: twin.join('/'), map: [[random, name]] }
    }
    return { importer: ABSENT + '/', map: [[ABSENT, '']] }
  }

  /** A module call from the worker (`fetch(id, importer, …)`, `resolve(id, importer, …)`, `ensureModuleGraphEntry(id, importer)`), as it goes to the host. */
  call(method: string, asked: unknown[]): ScreenedCall {
    const [id, rawImporter, ...rest] = asked as [string, unknown, ...unknown[]]
    const importer = this.importer(rawImporter)
    const read = readModuleId(id, importer.path)
    const base: ScreenedCall = { method, asked, args: [id, importer.importer, ...rest], map: importer.map }
    if (read.kind === 'refused') return { ...base, answer: { error: notFound(id, typeof rawImporter === 'string' ? rawImporter : undefined) } }
    if (read.kind === 'other') {
      // A package found up the folders (from the importer's, or from a root where the importer is
      // no file, as Vite looks) outside what the sandbox may word is asked as a missing one.
      if (packageFolders(id, importer.from, this.rules.roots).every((found) => this.rules.mayReach(found))) return base
      log('%s of %s: its package is not given, asking for a twin', method, id)
      const twin = packageTwin(id)
      return { ...base, args: [twin.id, importer.importer, ...rest], map: [...twin.map, ...(base.map ?? [])] }
    }
    if (read.id !== id) base.map = [...(base.map ?? []), [read.id, id]]
    if (this.rules.mayReach(this.reading(read))) return { ...base, args: [read.id, importer.importer, ...rest] }
    // Every module call of a file that is not given is asked for its twin (a missing file):
    // `ensureModuleGraphEntry` refused one that exists and made an entry for one that does not.
    // Whether the file is there or not: a twin's answer and a missing file's differed in their
    // wording (the twin of `.env` was of the root's folder, and Vite worded its url as a full path;
    // Vite escapes a missing name's spaces, the twin's random name has none) and a query that
    // held the twin's random name came back mapped.
    log('%s of %s: not given, asking for its twin', method, id)
    const twin = twinOf(read, this.rules.roots, asked.map(String).join('\0'))
    return { ...base, args: [twin.id, importer.importer, ...rest], map: [...twin.map, ...(base.map ?? [])] }
  }

  /**
   * The file Vite reads for a file id: the first of its readings that is there (a root-relative
   * `/x` is read from each root first, then as it is; then with extensions, as a folder), else
   * the one it names, so that a file that is not given and one that is missing are judged alike
   * (Vite's own ids, `/@vite/…`, name one under the root).
   */
  private reading(read: FileId): string {
    const all = candidates(read, this.rules.roots)
    return all.find((c) => fs.existsSync(c)) ?? (read.rootRelative && read.path.startsWith('/@') ? all[0] : read.path)
  }

  /** The host's answer to a screened call. */
  answer(call: ScreenedCall, result: unknown, error: unknown): ScreenedAnswer {
    const map = call.map
    const mapped = (v: unknown) => (map ? mapStrings(v, (t) => untwin(t, map)) : v)
    if (call.method === 'fetchWarmModules') return error !== undefined ? { error } : { result: this.warmModules(result) }
    // An error names the paths the worker asked for or imported, and Vite words it by what it
    // found: every path it may not word is moved under ABSENT, whatever is there.
    if (error !== undefined) return { error: withoutHostFrames(mapStrings(mapped(error), (t) => this.worded(t))) }
    const inlined = this.withScreenedEnv(result && typeof result === 'object' ? inlineCached(result as Record<string, any>) : result)
    const named = this.filesOf(inlined, call.asked[0])
    const leak = [...named].find((f) => !this.rules.mayName(f) && !f.startsWith(ABSENT))
    if (leak === undefined) return { result: call.results ? mapStrings(mapped(inlined), (t) => untwin(t, call.results!)) : mapped(inlined) }
    log('%s of %s: the answer names %s, which is not given', call.method, call.asked[0], leak)
    const id = call.asked[0] as string
    const read = readModuleId(id, undefined)
    if (read.kind !== 'file' || call.map?.some(([twin]) => String(call.args[0]).includes(twin))) {
      // A bare or aliased id, or a twin that still led to a host file: Vite's answer for a module that resolves to nothing.
      return { error: notFound(id, typeof call.asked[1] === 'string' ? call.asked[1] : undefined) }
    }
    const twin = twinOf(read, this.rules.roots, call.asked.map(String).join('\0'))
    return { retry: { ...call, args: [twin.id, ...call.args.slice(1)], map: [...twin.map, ...(call.map ?? [])] } }
  }

  /** Vitest 5's `fetchWarmModules(environment, files)`: only the files the worker may name are asked for. */
  warmCall(asked: unknown[]): ScreenedCall {
    const [environment, files] = asked as [string, string[]]
    const mayAsk = (f: string) => {
      const read = readModuleId(f, undefined)
      return read.kind === 'other' || (read.kind === 'file' && candidates(read, this.rules.roots).every((c) => this.rules.mayName(c)))
    }
    return { method: 'fetchWarmModules', asked, args: [environment, files.filter(mayAsk)] }
  }

  /** Text with every absolute path or file URL it may not word moved under ABSENT. */
  private worded(text: string): string {
    // Paths where a path starts (not the tail of a relative path or of a URL).
    return text.replace(/(?<![^\s'"`(<[=,])(file:\/\/)?(\/[^\s'"`()<>,;?#:]+)/g, (all, url: string | undefined, p: string) => {
      const file = pathOf(p)
      return !file || file.startsWith(ABSENT) || this.rules.mayWord(file) ? all : `${url ?? ''}${ABSENT}${p}`
    })
  }

  /**
   * Host paths a successful answer hands to the sandbox: every field but the code itself (and its
   * map), which is the content of the file the answer names.
   */
  private filesOf(result: any, asked: unknown): Set<string> {
    const out = new Set<string>()
    // The answer to a bare, prefixed or data id repeats that id, which is the worker's own text: a
    // path written in it (`data:…"/etc/shadow"`) is none of the host's, and refusing the answer
    // where that path exists would tell that it does. A value that is the id itself is not read.
    const echoes = typeof asked === 'string' && readModuleId(asked, undefined).kind === 'other' ? [asked, asked.replace(/^\/@id\//, '').replace(/^__x00__/, '\0')] : []
    const read = (value: unknown) => pathsIn(echoes.length ? mapStrings(value, (t) => (echoes.includes(t) ? '' : t)) : value, out)
    if (!result || typeof result !== 'object') read(result)
    else for (const [key, value] of Object.entries(result)) if (!CODE_FIELDS.has(key)) read(value)
    return out
  }

  /** Vitest 5's batch of already transformed modules: inlined, and screened entry by entry. */
  private warmModules(result: unknown): unknown {
    if (!result || typeof result !== 'object') return result
    const out: Record<string, unknown> = {}
    for (const [id, entry] of Object.entries(result as Record<string, any>)) {
      // A module another sandbox wrote is in the host's graph under its path too: that sandbox's alone.
      if (namesSandboxModule(id) || namesSandboxModule(entry?.id) || namesSandboxModule(entry?.url)) continue
      const inlined = this.withScreenedEnv(entry && typeof entry === 'object' ? inlineCached(entry) : entry)
      // A refused entry is left out: the worker then fetches it, and gets the twin's answer.
      if ([...this.filesOf(inlined, id)].some((f) => !this.rules.mayName(f))) continue
      out[id] = inlined
    }
    return out
  }
}

/**
 * `fetch`'s options and trace carrier, rebuilt of the fields Vite and Vitest read: `cached` and
 * `startOffset` (Vite's fetchModule), OpenTelemetry's propagation headers.
 */
export function fetchOptions(options: unknown, carrier: unknown): [unknown, unknown] {
  const o = (options ?? {}) as Record<string, unknown>
  const kept: Record<string, unknown> = {}
  if (typeof o.cached === 'boolean') kept.cached = o.cached
  if (Number.isSafeInteger(o.startOffset)) kept.startOffset = o.startOffset
  if (carrier === undefined || carrier === null) return [kept, undefined]
  const c = carrier as Record<string, unknown>
  const headers: Record<string, string> = {}
  for (const key of ['traceparent', 'tracestate', 'baggage']) if (typeof c[key] === 'string' && (c[key] as string).length <= 8192) headers[key] = c[key] as string
  return [kept, headers]
}

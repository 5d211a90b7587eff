/**
 * Module RPCs of one test worker, screened so that the host's Vite reveals nothing of host files
 * the sandbox was not given: for such a file, every answer of `fetch`, `resolve` and `transform`
 * (code, error message, frame, resolved path) is the answer Vitest gives for a file that does not
 * exist. That answer is Vitest's own: the request is sent again for a twin path under a folder
 * that does not exist, and the twin path is mapped back to the asked one in the answer.
 *
 * Requests for a file path are checked before the host loads anything; answers are checked too
 * (extension lookups, links, aliases), and Vitest 5's cached modules are inlined as code.
 */
import { randomBytes } from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import type { RpcFrame } from '../sandbox-runtime/wire.js'
import type { Workspace } from '../workspace/collect.js'
import { debug } from '../debug.js'

const log = debug('worker')

/** The module RPCs whose answers are screened. */
export const MODULE_METHODS = new Set(['fetch', 'resolve', 'transform', 'fetchWarmModules'])
/** Worker calls that name host files for the host to load or read (see `call`). */
export const FILE_NAMING_METHODS = new Set(['ensureModuleGraphEntry', 'prewarmModuleGraph', 'onAfterSuiteRun'])

/** Vitest 5 stores a cached module as its code, this marker, and its source map (one line of JSON). */
const CACHED_SOURCE_MAP = '\n//# vitestSourceMap='
/** Extensions Vite tries for an import without one. */
const EXTENSIONS = ['.mjs', '.js', '.mts', '.ts', '.jsx', '.tsx', '.json']
/** A folder that does not exist: twin requests live under it. */
const ABSENT = `/.vitest-sandbox-absent-${randomBytes(6).toString('hex')}`


/**
 * `{ cached, tmp, ...rest }` (or a warm entry `{ tmp, ...rest }`) as `{ code, sourceMap, ...rest }`:
 * exactly what Vitest 5's worker makes of it after reading `tmp` itself.
 */
function inlineCached(result: Record<string, any>): Record<string, any> {
  if (typeof result.tmp !== 'string') return result
  const { cached: _cached, tmp, ...rest } = result
  log('inlined cached module %s', rest.file ?? tmp)
  const content = fs.readFileSync(tmp, 'utf8')
  const at = content.lastIndexOf(CACHED_SOURCE_MAP)
  if (at === -1) return { ...rest, code: content, sourceMap: undefined }
  return { ...rest, code: content.slice(0, at), sourceMap: content.slice(at + CACHED_SOURCE_MAP.length) || undefined }
}

/** Strings of a twin's answer and what they stand for in the asked one. */
type Twin = Array<[twin: string, asked: string]>

/**
 * A path of the same length as `file` that does not exist, on the same side of the workspace root
 * (Vite answers differently inside and outside its root): one folder of it replaced by random
 * characters, or the name itself when it has no folder there. The same length keeps columns in
 * the twin's source maps true for the asked path.
 */
function twinOf(file: string, root: string): Twin {
  const base = file.startsWith(root + path.sep) ? root : ''
  const parts = file.slice(base.length).split('/') // ['', 'dir', ..., 'name']
  const at = parts.length > 2 ? 1 : parts.length - 1
  for (let attempt = 0; attempt < 16; attempt++) {
    const random = randomBytes(parts[at].length).toString('hex').slice(0, parts[at].length).replace(/^\d/, 'x')
    const twin = base + [...parts.slice(0, at), random, ...parts.slice(at + 1)].join('/')
    if (parts[at].length >= 2 && !fs.existsSync(base + [...parts.slice(0, at), random].join('/'))) {
      return at === parts.length - 1 ? [[twin, file], [random, parts[at]]] : [[twin, file]]
    }
  }
  return [[ABSENT + file, file]]
}

/** The file an id names, and its twin id; undefined for bare, virtual and URL ids. */
function fileId(id: unknown, root: string): { file: string; twin: string; map: Twin } | undefined {
  if (typeof id !== 'string') return undefined
  let prefix = ''
  let rest = id
  if (id.startsWith('file://')) {
    const q = id.search(/[?#]/)
    try {
      rest = fileURLToPath(q < 0 ? id : id.slice(0, q))
    } catch {
      return undefined
    }
    const file = plainPath(rest)
    const map = twinOf(file, root)
    return { file, twin: pathToFileURL(map[0][0]).href + (q < 0 ? '' : id.slice(q)), map }
  }
  if (id.startsWith('/@fs/')) {
    prefix = '/@fs'
    rest = id.slice(4)
  } else if (!id.startsWith('/')) return undefined
  const at = rest.search(/[?#]/)
  const file = plainPath(at < 0 ? rest : rest.slice(0, at))
  const map = twinOf(file, root)
  return { file, twin: prefix + map[0][0] + (at < 0 ? '' : rest.slice(at)), map }
}

/** The absolute host path a module id, path or file URL names (query dropped), if it names one. */
function pathOf(v: unknown): string | undefined {
  if (typeof v !== 'string') return undefined
  let file = v.replace(/[?#].*$/, '')
  if (file.startsWith('file://')) {
    try {
      file = fileURLToPath(file)
    } catch {
      return undefined
    }
  }
  return path.isAbsolute(file) ? plainPath(file) : undefined
}

/**
 * A path as the file system will see it: percent-decoded and without `.`/`..` segments, so that
 * neither the check nor the twin can be walked out of by `/x/../../etc/passwd` or `%2e%2e`.
 */
function plainPath(file: string): string {
  let decoded = file
  try {
    decoded = decodeURIComponent(file)
  } catch {
    // Not percent-encoded.
  }
  return path.posix.normalize(decoded)
}

/** A string of a twin's answer as it reads for the asked path, in inline source maps too. */
function untwin(text: string, map: Twin): string {
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
function mapStrings(value: unknown, map: (s: string) => string, depth = 0): unknown {
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
function pathsIn(value: unknown, out: Set<string> = new Set(), depth = 0): Set<string> {
  if (depth > 8 || value == null) return out
  if (typeof value === 'string') {
    for (const m of value.matchAll(/(?:file:\/\/)?(\/[^\s'"`()<>,;?#]+)/g)) out.add(m[1].replace(/(?::\d+)+$/, '').replace(/[.:]+$/, ''))
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

interface Pending {
  method: string
  request: RpcFrame
  /** Set when the request went out as a twin: map it back in the answer. */
  twin?: Twin
  /** The worker's request id, for a twin asked after the host's first answer. */
  replyAs?: string | number
}

export class ModuleScreen {
  private readonly pending = new Map<string | number, Pending>()
  private nextTwin = 0

  /**
   * @param workspace what the sandbox was given
   * @param runtimeDirs host folders whose modules a sandbox may always get (Vitest itself, this
   *   package's snapshot environment)
   */
  constructor(private readonly workspace: Workspace, private readonly runtimeDirs: string[]) {}

  /** May the sandbox learn of this host path (its existence, name or content)? */
  private allowed(file: string): boolean {
    if (this.workspace.isGiven(file)) return true
    const rel = this.workspace.relative(file)
    // Dependencies are in the template, under the same paths.
    if (rel !== undefined && rel.split('/').includes('node_modules')) return true
    if (this.runtimeDirs.some((d) => file === d || file.startsWith(d + path.sep))) return true
    return !fs.existsSync(file)
  }

  /** The host file a file id would load, as Vite looks for it (root-relative first, then extensions). */
  private target(file: string, rootRelative: boolean): string | undefined {
    const candidates = rootRelative ? [path.join(this.workspace.root, file), file] : [file]
    for (const c of candidates) {
      for (const f of [c, ...EXTENSIONS.map((e) => c + e), ...EXTENSIONS.map((e) => path.join(c, `index${e}`))]) {
        if (fs.existsSync(f)) return f
      }
    }
    return undefined
  }

  /** A module request from the worker, as it goes to the host (maybe as its twin). */
  request(frame: RpcFrame): RpcFrame {
    if (frame.i === undefined || !frame.m) return frame
    const pending: Pending = { method: frame.m, request: frame }
    this.pending.set(frame.i, pending)
    if (frame.m === 'fetchWarmModules') return frame
    const id = fileId(frame.a?.[0], this.workspace.root)
    if (!id) return frame
    const target = this.target(id.file, !(frame.a![0] as string).startsWith('/@fs/') && !(frame.a![0] as string).startsWith('file://'))
    if (target === undefined || this.allowed(target)) return frame
    log('%s of %s: not given, asking for its twin', frame.m, frame.a![0])
    pending.twin = id.map
    return { ...frame, a: [id.twin, ...frame.a!.slice(1)] }
  }

  /** Is this a host answer to a screened request? */
  owns(frame: RpcFrame): boolean {
    return frame.t === 's' && frame.i !== undefined && this.pending.has(frame.i)
  }

  /**
   * The host's answer to a screened request: what goes to the worker, or (for an answer that names
   * a host file the sandbox may not see) a twin request to send to the host instead.
   */
  answer(frame: RpcFrame): { toWorker?: RpcFrame; toHost?: RpcFrame } {
    const pending = this.pending.get(frame.i!)!
    this.pending.delete(frame.i!)
    if (pending.twin) {
      const out = mapStrings(frame, (t) => untwin(t, pending.twin!)) as RpcFrame
      return { toWorker: pending.replyAs === undefined ? out : { ...out, i: pending.replyAs } }
    }
    if (pending.method === 'fetchWarmModules') return { toWorker: this.warmModules(frame) }
    const result = frame.e === undefined && frame.r && typeof frame.r === 'object' ? inlineCached(frame.r) : frame.r
    const answer = { ...frame, r: result }
    const named = frame.e !== undefined ? pathsIn(frame.e) : this.filesOf(result)
    const leak = [...named].find((f) => !this.allowed(f))
    if (leak === undefined) return { toWorker: answer }
    log('%s of %s: the answer names %s, which is not given', pending.method, pending.request.a?.[0], leak)
    const id = fileId(pending.request.a?.[0], this.workspace.root)
    if (!id) {
      // A bare or aliased id: Vite's answer for a bare import that resolves to nothing.
      const [asked, importer] = pending.request.a as [string, string | undefined]
      const error = Object.assign(new Error(`Cannot find module '${asked}'${importer ? ` imported from '${importer}'` : ''}`), { code: 'ERR_MODULE_NOT_FOUND' })
      return { toWorker: { t: 's', i: frame.i, e: error } }
    }
    const twinId = `vitest-sandbox-twin-${++this.nextTwin}`
    this.pending.set(twinId, { method: pending.method, request: pending.request, twin: id.map, replyAs: frame.i })
    return { toHost: { ...pending.request, i: twinId, a: [id.twin, ...pending.request.a!.slice(1)] } }
  }

  /**
   * Worker calls that name host files for the host to load or read outside the module answers:
   * the entries naming files the sandbox may not see are dropped (5.x `prewarmModuleGraph`,
   * coverage data), or the call is refused (`ensureModuleGraphEntry` would let the host print a
   * code frame of the file in an error). Returns the call to forward, or an error to answer with.
   */
  call(frame: RpcFrame): { forward?: RpcFrame; refuse?: Error } {
    const args = frame.a ?? []
    const refusedFile = (v: unknown) => {
      const f = pathOf(v)
      return f !== undefined && !this.allowed(f)
    }
    switch (frame.m) {
      case 'ensureModuleGraphEntry':
        return refusedFile(args[0]) ? { refuse: new Error(`Cannot find module '${args[0]}'`) } : { forward: frame }
      case 'prewarmModuleGraph':
        return { forward: { ...frame, a: [args[0], Array.isArray(args[1]) ? args[1].filter((f) => !refusedFile(f)) : args[1], ...args.slice(2)] } }
      case 'onAfterSuiteRun': {
        const meta = args[0] as { coverage?: any } | undefined
        const coverage = meta?.coverage
        if (!coverage || typeof coverage !== 'object') return { forward: frame }
        // v8: { result: [{ url }] }; istanbul: { [path]: fileCoverage }.
        const screened = Array.isArray(coverage.result)
          ? { ...coverage, result: coverage.result.filter((r: any) => !refusedFile(r?.url)) }
          : Object.fromEntries(Object.entries(coverage).filter(([file]) => !refusedFile(file)))
        return { forward: { ...frame, a: [{ ...meta, coverage: screened }, ...args.slice(1)] } }
      }
      default:
        return { forward: frame }
    }
  }

  /** Host paths a successful answer hands to the sandbox (code of a file, an external, a resolved id). */
  private filesOf(result: any): Set<string> {
    const out = new Set<string>()
    if (!result || typeof result !== 'object') return out
    for (const key of ['file', 'externalize', 'id']) {
      const file = pathOf(result[key])
      if (file && !file.startsWith(ABSENT)) out.add(file)
    }
    return out
  }

  /** Vitest 5's batch of already transformed modules: inlined, and screened entry by entry. */
  private warmModules(frame: RpcFrame): RpcFrame {
    if (frame.e !== undefined || !frame.r || typeof frame.r !== 'object') return frame
    const out: Record<string, unknown> = {}
    for (const [id, entry] of Object.entries(frame.r as Record<string, any>)) {
      const result = entry && typeof entry === 'object' ? inlineCached(entry) : entry
      // A refused entry is left out: the worker then fetches it, and gets the twin's answer.
      if ([...this.filesOf(result)].some((f) => !this.allowed(f))) continue
      out[id] = result
    }
    return { ...frame, r: out }
  }
}

/**
 * Modules a test wrote inside its sandbox (a code generator's output), which the host's Vite, which
 * serves every module, does not have. When the host answers a worker's `fetch` with an error and
 * the module it asked for is a file of this sandbox, the fetch is asked again with the file's text
 * (`sandboxModule` in its options): the host transforms it as if it were at that path. The worker
 * sees one answer, under its own id. A file outside the project (a test's temp folder) is sent as
 * if it were in a folder of the project the host never has (`OUTSIDE`): the host's Vite then looks
 * for its tsconfig and packages in the project, never in a host folder, and maps the answer back to
 * the file's own path (its imports, `import.meta.url`, source map). Node built-ins only.
 */
import fs from 'node:fs'
import path from 'node:path'
import { projectRoot } from './host-reads.js'
import { OUTSIDE, type RpcFrame } from './wire.js'

/** The largest module sent (the host counts it as module code). */
const MAX_MODULE = 8 * 1024 * 1024
/** What Vite's resolver tries after a path without its extension. */
const EXTENSIONS = ['.ts', '.tsx', '.mts', '.cts', '.js', '.jsx', '.mjs', '.cjs', '.json']

/** The TypeScript source of each JavaScript extension. */
const TS_OF: Record<string, string> = { '.js': '.ts', '.jsx': '.tsx', '.mjs': '.mts', '.cjs': '.cts' }

type Id = string | number
/** The worker's fetches in flight, by its id. */
const fetching = new Map<Id, unknown[]>()
/** The fetches asked again, by their own id: the worker's id they answer. */
const again = new Map<string, Id>()
let asked = 0

/** A call of the worker on its way to the host. */
export function sent(call: RpcFrame): void {
  if (call.t === 'q' && call.m === 'fetch' && call.i !== undefined && Array.isArray(call.a) && !again.has(call.i as string)) fetching.set(call.i, call.a)
}

/**
 * An answer from the host: the message to deliver to the worker, or undefined when the fetch it
 * answers was asked again with the sandbox's file (`post` sends that call).
 */
export function answered(msg: RpcFrame, post: (call: RpcFrame) => void): RpcFrame | undefined {
  if (msg?.t !== 's' || msg.i === undefined) return msg
  const worker = again.get(msg.i as string)
  if (worker !== undefined) {
    again.delete(msg.i as string)
    return { ...msg, i: worker }
  }
  const args = fetching.get(msg.i)
  fetching.delete(msg.i)
  if (!args || msg.e === undefined) return msg
  const made = ownModule(args[0], args[1])
  if (!made) return msg
  const id = `vitest-sandbox-module-${++asked}`
  again.set(id, msg.i)
  const options = args[3] && typeof args[3] === 'object' ? args[3] : {}
  post({ t: 'q', i: id, m: 'fetch', a: [args[0], args[1], args[2], { ...options, sandboxModule: made }, args[4]] })
  return undefined
}

/** The file of this sandbox a fetch's url names (read as Vite reads it), with its text. */
function ownModule(url: unknown, importer: unknown): { path: string; code: string } | undefined {
  if (typeof url !== 'string') return undefined
  const bare = url.replace(/[?#].*$/, '')
  let bases: string[]
  if (bare.startsWith('/@fs/')) bases = [bare.slice(4)]
  else if (bare.startsWith('file://')) bases = [decodeURIComponent(new URL(bare).pathname)]
  else if (bare.startsWith('/')) bases = [bare, path.join(projectRoot(), bare)]
  else if ((bare.startsWith('./') || bare.startsWith('../')) && typeof importer === 'string' && importer.startsWith('/')) bases = [path.resolve(path.dirname(importer.replace(/[?#].*$/, '')), bare)]
  else return undefined
  for (const base of bases) {
    // A TypeScript module imported by its output's name (`./client.js` for client.ts), as Vite reads it.
    const typed = TS_OF[path.extname(base)]
    for (const file of [base, ...(typed ? [base.slice(0, -path.extname(base).length) + typed] : []), ...EXTENSIONS.map((e) => base + e), ...EXTENSIONS.map((e) => path.join(base, `index${e}`))]) {
      try {
        const stat = fs.statSync(file)
        if (stat.isFile() && stat.size <= MAX_MODULE) return { path: sentPath(file), code: fs.readFileSync(file, 'utf8') }
      } catch {
        // Not this one.
      }
    }
  }
  return undefined
}

/** The path a file is sent under: its own in the project, under OUTSIDE beyond it. */
function sentPath(file: string): string {
  return path.relative(projectRoot(), file).startsWith('..') ? path.join(projectRoot(), OUTSIDE, file) : file
}

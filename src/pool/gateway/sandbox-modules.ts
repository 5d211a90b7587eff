/**
 * Modules a test wrote inside its sandbox (sandbox-runtime/own-modules.ts sends their text with a
 * fetch the host could not answer). The host's Vite transforms them as if they were at their path,
 * from the text the sandbox sent, under an id of their own
 * (`<path>?vitest-sandbox-module=<hash><extension>`): an entry of its own in the host's module
 * graph for each text, so two sandboxes that write different text at one path each get theirs,
 * and a module written again is transformed again. The host's file system is asked only whether
 * it has the path (one it has is served as the host has it: a test file could otherwise rewrite
 * the code a later file of its sandbox runs); nothing is written to it.
 */
import { createHash } from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { heldBytes } from './budget.js'
import type { FileRules } from './file-rules.js'
import { fileOf, isPlainPath, type TwinMap } from './module-ids.js'
import { OUTSIDE } from '../../sandbox-runtime/wire.js'

const QUERY = 'vitest-sandbox-module'
/** The largest text taken (the runtime sends at most 8 MiB). */
const MAX_TEXT = 8 * 1024 * 1024
/** Bytes of text the host keeps for them (`heldBytes`), the oldest let go first. */
const MAX_HELD = 256 * 1024 * 1024

const texts = new Map<string, { file: string; code: string; bytes: number }>()
let held = 0

/** Does a worker's id name one of these itself? Only the host makes them. */
export function namesSandboxModule(id: unknown): boolean {
  return typeof id === 'string' && id.includes(QUERY)
}

/**
 * Is this a path the host does not have that a sandbox's text is taken for: a given one, or one
 * under the project's `OUTSIDE` folder (where the runtime sends files outside the project)?
 */
export function isSandboxOnly(file: string, rules: FileRules, projectRoot: string): boolean {
  return isPlainPath(file) && (rules.isGiven(file) || file.startsWith(outsideFolder(projectRoot))) && !fs.existsSync(file)
}

/** The project's `OUTSIDE` folder, with its slash. */
function outsideFolder(projectRoot: string): string {
  return `${path.join(projectRoot, OUTSIDE)}/`
}

/**
 * The id the host's Vite loads a sandbox's module under, and the query to take out of its answer;
 * undefined when `made` is not a module the host lacks at a given path.
 */
export function sandboxModuleId(made: unknown, rules: FileRules, projectRoot: string): { id: string; query: string; results?: TwinMap } | undefined {
  if (!made || typeof made !== 'object') return undefined
  const { path: file, code } = made as { path?: unknown; code?: unknown }
  if (typeof file !== 'string' || typeof code !== 'string' || code.length > MAX_TEXT) return undefined
  if (!isSandboxOnly(file, rules, projectRoot)) return undefined
  const hash = createHash('sha256').update(file).update('\0').update(code).digest('hex').slice(0, 32)
  if (!texts.has(hash)) {
    const bytes = heldBytes(code)
    texts.set(hash, { file, code, bytes })
    held += bytes
    for (const [old, text] of texts) {
      if (held <= MAX_HELD) break
      texts.delete(old)
      held -= text.bytes
    }
  }
  // The file's extension last, where Vite reads a module's type from (a JSON file's is not JS).
  const query = `?${QUERY}=${hash}${path.extname(file)}`
  // One outside the project: the worker reads its paths as they are in the sandbox (its imports, its file, its map).
  const outside = outsideFolder(projectRoot)
  const results: TwinMap | undefined = file.startsWith(outside) ? [[outside, '/'], [`/${OUTSIDE}/`, '/']] : undefined
  return { id: file + query, query, results }
}

/** The text a load of `id` gets, when it is one of these. */
export function sandboxModuleText(id: string): string | undefined {
  const hash = new RegExp(`\\?${QUERY}=([0-9a-f]{32})(?:\\.[^./?#]*)?$`).exec(id)?.[1]
  const text = hash === undefined ? undefined : texts.get(hash)
  return text && fileOf(id) === text.file ? text.code : undefined
}

/**
 * Errors, results and leak records from a worker, in the shape Vitest's own worker sends them:
 * Vitest serializes them in the worker (cycles become "[Circular]"), and the host's reporters
 * print and write them recursively (an error's `cause`, a result as JSON). A raw message may hold
 * cycles or endless nesting; the gateway copies what it passes the way Vitest would have sent it.
 */
import path from 'node:path'
import { ABSENT, fileOf } from './module-ids.js'
import { ProtocolViolation } from './violation.js'

/** Nesting deeper than Vitest's own serialized errors ever go. */
const MAX_DEPTH = 64
/** Values one copy may hold: shared parts are copied once per use, so a small message could unfold without end. */
const MAX_VALUES = 1_000_000

/** A budget of values for the copies of one message. */
export const valueBudget = () => ({ left: MAX_VALUES, bytes: 0 })

/** A copy of `value` without cycles (as "[Circular]") or nesting beyond MAX_DEPTH ("[Deep]"). */
export function acyclic(value: unknown, budget = valueBudget()): unknown {
  const on: object[] = []
  const copy = (v: unknown): unknown => {
    if (--budget.left < 0) throw new ProtocolViolation(`an error or result of over ${MAX_VALUES} values`)
    // What the copy holds in the host's memory (a part shared on the wire is copied at each use):
    // about what V8 takes for a string, a number, an object with a few fields.
    budget.bytes += typeof v === 'string' ? 16 + v.length : v !== null && typeof v === 'object' ? 64 : 16
    if (v === null || typeof v !== 'object') return v
    if (on.includes(v)) return '[Circular]'
    if (on.length >= MAX_DEPTH) return '[Deep]'
    // Counted by length, not by what is present: a sparse array of 2^28 holes is one short
    // message that the host would otherwise walk, or fill, slot by slot.
    const length = Array.isArray(v) ? v.length : ArrayBuffer.isView(v) || v instanceof ArrayBuffer ? v.byteLength : 0
    if (length > budget.left) throw new ProtocolViolation(`an error or result of over ${MAX_VALUES} values (an array or buffer of ${length})`)
    // Binary data is copied whole (never listed key by key); Map and Set as an empty object, as JSON writes them.
    if (ArrayBuffer.isView(v) || v instanceof ArrayBuffer) {
      budget.left -= length
      budget.bytes += length
      // Its own bytes only: a decoded view may sit in the whole message's buffer.
      if (v instanceof ArrayBuffer) return v.slice(0)
      if (v instanceof DataView) return new DataView(v.buffer.slice(v.byteOffset, v.byteOffset + v.byteLength))
      return (v as unknown as Uint8Array).slice()
    }
    on.push(v)
    let out: unknown
    if (Array.isArray(v)) {
      const dense: unknown[] = new Array(length)
      for (let i = 0; i < length; i++) dense[i] = copy(v[i])
      out = dense
    } else if (v instanceof Map || v instanceof Set) out = {}
    else {
      const o: Record<string, unknown> = {}
      for (const key of Object.keys(v)) Object.defineProperty(o, key, { value: copy((v as Record<string, unknown>)[key]), enumerable: true, writable: true, configurable: true })
      // Error objects keep message and stack as own, non-enumerable fields.
      if (v instanceof Error) for (const key of ['name', 'message', 'stack'] as const) if (typeof v[key] === 'string') o[key] = v[key]
      out = o
    }
    on.pop()
    return out
  }
  return copy(value)
}

/**
 * Every JavaScript line terminator: Vitest splits a stack at `\n`, but its frame test is a
 * multiline regex, for which `\r`, U+2028 and U+2029 start lines too. The gateway reads a stack
 * at all of them, and writes it back with `\n` only.
 */
const LINE_BREAK = /\r\n|[\n\r\u2028\u2029]/
/** A line Vitest's stack parser reads as a V8 frame (its CHROME_IE_STACK_REGEXP). */
const V8_FRAME_LINE = /^\s*at .*(?:\S:\d+|\(native\))/
/** A V8 frame's position at the end of its line: `:line:column[)]`. */
const POSITION = /:(\d+):(\d+)(\)?)$/

/**
 * A V8 frame's parts, `at [method (]location:line:column[)]`, read in one pass (a regular
 * expression with two lazy parts took the host half a minute on one long line).
 */
function frameParts(line: string): [method: string | undefined, location: string, row: string, column: string] | undefined {
  const at = /^\s*at /.exec(line)
  const position = at && POSITION.exec(line)
  if (!at || !position) return undefined
  const head = line.slice(at[0].length, position.index)
  const open = head.indexOf(' (')
  if (open >= 0 && open + 2 < head.length) return [head.slice(0, open), head.slice(open + 2), position[1], position[2]]
  return head ? [undefined, head, position[1], position[2]] : undefined
}

/** A file as a rebuilt frame names it: an absolute path no stack parser can read two ways. */
const PLAIN_FILE = /^\/[^\s()?#,:\\]*$/

/**
 * A stack as the host may parse it, rebuilt (read at every line terminator, written with `\n`):
 * each V8 frame as `at <method> (<file>:<line>:<col>)`,
 * its file resolved as Vitest's stack parser resolves it (relative to the host's cwd, `//`,
 * `file:`, `/@fs/`, query dropped) and moved under ABSENT unless `mayFrame` allows it. Frame lines
 * that do not read as one plain file (eval frames, parentheses, commas) are dropped: a line passed
 * as it came could be read another way by the host's parser. A stack left without V8 frames would
 * be parsed in Firefox's form (`fn@file:1:2`): only its first line is kept, up to any `@`.
 */
export function canonicalStack(stack: string, mayFrame: (file: string) => boolean): string {
  const lines = stack.split(LINE_BREAK)
  let frames = 0
  const rebuilt = lines
    .flatMap((line) => {
      if (!V8_FRAME_LINE.test(line)) return [line]
      const m = frameParts(line)
      if (!m) return []
      const [method, location, row, column] = m
      const name = method ? `${method.replace(/[()@,\n]/g, '_')} (` : ''
      const close = method ? ')' : ''
      if (/^(?:async )?(?:node|internal):[\w/.-]+$/.test(location)) return (frames++, [`    at ${name}${location}:${row}:${column}${close}`])
      const file = frameFile(location)
      if (!PLAIN_FILE.test(file)) return []
      // Written as it came when it can only be read as that file (a path or its file: URL), else as the path.
      const written = [file, `file://${file}`].includes(location.replace(/^async /, '')) ? location : file
      frames++
      return [`    at ${name}${mayFrame(file) ? written : ABSENT + file}:${row}:${column}${close}`]
    })
    .join('\n')
  // Without a V8 frame left, the host would read every line in Firefox's form.
  return frames > 0 ? rebuilt : lines[0].replace(/@.*$/, '')
}

/** Fields Vitest reads frames from besides `stack` (`parseErrorStacktrace`). */
const FRAME_FIELDS = ['stacks', 'fileName', 'sourceURL']

/**
 * Every `stack` string of an (acyclic) value, made canonical, in place. In errors (`errors`: an
 * error, a result, a leak) `stacks` lists and the fields Vitest reads a frame from when a stack has
 * none are dropped too; in other data (an artifact) only stacks are rewritten.
 */
export function screenStacks(value: unknown, mayFrame: (file: string) => boolean, errors = true): void {
  if (value === null || typeof value !== 'object') return
  if (Array.isArray(value)) return value.forEach((v) => screenStacks(v, mayFrame, errors))
  const o = value as Record<string, unknown>
  if (typeof o.stack === 'string') o.stack = canonicalStack(o.stack, mayFrame)
  // Frames the host would take as parsed already, unread: it parses `stack` itself. Where `stack`
  // gives none, it reads a frame from Firefox's and Safari's fields: none of those either.
  if (errors) for (const key of FRAME_FIELDS) delete o[key]
  for (const key of Object.keys(o)) if (key !== 'stack') screenStacks(o[key], mayFrame, errors)
}

/**
 * A leak record as Vitest prints it (`<type> leaking in <filename>`, then a code frame of the
 * first frame's file, read from disk without asking the module graph): rebuilt with a canonical
 * stack whose message line can never read as a frame.
 */
export function leakRecord(leak: unknown, mayFrame: (file: string) => boolean, projectName: string): Record<string, unknown> {
  const l = leak as Record<string, unknown>
  if (l === null || typeof l !== 'object' || typeof l.type !== 'string' || typeof l.stack !== 'string' || typeof l.filename !== 'string') throw new ProtocolViolation('onAsyncLeaks: a leak that is not { type, stack, filename }')
  const [head, ...frames] = l.stack.split(LINE_BREAK)
  const message = `Error: ${head.replace(/^\s*(Error: )?/, '').slice(0, 4096)}`
  const stack = canonicalStack([message, ...frames.filter((line) => V8_FRAME_LINE.test(line))].join('\n'), mayFrame)
  const filename = l.filename.startsWith('node:') || mayFrame(path.resolve(l.filename)) ? l.filename : ABSENT + path.resolve(l.filename)
  return { type: l.type.slice(0, 256), stack, filename, projectName }
}

/** The file of a frame's location, as Vitest's stack parser reads it (file: and /@fs/ stripped, resolved). */
function frameFile(location: string): string {
  let file = location.startsWith('async ') ? location.slice(6) : location
  if (/^https?:/.test(file)) {
    try {
      file = new URL(file).pathname
    } catch {}
  }
  if (file.startsWith('/@fs/')) file = file.slice(4)
  if (file.startsWith('file://')) file = file.slice(7)
  return path.resolve(fileOf(file))
}

/**
 * Is a rewrite of a test file what Vitest's inline-snapshot writer would make of it? Vitest
 * (`@vitest/snapshot` saveInlineSnapshots) only ever fills or replaces the snapshot argument of
 * `toMatchInlineSnapshot(` / `toThrowErrorMatchingInlineSnapshot(` calls (or custom
 * `*InlineSnapshot(` matchers) with a template literal. A sandbox sends the whole new file, so
 * the host checks that everything outside those arguments is byte for byte the host's current
 * file, and that every new argument is a plain template literal (no `${`): data, never code.
 *
 * The call sites are found by lexing the host's current file (trusted), so a call site in a
 * comment or a string is not one. A lexer can read a `/` or JSX text otherwise than JavaScript
 * does, so the result is also parsed (Babel's parser, TypeScript and JSX by the file's
 * extension): every new argument must be, to the parser, a template literal without
 * substitutions that is an argument of an `*InlineSnapshot(` call, spanning exactly what was
 * written.
 */
import path from 'node:path'
import { parse, type ParserPlugin } from '@babel/parser'

type Kind = 'literal' | 'empty' | 'object'
interface Slot {
  kind: Kind
  start: number
  end: number
}

/** Why `next` is not an inline-snapshot update of `current` (the test file `file`); undefined when it is one. */
export function inlineSnapshotChange(current: string, next: string, mode: 'new' | 'all', file = 'test.ts'): string | undefined {
  const written: Array<[number, number]> = []
  const why = textChange(current, next, mode, written)
  if (why || written.length === 0) return why
  const literals = snapshotLiterals(next, file)
  if (literals === undefined) return 'the file does not parse as JavaScript or TypeScript after the update'
  if (written.some(([start, end]) => !literals.has(`${start}:${end}`))) return 'an inline snapshot argument is not, to a JavaScript parser, a template literal argument of an inline snapshot call'
  return undefined
}

/** Where `code` has template literals without substitutions as arguments of `*InlineSnapshot(` calls, as `start:end`; undefined if it does not parse. */
function snapshotLiterals(code: string, file: string): Set<string> | undefined {
  const ext = path.extname(file)
  const plugins: ParserPlugin[] = /^\.[mc]?tsx?$/.test(ext) ? ['typescript', 'decorators-legacy'] : []
  if (ext === '.tsx' || !/^\.[mc]?ts$/.test(ext)) plugins.push('jsx')
  let ast: unknown
  try {
    ast = parse(code, { sourceType: 'module', plugins, allowAwaitOutsideFunction: true, allowReturnOutsideFunction: true, allowImportExportEverywhere: true })
  } catch {
    return undefined
  }
  const out = new Set<string>()
  const visit = (node: any): void => {
    if (node === null || typeof node !== 'object') return
    if (Array.isArray(node)) return node.forEach(visit)
    if (node.type === 'CallExpression') {
      const callee = node.callee
      const name = callee?.type === 'MemberExpression' && !callee.computed ? callee.property?.name : callee?.type === 'Identifier' ? callee.name : undefined
      if (typeof name === 'string' && name.endsWith('InlineSnapshot')) {
        for (const arg of node.arguments) if (arg.type === 'TemplateLiteral' && arg.expressions.length === 0) out.add(`${arg.start}:${arg.end}`)
      }
    }
    for (const key of Object.keys(node)) if (key !== 'loc' && key !== 'leadingComments' && key !== 'trailingComments') visit(node[key])
  }
  visit(ast)
  return out
}

/** Why `next` differs from `current` beyond inline snapshot arguments; the new arguments' spans in `next` go to `written`. */
function textChange(current: string, next: string, mode: 'new' | 'all', written: Array<[number, number]>): string | undefined {
  const slots = callSites(current)
    .map((open) => slotAt(current, open))
    .filter((s): s is Slot => s !== undefined)
  let pos = 0
  let prev = 0
  for (const slot of slots) {
    const piece = current.slice(prev, slot.start)
    if (next.slice(pos, pos + piece.length) !== piece) return 'it changes code outside inline snapshot arguments'
    pos += piece.length
    const old = current.slice(slot.start, slot.end)
    let end: number | undefined
    if (next.startsWith(old, pos) && startsPiece(next, pos + old.length, current, slot.end)) end = pos + old.length
    else {
      if (mode === 'new' && old.trim() !== '') return 'it changes an existing inline snapshot, which only `vitest -u` may do'
      const at = slot.kind === 'object' ? (next.startsWith(', ', pos) ? pos + 2 : -1) : pos
      end = at < 0 ? undefined : templateLiteralEnd(next, at)
      if (end === undefined) return 'an inline snapshot argument is not a plain template literal'
      written.push([at, end])
    }
    pos = end
    prev = slot.end
  }
  if (next.slice(pos) !== current.slice(prev)) return 'it changes code outside inline snapshot arguments'
  return undefined
}

/** Does `next` continue at `at` with the piece of `current` that starts at `from`? */
function startsPiece(next: string, at: number, current: string, from: number): boolean {
  const probe = current.slice(from, from + 64)
  return next.startsWith(probe, at)
}

/** The end (after the closing backtick) of a template literal without substitutions at `at`. */
function templateLiteralEnd(code: string, at: number): number | undefined {
  if (code[at] !== '`') return undefined
  for (let i = at + 1; i < code.length; i++) {
    const c = code[i]
    if (c === '\\') i++
    else if (c === '$' && code[i + 1] === '{') return undefined
    else if (c === '`') return i + 1
  }
  return undefined
}

/** The end (after the closing quote) of a string or template literal at `at`, substitutions skipped. */
function literalEnd(code: string, at: number): number | undefined {
  const quote = code[at]
  for (let i = at + 1; i < code.length; i++) {
    const c = code[i]
    if (c === '\\') i++
    else if (c === quote) return i + 1
    else if (quote !== '`' && c === '\n') return undefined
  }
  return undefined
}

function skipSpaceAndComments(code: string, i: number): number {
  for (;;) {
    while (i < code.length && /\s/.test(code[i])) i++
    if (code.startsWith('//', i)) i = code.indexOf('\n', i) < 0 ? code.length : code.indexOf('\n', i)
    else if (code.startsWith('/*', i)) i = code.indexOf('*/', i) < 0 ? code.length : code.indexOf('*/', i) + 2
    else return i
  }
}

/** The snapshot argument of the call whose `(` is at `open`, as Vitest's writer sees it. */
function slotAt(code: string, open: number): Slot | undefined {
  const i = skipSpaceAndComments(code, open + 1)
  const c = code[i]
  if (c === ')') return { kind: 'empty', start: i, end: i }
  if (c === '`' || c === '"' || c === "'") {
    const end = literalEnd(code, i)
    return end === undefined ? undefined : { kind: 'literal', start: i, end }
  }
  if (c === '{') {
    // Vitest counts braces naively to find the end of the property matchers.
    let depth = 1
    let j = i + 1
    while (depth > 0 && j < code.length) {
      if (code[j] === '{') depth++
      else if (code[j] === '}') depth--
      j++
    }
    const close = callEnd(code, open)
    return close === undefined || close < j ? undefined : { kind: 'object', start: j, end: close }
  }
  return undefined
}

/** Index of the `)` closing the call whose `(` is at `open` (strings skipped). */
function callEnd(code: string, open: number): number | undefined {
  let depth = 0
  for (let i = open; i < code.length; i++) {
    const c = code[i]
    if (c === '"' || c === "'" || c === '`') {
      const end = literalEnd(code, i)
      if (end === undefined) return undefined
      i = end - 1
    } else if (c === '(') depth++
    else if (c === ')' && --depth === 0) return i
  }
  return undefined
}

const REGEX_AFTER = new Set(['', '(', ',', '=', ':', '[', '!', '&', '|', '?', '{', '}', ';', '+', '-', '*', '%', '<', '>', '~', '^'])
const REGEX_AFTER_WORDS = new Set(['return', 'typeof', 'case', 'do', 'else', 'in', 'of', 'new', 'delete', 'void', 'throw', 'instanceof', 'yield', 'await'])

/** Offsets of the `(` of every `*InlineSnapshot(` call in code (not in comments, strings or regexes). */
export function callSites(code: string): number[] {
  const sites: number[] = []
  // A stack of brace depths at which a template literal's `${` opened.
  const templates: number[] = []
  let depth = 0
  let lastToken = ''
  let i = 0
  const n = code.length
  const template = (from: number): number => {
    // Scan template text from `from` until its end or a `${`; returns the index after it.
    for (let j = from; j < n; j++) {
      if (code[j] === '\\') j++
      else if (code[j] === '`') return j + 1
      else if (code[j] === '$' && code[j + 1] === '{') {
        templates.push(depth)
        depth++
        lastToken = '{'
        return j + 2
      }
    }
    return n
  }
  while (i < n) {
    const c = code[i]
    if (/\s/.test(c)) {
      i++
    } else if (code.startsWith('//', i)) {
      const e = code.indexOf('\n', i)
      i = e < 0 ? n : e
    } else if (code.startsWith('/*', i)) {
      const e = code.indexOf('*/', i + 2)
      i = e < 0 ? n : e + 2
    } else if (c === '"' || c === "'") {
      i = literalEnd(code, i) ?? n
      lastToken = 'str'
    } else if (c === '`') {
      i = template(i + 1)
      if (code[i - 1] === '`') lastToken = 'str'
    } else if (c === '/' && (REGEX_AFTER.has(lastToken) || REGEX_AFTER_WORDS.has(lastToken))) {
      let j = i + 1
      let inClass = false
      for (; j < n && code[j] !== '\n'; j++) {
        if (code[j] === '\\') j++
        else if (code[j] === '[') inClass = true
        else if (code[j] === ']') inClass = false
        else if (code[j] === '/' && !inClass) break
      }
      i = j + 1
      while (i < n && /[a-z]/i.test(code[i])) i++
      lastToken = 'regex'
    } else if (/[\w$]/.test(c)) {
      let j = i
      while (j < n && /[\w$]/.test(code[j])) j++
      const word = code.slice(i, j)
      if (word.endsWith('InlineSnapshot')) {
        let k = j
        while (k < n && /\s/.test(code[k])) k++
        if (code[k] === '(') sites.push(k)
      }
      lastToken = word
      i = j
    } else {
      if (c === '{') depth++
      else if (c === '}') {
        depth--
        if (templates.length && templates[templates.length - 1] === depth) {
          templates.pop()
          i = template(i + 1)
          if (code[i - 1] === '`') lastToken = 'str'
          continue
        }
      }
      lastToken = c
      i++
    }
  }
  return sites
}

/**
 * `import.meta.glob` in a module the host's Vite transforms for a sandbox: Vite's glob plugin lists
 * host folders and writes every match's name (and, eagerly or with `?raw`, its content) into the
 * module. Each call is found exactly as that plugin finds it (its expression on the module with
 * literals stripped by the same `strip-literal`, Vite's paren matching, the same parser on the
 * call), just before the plugin runs, and resolved as the plugin resolves it:
 *
 * - a pattern that is not a literal, starts with `**`, has a fixed part (or `base`) outside the
 *   workspace, climbs with `..` after a wildcard, walks deeper into a folder holding a link out of
 *   what is given, or asks for `exhaustive` listing fails the load, naming only the pattern;
 * - files it would match that the sandbox is not given (a secret, a cache, an excluded file) are
 *   added to the call as negated patterns, so the plugin lists only what the sandbox has.
 */
import path from 'node:path'
import { escapePath, glob } from 'tinyglobby'
import { stripLiteral } from 'strip-literal'
import type { FileRules } from './file-rules.js'
import { realPath } from '../../workspace/collect.js'

/** What a plugin hook's `this` offers that the glob check uses. */
export interface GlobContext {
  parse(code: string): unknown
  resolve(id: string, importer?: string): Promise<{ id: string } | null>
}

type Node = { type: string; start: number; end: number; [key: string]: unknown }

/** Characters that make a glob segment a pattern rather than a name. */
const GLOB_CHARS = /[*?{}[\]()!+@]/
/** Vite's glob expression, matched on the module with literals stripped, as Vite does. */
const IMPORT_GLOB = /\bimport\.meta\.glob(?:<\w+>)?\s*\(/g

/**
 * The module as Vite's glob plugin may expand it: every call checked (throws for a refused one),
 * with the files it may not list negated.
 */
export async function screenGlobs(ctx: GlobContext, code: string, id: string, root: string, rules: FileRules): Promise<string> {
  const file = id.replace(/[?#].*$/, '')
  let clean: string
  try {
    clean = stripLiteral(code)
  } catch {
    return code // Vite expands nothing then
  }
  const edits: Array<{ at: number; end: number; text: string }> = []
  for (const match of clean.matchAll(IMPORT_GLOB)) {
    const end = closeParen(clean, match.index + match[0].length) + 1
    if (end <= 0) continue // Vite refuses it itself
    let call: Node | undefined
    try {
      call = (ctx.parse(code.slice(match.index, end)) as { body: Node[] }).body[0]?.expression as Node | undefined
    } catch {
      continue // Vite refuses it itself
    }
    if (call?.type !== 'CallExpression') continue
    const edit = await screenCall(ctx, call, file, id, root, rules)
    if (edit) edits.push({ ...edit, at: edit.at + match.index, end: edit.end + match.index })
  }
  return edits.reduceRight((out, e) => out.slice(0, e.at) + e.text + out.slice(e.end), code)
}

/** One call's patterns and options, resolved as Vite's `toAbsoluteGlob` resolves them; the edit of its patterns, if any. */
async function screenCall(ctx: GlobContext, call: Node, file: string, id: string, root: string, rules: FileRules): Promise<{ at: number; end: number; text: string } | undefined> {
  const [first, options] = call.arguments as Node[]
  const literal = (n: Node | undefined): string | undefined => (n?.type === 'Literal' && typeof n.value === 'string' ? n.value : n?.type === 'TemplateLiteral' && (n.expressions as unknown[]).length === 0 ? (n.quasis as Array<{ value: { raw: string } }>)[0].value.raw : undefined)
  const patterns = first?.type === 'ArrayExpression' ? (first.elements as Node[]).map(literal) : [literal(first)]
  let base: string | undefined
  let caseSensitive = true
  for (const prop of options?.type === 'ObjectExpression' ? (options.properties as Node[]) : []) {
    const key = prop.key as Node | undefined
    const name = key?.type === 'Identifier' ? key.name : literal(key)
    if (name === 'base') base = literal(prop.value as Node) ?? refusedBase(file, rules)
    if (name === 'exhaustive' && !((prop.value as Node)?.type === 'Literal' && (prop.value as Node).value === false)) throw refuse('exhaustive', file, rules, 'asks to list dependencies too, whose links may lead anywhere')
    if (name === 'caseSensitive') caseSensitive = !((prop.value as Node)?.type === 'Literal' && (prop.value as Node).value === false)
  }
  const listed: string[] = []
  for (const raw of patterns) {
    if (raw === undefined) throw refuse('import.meta.glob', file, rules, 'is not a literal pattern')
    const negated = raw.startsWith('!')
    const pattern = negated ? raw.slice(1) : raw
    const absolute = await absoluteGlob(ctx, pattern, id, root, base)
    if (absolute === undefined) throw refuse(raw, file, rules, 'is not one the sandbox pool can check (start it with ./, ../, / or an alias)')
    const parts = absolute.split('/')
    const wild = parts.findIndex((p) => GLOB_CHARS.test(p))
    const fixed = path.posix.normalize((wild < 0 ? parts : parts.slice(0, wild)).join('/') || '/')
    const inRoot = (p: string) => p === rules.root || p.startsWith(rules.root + path.sep)
    if (wild >= 0 && parts.slice(wild).join('/').includes('..')) throw refuse(raw, file, rules, 'climbs with .. after a wildcard')
    if (!inRoot(fixed) || !inRoot(realPath(fixed))) throw refuse(raw, file, rules, 'reaches outside the workspace given to the sandbox')
    // A pattern that goes deeper than one level below its fixed part walks into links there.
    const deep = wild >= 0 && (parts.length - wild > 1 || parts.slice(wild).some((p) => p.includes('**')))
    if (rules.outwardLinks.some((link) => link === fixed || (deep && link.startsWith(fixed + path.sep)))) throw refuse(raw, file, rules, 'would list a link that leads out of what the sandbox is given')
    if (!negated) listed.push(absolute)
  }
  // What Vite's plugin lists (its globber, tinyglobby, with its options), less what is given.
  const matches = listed.length ? await glob(listed, { absolute: true, cwd: root, dot: false, expandDirectories: false, caseSensitiveMatch: caseSensitive, ignore: ['**/node_modules/**'], extglob: false }) : []
  const hidden = matches.filter((m) => m !== file && !rules.isGiven(m))
  if (hidden.length === 0) return undefined
  // Relative to the folder Vite joins a `./` or `../` pattern to, escaped as Vite escapes paths.
  const dir = base === undefined ? path.posix.dirname(file) : base.startsWith('/') ? path.posix.join(root, base) : path.posix.resolve(path.posix.dirname(file), base)
  const negations = hidden.map((m) => {
    const rel = path.posix.relative(dir, m)
    return JSON.stringify(`!${rel.startsWith('../') ? '' : './'}${escapePath(rel)}`)
  })
  const kept = patterns.map((p) => JSON.stringify(p))
  return { at: first.start, end: first.end, text: `[${[...kept, ...negations].join(', ')}]` }
}

function refuse(pattern: string, file: string, rules: FileRules, why: string): Error {
  return new Error(`vitest-pool-sandbox: import.meta.glob pattern ${JSON.stringify(pattern).slice(0, 300)} in ${path.relative(rules.root, file)} ${why}`)
}

function refusedBase(file: string, rules: FileRules): never {
  throw refuse('base', file, rules, 'has a base option that is not a literal')
}

/** Vite's `findCorrespondingCloseParenthesisPosition`, as it is (`open` is just after the `(`). */
function closeParen(clean: string, open: number): number {
  const close = clean.indexOf(')', open)
  if (close < 0) return -1
  if (!clean.slice(open, close).includes('(')) return close
  let remaining = 0
  for (let at = open; at < clean.length; at++) {
    if (clean[at] === '(') remaining++
    else if (clean[at] === ')' && --remaining <= 0) return at
  }
  return -1
}

/**
 * The absolute pattern Vite's glob plugin lists: its `toAbsoluteGlob`, folders escaped as it
 * escapes them (a folder named `{a,b}` or `x[!y]` is a name, not a pattern); undefined for forms
 * it does not resolve here.
 */
async function absoluteGlob(ctx: GlobContext, pattern: string, importer: string, root: string, base: string | undefined): Promise<string | undefined> {
  const safeRoot = escapePath(root)
  const importerDir = escapePath(path.posix.dirname(importer.replace(/[?#].*$/, '')))
  const dir = base === undefined ? importerDir : base.startsWith('/') ? path.posix.join(safeRoot, base) : path.posix.resolve(importerDir, base)
  if (pattern.startsWith('/')) return path.posix.join(safeRoot, pattern.slice(1))
  if (pattern.startsWith('./')) return path.posix.join(dir, pattern.slice(2))
  if (pattern.startsWith('../')) return path.posix.join(dir, pattern)
  if (pattern.startsWith('**') || pattern.startsWith('#')) return undefined
  const resolved = (await ctx.resolve(pattern, importer))?.id
  if (!resolved || !path.isAbsolute(resolved)) return undefined
  // Vite's `globSafeResolvedPath`: the part the alias replaced is escaped, the pattern's own part is not.
  let same = 0
  while (same < Math.min(resolved.length, pattern.length) && resolved[resolved.length - 1 - same] === pattern[pattern.length - 1 - same]) same++
  return escapePath(resolved.slice(0, resolved.length - same)) + resolved.slice(resolved.length - same)
}

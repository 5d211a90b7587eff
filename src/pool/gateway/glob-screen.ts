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
 *   added to the call as negated patterns, so the plugin lists only what the sandbox has;
 * - its options must be plain values, and the plugin gets their JSON (it evaluates them as code).
 */
import path from 'node:path'
import { escapePath, glob } from 'tinyglobby'
import { stripLiteral } from 'strip-literal'
import type { FileRules } from './file-rules.js'
import { asSource, staticObject } from './static-options.js'
import { realPath } from '../../workspace/collect.js'
import { fileOf } from './module-ids.js'

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
 * with the files it may not list negated. A call in code that cannot be read as one is refused,
 * not left to the plugin: its tokenizer may end the call elsewhere (see literal-scan.ts).
 */
export async function screenGlobs(ctx: GlobContext, code: string, id: string, root: string, rules: FileRules): Promise<string> {
  const file = fileOf(id)
  const clean = stripLiteral(code) // literal-scan.ts tokenized it before
  const edits: Edit[] = []
  for (const match of clean.matchAll(IMPORT_GLOB)) {
    const end = closeParen(clean, match.index + match[0].length) + 1
    let call: Node | undefined
    try {
      call = end > 0 ? ((ctx.parse(code.slice(match.index, end)) as { body: Node[] }).body[0]?.expression as Node | undefined) : undefined
    } catch {
      call = undefined
    }
    if (call?.type !== 'CallExpression') throw refuse('import.meta.glob', file, rules, 'is not a call the sandbox pool can read (write it as import.meta.glob(<literal patterns>, { <plain options> }))')
    for (const edit of await screenCall(ctx, call, file, id, root, rules)) edits.push({ ...edit, at: edit.at + match.index, end: edit.end + match.index })
  }
  return edits.reduceRight((out, e) => out.slice(0, e.at) + e.text + out.slice(e.end), code)
}

type Edit = { at: number; end: number; text: string }

/** One call's patterns and options, resolved as Vite's `toAbsoluteGlob` resolves them; the edits of its patterns and options. */
async function screenCall(ctx: GlobContext, call: Node, file: string, id: string, root: string, rules: FileRules): Promise<Edit[]> {
  if ((call.arguments as Node[]).length < 1 || (call.arguments as Node[]).length > 2) throw refuse('import.meta.glob', file, rules, 'takes one or two arguments (patterns, and options)')
  const [first, options] = call.arguments as Node[]
  const literal = (n: Node | undefined): string | undefined => (n?.type === 'Literal' && typeof n.value === 'string' ? n.value : n?.type === 'TemplateLiteral' && (n.expressions as unknown[]).length === 0 ? (n.quasis as Array<{ value: { raw: string } }>)[0].value.raw : undefined)
  const patterns = first?.type === 'ArrayExpression' ? (first.elements as Node[]).map(literal) : [literal(first)]
  const opts = options === undefined ? {} : staticObject(options)
  if (opts === undefined) throw refuse('import.meta.glob', file, rules, 'has options that are not plain values (Vite evaluates them as code, on the host)')
  const edits: Edit[] = options === undefined ? [] : [{ at: options.start, end: options.end, text: asSource(opts) }]
  if (opts.base !== undefined && typeof opts.base !== 'string') throw refuse('base', file, rules, 'has a base option that is not a string')
  const base = opts.base
  if (opts.exhaustive !== undefined && opts.exhaustive !== false) throw refuse('exhaustive', file, rules, 'asks to list dependencies too, whose links may lead anywhere')
  const caseSensitive = opts.caseSensitive !== false
  const listed: string[] = []
  for (const raw of patterns) {
    if (raw === undefined) throw refuse('import.meta.glob', file, rules, 'is not a literal pattern')
    if (!simplePattern(raw)) throw refuse(raw, file, rules, 'has more wildcards or alternatives than the sandbox pool matches (each costs the host time to match)')
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
  if (hidden.length === 0) return edits
  // Relative to the folder Vite joins a `./` or `../` pattern to, escaped as Vite escapes paths.
  const dir = base === undefined ? path.posix.dirname(file) : base.startsWith('/') ? path.posix.join(root, base) : path.posix.resolve(path.posix.dirname(file), base)
  const negations = hidden.map((m) => {
    const rel = path.posix.relative(dir, m)
    return JSON.stringify(`!${rel.startsWith('../') ? '' : './'}${escapePath(rel)}`)
  })
  const kept = patterns.map((p) => JSON.stringify(p))
  return [{ at: first.start, end: first.end, text: `[${[...kept, ...negations].join(', ')}]` }, ...edits]
}

/**
 * A pattern the host can match in little time: picomatch turns each `*` of a segment into a
 * backtracking group, so `*a*a*a…c` against a long name takes minutes. Real patterns have a few.
 */
function simplePattern(pattern: string): boolean {
  if (pattern.length > 512) return false
  const segments = pattern.split('/')
  const stars = (s: string) => s.replace(/\*\*+/g, '*').split('*').length - 1
  return segments.every((s) => stars(s) <= 3 && (s.match(/[{(@!+?]/g)?.length ?? 0) <= 4) && segments.reduce((n, s) => n + stars(s), 0) <= 8
}

function refuse(pattern: string, file: string, rules: FileRules, why: string): Error {
  return new Error(`vitest-pool-sandbox: import.meta.glob pattern ${JSON.stringify(pattern).slice(0, 300)} in ${path.relative(rules.root, file)} ${why}`)
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
  const importerDir = escapePath(path.posix.dirname(fileOf(importer)))
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

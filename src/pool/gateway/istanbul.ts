/**
 * One file's istanbul coverage from a worker, rebuilt as istanbul-lib-coverage reads it: location
 * maps of whole numbers, counts whose keys are the maps' own, short strings, fresh objects (no
 * part shared on the wire and copied at each use). The host's reporters walk it line by line (the
 * HTML report wraps each statement of a line once per earlier one), so the number of entries is
 * bounded by the size of the code and of each line. Undefined if anything is not in that shape.
 */

import { isPlain } from './methods.js'

/** Entries of the three maps together, per character of code (and at least this many). */
const MIN_ENTRIES = 10_000
/** Entries starting on one line: the HTML report's work on a line grows with their square. */
const MAX_PER_LINE = 1000
/** The largest line or column number taken. */
const MAX_POSITION = 10_000_000

type Loc = { start: Record<string, number | undefined>; end: Record<string, number | undefined>; skip?: true }

/** istanbul's mark of ignored code (`istanbul ignore`), kept where it was. */
const skipped = (v: Record<string, unknown>) => (v.skip === true ? { skip: true as const } : {})

const count = (n: unknown): n is number => Number.isSafeInteger(n) && (n as number) >= 0
const position = (n: unknown) => n === undefined || n === null || (Number.isSafeInteger(n) && (n as number) >= 0 && (n as number) <= MAX_POSITION)

function loc(value: unknown): Loc | undefined {
  if (!isPlain(value) || !isPlain(value.start) || !isPlain(value.end)) return undefined
  const point = (p: Record<string, unknown>) => (position(p.line) && position(p.column) ? { line: p.line as number | undefined, column: p.column as number | undefined } : undefined)
  const start = point(value.start)
  const end = point(value.end)
  return start && end ? { start, end, ...skipped(value) } : undefined
}

/**
 * The distinct locations of each file's coverage over the whole run: the provider merges every
 * worker's data by location, so the report of a line holds every location sent for it, by any
 * message, in any of the run's environments.
 */
export class LocationTally {
  private readonly files = new Map<string, { total: number; lines: Map<number, Set<string>> }>()

  /** Whether `loc` fits within the file's bounds, counting it if it is new. */
  fits(file: string, l: Loc, limit: number): boolean {
    let tally = this.files.get(file)
    if (!tally) this.files.set(file, (tally = { total: 0, lines: new Map() }))
    const line = l.start.line ?? 0
    let seen = tally.lines.get(line)
    if (!seen) tally.lines.set(line, (seen = new Set()))
    const key = `${l.start.column}:${l.end.line}:${l.end.column}`
    if (seen.has(key)) return true
    if (seen.size >= MAX_PER_LINE || tally.total >= limit) return false
    seen.add(key)
    tally.total++
    return true
  }
}

/**
 * @param codeLength the longest the code this coverage may describe can be (the host file, or
 *   the module code the host served for it)
 * @param tally the run's locations so far (every location of a statement, function or branch counts)
 */
export function istanbulEntry(file: string, entry: Record<string, unknown>, codeLength: number, tally: LocationTally): Record<string, unknown> | undefined {
  const limit = Math.max(MIN_ENTRIES, codeLength)
  const perLine = new Map<number, number>()
  let entries = 0
  const counted = (l: Loc): boolean => {
    const line = l.start.line ?? 0
    const n = (perLine.get(line) ?? 0) + 1
    perLine.set(line, n)
    return ++entries <= limit && n <= MAX_PER_LINE && tally.fits(file, l, limit)
  }
  const map = <T>(value: unknown, item: (v: unknown) => T | undefined): Record<string, T> | undefined => {
    if (!isPlain(value)) return undefined
    const out: Record<string, T> = {}
    for (const [key, v] of Object.entries(value)) {
      const rebuilt = item(v)
      if (rebuilt === undefined) return undefined
      out[key] = rebuilt
    }
    return out
  }
  const statementMap = map(entry.statementMap, (v) => {
    const l = loc(v)
    return l && counted(l) ? l : undefined
  })
  const fnMap = map(entry.fnMap, (v) => {
    if (!isPlain(v)) return undefined
    const decl = loc(v.decl)
    const l = loc(v.loc)
    if (!decl || !l || !counted(l) || !position(v.line)) return undefined
    return { name: typeof v.name === 'string' ? v.name.slice(0, 1024) : '', decl, loc: l, line: v.line, ...skipped(v) }
  })
  const branchMap = map(entry.branchMap, (v) => {
    if (!isPlain(v) || !Array.isArray(v.locations) || v.locations.length > MAX_PER_LINE) return undefined
    const l = loc(v.loc)
    const locations = v.locations.map(loc)
    // Each location of a branch is drawn on its line as a statement is.
    if (!l || !counted(l) || locations.some((x) => x === undefined || !counted(x)) || !position(v.line)) return undefined
    return { loc: l, type: typeof v.type === 'string' ? v.type.slice(0, 64) : '', locations: locations as Loc[], line: v.line, ...skipped(v) }
  })
  if (!statementMap || !fnMap || !branchMap) return undefined
  // Counts: one per map entry, keyed as the map.
  const counts = (value: unknown, keys: Record<string, unknown>) => {
    if (!isPlain(value)) return undefined
    const out: Record<string, number> = {}
    for (const key of Object.keys(keys)) {
      if (!count(value[key])) return undefined
      out[key] = value[key] as number
    }
    return out
  }
  const branchCounts = (value: unknown) => {
    if (!isPlain(value)) return undefined
    const out: Record<string, number[]> = {}
    for (const [key, branch] of Object.entries(branchMap)) {
      const c = value[key]
      if (!Array.isArray(c) || c.length !== branch.locations.length || !c.every(count)) return undefined
      out[key] = [...c]
    }
    return out
  }
  const s = counts(entry.s, statementMap)
  const f = counts(entry.f, fnMap)
  const b = branchCounts(entry.b)
  if (!s || !f || !b) return undefined
  const out: Record<string, unknown> = { path: file, statementMap, fnMap, branchMap, s, f, b }
  // Truthy counts of logical branches: some of the branches, each as long as its locations.
  if (isPlain(entry.bT)) {
    const bT: Record<string, number[]> = {}
    for (const [key, c] of Object.entries(entry.bT)) {
      const branch = Object.hasOwn(branchMap, key) ? branchMap[key] : undefined
      if (!branch || !Array.isArray(c) || c.length !== branch.locations.length || !c.every(count)) return undefined
      bT[key] = [...c]
    }
    out.bT = bT
  }
  if (typeof entry.hash === 'string') out.hash = entry.hash.slice(0, 256)
  if (typeof entry._coverageSchema === 'string') out._coverageSchema = entry._coverageSchema.slice(0, 256)
  if (typeof entry.all === 'boolean') out.all = entry.all
  return out
}

/**
 * Sizes and limits as users write them (`'2g'`, `'512m'`, cores as a number), for the local
 * engine and for remote providers alike: a leaf, so that a cloud-only import never loads the
 * engine to read its options.
 */

/** What a remote sandbox may use, where its provider's API takes it. */
export interface RemoteLimits {
  /** Memory (`'2g'`). */
  memory?: number | string
  /** Writable disk (`'10g'`). */
  disk?: number | string
  /** CPU, in cores. */
  cpus?: number
}

/** `limits` of a remote provider, read: bytes and cores, each only if given. */
export interface ResolvedRemoteLimits {
  memory?: number
  disk?: number
  cpus?: number
}

const GiB = 1024 ** 3
const UNITS: Record<string, number> = { '': 1, k: 1024, m: 1024 ** 2, g: GiB, t: 1024 ** 4 }

/** An error naming the option, the value and what it takes. */
export function invalidLimit(option: string, value: unknown, want: string): Error {
  return Object.assign(new Error(`limits${option ? `.${option}` : ''}: ${JSON.stringify(value)} is not ${want}`), { code: 'invalid_argument' })
}

/** `'512m'`, `'2G'`, `'1.5g'`, `'2gb'`, `'2GiB'` or a byte count. */
export function parseSize(value: unknown, option: string): number {
  const want = "a size: a byte count or a number with k, m, g or t (e.g. '512m', '2g')"
  if (typeof value === 'number') {
    if (!Number.isFinite(value) || value <= 0) throw invalidLimit(option, value, want)
    return Math.floor(value)
  }
  const m = typeof value === 'string' ? /^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$/i.exec(value) : null
  if (!m) throw invalidLimit(option, value, want)
  const bytes = Math.floor(Number(m[1]) * UNITS[m[2].toLowerCase()])
  if (bytes <= 0) throw invalidLimit(option, value, want)
  return bytes
}

export function positive(value: unknown, option: string, integer: boolean): number {
  if (typeof value !== 'number' || !Number.isFinite(value) || value <= 0 || (integer && !Number.isInteger(value))) {
    throw invalidLimit(option, value, integer ? 'a positive whole number' : 'a positive number')
  }
  return value
}

/** `1073741824` → `1 GiB`, `536870912` → `512 MiB`. */
export function formatSize(bytes: number): string {
  for (const [unit, size] of [['TiB', 1024 ** 4], ['GiB', GiB], ['MiB', 1024 ** 2], ['KiB', 1024]] as const) {
    if (bytes >= size) return `${Number((bytes / size).toFixed(1))} ${unit}`
  }
  return `${bytes} B`
}

/**
 * Reads a remote provider's `limits`: each one it takes, checked; one its API has no way to set
 * is refused with `why` (the provider's own way to size its sandboxes), never silently dropped.
 */
export function remoteLimits(input: unknown, provider: string, takes: Array<keyof RemoteLimits>, why: string): ResolvedRemoteLimits {
  if (input === undefined) return {}
  if (typeof input !== 'object' || input === null || Array.isArray(input)) throw invalidLimit('', input, 'an object such as { memory: "2g", disk: "10g", cpus: 2 }')
  const out: ResolvedRemoteLimits = {}
  for (const [key, value] of Object.entries(input)) {
    if (value === undefined) continue
    if (key !== 'memory' && key !== 'disk' && key !== 'cpus') throw invalidLimit(key, value, `a limit ${provider}() takes (memory, disk, cpus)`)
    if (!takes.includes(key)) throw Object.assign(new Error(`${provider}(): limits.${key} cannot be set through ${provider}'s API: ${why}`), { code: 'invalid_argument' })
    out[key] = key === 'cpus' ? positive(value, key, false) : parseSize(value, key)
  }
  return out
}

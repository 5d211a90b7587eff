/**
 * The `import.meta.env` object Vite's import analysis writes at the top of every module that reads
 * it, from the host's whole resolved env (host `VITE_*` variables, every `.env` file's values):
 * the gateway cuts it down to the names a worker may see, in every answer that carries code.
 */

/**
 * How the statement starts (on a line of its own), before and after Vite's SSR transform. Every
 * such line is cut down, not only the first: a module can hold a line that looks like it before
 * Vite's (a line separator in an export's name starts a line for this pattern).
 */
const HEAD = /^(?:import\.meta|__vite_ssr_import_meta__)\.env = \{/gm

/** `code` with each env statement holding only `allowed` names (unchanged without one). */
export function screenImportMetaEnv(code: string, allowed: (name: string) => boolean): string {
  let out = ''
  let from = 0
  for (const found of code.matchAll(HEAD)) {
    if (found.index < from) continue // inside the statement just cut down
    const { entries, end } = statement(code, found.index + found[0].length)
    out += `${code.slice(from, found.index)}${found[0]}${entries.filter((entry) => allowedEntry(entry, allowed)).join(', ')}}`
    from = end + 1
  }
  return out + code.slice(from)
}

/** `"NAME": value, ...}` from `at`: the entries, and where its `}` is. */
function statement(code: string, at: number): { entries: string[]; end: number } {
  const entries: string[] = []
  // A value is a JSON string or a define's expression (no strings in it but JSON ones).
  let start = at
  let depth = 0
  for (; at < code.length; at++) {
    const c = code[at]
    if (c === '"') {
      for (at++; at < code.length && code[at] !== '"'; at++) if (code[at] === '\\') at++
    } else if (c === '{' || c === '[' || c === '(') depth++
    else if ((c === '}' || c === ']' || c === ')') && depth > 0) depth--
    else if ((c === ',' || c === '}') && depth === 0) {
      const entry = code.slice(start, at).trim()
      if (entry) entries.push(entry)
      start = at + 1
      if (c === '}') break
    }
  }
  // Not the statement as Vite writes it: the module goes without it rather than with the host's env.
  if (code[at] !== '}' || code[at + 1] !== ';') throw new Error('vitest-pool-sandbox: import.meta.env of this module is not in the shape Vite writes; the sandbox pool cannot cut it down')
  return { entries, end: at }
}

function allowedEntry(entry: string, allowed: (name: string) => boolean): boolean {
  const m = /^"((?:[^"\\]|\\.)*)"\s*:/.exec(entry)
  if (!m) return false
  try {
    return allowed(JSON.parse(`"${m[1]}"`))
  } catch {
    return false
  }
}

/**
 * The `import.meta.env` object Vite's import analysis writes at the top of every module that reads
 * it, from the host's whole resolved env (host `VITE_*` variables, every `.env` file's values):
 * the gateway cuts it down to the names a worker may see, in every answer that carries code.
 */

/** How the statement starts (on a line of its own), before and after Vite's SSR transform. */
const HEAD = /^(?:import\.meta|__vite_ssr_import_meta__)\.env = \{/m

/** `code` with the env statement holding only `allowed` names (unchanged without one). */
export function screenImportMetaEnv(code: string, allowed: (name: string) => boolean): string {
  const found = HEAD.exec(code)
  if (!found) return code
  const entries: string[] = []
  let at = found.index + found[0].length
  // `"NAME": value, ...}` where a value is a JSON string or a define's expression (no strings in it but JSON ones).
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
  const kept = entries.filter((entry) => {
    const m = /^"((?:[^"\\]|\\.)*)"\s*:/.exec(entry)
    if (!m) return false
    try {
      return allowed(JSON.parse(`"${m[1]}"`))
    } catch {
      return false
    }
  })
  return `${code.slice(0, found.index)}${found[0]}${kept.join(', ')}}${code.slice(at + 1)}`
}

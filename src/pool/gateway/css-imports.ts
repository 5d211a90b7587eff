/**
 * What a CSS compile will read, checked before it reads it: the css plugin's `@import` loader
 * (postcss-import) reads any path it is given, whole, before the gateway sees what was read (a
 * sheet importing `/dev/zero` filled the host's memory), and hands `.less`/`.styl` imports to
 * their compilers. Every `@import`, `@use` and `@forward` of a path, in the sheet and in the given
 * sheets it imports, must name a given file, or nothing that exists; package imports are judged
 * by what the compile read, as before.
 */
import fs from 'node:fs'
import path from 'node:path'
import type { FileRules } from './file-rules.js'
import { fileOf } from './module-ids.js'

const IMPORT = /@(?:import|use|forward)\s+(?:url\(\s*)?(['"]?)([^'"()\s;]+)\1/gi
/**
 * A sheet whose compiler runs code it names (Less `@plugin`, Stylus `use()`): by its extension,
 * or a `lang.` query (Vue blocks).
 */
export const RUNS_CODE = /\.(?:less|styl|stylus)(?:$|[?#])|[?&]lang\.(?:less|styl|stylus)(?:$|[&#])/i
const SHEET = /\.(?:css|pcss|postcss|scss|sass|sss)$/i
const MAX_SHEETS = 256

/** Throws `refused()` for the first import the compile may not read. */
export function checkCssImports(code: string, file: string, root: string, rules: FileRules, refused: () => Error, seen = new Set<string>()): void {
  seen.add(file)
  for (const [, , raw] of code.matchAll(IMPORT)) {
    const target = fileOf(raw)
    if (/^(?:[a-z][a-z0-9+.-]*:)?\/\//i.test(target) || /^data:/i.test(target)) continue // not read from disk
    if (RUNS_CODE.test(target)) throw refused()
    if (!target.startsWith('.') && !target.startsWith('/')) {
      if (target.split('/').includes('..')) throw refused()
      continue // a package
    }
    const candidates = target.startsWith('/') ? [target, path.join(root, target)] : [path.resolve(path.dirname(file), target)]
    for (const p of candidates) {
      if (!fs.existsSync(p)) continue
      if (!rules.isGiven(p) || !fs.statSync(p).isFile()) throw refused()
      if (SHEET.test(p) && !seen.has(p)) {
        if (seen.size >= MAX_SHEETS) throw refused()
        checkCssImports(fs.readFileSync(p, 'utf8'), p, root, rules, refused, seen)
      }
    }
  }
}

/**
 * `new Worker(new URL('…', import.meta.url), { … })` in a client environment: Vite's worker plugin
 * takes the text after the URL's comma up to the closing parenthesis (its own scan, on the module
 * with literals stripped) and evaluates it as code on the host to learn the worker's `type`. Each
 * such text is found exactly as the plugin finds it, and must be an object literal of plain values:
 * the plugin gets their JSON in its place.
 */
import path from 'node:path'
import { stripLiteral } from 'strip-literal'
import { asSource, staticObject } from './static-options.js'
import { fileOf } from './module-ids.js'

/** Vite's expression for a worker made from a URL (`workerImportMetaUrlRE`). */
const WORKER_URL = /\bnew\s+(?:Worker|SharedWorker)\s*\(\s*(new\s+URL\s*\(\s*('[^']+'|"[^"]+"|`[^`]+`)\s*,\s*import\.meta\.url\s*(?:,\s*)?\))/dg
const VITE_IGNORE = /\/\*\s*@vite-ignore\s*\*\//

/** Vite's `findClosingParen`, as it is. */
function closingParen(clean: string, from: number): number {
  let count = 1
  for (let i = from; i < clean.length; i++) {
    if (clean[i] === '(') count++
    if (clean[i] === ')') count--
    if (count === 0) return i
  }
  return -1
}

/** `code` with every worker's options as the plugin will read them replaced by their JSON; throws for options that are not plain values. */
export function screenWorkerOptions(code: string, id: string, root: string, parse: (code: string) => unknown): string {
  const clean = stripLiteral(code) // literal-scan.ts tokenized it before
  const edits: Array<{ at: number; end: number; text: string }> = []
  for (const match of clean.matchAll(WORKER_URL)) {
    // As the plugin's getWorkerType: from the first comma after the URL to the call's parenthesis.
    const after = match.indices![0][1]
    const comma = clean.indexOf(',', after)
    const close = closingParen(clean, after)
    if (comma === -1 || comma > close) continue
    let text = code.substring(comma + 1, close)
    if (VITE_IGNORE.test(text)) continue
    const cleanText = clean.substring(comma + 1, close)
    if (!cleanText.trim()) continue
    if (cleanText.trim().endsWith(',')) text = text.slice(0, cleanText.lastIndexOf(','))
    let value: ReturnType<typeof staticObject>
    try {
      const program = parse(`(${text})`) as { body: Array<{ type: string; expression?: unknown }> }
      value = program.body.length === 1 && program.body[0].type === 'ExpressionStatement' ? staticObject(program.body[0].expression) : undefined
    } catch {
      value = undefined
    }
    if (!value) {
      throw new Error(`vitest-pool-sandbox: the options of new Worker(new URL(…)) in ${path.relative(root, fileOf(id))} are not plain values (Vite evaluates them as code, on the host); write them as an object literal such as { type: 'module' }`)
    }
    edits.push({ at: comma + 1, end: comma + 1 + text.length, text: asSource(value) })
  }
  return edits.reduceRight((out, e) => out.slice(0, e.at) + e.text + out.slice(e.end), code)
}

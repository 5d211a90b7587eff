/**
 * Vite's glob, worker and asset plugins find what they act on (and evaluate, read or list on the
 * host) by regular expressions over the module with its literals blanked, by a tokenizer of their
 * own. Tokenizers disagree on where a regex literal starts (`0 in /…/` is one to this package's
 * copy of js-tokens and a division to the one bundled in Vite), so a call the gateway saw as text
 * inside a literal could be code to the plugin. Deny by default: inside every literal and comment
 * (as this package's tokenizer reads them), each place such an expression could start is written
 * so that no plugin's expression can match it, with a character escape that keeps what a string,
 * template or regex literal means (`impor\x74.meta.glob`, `new Worke\x72(`, `new UR\x4c(`).
 */
import { stripLiteral } from 'strip-literal'

/** What the plugins look for, and the index of the character written as an escape. */
/** Between `new` and the name, what a plugin's stripped text shows as blanks: spaces and comments. */
const GAP = String.raw`(?:\s|\/\*[\s\S]*?\*\/|\/\/[^\n]*)+`
const STARTS: Array<{ pattern: RegExp; at: (match: string) => number }> = [
  { pattern: /\bimport\.meta\.glob/g, at: () => 'impor'.length },
  { pattern: new RegExp(String.raw`\bnew${GAP}(?:Shared)?Worker\b`, 'g'), at: (m) => m.length - 1 },
  { pattern: new RegExp(String.raw`\bnew${GAP}URL\b`, 'g'), at: (m) => m.length - 1 },
]

/** `code` with every such start inside a literal or comment escaped; undefined if it cannot be tokenized (the plugins fail on it too). */
export function defangLiterals(code: string): string | undefined {
  let clean: string
  try {
    clean = stripLiteral(code)
  } catch {
    return undefined
  }
  const edits: number[] = []
  for (const { pattern, at } of STARTS) {
    for (const m of code.matchAll(pattern)) {
      const end = m.index + m[0].length
      let inLiteral = false
      for (let i = m.index; i < end && !inLiteral; i++) inLiteral = clean[i] !== code[i]
      if (inLiteral) edits.push(m.index + at(m[0]))
    }
  }
  edits.sort((a, b) => b - a)
  let out = code
  for (const i of edits) out = `${out.slice(0, i)}\\x${out.charCodeAt(i).toString(16).padStart(2, '0')}${out.slice(i + 1)}`
  return out
}

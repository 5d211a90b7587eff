/**
 * The options of `import.meta.glob(…, { … })` and `new Worker(new URL(…), { … })`: Vite's plugins
 * evaluate their source text as code, on the host (`evalValue`, a `new Function`). Only an object
 * literal of plain values passes, and the plugin is handed its JSON, never the text the sandbox
 * wrote: whatever Vite's own scan takes for the options, it is data.
 */

type Node = { type: string; [key: string]: unknown }

/** A value without code: strings, numbers, booleans, null, and objects of them (one level deep for `query`). */
export type StaticValue = string | number | boolean | null | { [key: string]: StaticValue }

const MAX_DEPTH = 2
const MAX_PROPERTIES = 32
const MAX_STRING = 1024

/** The value of `node`, or undefined when it is anything but an object literal of plain values. */
export function staticObject(node: unknown, depth = 0): Record<string, StaticValue> | undefined {
  const n = node as Node | undefined
  if (n?.type !== 'ObjectExpression' || depth >= MAX_DEPTH) return undefined
  const properties = n.properties as Node[]
  if (properties.length > MAX_PROPERTIES) return undefined
  const out: Record<string, StaticValue> = Object.create(null)
  for (const p of properties) {
    // `a: v` and `'a': v` only: no spread, method, getter, shorthand or computed key.
    if (p.type !== 'Property' || p.kind !== 'init' || p.method || p.shorthand || p.computed) return undefined
    const key = p.key as Node
    const name = key.type === 'Identifier' ? (key.name as string) : key.type === 'Literal' && typeof key.value === 'string' ? key.value : undefined
    if (name === undefined || name === '__proto__' || name.length > MAX_STRING) return undefined
    const value = staticValue(p.value, depth)
    if (value === undefined) return undefined
    out[name] = value
  }
  return { ...out }
}

function staticValue(node: unknown, depth: number): StaticValue | undefined {
  const n = node as Node
  if (n.type === 'Literal') {
    const v = n.value
    if (v === null || typeof v === 'boolean' || (typeof v === 'number' && Number.isFinite(v))) return v
    return typeof v === 'string' && v.length <= MAX_STRING ? v : undefined
  }
  if (n.type === 'TemplateLiteral' && (n.expressions as unknown[]).length === 0) {
    const cooked = (n.quasis as Array<{ value: { cooked: string | null } }>)[0].value.cooked
    return typeof cooked === 'string' && cooked.length <= MAX_STRING ? cooked : undefined
  }
  if (n.type === 'UnaryExpression' && n.operator === '-' && (n.argument as Node).type === 'Literal' && typeof (n.argument as Node).value === 'number') return -((n.argument as Node).value as number)
  return staticObject(n, depth + 1)
}

/** The source text Vite evaluates in place of the options: JSON, which is data whatever reads it. */
export function asSource(value: Record<string, StaticValue>): string {
  return JSON.stringify(value)
}

/**
 * Vite's glob and worker plugins learn their options by evaluating the options' text from a
 * module's code (`evalValue`: `new Function("var console, …, require\n return (\n<text>\n)")`).
 * The gateway hands them JSON for every call it reads (static-options.ts), but which text they take
 * depends on their own tokenizer, which can read a module differently from any other. So the host
 * process evaluates that shape of function only for JSON: `globalThis.Function` is a proxy that
 * answers such a call with the parsed value (or a SyntaxError, which both plugins handle), and
 * passes every other call to the real constructor.
 */

/** Vite's `evalValue` body (Vite 5 to 8), and the text it evaluates. */
const EVAL_VALUE = /^\s*var console, exports, global, module, process, require\s+return \(\n([\s\S]*)\n\)\s*$/

let installed = false

/** Install the guard in this process (once). */
export function guardEvalValue(): void {
  if (installed) return
  installed = true
  const real = globalThis.Function
  const guarded = (args: unknown[]): unknown => {
    const body = args.length === 1 && typeof args[0] === 'string' ? EVAL_VALUE.exec(args[0]) : null
    if (!body) return undefined
    let value: unknown
    try {
      value = JSON.parse(body[1])
    } catch {
      throw new SyntaxError('vitest-pool-sandbox: options a plugin evaluates from module code must be JSON on the host of a sandbox')
    }
    return () => value
  }
  globalThis.Function = new Proxy(real, {
    construct: (target, args, newTarget) => guarded(args) ?? Reflect.construct(target, args, newTarget === globalThis.Function ? target : newTarget),
    apply: (target, self, args) => guarded(args) ?? Reflect.apply(target, self, args),
  })
}

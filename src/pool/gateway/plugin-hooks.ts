/** Puts the gateway around one of a Vite environment's plugin transforms (Vite's own plugins, found by name). */

/** A transform hook as Vite calls it: `this` is the plugin context. */
export type TransformHandler = (this: any, code: string, id: string, ...rest: unknown[]) => unknown

/** The environment's plugins, as far as finding one's transform goes. */
export interface PluginsOf {
  plugins?: ReadonlyArray<{ name: string; transform?: unknown }>
}

const wrapped = new WeakSet<object>()

/** Replaces the transform of the environment's plugin `name` (if it has one) by `around(transform)`. */
export function aroundTransform(environment: PluginsOf, name: string, around: (handler: TransformHandler) => TransformHandler): void {
  const plugin = environment.plugins?.find((p) => p.name === name) as { transform?: TransformHandler | { handler: TransformHandler } } | undefined
  // Vite shares one plugin object between environments: it is wrapped once.
  if (!plugin?.transform || wrapped.has(plugin)) return
  wrapped.add(plugin)
  if (typeof plugin.transform === 'function') plugin.transform = around(plugin.transform)
  else plugin.transform.handler = around(plugin.transform.handler)
}

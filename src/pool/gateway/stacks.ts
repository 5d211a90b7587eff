/**
 * Text the host reads as file references: error stacks (the host prints a code frame of a stack's
 * file, maps it through source maps), leak locations. A host file the sandbox may not name is
 * never named to the host: its path becomes one under a folder that does not exist, so the host
 * prints no frame of it. Paths of given files, dependencies and paths where nothing is stay.
 */
import fs from 'node:fs'
import { ABSENT } from './module-ids.js'

/** An absolute path (`//x` is `/x` to the file system) or file URL inside text, up to a character no stack path has. */
const PATH_IN_TEXT = /(?<![\w/.])(file:\/\/)?(\/+[\w.@~+-][^\s'"`()<>,;?#:]*)/g

/** Every string of `value` with the paths `mayName` refuses moved under ABSENT (in place; task trees have cycles). */
export function screenPaths<T>(value: T, mayName: (file: string) => boolean, seen = new WeakSet<object>()): T {
  if (typeof value === 'string') return screenText(value, mayName) as T
  if (value === null || typeof value !== 'object' || seen.has(value)) return value
  seen.add(value)
  if (ArrayBuffer.isView(value) || value instanceof ArrayBuffer) return value // bytes, never read as text
  if (Array.isArray(value)) {
    // Written only where a path moved: a hole stays one (values reach here through acyclic, dense and bounded).
    for (let i = 0; i < value.length; i++) {
      const screened = screenPaths(value[i], mayName, seen)
      if (screened !== value[i]) value[i] = screened
    }
    return value
  }
  for (const key of Object.keys(value)) {
    const v = (value as any)[key]
    const screened = screenPaths(v, mayName, seen)
    if (screened !== v) (value as any)[key] = screened
  }
  if (value instanceof Error) {
    value.message = screenText(value.message, mayName)
    if (typeof value.stack === 'string') value.stack = screenText(value.stack, mayName)
  }
  return value
}

function screenText(text: string, mayName: (file: string) => boolean): string {
  if (!text.includes('/')) return text
  // Only files: the host reads no folder for a frame, and error texts name folders often.
  return text.replace(PATH_IN_TEXT, (all, url: string | undefined, file: string) => (mayName(file) || !isFile(file) ? all : `${url ?? ''}${ABSENT}${file}`))
}

function isFile(file: string): boolean {
  try {
    return fs.statSync(file).isFile()
  } catch {
    return false
  }
}

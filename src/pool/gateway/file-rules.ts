/**
 * The one question every host-side service asks of a path the sandbox named: may the sandbox
 * learn of it? Yes for files given to it, the workspace's dependencies (the template has them at
 * the same paths), Vitest's own files and this package's runtime, and paths where nothing is.
 */
import fs from 'node:fs'
import path from 'node:path'
import { realPath, type Workspace } from '../../workspace/collect.js'

export interface FileRules {
  /** The workspace root. */
  root: string
  /** Folders Vite reads `/x` from before `/x` itself: the workspace, Vite's root, the public folder. */
  roots: string[]
  /** Is `file` (absolute) given to the sandbox? (the workspace's one predicate) */
  isGiven(file: string): boolean
  /** May the sandbox learn of `file` (absolute): its existence, name or content? */
  mayName(file: string): boolean
  /**
   * May an answer word this path, whatever is there? Given paths, dependencies and runtime files by
   * their path alone: an error that names another path would tell by its wording what Vite found.
   */
  mayWord(file: string): boolean
  /**
   * May Vite look for files from `file` (an importer's folder, a package's, a url's target)? It
   * may be worded, and so may where its links lead: Vite's lookups follow them (a package.json
   * above a link out was read).
   */
  mayReach(file: string): boolean
  /** Links in the workspace that lead to what is not given (a listing that walks them would show it). */
  outwardLinks: string[]
  /** A file was written or removed on the host: answers about what is there are asked again. */
  changed(): void
}

/** Folders with a dot under node_modules that hold dependencies (pnpm's store, the bin links). */
const DOT_DEPENDENCIES = new Set(['.pnpm', '.bin'])

/**
 * @param runtimeDirs host folders whose modules a sandbox may always get (Vitest itself, this
 *   package's snapshot environment)
 * @param readRoots Vite's root and public folder (it reads `/x` under each)
 */
export function fileRules(workspace: Workspace, runtimeDirs: string[], readRoots: string[] = []): FileRules {
  // Under node_modules, but in no tool's folder there (a name with a dot) other than the package
  // managers' and Vite's prebundled deps: Vitest's module caches hold transformed code with the
  // host's whole `import.meta.env` in it (a sandbox fetched it `?raw`).
  const underNodeModules = (file: string) => {
    const parts = workspace.relative(file)?.split('/') ?? []
    return parts.includes('node_modules') && parts.every((p, i) => parts[i - 1] !== 'node_modules' || !p.startsWith('.') || DOT_DEPENDENCIES.has(p) || (p === '.vite' && parts[i + 1] === 'deps'))
  }
  // A dependency where it really is: a link under node_modules may lead anywhere, a workspace
  // package's link (npm, yarn and pnpm workspaces make them) to its files that are not given too.
  const dependency = (file: string) => {
    if (!underNodeModules(file)) return false
    const real = realPath(file)
    return workspace.relative(real) !== undefined && (underNodeModules(real) || workspace.isGiven(real))
  }
  const runtime = (file: string) => runtimeDirs.some((d) => file === d || file.startsWith(d + path.sep))
  // One worker asks of the same paths again and again (stacks, task trees); a write of the host's
  // file service (a snapshot made in the run) clears the answers.
  const answers = new Map<string, boolean>()
  const remembered = (key: string, ask: () => boolean) => {
    let answer = answers.get(key)
    if (answer === undefined) {
      answer = ask()
      if (answers.size < 10_000) answers.set(key, answer)
    }
    return answer
  }
  const mayNameExisting = (file: string) => workspace.isGiven(file) || dependency(file) || runtime(file)
  const mayWord = (file: string) => workspace.isGiven(file) || underNodeModules(file) || runtime(file)
  return {
    root: workspace.root,
    roots: [...new Set([workspace.root, ...readRoots])],
    mayWord,
    mayReach: (file) => remembered(`reach\0${file}`, () => mayWord(file) && mayWord(realPath(file))),
    outwardLinks: workspace.files.filter((f) => f.link !== undefined).map((f) => path.join(workspace.root, f.path)).filter((p) => !workspace.isGiven(p)),
    isGiven: (file) => workspace.isGiven(file),
    changed: () => answers.clear(),
    // Whether it exists is asked each time: a file Vitest writes later in the run (its module cache) was missing once.
    // As the path it reads to (`/x/` is `/x`: a file with a slash after it does not exist, but is read).
    mayName: (file) => {
      const p = path.resolve(file)
      return !fs.existsSync(p) || remembered(p, () => mayNameExisting(p))
    },
  }
}

/**
 * The one question every host-side service asks of a path the sandbox named: may the sandbox
 * learn of it? Yes for files given to it, the workspace's dependencies (the template has them at
 * the same paths), Vitest's own files and this package's runtime, and paths where nothing is.
 */
import fs from 'node:fs'
import path from 'node:path'
import type { Workspace } from '../../workspace/collect.js'

export interface FileRules {
  /** The workspace root (Vite reads `/x` as `<root>/x` first). */
  root: string
  /** Is `file` (absolute) given to the sandbox? (the workspace's one predicate) */
  isGiven(file: string): boolean
  /** May the sandbox learn of `file` (absolute): its existence, name or content? */
  mayName(file: string): boolean
}

/**
 * @param runtimeDirs host folders whose modules a sandbox may always get (Vitest itself, this
 *   package's snapshot environment)
 */
export function fileRules(workspace: Workspace, runtimeDirs: string[]): FileRules {
  const dependency = (file: string) => workspace.relative(file)?.split('/').includes('node_modules') ?? false
  const runtime = (file: string) => runtimeDirs.some((d) => file === d || file.startsWith(d + path.sep))
  // One worker asks of the same paths again and again (stacks, task trees); its run changes no host file it may not name.
  const answers = new Map<string, boolean>()
  const mayName = (file: string) => !fs.existsSync(file) || workspace.isGiven(file) || dependency(file) || runtime(file)
  return {
    root: workspace.root,
    isGiven: (file) => workspace.isGiven(file),
    mayName: (file) => {
      let answer = answers.get(file)
      if (answer === undefined) {
        answer = mayName(file)
        if (answers.size < 10_000) answers.set(file, answer)
      }
      return answer
    },
  }
}

/**
 * The host's file service for one test worker: snapshot reads, writes, removals and folders that
 * the sandbox's snapshot environment asks for. Untrusted code can call it directly, so it does
 * only what Vitest itself would do for the file that worker runs, in this run's update mode:
 *
 * - reads: files given to the sandbox;
 * - `'none'` (CI): nothing changes (a write of identical content is a no-op);
 * - `'new'`: a new `.snap` file or new entries in it, a new inline snapshot in the test file, a
 *   new file-snapshot target;
 * - `'all'` (`-u`): also changed and removed entries, changed inline snapshots and targets, and
 *   removal of the test file's own obsolete `.snap` file;
 * - never: a path through a symbolic link; files the host executes or reads as configuration
 *   (PROTECTED), in any mode; a file-snapshot target outside the test file's folder, or outside
 *   `__snapshots__` with a name that is not data or in a project's root folder, unless
 *   `allowWrite` says so (test code chooses that path; the host's config, hooks and task runners
 *   may read or run it).
 */
import fs from 'node:fs'
import fsp from 'node:fs/promises'
import path from 'node:path'
import ignore from 'ignore'
import { inlineSnapshotChange } from './inline-snapshots.js'
import type { Workspace } from '../workspace/collect.js'

export type UpdateMode = 'none' | 'new' | 'all'

/** Basenames the host runs or reads as configuration (gitignore-style, at any depth). */
const PROTECTED = ignore().add([
  '*.config.*',
  'vitest.workspace.*',
  'vitest.projects.*',
  'package.json',
  'package-lock.json',
  'npm-shrinkwrap.json',
  'pnpm-lock.yaml',
  'pnpm-workspace.yaml',
  'yarn.lock',
  'bun.lock',
  'bun.lockb',
  'deno.json',
  'deno.jsonc',
  'deno.lock',
  'tsconfig*.json',
  'jsconfig*.json',
  'turbo.json',
  'nx.json',
  'project.json',
  'lerna.json',
  'rush.json',
  'Makefile',
  'makefile',
  'GNUmakefile',
  'Dockerfile*',
  'Jenkinsfile',
  'Taskfile.yml',
  'justfile',
  'azure-pipelines.yml',
  'bitbucket-pipelines.yml',
])

const PATH_MAX = 4096

/** What makes a folder a project's root, beside the workspace root. */
const ROOT_MARKERS = ['package.json', 'deno.json', 'deno.jsonc', 'package-lock.json', 'pnpm-lock.yaml', 'pnpm-workspace.yaml', 'yarn.lock', 'bun.lock', 'bun.lockb', '.git']

/**
 * Names of data a test may write as a file snapshot outside `__snapshots__`: anything else (code,
 * build scripts without an extension such as `Rakefile`, a page a build starts from) needs
 * `allowWrite`. An allow-list: the kinds of code are too many to list.
 */
const DATA_NAME = /\.(?:txt|text|json|md|markdown|csv|tsv|xml|ya?ml|log|out|diff|patch)$/i

/** The header Vitest writes at the top of every .snap file. */
const SNAP_HEADER = /^\/\/ (?:Vitest )?Snapshot v\d+[^\n]*\n\n/
const SNAP_ENTRY = /exports\[`((?:[^`\\]|\\[\s\S])*)`\] = `((?:[^`\\]|\\[\s\S])*)`;(?:\n\n|\n$)/y

/** The entries of a .snap file as Vitest writes it, or undefined when it is not one. */
export function parseSnapFile(content: string): Map<string, string> | undefined {
  const header = SNAP_HEADER.exec(content)
  if (!header) return undefined
  const entries = new Map<string, string>()
  let at = header[0].length
  while (at < content.length) {
    SNAP_ENTRY.lastIndex = at
    const m = SNAP_ENTRY.exec(content)
    if (!m || /\$\{/.test(m[2].replace(/\\[\s\S]/g, ''))) return undefined
    entries.set(m[1], m[2])
    at = SNAP_ENTRY.lastIndex
  }
  return entries
}

export interface HostFilesContext {
  workspace: Workspace
  /** The update mode of this run, as the worker was started with it. */
  mode(): UpdateMode
  /** The test files the worker is running. */
  testFiles(): string[]
  /** .snap paths Vitest resolved for that test file. */
  snapFiles(): Set<string>
  /** Host files that must never be written (config files, globalSetup files). */
  protectedFiles: Set<string>
  /** gitignore-style patterns (`sandbox({ allowWrite })`) of code-like targets tests may write. */
  allowWrite: string[]
  /** The project's root: Vitest reads a benchmark result path relative to it. */
  projectRoot: string
  /** `bytes` more snapshot files written for the run: why not, past the run's bound. */
  written(bytes: number): string | undefined
}

export class HostFileRefusal extends Error {}

/** Is `file` missing, or a benchmark result Vitest wrote (JSON with `latency.mean`)? */
function isBenchmarkFile(file: string): boolean {
  let text: string
  try {
    text = fs.readFileSync(file, 'utf8')
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'ENOENT'
  }
  try {
    const data = JSON.parse(text)
    return typeof data?.latency?.mean === 'number' && typeof data?.throughput?.mean === 'number'
  } catch {
    return false
  }
}

/** Whether a path below `root` goes through a symbolic link on the host (a dangling one included). */
function linkOnTheWay(root: string, file: string): boolean {
  let at = root
  for (const part of path.relative(root, file).split(path.sep)) {
    at = path.join(at, part)
    try {
      if (fs.lstatSync(at).isSymbolicLink()) return true
    } catch {
      return false // nothing there: nothing further down either
    }
  }
  return false
}

export class HostFiles {
  private readonly allow

  constructor(private readonly ctx: HostFilesContext) {
    this.allow = ignore().add(ctx.allowWrite)
  }

  async call(op: string, args: unknown[]): Promise<unknown> {
    // A path the kernel would take (PATH_MAX), so that no refusal quoting it is larger.
    if (typeof args[0] !== 'string' || args[0].length > PATH_MAX) throw new HostFileRefusal(`${op} takes a path of at most ${PATH_MAX} characters`)
    const file = path.resolve(args[0])
    if (!path.isAbsolute(args[0]) || !this.ctx.workspace.isGiven(file)) {
      throw new HostFileRefusal(`${file} is not a file given to the sandbox (outside ${this.ctx.workspace.root}, or left out as a secret, cache or excluded file)`)
    }
    switch (op) {
      case 'snapshot:read':
        return fsp.readFile(file, 'utf8').catch((e) => (e.code === 'ENOENT' ? null : Promise.reject(e)))
      case 'snapshot:write':
        this.noLink(file, 'write')
        return this.write(file, String(args[1]))
      case 'snapshot:remove':
        this.noLink(file, 'remove')
        return this.remove(file)
      default:
        throw new HostFileRefusal(`unknown host call ${op}`)
    }
  }

  /**
   * Writes never follow a symbolic link (a dangling one included): the rules below judge a file by
   * its path, and a link with an innocent name may lead to a config file or a dot-folder.
   */
  private noLink(file: string, what: string): void {
    if (linkOnTheWay(this.ctx.workspace.root, file)) throw new HostFileRefusal(`refused to ${what} ${this.rel(file)} from inside the sandbox: its path goes through a symbolic link`)
  }

  /**
   * A benchmark result path (Vitest 5's `bench.from()` and its result files), read as Vitest reads
   * it (relative to the project's root): the absolute path to hand Vitest, or why it is refused.
   */
  benchmarkPath(method: string, asked: unknown): { path: string } | { refused: string } {
    if (typeof asked !== 'string' || asked.length > PATH_MAX) return { refused: `${method} takes a path of at most ${PATH_MAX} characters` }
    const file = path.resolve(this.ctx.projectRoot, asked)
    if (!this.ctx.workspace.isGiven(file)) return { refused: `${method} of ${String(asked)}: not a file given to the sandbox` }
    if (method === 'readBenchmarkResult') return { path: file }
    if (linkOnTheWay(this.ctx.workspace.root, file)) return { refused: `${method} of ${this.rel(file)} refused: its path goes through a symbolic link` }
    // A new .json file, or one that already holds a benchmark result: never data a test imports.
    const protection = this.protection(file) ?? (!file.endsWith('.json') ? 'only .json benchmark results are written' : isBenchmarkFile(file) ? undefined : 'it exists and does not hold a benchmark result')
    return protection ? { refused: `${method} of ${this.rel(file)} refused: ${protection}` } : { path: file }
  }

  private rel(file: string): string {
    return this.ctx.workspace.relative(file)!
  }

  /** Never written from a sandbox, whatever the mode. */
  private protection(file: string): string | undefined {
    const rel = this.rel(file)
    if (this.ctx.protectedFiles.has(file)) return 'it is a file the host loads (a config or globalSetup file)'
    // A name no module id carries (a query or hash mark, a line separator): as an id, it reads as
    // another path; and one a file URL reads as another (`%2e%2e` is `..` to a URL parser, `\\` a
    // separator), as the coverage provider reads files.
    if (/[?#%\\\u2028\u2029]/.test(rel)) return 'its path has a character module ids and file URLs cannot carry (?, #, %, \\ or a line separator)'
    if (rel.split('/').some((p) => p.startsWith('.'))) return 'dotfiles and dot-folders (.git, .github, ...) are configuration'
    if (PROTECTED.ignores(rel)) return 'it is a manifest, lockfile or configuration file'
    return undefined
  }

  private async write(file: string, content: string): Promise<void> {
    const current = await fsp.readFile(file, 'utf8').catch((e) => (e.code === 'ENOENT' ? null : Promise.reject(e)))
    if (current === content) return // what Vitest does on CI for an unchanged file
    const mode = this.ctx.mode()
    const refuse = (why: string) => new HostFileRefusal(`refused to ${current === null ? 'create' : 'change'} ${this.rel(file)} from inside the sandbox: ${why}`)
    if (mode === 'none') throw refuse('snapshots are not updated in this run (update mode none, the default on CI; run with -u to update them)')
    const protection = this.protection(file)
    if (protection) throw refuse(protection)
    if (this.ctx.snapFiles().has(file)) return this.writeSnap(file, current, content, mode, refuse)
    if (this.ctx.testFiles().includes(file)) {
      if (current === null) throw refuse('the test file does not exist on the host')
      const why = inlineSnapshotChange(current, content, mode, file)
      if (why) throw refuse(`as an inline snapshot update of the running test file, ${why}`)
      return this.writeFile(file, content, refuse)
    }
    // A file snapshot (`toMatchFileSnapshot`): its path comes from test code.
    const rel = this.rel(file)
    if (rel.endsWith('.snap')) throw refuse('it is the snapshot file of another test file')
    if (current !== null && mode !== 'all') throw refuse('it exists, and only `vitest -u` changes existing snapshots')
    // Next to the test, not beside the project's manifests, hooks and task files (lefthook.yml, compose.yaml, ...).
    const under = (dir: string) => file.startsWith(dir + path.sep)
    if (!this.ctx.testFiles().some((test) => under(path.dirname(test))) && !this.allow.ignores(rel)) {
      throw refuse(`file snapshots are written only in the test file's folder or below it; allow it with sandbox({ allowWrite: ['${rel}'] })`)
    }
    if (!rel.split('/').includes('__snapshots__') && !this.allow.ignores(rel)) {
      if (!DATA_NAME.test(rel)) throw refuse(`outside __snapshots__ only data names (.txt, .json, .md, ...) are written; allow it with sandbox({ allowWrite: ['${rel}'] })`)
      // Tools read their configuration (lefthook.yml, compose.yaml, biome.json, ...) from a
      // project's root folder: a data file goes to a folder that is none.
      if (this.isProjectRoot(path.dirname(file))) {
        throw refuse(`outside __snapshots__, file snapshots are not written into a project's root folder (${this.rel(path.dirname(file)) || '.'}), where tools read their configuration; write it in a subfolder, or allow it with sandbox({ allowWrite: ['${rel}'] })`)
      }
    }
    await this.writeFile(file, content, refuse)
  }

  /** Written within the run's bound of snapshot files (a test can make any number of them). */
  private async writeFile(file: string, content: string, refuse: (why: string) => Error): Promise<void> {
    const over = this.ctx.written(Buffer.byteLength(content))
    if (over) throw refuse(over)
    await fsp.mkdir(path.dirname(file), { recursive: true })
    await fsp.writeFile(file, content, 'utf8')
  }

  /** The workspace root, or a folder with a manifest, a lockfile or a repository of its own. */
  private isProjectRoot(dir: string): boolean {
    return dir === this.ctx.workspace.root || ROOT_MARKERS.some((m) => fs.existsSync(path.join(dir, m)))
  }

  private async writeSnap(file: string, current: string | null, content: string, mode: UpdateMode, refuse: (why: string) => Error): Promise<void> {
    const next = parseSnapFile(content)
    if (!next) throw refuse('it is not a snapshot file as Vitest writes it')
    if (current !== null && mode === 'new') {
      const before = parseSnapFile(current)
      if (!before) throw refuse('the existing snapshot file is not one Vitest wrote, and only `vitest -u` may rewrite it')
      for (const [key, value] of before) {
        if (next.get(key) !== value) throw refuse(`it ${next.has(key) ? 'changes' : 'removes'} the existing snapshot \`${key}\`, which only \`vitest -u\` may do`)
      }
    }
    await this.writeFile(file, content, refuse)
  }

  private async remove(file: string): Promise<void> {
    if (!fs.existsSync(file)) return
    if (this.ctx.mode() !== 'all') throw new HostFileRefusal(`refused to remove ${this.rel(file)} from inside the sandbox: obsolete snapshot files are removed only with \`vitest -u\``)
    if (!this.ctx.snapFiles().has(file)) throw new HostFileRefusal(`refused to remove ${this.rel(file)} from inside the sandbox: only the running test file's own obsolete .snap file may be removed`)
    await fsp.rm(file, { force: true })
  }
}

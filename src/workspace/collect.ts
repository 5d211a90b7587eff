/**
 * What a sandbox is given of the host: the workspace root (the folder with the lockfile, else the
 * git root) and the files under it that git would track (.gitignore rules at every level and
 * .git/info/exclude), narrowed by the `workspace` include/exclude options. node_modules is never
 * part of it: dependencies come from the template.
 */
import fs from 'node:fs'
import path from 'node:path'
import fg from 'fast-glob'
import ignore, { type Ignore } from 'ignore'

const LOCKFILES = ['package-lock.json', 'npm-shrinkwrap.json', 'pnpm-lock.yaml', 'yarn.lock', 'bun.lock', 'bun.lockb']

/** Always left out of the upload: dependencies (template) and caches that would go stale. */
const ALWAYS_EXCLUDED = ['**/node_modules/**', '.git/**', '**/.vitest-cache/**', '**/.experimental-vitest-cache/**']

export interface WorkspaceOptions {
  /** Globs (relative to the workspace root) of files to send. @default ['**'] */
  include?: string[]
  /** Globs to leave out, on top of .gitignore rules. @default [] */
  exclude?: string[]
  /** Largest workspace to upload, in bytes. @default 512 MiB */
  maxBytes?: number
}

export interface WorkspaceFile {
  /** Relative to the root, with forward slashes. */
  path: string
  size: number
  mode: number
  mtimeMs: number
  /** Target of a symbolic link (sent as a link, never followed). */
  link?: string
}

export function findWorkspaceRoot(start: string): string {
  let gitRoot: string | undefined
  for (let dir = path.resolve(start); ; dir = path.dirname(dir)) {
    if (LOCKFILES.some((f) => fs.existsSync(path.join(dir, f)))) return dir
    if (!gitRoot && fs.existsSync(path.join(dir, '.git'))) gitRoot = dir
    if (path.dirname(dir) === dir) return gitRoot ?? path.resolve(start)
  }
}

export function lockfilesOf(root: string): string[] {
  return LOCKFILES.map((f) => path.join(root, f)).filter((f) => fs.existsSync(f))
}

/** A predicate for "git would ignore this path", honouring nested .gitignore files. */
export async function gitignoreMatcher(root: string): Promise<(rel: string) => boolean> {
  const files = await fg('**/.gitignore', { cwd: root, dot: true, ignore: ['**/node_modules/**', '.git/**'] })
  const rules = new Map<string, Ignore>()
  for (const f of files) rules.set(path.posix.dirname(f) === '.' ? '' : path.posix.dirname(f), ignore().add(fs.readFileSync(path.join(root, f), 'utf8')))
  const exclude = path.join(root, '.git/info/exclude')
  if (fs.existsSync(exclude)) {
    const top = rules.get('') ?? ignore()
    rules.set('', top.add(fs.readFileSync(exclude, 'utf8')))
  }
  return (rel) => {
    for (const [dir, ig] of rules) {
      if (dir && !rel.startsWith(`${dir}/`)) continue
      if (ig.ignores(dir ? rel.slice(dir.length + 1) : rel)) return true
    }
    return false
  }
}

/**
 * Regular files and symbolic links (kept as links, never followed: node_modules/.bin and
 * workspace packages are links) matching `patterns`, sorted by path.
 */
export async function listFiles(root: string, patterns: string[], ignorePatterns: string[]): Promise<WorkspaceFile[]> {
  // onlyFiles would drop symlinks (their dirent is not a file), so filter with lstat instead.
  const paths = await fg(patterns, { cwd: root, dot: true, onlyFiles: false, followSymbolicLinks: false, ignore: ignorePatterns })
  const files: WorkspaceFile[] = []
  for (const rel of paths) {
    const abs = path.join(root, rel)
    const st = fs.lstatSync(abs)
    if (st.isSymbolicLink()) files.push({ path: rel, size: 0, mode: 0o777, mtimeMs: st.mtimeMs, link: fs.readlinkSync(abs) })
    else if (st.isFile()) files.push({ path: rel, size: st.size, mode: st.mode & 0o7777, mtimeMs: st.mtimeMs })
  }
  return files.sort((a, b) => (a.path < b.path ? -1 : 1))
}

export class WorkspaceTooLargeError extends Error {}

export interface Workspace {
  root: string
  files: WorkspaceFile[]
  bytes: number
  /** Whether a path (relative to the root) is part of what the sandbox was given. */
  includes(rel: string): boolean
  /** An absolute host path relative to the root (with `/`), or undefined when it is outside. */
  relative(abs: string): string | undefined
}

export async function collectWorkspace(root: string, opts: WorkspaceOptions = {}): Promise<Workspace> {
  const ignored = await gitignoreMatcher(root)
  const exclude = [...ALWAYS_EXCLUDED, ...(opts.exclude ?? [])]
  const include = opts.include ?? ['**']
  const files = (await listFiles(root, include, exclude)).filter((f) => !ignored(f.path))
  const bytes = files.reduce((n, f) => n + f.size, 0)
  const max = opts.maxBytes ?? 512 * 1024 * 1024
  if (bytes > max) throw new WorkspaceTooLargeError(tooLargeMessage(root, files, bytes, max))
  const included = new Set(files.map((f) => f.path))
  const userExcluded = ignore().add(opts.exclude ?? [])
  const excluded = (rel: string) => ignored(rel) || userExcluded.ignores(rel) || rel.split('/').includes('node_modules') || rel.startsWith('.git/')
  return {
    root,
    files,
    bytes,
    // A file the run creates later (a new snapshot) counts as given when it is not ignored.
    includes: (rel) => included.has(rel) || (!rel.startsWith('../') && !path.isAbsolute(rel) && !excluded(rel)),
    relative: (abs) => {
      const rel = path.relative(root, path.resolve(abs))
      return rel.startsWith('..') || path.isAbsolute(rel) ? undefined : rel.split(path.sep).join('/')
    },
  }
}

function mib(n: number): string {
  return n < 1024 * 1024 ? `${(n / 1024).toFixed(1)} KiB` : `${(n / 1024 / 1024).toFixed(1)} MiB`
}

function tooLargeMessage(root: string, files: WorkspaceFile[], bytes: number, max: number): string {
  const byDir = new Map<string, number>()
  for (const f of files) {
    const top = f.path.split('/').slice(0, 2).join('/')
    const dir = top.includes('/') ? top.slice(0, top.lastIndexOf('/')) : '.'
    byDir.set(dir, (byDir.get(dir) ?? 0) + f.size)
  }
  const biggest = [...byDir].sort((a, b) => b[1] - a[1]).slice(0, 5).map(([d, n]) => `  ${d === '.' ? '(files at the root)' : `${d}/`}  ${mib(n)}`)
  return [
    `sandbox: the workspace ${root} is ${mib(bytes)}, over the limit of ${mib(max)} (workspace.maxBytes).`,
    'Biggest folders:',
    ...biggest,
    "Fix: add what tests don't need to .gitignore or to sandbox({ workspace: { exclude: ['...'] } }), or raise workspace.maxBytes.",
  ].join('\n')
}

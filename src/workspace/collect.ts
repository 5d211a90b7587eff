/**
 * What a sandbox is given of the host: the workspace root (the folder with the lockfile, else the
 * git root) and the files under it that `given.ts` lets through. Directories that can never be
 * given are not walked.
 */
import fs from 'node:fs'
import path from 'node:path'
import fg from 'fast-glob'
import { givenPredicate, NEVER, type GivenOptions, type Refusal } from './given.js'

const LOCKFILES = ['package-lock.json', 'npm-shrinkwrap.json', 'pnpm-lock.yaml', 'yarn.lock', 'bun.lock', 'bun.lockb']

export interface WorkspaceOptions {
  /**
   * gitignore-style patterns (relative to the workspace root) to send although they are left out
   * by default: secrets such as `.env`, caches, or gitignored files with `gitignore: true`.
   * @default []
   */
  include?: string[]
  /** gitignore-style patterns to leave out; they win over `include`. @default [] */
  exclude?: string[]
  /**
   * Send only what git would track (honours every .gitignore and .git/info/exclude), for
   * repositories with large ignored data. By default gitignored build outputs are sent.
   * @default false
   */
  gitignore?: boolean
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

/**
 * Regular files and symbolic links (kept as links, never followed: node_modules/.bin and
 * workspace packages are links) matching `patterns`, sorted by path.
 */
export async function listFiles(root: string, patterns: string[], ignorePatterns: string[], keep: (rel: string) => boolean = () => true): Promise<WorkspaceFile[]> {
  // onlyFiles would drop symlinks (their dirent is not a file), so filter with lstat instead.
  const paths = await fg(patterns, { cwd: root, dot: true, onlyFiles: false, followSymbolicLinks: false, ignore: ignorePatterns, suppressErrors: true })
  const files: WorkspaceFile[] = []
  for (const rel of paths) {
    if (!keep(rel)) continue
    let st: fs.Stats
    try {
      st = fs.lstatSync(path.join(root, rel))
    } catch {
      continue // gone since it was listed
    }
    if (st.isSymbolicLink()) {
      try {
        files.push({ path: rel, size: 0, mode: 0o777, mtimeMs: st.mtimeMs, link: fs.readlinkSync(path.join(root, rel)) })
      } catch {
        // gone since it was listed
      }
    } else if (st.isFile()) files.push({ path: rel, size: st.size, mode: st.mode & 0o7777, mtimeMs: st.mtimeMs })
  }
  return files.sort((a, b) => (a.path < b.path ? -1 : 1))
}

export class WorkspaceTooLargeError extends Error {}

export interface Workspace {
  root: string
  files: WorkspaceFile[]
  bytes: number
  /** Files left out as secrets (relative paths), to tell the user how to send them. */
  secrets: string[]
  /** An absolute host path relative to the root (with `/`), or undefined when it is outside. */
  relative(abs: string): string | undefined
  /** Why an absolute host path is not given to the sandbox; undefined when it is. */
  whyNot(abs: string): Refusal | undefined
  /** The one predicate: is this absolute host path given to the sandbox (now or when created)? */
  isGiven(abs: string): boolean
}

export async function collectWorkspace(root: string, opts: WorkspaceOptions & Pick<GivenOptions, 'outputs'> = {}): Promise<Workspace> {
  const given = await givenPredicate(root, opts)
  const secrets: string[] = []
  const files = await listFiles(root, ['**'], NEVER.map((n) => `**/${n}/**`), (rel) => {
    const why = given.whyNot(rel)
    if (why === 'secret') secrets.push(rel)
    return why === undefined
  })
  const bytes = files.reduce((n, f) => n + f.size, 0)
  const max = opts.maxBytes ?? 512 * 1024 * 1024
  if (bytes > max) throw new WorkspaceTooLargeError(tooLargeMessage(root, files, bytes, max))
  const relative = (abs: string) => {
    const rel = path.relative(root, path.resolve(abs))
    return rel.startsWith('..') || path.isAbsolute(rel) ? undefined : rel.split(path.sep).join('/')
  }
  const byPath = (abs: string) => {
    const rel = relative(abs)
    return rel === undefined ? 'outside' : given.whyNot(rel)
  }
  // A link inside the workspace may point anywhere: what it leads to must be given too.
  const whyNot = (abs: string) => {
    const direct = byPath(abs)
    if (direct !== undefined) return direct
    const real = realPath(abs)
    return real === path.resolve(abs) ? undefined : byPath(real)
  }
  return { root, files, bytes, secrets: secrets.sort(), relative, whyNot, isGiven: (abs) => whyNot(abs) === undefined }
}

/**
 * The real path of `abs`, or of its nearest existing ancestor joined with the rest (for files not
 * made yet). A link to nothing leads where its target would be, as a link to something does (else
 * which of the two a path was under told whether the target exists); a relative target is read
 * from the link's real folder. One walk down the path, at most 40 links followed (a loop of links
 * under a path of thousands of folders cost the host seconds a call when each folder was resolved).
 * A path of more than 256 folders leads nowhere given (`/`): no project nests so deep, and the
 * kernel's work for each folder of one grows with its depth.
 */
export function realPath(abs: string): string {
  const whole = path.resolve(abs)
  if (whole.split('/').length > MAX_DEPTH) return '/'
  try {
    return fs.realpathSync(whole)
  } catch {
    // Something on the way is missing, or a loop: walked below.
  }
  const todo = whole.split('/').filter(Boolean)
  let at = '/'
  let links = 0
  while (todo.length > 0) {
    const name = todo.shift()!
    if (name === '..') {
      at = path.dirname(at)
      continue
    }
    if (name === '.') continue
    const next = path.join(at, name)
    let target: string
    try {
      if (links === MAX_LINKS) throw new Error('not followed')
      target = fs.readlinkSync(next)
    } catch (error) {
      // Nothing below a missing entry or a file exists: the rest is as written.
      const code = (error as { code?: unknown }).code
      if (code === 'ENOENT' || code === 'ENOTDIR') return path.join(next, ...todo)
      at = next // a folder or file that is no link (or one past the limit)
      continue
    }
    links++
    todo.unshift(...target.split('/').filter(Boolean))
    if (path.isAbsolute(target)) at = '/'
  }
  return at
}

/** Links followed through one path, as the kernel follows (ELOOP past it). */
const MAX_LINKS = 40
/** Folders in a path the workspace's rules follow. */
const MAX_DEPTH = 256

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
  const biggest = [...byDir].sort((a, b) => b[1] - a[1]).slice(0, 5)
  const folder = biggest.find(([d]) => d !== '.')?.[0]
  return [
    `sandbox: the workspace ${root} is ${mib(bytes)}, over the limit of ${mib(max)} (workspace.maxBytes).`,
    'Biggest folders:',
    ...biggest.map(([d, n]) => `  ${d === '.' ? '(files at the root)' : `${d}/`}  ${mib(n)}`),
    `Fix: leave out what tests don't need with sandbox({ workspace: { exclude: ['${folder ?? 'data'}/'] } }), send only git-tracked files with workspace: { gitignore: true }, or raise workspace.maxBytes.`,
  ].join('\n')
}

/**
 * The top-level node_modules folders under `root` (the root's own and each workspace package's),
 * as absolute paths: not inside another node_modules, not reached through a symbolic link.
 */
export function nodeModulesFolders(root: string): string[] {
  const found: string[] = []
  const walk = (dir: string) => {
    let entries: fs.Dirent[]
    try {
      entries = fs.readdirSync(dir, { withFileTypes: true })
    } catch {
      return
    }
    for (const e of entries) {
      if (!e.isDirectory()) continue
      const abs = path.join(dir, e.name)
      if (e.name === 'node_modules') found.push(abs)
      else if (!NEVER.includes(e.name)) walk(abs)
    }
  }
  walk(root)
  return found.sort()
}

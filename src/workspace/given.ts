/**
 * The one answer to "is this host path given to the sandbox?", used for packing, watch-mode sync,
 * module code served to the sandbox and every host-side file service.
 *
 * Given: everything under the workspace root that the tests would see on the host (build outputs
 * and generated files too, gitignored or not), except
 *   - never: dependencies (`node_modules`, they come from the template) and version control data;
 *   - by default: Vitest's and Vite's caches, this run's own outputs, and secrets (SECRETS below);
 *   - what `workspace.exclude` names, and with `workspace.gitignore: true` what git ignores.
 * `workspace.include` adds back what the defaults or .gitignore left out (never node_modules or
 * .git); `workspace.exclude` wins over it.
 */
import fs from 'node:fs'
import path from 'node:path'
import fg from 'fast-glob'
import ignore, { type Ignore } from 'ignore'

/** Never sent: dependencies come from the template, version control data is not the tests'. */
export const NEVER = ['node_modules', '.git', '.hg', '.svn', '.jj']

/** Vitest's and Vite's own caches: stale copies in a sandbox would be read instead of fresh code. */
export const CACHES = ['.vitest-cache/', '.experimental-vitest-cache/', '.vite/']

/**
 * Secrets, left out unless `workspace.include` names them (gitignore-style patterns, matched at
 * any depth): environment files (example/sample/template/dist variants are sent), package
 * manager and tool credentials, private keys and keystores, cloud and SSH configuration.
 */
export const SECRETS = [
  '.env',
  '.env.*',
  '!.env.example',
  '!.env.*.example',
  '!.env.sample',
  '!.env.*.sample',
  '!.env.template',
  '!.env.*.template',
  '!.env.dist',
  '!.env.*.dist',
  '.envrc',
  '.npmrc',
  '.yarnrc',
  '.yarnrc.yml',
  '.pypirc',
  '.netrc',
  '.git-credentials',
  '.htpasswd',
  '*.pem',
  '*.key',
  '*.p12',
  '*.pfx',
  '*.jks',
  '*.keystore',
  '*.kdbx',
  '*.tfvars',
  '*.tfstate',
  'id_rsa*',
  'id_dsa*',
  'id_ecdsa*',
  'id_ed25519*',
  '.ssh/',
  '.aws/',
  '.gnupg/',
  '.kube/',
  '.docker/config.json',
]

export interface GivenOptions {
  /** gitignore-style patterns added back (secrets, caches, gitignored files). */
  include?: string[]
  /** gitignore-style patterns left out; wins over `include`. */
  exclude?: string[]
  /** Only what git would track (.gitignore files and .git/info/exclude are honoured). */
  gitignore?: boolean
  /** Absolute paths of this run's outputs (coverage folder, --outputFile targets, attachments). */
  outputs?: string[]
}

/** Why a path is not given; undefined when it is. */
export type Refusal = 'outside' | 'never' | 'secret' | 'cache' | 'output' | 'excluded' | 'gitignored'

export interface GivenPredicate {
  /** Why a path relative to the root (with `/`) is not given, or undefined when it is. */
  whyNot(rel: string): Refusal | undefined
}

/** A matcher with gitignore semantics (a pattern without a slash matches at any depth). */
function matcher(patterns: string[]): Ignore {
  return ignore({ allowRelativePaths: true }).add(patterns)
}

export async function givenPredicate(root: string, opts: GivenOptions = {}): Promise<GivenPredicate> {
  const secrets = matcher(SECRETS)
  const caches = matcher(CACHES)
  const include = matcher(opts.include ?? [])
  const exclude = matcher(opts.exclude ?? [])
  const gitignored = opts.gitignore ? await gitignoreMatcher(root) : () => false
  const outputs = (opts.outputs ?? [])
    .map((o) => path.relative(root, path.resolve(root, o)).split(path.sep).join('/'))
    .filter((rel) => rel && !rel.startsWith('..') && !path.isAbsolute(rel))
  const isOutput = (rel: string) => outputs.some((o) => rel === o || rel.startsWith(`${o}/`))
  return {
    whyNot(rel) {
      if (!rel || rel === '.' || rel.startsWith('../') || rel === '..' || path.isAbsolute(rel)) return 'outside'
      const parts = rel.split('/')
      if (parts.some((p) => NEVER.includes(p))) return 'never'
      if (exclude.ignores(rel)) return 'excluded'
      if (include.ignores(rel)) return undefined
      if (isOutput(rel)) return 'output'
      if (caches.ignores(rel)) return 'cache'
      if (secrets.ignores(rel)) return 'secret'
      if (gitignored(rel)) return 'gitignored'
      return undefined
    },
  }
}

/** A predicate for "git would ignore this path", honouring nested .gitignore files. */
export async function gitignoreMatcher(root: string): Promise<(rel: string) => boolean> {
  const files = await fg('**/.gitignore', { cwd: root, dot: true, ignore: NEVER.map((n) => `**/${n}/**`) })
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

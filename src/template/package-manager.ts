/**
 * The workspace's package manager, from its lockfile and `packageManager` field, and the frozen
 * install that reproduces the lockfile inside a sandbox. npm ships with Node; the others are run
 * through `npm exec` at the version the project pins (or the one its lockfile format implies),
 * so a sandbox image needs nothing but Node.
 */
import fs from 'node:fs'
import path from 'node:path'
import { singleQuoted } from '../providers/exec.js'

export type PackageManagerName = 'npm' | 'pnpm' | 'yarn' | 'bun'

export interface PackageManager {
  name: PackageManagerName
  /** The version `packageManager` pins, else what the lockfile format implies. */
  version: string
  /** The lockfile it reads (relative to the root). */
  lockfile: string
  /** The shell command of the frozen install, run at the workspace root. */
  install: string
}

const LOCKFILES: Array<[string, PackageManagerName]> = [
  ['package-lock.json', 'npm'],
  ['npm-shrinkwrap.json', 'npm'],
  ['pnpm-lock.yaml', 'pnpm'],
  ['yarn.lock', 'yarn'],
  ['bun.lock', 'bun'],
  ['bun.lockb', 'bun'],
]

export class PackageManagerError extends Error {}

/** `packageManager: "pnpm@9.15.0+sha512..."` → ['pnpm', '9.15.0']. */
function pinned(root: string): [string, string] | undefined {
  try {
    const field = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8')).packageManager
    const m = typeof field === 'string' ? /^(npm|pnpm|yarn|bun)@([^+\s]+)/.exec(field) : null
    return m ? [m[1], m[2]] : undefined
  } catch {
    return undefined
  }
}

/** The major a pnpm lockfile format was written by (9.0 is also pnpm 10's: 9 keeps dependency scripts on). */
function pnpmForLockfile(text: string): string {
  const v = Number(/^lockfileVersion:\s*'?([\d.]+)/m.exec(text)?.[1])
  if (v >= 9) return '9'
  if (v >= 6) return '8'
  return '7'
}

/** `npm exec` the package manager at `version` (npm's own cache is staged by the caller). */
const viaNpm = (pkg: string, bin: string, args: string) => `npm exec --yes --package=${singleQuoted(pkg)} -- ${bin} ${args}`

export function detectPackageManager(root: string): PackageManager | undefined {
  const present = LOCKFILES.filter(([f]) => fs.existsSync(path.join(root, f)))
  if (!present.length) return undefined
  const pin = pinned(root)
  const chosen = present.find(([, name]) => name === pin?.[0]) ?? present[0]
  const [lockfile, name] = chosen
  const version = pin?.[0] === name ? pin[1] : undefined
  const text = () => fs.readFileSync(path.join(root, lockfile), 'utf8')
  switch (name) {
    case 'npm':
      return { name, lockfile, version: version ?? 'bundled', install: version ? `${viaNpm(`npm@${version}`, 'npm', 'ci')}` : 'npm ci' }
    case 'pnpm': {
      const v = version ?? pnpmForLockfile(text())
      return { name, lockfile, version: v, install: viaNpm(`pnpm@${v}`, 'pnpm', 'install --frozen-lockfile') }
    }
    case 'yarn': {
      // Yarn 2+ writes a __metadata block; 1.x (classic) does not, and has its own frozen flag.
      const berry = version ? Number(version.split('.')[0]) >= 2 : /^__metadata:/m.test(text())
      if (!berry) return { name, lockfile, version: version ?? '1', install: viaNpm(`yarn@${version ?? '1'}`, 'yarn', 'install --frozen-lockfile') }
      const yarnPath = /^yarnPath:\s*["']?([^"'\n]+)/m.exec(readOr(path.join(root, '.yarnrc.yml')))?.[1]
      if (yarnPath) return { name, lockfile, version: version ?? 'yarnPath', install: `node ${singleQuoted(yarnPath.trim())} install --immutable` }
      return { name, lockfile, version: version ?? '4', install: viaNpm(`@yarnpkg/cli-dist@${version ?? '4'}`, 'yarn', 'install --immutable') }
    }
    case 'bun':
      return { name, lockfile, version: version ?? 'latest', install: viaNpm(`bun@${version ?? 'latest'}`, 'bun', 'install --frozen-lockfile') }
  }
}

function readOr(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8')
  } catch {
    return ''
  }
}

/**
 * Files a package manager reads for its own configuration, which the workspace never sends to
 * test sandboxes (they may hold registry tokens): the install step gets them, the template does
 * not keep them.
 */
export const INSTALL_CONFIG = ['.npmrc', '.yarnrc', '.yarnrc.yml']

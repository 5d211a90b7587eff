/**
 * What the local engine needs from the host, found once: bubblewrap and its version, the helper
 * programs from util-linux, the uid the sandboxes run as, and where Node lives. Every missing
 * piece becomes an error that names the fix (the same text `vitest-sandbox doctor` prints).
 */
import { execFileSync } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'

export interface HostInfo {
  bwrap: string
  bwrapVersion: string
  /** bubblewrap >= 0.9 has `--overlay`; the engine mounts overlayfs itself either way. */
  bwrapHasOverlay: boolean
  unshare: string
  prlimit: string
  /** Present when the engine runs as root: sandboxes then drop to this uid/gid first. */
  setpriv?: string
  /** Host uid and gid that own sandbox files and run sandbox processes. */
  uid: number
  gid: number
  /** Host directory holding the running Node (its `bin/node`), bound read-only into sandboxes. */
  nodePrefix: string
  /** An execute-only copy of that Node, bound over it in sandboxes (exec-only.ts). */
  sandboxNode?: string
}

/** The unprivileged host identity sandboxes use when the engine runs as root (`nobody`). */
export const ROOT_DROP_ID = 65534

export class HostSetupError extends Error {
  constructor(message: string, readonly fix: string) {
    super(`${message}\n  fix: ${fix}`)
    this.name = 'HostSetupError'
  }
}

export function which(cmd: string): string | undefined {
  for (const dir of (process.env.PATH || '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin').split(':')) {
    const file = path.join(dir || '.', cmd)
    try {
      fs.accessSync(file, fs.constants.X_OK)
      if (fs.statSync(file).isFile()) return file
    } catch {
      // Not here.
    }
  }
  return undefined
}

export function parseVersion(text: string): [number, number, number] {
  const m = /(\d+)\.(\d+)(?:\.(\d+))?/.exec(text)
  return m ? [Number(m[1]), Number(m[2]), Number(m[3] ?? 0)] : [0, 0, 0]
}

export function versionAtLeast(v: [number, number, number], min: [number, number, number]): boolean {
  for (let i = 0; i < 3; i++) if (v[i] !== min[i]) return v[i] > min[i]
  return true
}

/** The command that installs bubblewrap on this distribution. */
export function installHint(): string {
  let id = ''
  try {
    const osr = fs.readFileSync('/etc/os-release', 'utf8')
    id = `${/^ID=(.*)$/m.exec(osr)?.[1] ?? ''} ${/^ID_LIKE=(.*)$/m.exec(osr)?.[1] ?? ''}`.replace(/"/g, '')
  } catch {
    // Unknown distribution.
  }
  const sudo = process.getuid?.() === 0 ? '' : 'sudo '
  if (/debian|ubuntu/.test(id)) return `${sudo}apt-get update && ${sudo}apt-get install -y bubblewrap`
  if (/fedora|rhel|centos/.test(id)) return `${sudo}dnf install -y bubblewrap`
  if (/arch/.test(id)) return `${sudo}pacman -S --noconfirm bubblewrap`
  if (/alpine/.test(id)) return `${sudo}apk add bubblewrap`
  if (/suse/.test(id)) return `${sudo}zypper install -y bubblewrap`
  return 'install bubblewrap (package "bubblewrap") with your package manager'
}

export const MIN_BWRAP: [number, number, number] = [0, 8, 0]

export function detectHost(): HostInfo {
  if (process.platform !== 'linux') {
    throw new HostSetupError(
      `the local sandbox engine needs Linux (this is ${process.platform})`,
      'run `vitest-sandbox serve` on a Linux machine and point watasu({ apiUrl }) at it, or use a remote provider: watasu() or opensandbox()',
    )
  }
  const bwrap = which('bwrap')
  if (!bwrap) throw new HostSetupError('bubblewrap (bwrap) is not installed', installHint())
  let versionText = ''
  try {
    versionText = execFileSync(bwrap, ['--version'], { encoding: 'utf8' })
  } catch (err) {
    throw new HostSetupError(`${bwrap} --version failed: ${(err as Error).message}`, installHint())
  }
  const version = parseVersion(versionText)
  if (!versionAtLeast(version, MIN_BWRAP)) {
    throw new HostSetupError(`bubblewrap ${version.join('.')} is too old (need >= ${MIN_BWRAP.join('.')} for --disable-userns)`, installHint())
  }
  const tools: Record<string, string | undefined> = { unshare: which('unshare'), prlimit: which('prlimit') }
  const isRoot = process.getuid?.() === 0
  if (isRoot) tools.setpriv = which('setpriv')
  for (const [name, file] of Object.entries(tools)) {
    if (!file) throw new HostSetupError(`${name} (util-linux) is not installed`, installHint().replace('bubblewrap', 'util-linux'))
  }
  const nodePrefix = path.dirname(path.dirname(process.execPath))
  return {
    bwrap,
    bwrapVersion: version.join('.'),
    bwrapHasOverlay: versionAtLeast(version, [0, 9, 0]),
    unshare: tools.unshare!,
    prlimit: tools.prlimit!,
    setpriv: tools.setpriv,
    uid: isRoot ? ROOT_DROP_ID : process.getuid!(),
    gid: isRoot ? ROOT_DROP_ID : process.getgid!(),
    nodePrefix,
  }
}

/**
 * `vitest-sandbox doctor [--fix]`: checks everything the local engine needs and prints, for each
 * problem, the exact command that fixes it. With `--fix` it runs the fixes it safely can (installing
 * bubblewrap as root, lifting Ubuntu's AppArmor user-namespace restriction) and checks again.
 */
import { spawnSync } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { Engine, type LimitsReport } from '../engine/engine.js'
import { formatSize } from '../engine/limits.js'
import { detectHost, installHint, parseVersion, ROOT_DROP_ID, which } from '../engine/host.js'
import { keyVariable, PROVIDER_ENV, type RemoteProviderName } from '../providers/credentials.js'
import { isRemoteProvider, REMOTE_PROVIDERS } from '../providers/index.js'
import { virtualizationProblem } from '../providers/microsandbox.js'
import { POOL_LABEL } from '../providers/types.js'
import { DEFAULT_PATH } from '../engine/policy.js'

export interface Check {
  name: string
  ok: boolean
  /** Informational lines that are neither pass nor fail. */
  info?: boolean
  detail: string
  fix?: string
  /** A command `--fix` may run by itself (root only). */
  autoFix?: string[]
}

function read(file: string): string | undefined {
  try {
    return fs.readFileSync(file, 'utf8').trim()
  } catch {
    return undefined
  }
}

function asSandboxUser(args: string[]): string[] {
  const setpriv = which('setpriv')
  return process.getuid?.() === 0 && setpriv ? [setpriv, `--reuid=${ROOT_DROP_ID}`, `--regid=${ROOT_DROP_ID}`, '--clear-groups', '--', ...args] : args
}

function runQuiet(args: string[], cwd?: string): { ok: boolean; output: string } {
  const r = spawnSync(args[0], args.slice(1), { encoding: 'utf8', cwd, timeout: 15_000, env: { PATH: DEFAULT_PATH } })
  return { ok: r.status === 0, output: `${r.stdout ?? ''}${r.stderr ?? ''}${r.error ? r.error.message : ''}`.trim() }
}

function osRelease(): { id: string; version: string } {
  const text = read('/etc/os-release') ?? ''
  return { id: (/^ID=(.*)$/m.exec(text)?.[1] ?? '').replace(/"/g, ''), version: (/^VERSION_ID=(.*)$/m.exec(text)?.[1] ?? '').replace(/"/g, '') }
}

export async function runChecks(): Promise<Check[]> {
  const checks: Check[] = []
  const isRoot = process.getuid?.() === 0
  const sudo = isRoot ? '' : 'sudo '

  if (process.platform !== 'linux') {
    // Not a problem on its own: remote providers work from any host.
    checks.push({ name: 'platform', ok: true, info: true, detail: `${process.platform}: local() and \`serve\` need Linux; use watasu() or opensandbox(), or run \`vitest-sandbox serve\` on a Linux machine and point watasu({ apiUrl }) at it` })
    return finish(checks)
  }
  checks.push({ name: 'platform', ok: true, detail: `Linux ${os.release()} (${os.arch()}), Node ${process.version}` })

  const bwrap = which('bwrap')
  if (!bwrap) {
    checks.push({ name: 'bubblewrap', ok: false, detail: 'bwrap is not installed', fix: installHint(), autoFix: isRoot ? ['sh', '-c', installHint()] : undefined })
  } else {
    const version = parseVersion(runQuiet([bwrap, '--version']).output)
    const suid = (fs.statSync(bwrap).mode & 0o4000) !== 0
    checks.push({
      name: 'bubblewrap',
      ok: version[0] > 0 || version[1] >= 8,
      detail: `${bwrap} ${version.join('.')}${suid ? ' (setuid)' : ''}`,
      fix: version[0] === 0 && version[1] < 8 ? `bubblewrap ${version.join('.')} lacks --disable-userns; upgrade it: ${installHint()}` : undefined,
    })
    checks.push({
      name: 'overlay flags',
      ok: true,
      info: true,
      detail: version[0] > 0 || version[1] >= 9
        ? 'bubblewrap has --overlay; the engine mounts overlayfs itself in either case'
        : 'bubblewrap < 0.9 has no --overlay flags; the engine mounts overlayfs itself (unshare + mount), so templates are still never copied',
    })
  }

  for (const tool of ['unshare', 'prlimit', ...(isRoot ? ['setpriv'] : [])]) {
    if (!which(tool)) checks.push({ name: tool, ok: false, detail: `${tool} (util-linux) is not installed`, fix: installHint().replace('bubblewrap', 'util-linux') })
  }

  const maxNs = read('/proc/sys/user/max_user_namespaces')
  const legacy = read('/proc/sys/kernel/unprivileged_userns_clone')
  const apparmor = read('/proc/sys/kernel/apparmor_restrict_unprivileged_userns')
  const { id, version } = osRelease()
  if (maxNs === '0') {
    checks.push({ name: 'user namespaces', ok: false, detail: 'user.max_user_namespaces is 0', fix: `${sudo}sysctl -w user.max_user_namespaces=15000`, autoFix: isRoot ? ['sysctl', '-w', 'user.max_user_namespaces=15000'] : undefined })
  } else if (legacy === '0') {
    checks.push({ name: 'user namespaces', ok: false, detail: 'kernel.unprivileged_userns_clone is 0', fix: `${sudo}sysctl -w kernel.unprivileged_userns_clone=1`, autoFix: isRoot ? ['sysctl', '-w', 'kernel.unprivileged_userns_clone=1'] : undefined })
  }
  if (apparmor === '1') {
    checks.push({
      name: 'AppArmor',
      ok: false,
      detail: `kernel.apparmor_restrict_unprivileged_userns=1${id === 'ubuntu' ? ` (Ubuntu ${version})` : ''}: unprivileged user namespaces get no capabilities, so bwrap fails with "setting up uid map: Permission denied"`,
      fix: `${sudo}sysctl -w kernel.apparmor_restrict_unprivileged_userns=0   (persist: echo kernel.apparmor_restrict_unprivileged_userns=0 | ${sudo}tee /etc/sysctl.d/60-vitest-sandbox.conf), or allow just bwrap and unshare with AppArmor profiles "profile bwrap /usr/bin/bwrap flags=(unconfined) { userns, }" and "profile unshare /usr/bin/unshare flags=(unconfined) { userns, }" in /etc/apparmor.d/, then ${sudo}apparmor_parser -r /etc/apparmor.d/bwrap /etc/apparmor.d/unshare`,
      autoFix: isRoot ? ['sysctl', '-w', 'kernel.apparmor_restrict_unprivileged_userns=0'] : undefined,
    })
  }

  const unshare = which('unshare')
  if (!unshare) return finish(checks)
  const userns = runQuiet(asSandboxUser([unshare, '--user', '--map-root-user', process.execPath, '-e', '0']))
  if (!userns.ok) {
    const inContainer = fs.existsSync('/.dockerenv') || /docker|kubepods|containerd/.test(read('/proc/1/cgroup') ?? '')
    checks.push({
      name: 'user namespaces',
      ok: false,
      detail: `cannot create an unprivileged user namespace: ${userns.output || 'unshare failed'}`,
      fix: inContainer
        ? 'this is a container that forbids namespaces: run it with --security-opt seccomp=unconfined --security-opt apparmor=unconfined (Docker), or use a cloud provider'
        : `${sudo}sysctl -w user.max_user_namespaces=15000`,
    })
  } else {
    checks.push({ name: 'user namespaces', ok: true, detail: 'unprivileged user namespaces work' })
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vitest-sandbox-doctor-'))
    try {
      for (const d of ['lower', 'upper', 'work', 'merged']) fs.mkdirSync(path.join(dir, d))
      if (isRoot) for (const d of ['', 'lower', 'upper', 'work', 'merged']) fs.chownSync(path.join(dir, d), ROOT_DROP_ID, ROOT_DROP_ID)
      fs.chmodSync(dir, 0o755)
      const overlay = runQuiet(asSandboxUser([unshare, '--user', '--map-root-user', '--mount', '/bin/sh', '-c', `mount -t overlay overlay -o lowerdir=${dir}/lower,upperdir=${dir}/upper,workdir=${dir}/work,userxattr ${dir}/merged`]))
      checks.push(overlay.ok
        ? { name: 'overlayfs', ok: true, detail: 'overlayfs mounts inside a user namespace (templates are shared, never copied)' }
        : { name: 'overlayfs', ok: false, detail: `overlayfs cannot be mounted in a user namespace: ${overlay.output}`, fix: 'use a kernel >= 5.11 (unprivileged overlayfs with userxattr)' })
    } finally {
      fs.rmSync(dir, { recursive: true, force: true })
    }
  }

  if (checks.every((c) => c.ok)) {
    try {
      detectHost()
      const engine = await Engine.start({ stateDir: fs.mkdtempSync(path.join(os.tmpdir(), 'vitest-sandbox-doctor-')) })
      try {
        const sandbox = await engine.createSandbox({ timeoutSec: 60 })
        const proc = await sandbox.spawn({ cmd: 'node', args: ['-e', 'process.stdout.write(process.version)'], env: {}, stdin: false })
        const exit = await new Promise<{ exitCode: number }>((r) => (proc.exit ? r(proc.exit) : proc.once('exit', r)))
        const out = proc.eventsSince(0).map((e) => e.data.toString()).join('')
        checks.push(exit.exitCode === 0 && out === process.version
          ? { name: 'sandbox', ok: true, detail: `started a sandbox and ran node ${out} in it` }
          : { name: 'sandbox', ok: false, detail: `node in a sandbox exited ${exit.exitCode} with "${out}"`, fix: 'run with DEBUG=vitest-pool-sandbox:* for the bubblewrap command line and its errors' })
        checks.push(...limitChecks(engine.limitsReport()))
      } finally {
        const dir = engine.layers.root
        await engine.close()
        fs.rmSync(dir, { recursive: true, force: true })
      }
    } catch (err) {
      checks.push({ name: 'sandbox', ok: false, detail: (err as Error).message.split('\n')[0], fix: (err as { fix?: string }).fix ?? 'run with DEBUG=vitest-pool-sandbox:* for the bubblewrap command line and its errors' })
    }
  }

  return finish(checks)
}

/** One line per sandbox limit: its default here and what enforces it, or why nothing does. */
function limitChecks(report: LimitsReport): Check[] {
  const show = (limit: keyof LimitsReport['limits']) => (limit === 'memory' || limit === 'disk' ? formatSize(report.limits[limit]) : String(report.limits[limit]))
  return [
    ...report.enforced.map(({ limit, by }): Check => ({ name: `limit: ${limit}`, ok: true, detail: `${show(limit)} per sandbox by default, enforced by ${by}` })),
    // Sandboxes still run: a missing limit is a warning, and an error only where a user sets it.
    ...report.unenforced.map(({ limit, reason, fix }): Check => ({ name: `limit: ${limit}`, ok: true, info: true, detail: `not enforced: ${reason}; setting limits.${limit} is refused here. Fix: ${fix}` })),
  ]
}

/**
 * Each remote provider closes the report: not configured (a line saying which variable would
 * configure it), or configured and then actually asked (reachable, key accepted).
 */
async function finish(checks: Check[]): Promise<Check[]> {
  for (const provider of Object.keys(PROVIDER_ENV) as RemoteProviderName[]) {
    const set = keyVariable(provider)
    if (!set) {
      checks.push({ name: provider, ok: true, info: true, detail: `${PROVIDER_ENV[provider][0]} not set (needed only for ${provider}())` })
      continue
    }
    checks.push(await probe(provider, set))
  }
  checks.push(microsandboxCheck(false))
  return checks
}

/** The microsandbox package above `dir`, if the project has it. */
function hasMicrosandbox(dir = process.cwd()): boolean {
  for (let d = path.resolve(dir); ; d = path.dirname(d)) {
    if (fs.existsSync(path.join(d, 'node_modules', 'microsandbox', 'package.json'))) return true
    if (path.dirname(d) === d) return false
  }
}

/**
 * microsandbox(): whether this machine can boot its microVMs. A problem fails `doctor --provider
 * microsandbox`; otherwise it is a note (with the fix), since a project may have the package
 * without running on this machine.
 */
function microsandboxCheck(asked: boolean): Check {
  if (!asked && !hasMicrosandbox()) return { name: 'microsandbox', ok: true, info: true, detail: 'the microsandbox package is not installed (needed only for microsandbox())' }
  const problem = virtualizationProblem()
  if (!problem) return { name: 'microsandbox', ok: true, detail: 'hardware virtualization and /dev/kvm are there for its microVMs' }
  const [detail, fix] = problem.split('. Fix: ')
  return asked ? { name: 'microsandbox', ok: false, detail, fix } : { name: 'microsandbox', ok: true, info: true, detail: `microsandbox() cannot run here: ${detail}${fix ? `; fix: ${fix}` : ''}` }
}

async function probe(provider: RemoteProviderName, variable: string): Promise<Check> {
  try {
    const session = await REMOTE_PROVIDERS[provider]().connect()
    try {
      const alive = await session.listSandboxes({ [POOL_LABEL]: 'pool' })
      return { name: provider, ok: true, detail: `reachable with ${variable}; ${alive.length} pool sandbox${alive.length === 1 ? '' : 'es'} alive` }
    } finally {
      await session.close()
    }
  } catch (err) {
    const e = err as { status?: number; message: string }
    const fix = e.status === 401 || e.status === 403 ? `the provider refused ${variable}: check its value` : `check the provider's URL settings and that it is reachable from here`
    return { name: provider, ok: false, detail: e.message.split('\n')[0], fix }
  }
}

/** Only the given remote provider: reachable, key accepted (for CI jobs that never use local()). */
async function providerChecks(provider: string): Promise<Check[]> {
  if (provider === 'microsandbox') return [microsandboxCheck(true)]
  if (!isRemoteProvider(provider)) throw new Error(`doctor: unknown --provider '${provider}'; the remote providers are ${Object.keys(PROVIDER_ENV).join(', ')}`)
  const vars = PROVIDER_ENV[provider]
  const set = keyVariable(provider)
  return [set ? await probe(provider, set) : { name: provider, ok: false, detail: `${vars.join(' or ')} is not set`, fix: `set ${vars[0]} to your ${provider} API key` }]
}

export async function doctor(opts: { fix: boolean; provider?: string; log: (line: string) => void }): Promise<number> {
  if (opts.provider) {
    const checks = await providerChecks(opts.provider)
    for (const c of checks) {
      opts.log(`${c.ok ? '✔' : '✘'} ${c.name}: ${c.detail}`)
      if (!c.ok && c.fix) opts.log(`    fix: ${c.fix}`)
    }
    return checks.every((c) => c.ok) ? 0 : 1
  }
  let checks = await runChecks()
  if (opts.fix) {
    const fixable = checks.filter((c) => !c.ok && c.autoFix)
    for (const c of fixable) {
      opts.log(`fixing ${c.name}: ${c.autoFix!.join(' ')}`)
      const r = spawnSync(c.autoFix![0], c.autoFix!.slice(1), { stdio: 'inherit' })
      if (r.status !== 0) opts.log(`  failed (exit ${r.status}); run it yourself: ${c.fix}`)
    }
    if (fixable.length) checks = await runChecks()
  }
  for (const c of checks) {
    opts.log(`${c.info ? '·' : c.ok ? '✔' : '✘'} ${c.name}: ${c.detail}`)
    if (!c.ok && c.fix) opts.log(`    fix: ${c.fix}`)
  }
  const failed = checks.filter((c) => !c.ok)
  opts.log(failed.length ? `\n${failed.length} problem(s); each has its fix above.` : process.platform === 'linux' ? '\nThe local sandbox engine is ready.' : '\nNo problems found.')
  return failed.length ? 1 : 0
}

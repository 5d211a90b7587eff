/**
 * microsandbox(): the virtualization check that runs before any sandbox is attempted (with the
 * fix, in doctor too), and what the adapter asks of the SDK: checked against the SDK's own types
 * (its published declarations, from npm), and run against the stand-in, which the provider
 * contract suite also drives. The fixture suite through real microVMs runs only where this machine can boot them;
 * elsewhere its test is skipped, and the reason is in its name.
 */
import { execFile, execFileSync, spawnSync } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { microsandbox, virtualizationProblem } from '../src/providers/microsandbox.js'
import { startStandInMicrosandbox } from './support/stand-in-microsandbox.js'
import { CLI } from './support/serve.js'
import { REPO, runFixture, testsOf } from './support/vitest-run.js'

/** The SDK version the adapter was written against (an optional peer: not in this package's install). */
const SDK_VERSION = '0.6.18'

const CAN_BOOT = { platform: 'linux', kvmAccess: () => {}, cpuinfo: () => 'processor\t: 0\nflags\t\t: fpu vme vmx sse\n' }
const enoent = () => {
  throw Object.assign(new Error('no such file'), { code: 'ENOENT' })
}

describe('the virtualization check', () => {
  it('names what is missing and the fix', () => {
    expect(virtualizationProblem(CAN_BOOT)).toBeUndefined()
    expect(virtualizationProblem({ ...CAN_BOOT, cpuinfo: () => 'flags\t\t: fpu svm\n' })).toBeUndefined()
    expect(virtualizationProblem({ ...CAN_BOOT, kvmAccess: enoent })).toMatch(/^this machine has no \/dev\/kvm .* Fix: load the kvm_intel or kvm_amd module/)
    const eacces = () => {
      throw Object.assign(new Error('denied'), { code: 'EACCES' })
    }
    expect(virtualizationProblem({ ...CAN_BOOT, kvmAccess: eacces })).toMatch(/cannot open \/dev\/kvm \(EACCES\)\. Fix: add the user to the kvm group/)
    // /dev/kvm without vmx/svm: what this project's machines have (a VM without nested virtualization).
    expect(virtualizationProblem({ ...CAN_BOOT, cpuinfo: () => 'flags\t\t: fpu vme sse hypervisor\n' })).toMatch(/no vmx or svm flag in \/proc\/cpuinfo.* Fix: enable VT-x or AMD-V/)
    expect(virtualizationProblem({ platform: 'darwin' })).toBeUndefined()
    expect(virtualizationProblem({ platform: 'win32' })).toMatch(/Linux \(KVM\) and macOS only, not on win32/)
  })

  it('refuses before any sandbox or SDK is touched', async () => {
    let loaded = 0
    const provider = microsandbox({}, { probe: { ...CAN_BOOT, kvmAccess: enoent }, load: async () => (loaded++, (await startStandInMicrosandbox()).sdk) })
    await expect(provider.connect()).rejects.toThrow(/^microsandbox\(\): this machine has no \/dev\/kvm/)
    expect(loaded).toBe(0)
  })

  it('is in doctor, with the fix', async () => {
    const r = await new Promise<{ code: number; stdout: string }>((resolve) => execFile(process.execPath, [CLI, 'doctor', '--provider', 'microsandbox'], { encoding: 'utf8' }, (err, stdout) => resolve({ code: err ? Number((err as { code?: number }).code) : 0, stdout })))
    const problem = virtualizationProblem()
    if (problem) {
      expect(r.code).toBe(1)
      expect(r.stdout).toContain(`✘ microsandbox: ${problem.split('. Fix: ')[0]}`)
      expect(r.stdout).toContain(`fix: ${problem.split('. Fix: ')[1]}`)
    } else {
      expect(r.code).toBe(0)
      expect(r.stdout).toMatch(/✔ microsandbox: hardware virtualization/)
    }
  })
})

describe("the SDK's own types", () => {
  // The published package's declarations, from npm, against what the adapter calls.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vps-msb-types-'))
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))
  const tsc = (extra: string) => {
    fs.writeFileSync(
      path.join(dir, 'check.ts'),
      `import type * as Sdk from './package/dist/index.js'\nimport type { MicrosandboxSdk } from ${JSON.stringify(path.join(REPO, 'src/providers/microsandbox.js'))}\n` +
        `type Wanted = MicrosandboxSdk${extra}\nconst conforms: typeof Sdk extends Wanted ? true : never = true\nvoid conforms\n`,
    )
    return spawnSync(process.execPath, [path.join(REPO, 'node_modules/typescript/bin/tsc'), '--noEmit', '--strict', '--skipLibCheck', '--module', 'nodenext', '--moduleResolution', 'nodenext', '--target', 'es2022', '--typeRoots', path.join(REPO, 'node_modules/@types'), '--types', 'node', path.join(dir, 'check.ts')], { encoding: 'utf8' })
  }

  it(`have every call the adapter makes (microsandbox ${SDK_VERSION})`, { timeout: 120_000 }, () => {
    const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm'
    const tarball = execFileSync(npm, ['pack', `microsandbox@${SDK_VERSION}`, '--silent'], { cwd: dir, encoding: 'utf8' }).trim().split('\n').pop()!
    execFileSync('tar', ['xzf', tarball], { cwd: dir })
    const ok = tsc('')
    expect(ok.status, ok.stdout + ok.stderr).toBe(0)
    // The check can fail: a call the SDK does not have is refused.
    const missing = tsc(" & { Snapshot: { notInTheSdk(): void } }")
    expect(missing.status).not.toBe(0)
    expect(missing.stdout).toMatch(/Type 'true' is not assignable to type 'never'/)
  })
})

describe('what the adapter asks of the SDK (stand-in)', () => {
  let standIn: Awaited<ReturnType<typeof startStandInMicrosandbox>>
  beforeAll(async () => {
    standIn = await startStandInMicrosandbox()
  })
  afterAll(() => standIn?.close())

  it('boots each microVM with the memory and vCPUs of its limits, which bound it', async () => {
    const session = await microsandbox({ image: 'node:22', limits: { memory: '256m', cpus: 1.5 } }, { load: async () => standIn.sdk, probe: CAN_BOOT }).connect()
    try {
      const sbx = await session.createSandbox({ timeoutSec: 120, labels: {}, network: false })
      const bomb = await sbx.start({ cmd: 'node', args: ['-e', 'const a = []; for (let i = 0; i < 64; i++) a.push(Buffer.alloc(32 * 1024 * 1024, 1))'] })
      expect((await bomb.exited).exitCode).not.toBe(0)
      await sbx.kill()
    } finally {
      await session.close()
    }
    expect(() => microsandbox({ limits: { disk: '1g' } as never })).toThrow("microsandbox(): limits.disk cannot be set through microsandbox's API: a microVM's disk is its image's")
    expect(() => microsandbox({ limits: { memory: '1g' }, memoryMib: 512 })).toThrow('microsandbox(): give limits or cpus/memoryMib, not both')
  })

  it('boots the image (no network unless asked), snapshots a stopped sandbox and starts it again, and boots the template', async () => {
    const session = await microsandbox({ image: 'node:22' }, { load: async () => standIn.sdk, probe: CAN_BOOT }).connect()
    expect(session.base).toBe('microsandbox:node:22')
    const sbx = await session.createSandbox({ timeoutSec: 120, labels: { run: 'a' }, network: false })
    await sbx.upload('/opt/deep/dir/file.txt', Buffer.from('kept\n'))
    const id = await sbx.snapshot('vitest-sandbox-t1')
    expect(id).toBe('vitest-sandbox-t1')
    const after = standIn.calls.slice(standIn.calls.indexOf(`create ${sbx.id} image=node:22 no-network`))
    expect(after.filter((c) => !c.startsWith('exec'))).toEqual([`create ${sbx.id} image=node:22 no-network`, `stop ${sbx.id}`, `snapshot ${sbx.id} as vitest-sandbox-t1`, `start ${sbx.id}`])
    // Still usable after its snapshot, as on every other provider.
    const proc = await sbx.start({ cmd: 'cat', args: ['/opt/deep/dir/file.txt'] })
    const out: Buffer[] = []
    proc.on('stdout', (b) => out.push(b))
    expect((await proc.exited).exitCode).toBe(0)
    expect(Buffer.concat(out).toString()).toBe('kept\n')
    expect(await session.findTemplate('vitest-sandbox-t1')).toBe('vitest-sandbox-t1')
    const child = await session.createSandbox({ template: id, timeoutSec: 120, labels: { run: 'a' }, network: true })
    expect(standIn.calls).toContain(`create ${child.id} snapshot=vitest-sandbox-t1`)
    expect((await session.listTemplates()).map((t) => t.name)).toEqual(['vitest-sandbox-t1'])
    expect(await session.deleteTemplate(id)).toBe(true)
    expect(await session.deleteTemplate(id)).toBe(false)
    await child.kill()
    await sbx.kill()
    expect(await session.listSandboxes({ run: 'a' })).toEqual([])
  })

  it('lists across pages, only live sandboxes, and kills by name', async () => {
    const session = await microsandbox({}, { load: async () => standIn.sdk, probe: CAN_BOOT }).connect()
    const made = await Promise.all([1, 2, 3, 4, 5].map(() => session.createSandbox({ timeoutSec: 120, labels: { run: 'b' }, network: false })))
    expect((await session.listSandboxes({ run: 'b' })).map((s) => s.id).sort()).toEqual(made.map((s) => s.id).sort())
    expect(await session.killSandbox(made[0].id)).toBe(true)
    expect(await session.killSandbox(made[0].id)).toBe(false)
    expect(await session.killSandbox('vps-never-made')).toBe(false)
    expect((await session.listSandboxes({ run: 'b' })).map((s) => s.id).sort()).toEqual(made.slice(1).map((s) => s.id).sort())
    for (const s of made.slice(1)) await s.kill()
  })
})

const noVm = virtualizationProblem()
if (noVm) console.log(`microsandbox: the fixture suite through real microVMs is skipped: ${noVm}`)
describe.skipIf(!!noVm)(`the feature fixture through real microVMs (${noVm ? `skipped: ${noVm}` : 'this machine can boot them'})`, () => {
  it('reports every test as forks does', { timeout: 600_000 }, async () => {
    const forks = await runFixture('features', { pool: 'forks', env: { VPS_FORWARDED: 'forwarded-value' } })
    const run = await runFixture('features', { env: { VPS_PROVIDER: 'microsandbox', VPS_FORWARDED: 'forwarded-value' } })
    expect(run.json, run.output).toBeDefined()
    expect(testsOf(run.json)).toEqual(testsOf(forks.json))
  })
})

/**
 * The provider contract: every provider, driven only through the SandboxProvider interface the
 * fleet uses, behaves the same. local() is the real engine in-process; watasu() talks to a real
 * `vitest-sandbox serve` process; opensandbox(), e2b() and heyo() talk to fakes of those services (real
 * HTTP and WebSockets on loopback; the official SDKs keep them honest in opensandbox.test.ts and
 * e2b.test.ts).
 */
import { createHash, randomBytes } from 'node:crypto'
import fs from 'node:fs'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { e2b } from '../src/providers/e2b.js'
import { heyo } from '../src/providers/heyo.js'
import { local } from '../src/providers/local.js'
import { microsandbox, virtualizationProblem } from '../src/providers/microsandbox.js'
import { opensandbox } from '../src/providers/opensandbox.js'
import { watasu } from '../src/providers/watasu.js'
import type { ProviderProcess, ProviderSandbox, ProviderSession, SandboxProvider } from '../src/providers/types.js'
import { tempDir, waitFor } from './support/engine.js'
import { startFakeE2B } from './support/fake-e2b.js'
import { startFakeHeyo } from './support/fake-heyo.js'
import { startFakeOpenSandbox } from './support/fake-opensandbox.js'
import { startServe } from './support/serve.js'
import { startStandInMicrosandbox } from './support/stand-in-microsandbox.js'

interface Setup {
  provider: SandboxProvider
  close(): Promise<void>
}

const setups: Record<string, () => Promise<Setup>> = {
  local: async () => {
    const stateDir = tempDir('contract')
    return { provider: local({ stateDir }), close: async () => fs.rmSync(stateDir, { recursive: true, force: true }) }
  },
  'watasu (vitest-sandbox serve)': async () => {
    const serve = await startServe()
    return { provider: watasu({ apiUrl: serve.apiUrl, apiKey: serve.token }), close: serve.close }
  },
  'opensandbox (fake)': async () => {
    const fake = await startFakeOpenSandbox({ minTimeoutSec: 1 })
    return { provider: opensandbox({ domain: fake.domain, apiKey: fake.apiKey }), close: fake.close }
  },
  'e2b (fake)': async () => {
    const fake = await startFakeE2B()
    return { provider: e2b({ apiUrl: fake.url, sandboxUrl: fake.url, apiKey: fake.apiKey }), close: fake.close }
  },
  // Heyo's daemon (the cloud makes no images, so it could not pass the template case; heyo.test.ts
  // covers its differences). Its sandboxes always have the network (`alwaysOnline`).
  'heyo (fake daemon)': async () => {
    const fake = await startFakeHeyo({ mode: 'daemon' })
    const stateDir = tempDir('contract-heyo')
    return {
      provider: heyo({ baseUrl: fake.url, stateDir }),
      close: async () => {
        await fake.close()
        fs.rmSync(stateDir, { recursive: true, force: true })
      },
    }
  },
  // The adapter on a machine that passes the virtualization check, with the SDK stood in by the
  // local engine (microsandbox.test.ts checks the SDK's own types against what the adapter uses).
  'microsandbox (adapter, SDK stood in)': async () => {
    const standIn = await startStandInMicrosandbox()
    const probe = { platform: 'linux', kvmAccess: () => {}, cpuinfo: () => 'flags\t\t: fpu vme svm' }
    return { provider: microsandbox({}, { load: async () => standIn.sdk, probe }), close: standIn.close }
  },
}
// microsandbox itself, where this machine can boot microVMs (with the microsandbox package installed,
// and VPS_MICROSANDBOX_IMAGE: an image with node).
const noVm = virtualizationProblem()
if (noVm) console.log(`provider contract: microsandbox (real microVMs) skipped: ${noVm}`)
else setups['microsandbox (real microVMs)'] = async () => ({ provider: microsandbox({ image: process.env.VPS_MICROSANDBOX_IMAGE }), close: async () => {} })

function collect(proc: ProviderProcess) {
  const out: Buffer[] = []
  const err: Buffer[] = []
  proc.on('stdout', (b) => out.push(b))
  proc.on('stderr', (b) => err.push(b))
  return { stdout: () => Buffer.concat(out), stderr: () => Buffer.concat(err).toString() }
}

async function run(sbx: ProviderSandbox, script: string) {
  const proc = await sbx.start({ cmd: '/bin/sh', args: ['-c', script], cwd: '/tmp' })
  const io = collect(proc)
  const exit = await proc.exited
  return { ...exit, stdout: io.stdout().toString(), stderr: io.stderr() }
}

describe.each(Object.keys(setups).filter((n) => !process.env.CONTRACT || n.includes(process.env.CONTRACT)))('provider contract: %s', (name) => {
  let setup: Setup
  let session: ProviderSession
  let sbx: ProviderSandbox
  const run_ = `contract-${randomBytes(3).toString('hex')}`
  const labels = { 'vitest-sandbox': 'pool', 'vitest-sandbox-run': run_ }

  beforeAll(async () => {
    setup = await setups[name]()
    session = await setup.provider.connect()
    sbx = await session.createSandbox({ timeoutSec: 300, labels, network: false })
  })
  afterAll(async () => {
    for (const s of (await session?.listSandboxes({ 'vitest-sandbox-run': run_ }).catch(() => [])) ?? []) await session.killSandbox(s.id)
    await session?.close()
    await setup?.close()
  })

  it('uploads files (parents created, streamed bodies too) and runs a command with its exit code', async () => {
    await sbx.upload('/tmp/contract/a/b.txt', Buffer.from('hello\n'))
    async function* chunks() {
      for (let i = 0; i < 64; i++) yield Buffer.alloc(16 * 1024, i)
    }
    await sbx.upload('/tmp/contract/streamed.bin', chunks)
    const r = await run(sbx, 'cat /tmp/contract/a/b.txt; wc -c < /tmp/contract/streamed.bin; echo oops >&2; exit 7')
    expect(r.stdout).toBe('hello\n1048576\n')
    expect(r.stderr).toBe('oops\n')
    expect(r.exitCode).toBe(7)
  })

  it('streams stdin and stdout both ways, in order, and delivers EOF', async () => {
    const proc = await sbx.start({ cmd: 'cat', stdin: true })
    const io = collect(proc)
    for (let i = 0; i < 20; i++) await proc.write(Buffer.from(`line ${i}\n`))
    await waitFor(() => io.stdout().toString().includes('line 19\n'), 10_000, 'the echo')
    const binary = randomBytes(200_000)
    await proc.write(binary)
    await proc.closeStdin()
    const exit = await proc.exited
    expect(exit.exitCode).toBe(0)
    const expected = Buffer.concat([Buffer.from(Array.from({ length: 20 }, (_, i) => `line ${i}\n`).join('')), binary])
    expect(io.stdout().equals(expected)).toBe(true)
  })

  it('delivers large outputs whole', async () => {
    const proc = await sbx.start({ cmd: 'node', args: ['-e', 'for(let i=0;i<12;i++)process.stdout.write(Buffer.alloc(1<<20,i));process.stderr.write("done")'] })
    const io = collect(proc)
    expect((await proc.exited).exitCode).toBe(0)
    const expected = Buffer.concat(Array.from({ length: 12 }, (_, i) => Buffer.alloc(1 << 20, i)))
    expect(io.stdout().length).toBe(expected.length)
    expect(createHash('sha256').update(io.stdout()).digest('hex')).toBe(createHash('sha256').update(expected).digest('hex'))
    expect(io.stderr()).toBe('done')
  })

  it('kills a process (and what it started)', async () => {
    const proc = await sbx.start({ cmd: '/bin/sh', args: ['-c', 'sleep 300 & sleep 301; echo never'] })
    const io = collect(proc)
    proc.kill()
    const exit = await Promise.race([proc.exited.catch((e: Error) => ({ exitCode: -1, error: e.message, signal: null })), new Promise<null>((r) => setTimeout(() => r(null), 20_000))])
    expect(exit, 'exited settles after kill').not.toBeNull()
    expect(exit!.exitCode).not.toBe(0)
    expect(io.stdout().toString()).not.toContain('never')
    // The process is gone from the sandbox, children too.
    await waitFor(async () => !(await run(sbx, 'ps -eo args 2>/dev/null || ls /proc')).stdout.includes('sleep 30'), 10_000, 'the sleeps to go')
  })

  it('snapshots a sandbox into a template that new sandboxes start from, found by name', async () => {
    await run(sbx, 'mkdir -p /opt/contract && echo from-template > /opt/contract/file')
    const name = `vitest-sandbox-contract-${run_}`
    const id = await sbx.snapshot(name)
    expect(await session.findTemplate(name)).toBe(id)
    expect(await session.findTemplate(`${name}-missing`)).toBeUndefined()
    const child = await session.createSandbox({ template: id, timeoutSec: 120, labels, network: false })
    try {
      expect((await run(child, 'cat /opt/contract/file')).stdout).toBe('from-template\n')
    } finally {
      await child.kill()
    }
  })

  it('lists sandboxes by label and kills them by id', async () => {
    const other = { 'vitest-sandbox': 'pool', 'vitest-sandbox-run': `${run_}-b` }
    const a = await session.createSandbox({ timeoutSec: 120, labels: other, network: false })
    const b = await session.createSandbox({ timeoutSec: 120, labels: other, network: false })
    const listed = await session.listSandboxes({ 'vitest-sandbox-run': `${run_}-b` })
    expect(listed.map((s) => s.id).sort()).toEqual([a.id, b.id].sort())
    expect(listed[0].labels['vitest-sandbox-run']).toBe(`${run_}-b`)
    expect(Date.parse(listed[0].createdAt!)).toBeGreaterThan(Date.now() - 120_000)
    expect((await session.listSandboxes({ 'vitest-sandbox-run': run_ })).map((s) => s.id)).toContain(sbx.id)
    expect(await session.killSandbox(a.id)).toBe(true)
    expect(await session.killSandbox(a.id)).toBe(false)
    await b.kill()
    expect(await session.listSandboxes({ 'vitest-sandbox-run': `${run_}-b` })).toEqual([])
  })

  it('ends a sandbox at its TTL, and a renewed TTL keeps it', async () => {
    const short = await session.createSandbox({ timeoutSec: 3, labels, network: false })
    const renewed = await session.createSandbox({ timeoutSec: 3, labels, network: false })
    await renewed.setTimeout(60)
    const alive = async () => (await session.listSandboxes({ 'vitest-sandbox-run': run_ })).map((s) => s.id)
    await waitFor(async () => !(await alive()).includes(short.id), 20_000, 'the TTL to end the sandbox')
    expect(await alive()).toContain(renewed.id)
    expect((await run(renewed, 'echo still here')).stdout).toBe('still here\n')
    await renewed.kill()
  })
})

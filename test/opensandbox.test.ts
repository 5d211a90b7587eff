/**
 * The fake OpenSandbox is checked by OpenSandbox's official SDK (`@alibaba-group/opensandbox`):
 * its own lifecycle, file, command, listing and snapshot calls must succeed against the fake, so
 * the fake (and the provider tested against it) cannot drift from the real API. Then what only
 * opensandbox() does: the server proxy, the PTY process surviving cut sockets and execd's
 * exit-before-output race, retries, and the API key kept from execd.
 */
import { ConnectionConfig, Sandbox, SandboxApiException, SandboxManager } from '@alibaba-group/opensandbox'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { opensandbox } from '../src/providers/opensandbox.js'
import type { ProviderSession } from '../src/providers/types.js'
import { startFakeOpenSandbox, type FakeOpenSandbox } from './support/fake-opensandbox.js'

let fake: FakeOpenSandbox
beforeAll(async () => {
  fake = await startFakeOpenSandbox()
})
afterAll(() => fake?.close())

const config = (opts: { useServerProxy?: boolean } = {}) =>
  new ConnectionConfig({ domain: fake.domain, protocol: 'http', apiKey: fake.apiKey, disableMetrics: true, requestTimeoutSeconds: 30, ...opts })

describe('the official SDK against the fake', () => {
  it('creates, writes and reads files, runs commands, lists by metadata, renews, snapshots, restores and kills', async () => {
    const cc = config()
    const sbx = await Sandbox.create({ connectionConfig: cc, image: 'node:20', metadata: { project: 'apollo' }, timeoutSeconds: 600, readyTimeoutSeconds: 20 })
    try {
      await sbx.files.writeFiles([{ path: '/tmp/sdk/hello.txt', data: 'hi there\n', mode: 644 }])
      expect(await sbx.files.readFile('/tmp/sdk/hello.txt')).toBe('hi there\n')
      const ok = await sbx.commands.run('cat /tmp/sdk/hello.txt; echo two; echo err >&2', { workingDirectory: '/tmp' })
      expect(ok.exitCode).toBe(0)
      expect(ok.logs.stdout.map((m) => m.text)).toEqual(['hi there', 'two'])
      expect(ok.logs.stderr.map((m) => m.text)).toEqual(['err'])
      const bad = await sbx.commands.run('exit 3')
      expect(bad.exitCode).toBe(3)
      expect(bad.error?.name).toBe('CommandExecError')

      const mgr = SandboxManager.create({ connectionConfig: cc })
      const listed = await mgr.listSandboxInfos({ metadata: { project: 'apollo' }, states: ['Running'] })
      expect(listed.items.map((s) => s.id)).toEqual([sbx.id])
      expect(listed.items[0].status.state).toBe('Running')
      expect(listed.items[0].createdAt).toBeInstanceOf(Date)
      expect((await mgr.listSandboxInfos({ metadata: { project: 'other' } })).items).toEqual([])
      const renewed = await sbx.renew(1200)
      expect(renewed.expiresAt!.getTime()).toBeGreaterThan(Date.now() + 1100_000)
      expect((await sbx.getInfo()).metadata).toEqual({ project: 'apollo' })

      const snap = await mgr.createSnapshot(sbx.id, { name: 'cp1' })
      expect(snap.status.state).toBe('Creating')
      let state = snap.status.state
      for (let i = 0; i < 100 && state === 'Creating'; i++) {
        await new Promise((r) => setTimeout(r, 100))
        state = (await mgr.getSnapshot(snap.id)).status.state
      }
      expect(state).toBe('Ready')
      expect((await mgr.listSnapshots({ sandboxId: sbx.id })).items.map((s) => s.name)).toEqual(['cp1'])
      const restored = await Sandbox.create({ connectionConfig: cc, snapshotId: snap.id, readyTimeoutSeconds: 20 })
      expect(await restored.files.readFile('/tmp/sdk/hello.txt')).toBe('hi there\n')
      await restored.kill()
      await mgr.deleteSnapshot(snap.id)
      await restored.close()
      await mgr.close()
    } finally {
      await sbx.kill()
    }
    const gone = await SandboxManager.create({ connectionConfig: cc }).getSandboxInfo(sbx.id).catch((e: unknown) => e)
    expect(gone).toBeInstanceOf(SandboxApiException)
    expect((gone as SandboxApiException).statusCode).toBe(404)
    expect((gone as SandboxApiException).error.code).toBe('DOCKER::SANDBOX_NOT_FOUND')
    await sbx.close()
  })

  it('reaches execd through the server proxy', async () => {
    const sbx = await Sandbox.create({ connectionConfig: config({ useServerProxy: true }), image: 'node:20', readyTimeoutSeconds: 20 })
    try {
      await sbx.files.writeFiles([{ path: '/tmp/proxied.txt', data: 'through the proxy' }])
      const r = await sbx.commands.run('cat /tmp/proxied.txt')
      expect(r.logs.stdout.map((m) => m.text)).toEqual(['through the proxy'])
    } finally {
      await sbx.kill()
      await sbx.close()
    }
    expect(fake.requests.some((r) => r.where === 'proxy' && r.path.endsWith('/proxy/44772/command'))).toBe(true)
  })

  it('is refused with the real error shapes', async () => {
    const wrong = new ConnectionConfig({ domain: fake.domain, apiKey: 'wrong', disableMetrics: true })
    const e = await SandboxManager.create({ connectionConfig: wrong }).listSandboxInfos({}).catch((x: unknown) => x)
    expect((e as SandboxApiException).statusCode).toBe(401)
    expect((e as SandboxApiException).error.code).toBe('INVALID_API_KEY')
    const bad = await Sandbox.create({ connectionConfig: config(), image: 'node:20', metadata: { project: 'a b' } }).catch((x: unknown) => x)
    expect((bad as SandboxApiException).statusCode).toBe(400)
    expect((bad as SandboxApiException).error.code).toBe('SANDBOX::INVALID_METADATA_LABEL')
  })
})

describe('opensandbox() beyond the contract', () => {
  let session: ProviderSession
  beforeAll(async () => {
    session = await opensandbox({ domain: fake.domain, apiKey: fake.apiKey }).connect()
  })
  afterAll(() => session?.close())

  it('keeps a process whole across cut sockets, both ways', async () => {
    const sbx = await session.createSandbox({ timeoutSec: 300, labels: {}, network: false })
    try {
      // Echo each line back after a pause, so sockets get cut with input and output in flight.
      const proc = await sbx.start({ cmd: 'node', args: ['-e', 'process.stdin.on("data",(d)=>setTimeout(()=>process.stdout.write(d),20));process.stdin.on("end",()=>setTimeout(()=>{process.stderr.write("eof");process.exit(4)},100))'], stdin: true })
      const out: Buffer[] = []
      let err = ''
      proc.on('stdout', (b) => out.push(b))
      proc.on('stderr', (b) => (err += b))
      const sent: string[] = []
      let cut = 0
      for (let i = 0; i < 60; i++) {
        const line = `line ${i} ${'x'.repeat(i * 50)}\n`
        sent.push(line)
        const write = proc.write(Buffer.from(line))
        if (i % 15 === 7) cut += fake.dropSockets()
        await write
      }
      await proc.closeStdin()
      const exit = await proc.exited
      expect(cut).toBeGreaterThanOrEqual(3)
      expect(exit.exitCode).toBe(4)
      expect(Buffer.concat(out).toString()).toBe(sent.join(''))
      expect(err).toBe('eof')
    } finally {
      await sbx.kill()
    }
  })

  it("sets limits as the sandbox's Kubernetes resource limits, which the cluster enforces", async () => {
    const limited = await opensandbox({ domain: fake.domain, apiKey: fake.apiKey, limits: { memory: '256m', cpus: 0.5, disk: '1g' } }).connect()
    try {
      const sbx = await limited.createSandbox({ timeoutSec: 300, labels: {}, network: false })
      expect(fake.state.resourceLimits.at(-1)).toEqual({ cpu: '0.5', memory: '256Mi', 'ephemeral-storage': '1024Mi' })
      const bomb = await sbx.start({ cmd: 'node', args: ['-e', 'const a = []; for (let i = 0; i < 64; i++) a.push(Buffer.alloc(32 * 1024 * 1024, 1))'] })
      expect((await bomb.exited).signal ?? (await bomb.exited).exitCode).not.toBe(0)
      await sbx.kill()
    } finally {
      await limited.close()
    }
    expect(() => opensandbox({ limits: { memory: 'lots' } })).toThrow(`limits.memory: "lots" is not a size`)
    expect(() => opensandbox({ limits: { memory: '1g' }, resourceLimits: { memory: '1Gi' } })).toThrow('opensandbox(): give limits or resourceLimits, not both')
  })

  it('starts a process whose first sockets are cut before they connect', async () => {
    const sbx = await session.createSandbox({ timeoutSec: 300, labels: {}, network: false })
    fake.state.cutBeforeConnected = 2
    try {
      const proc = await sbx.start({ cmd: '/bin/sh', args: ['-c', 'echo once >> /tmp/runs; cat /tmp/runs'] })
      let out = ''
      proc.on('stdout', (b) => (out += b))
      expect((await proc.exited).exitCode).toBe(0)
      expect(fake.state.cutBeforeConnected).toBe(0)
      expect(out).toBe('once\n')
    } finally {
      fake.state.cutBeforeConnected = 0
      await sbx.kill()
    }
  })

  it("gets the last output and the exit code even when execd's exit notice overtakes them", async () => {
    const sbx = await session.createSandbox({ timeoutSec: 300, labels: {}, network: false })
    fake.state.dropTailOnExit = true
    try {
      const proc = await sbx.start({ cmd: '/bin/sh', args: ['-c', 'echo first; sleep 0.2; echo last; exit 9'] })
      let out = ''
      proc.on('stdout', (b) => (out += b))
      const exit = await proc.exited
      expect(out).toBe('first\nlast\n')
      expect(exit.exitCode).toBe(9)
    } finally {
      fake.state.dropTailOnExit = false
      await sbx.kill()
    }
  })

  it('retries 503s and 429 bursts, and reaches execd through the proxy without the API key', async () => {
    const proxied = await opensandbox({ domain: fake.domain, apiKey: fake.apiKey, useServerProxy: true }).connect()
    try {
      fake.inject({ where: 'lifecycle', method: 'POST', path: /^\/sandboxes$/, status: 503, times: 2 })
      fake.inject({ where: 'lifecycle', method: 'GET', path: /\/endpoints\//, status: 429, times: 2 })
      const before = fake.requests.length
      const sbx = await proxied.createSandbox({ timeoutSec: 300, labels: { 'vitest-sandbox-run': 'proxied' }, network: false })
      await sbx.upload('/tmp/p.txt', Buffer.from('proxied\n'))
      const proc = await sbx.start({ cmd: 'cat', args: ['/tmp/p.txt'] })
      let out = ''
      proc.on('stdout', (b) => (out += b))
      expect((await proc.exited).exitCode).toBe(0)
      expect(out).toBe('proxied\n')
      await sbx.kill()
      const mine = fake.requests.slice(before)
      expect(mine.filter((r) => r.where === 'lifecycle' && r.method === 'POST' && r.path.endsWith('/sandboxes'))).toHaveLength(3)
      expect(mine.filter((r) => r.where === 'proxy').length).toBeGreaterThan(2)
      for (const r of mine.filter((x) => x.where !== 'lifecycle')) expect(r.headers['open-sandbox-api-key']).toBeUndefined()
    } finally {
      await proxied.close()
    }
  })

  it('says what OpenSandbox refused, naming the field', async () => {
    const err = await session.createSandbox({ timeoutSec: 30, labels: {}, network: false }).catch((e: Error) => e)
    expect((err as Error).message).toMatch(/POST \/sandboxes: timeout: Input should be greater than or equal to 60/)
  })
  it('names what to configure when the server cannot snapshot', async () => {
    const sbx = await session.createSandbox({ timeoutSec: 300, labels: {}, network: false })
    fake.state.snapshotsSupported = false
    try {
      await expect(sbx.snapshot('never')).rejects.toThrow(/opensandbox: this server cannot snapshot sandboxes \(POST \/sandboxes\/[^/]+\/snapshots: Snapshots are not supported by this runtime\.\); the cached template needs snapshots\. On Kubernetes, give the opensandbox-controller chart its snapshot settings/)
    } finally {
      fake.state.snapshotsSupported = true
      await sbx.kill()
    }
  })
})

/**
 * The fake E2B is checked by E2B's official SDK (`e2b`): its own sandbox, command, file, listing,
 * timeout and snapshot calls must succeed against the fake, so the fake (and e2b(), tested against
 * it in the contract suite) cannot drift from the real service. Then what only e2b() does: byte-
 * exact output (the SDK's strings are not), retries, a lost stream, and the key kept from envd.
 */
import { createHash, randomBytes } from 'node:crypto'
import { AuthenticationError, CommandExitError, Sandbox } from 'e2b'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { e2b } from '../src/providers/e2b.js'
import type { ProviderSandbox, ProviderSession } from '../src/providers/types.js'
import { startFakeE2B, type FakeE2B } from './support/fake-e2b.js'

let fake: FakeE2B
beforeAll(async () => {
  fake = await startFakeE2B()
})
afterAll(() => fake?.close())

const sdk = () => ({ apiKey: fake.apiKey, apiUrl: fake.url, sandboxUrl: fake.url })

describe('the official SDK against the fake', () => {
  it('creates, writes and reads files, runs commands with stdin, lists by metadata, renews, snapshots, restores and kills', async () => {
    const sbx = await Sandbox.create({ ...sdk(), metadata: { project: 'apollo' }, timeoutMs: 600_000 })
    try {
      await sbx.files.write('/tmp/sdk/hello.txt', 'hi there\n')
      expect(await sbx.files.read('/tmp/sdk/hello.txt')).toBe('hi there\n')
      const bytes = randomBytes(4096)
      await sbx.files.write('/tmp/sdk/blob.bin', bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length) as ArrayBuffer)
      expect(Buffer.from(await sbx.files.read('/tmp/sdk/blob.bin', { format: 'bytes' })).equals(bytes)).toBe(true)

      const ok = await sbx.commands.run('cat /tmp/sdk/hello.txt; echo two; echo err >&2', { cwd: '/tmp' })
      expect(ok).toMatchObject({ exitCode: 0, stdout: 'hi there\ntwo\n', stderr: 'err\n' })
      await expect(sbx.commands.run('exit 3')).rejects.toBeInstanceOf(CommandExitError)

      const out: string[] = []
      const cat = await sbx.commands.run('cat', { background: true, stdin: true, onStdout: (d) => void out.push(d), timeoutMs: 0 })
      await sbx.commands.sendStdin(cat.pid, 'one\n')
      await sbx.commands.sendStdin(cat.pid, new TextEncoder().encode('two\n'))
      await sbx.commands.closeStdin(cat.pid)
      expect((await cat.wait()).exitCode).toBe(0)
      expect(out.join('')).toBe('one\ntwo\n')

      // A dropped stream leaves the process running; Connect reattaches to what it writes from then on,
      // and after its exit still tells the exit.
      const talker = await sbx.commands.run('read line; echo "got $line"', { background: true, stdin: true, timeoutMs: 0 })
      const first = talker.wait().catch((err: Error) => err)
      expect(fake.dropStreams()).toBe(1)
      expect(await first).toBeInstanceOf(Error)
      const again = await sbx.commands.connect(talker.pid, { timeoutMs: 0 })
      await sbx.commands.sendStdin(talker.pid, 'late\n')
      expect(await again.wait()).toMatchObject({ exitCode: 0, stdout: 'got late\n' })
      expect((await (await sbx.commands.connect(talker.pid)).wait()).exitCode).toBe(0)

      const sleeper = await sbx.commands.run('sleep 300', { background: true, timeoutMs: 0 })
      expect((await sbx.commands.list()).map((p) => p.pid)).toContain(sleeper.pid)
      expect(await sbx.commands.kill(sleeper.pid)).toBe(true)
      await expect(sleeper.wait()).rejects.toBeInstanceOf(CommandExitError)
      expect(await sbx.commands.kill(424242)).toBe(false)

      const listed = await Sandbox.list({ ...sdk(), query: { metadata: { project: 'apollo' } } }).nextItems()
      expect(listed.map((s) => s.sandboxId)).toEqual([sbx.sandboxId])
      expect(listed[0].metadata).toEqual({ project: 'apollo' })
      expect(listed[0].startedAt).toBeInstanceOf(Date)
      expect(await Sandbox.list({ ...sdk(), query: { metadata: { project: 'other' } } }).nextItems()).toEqual([])
      await sbx.setTimeout(1_200_000)
      expect((await sbx.getInfo()).endAt.getTime()).toBeGreaterThan(Date.now() + 1_100_000)
      expect(await sbx.isRunning()).toBe(true)

      const snap = await sbx.createSnapshot({ name: 'cp1' })
      expect(snap.names).toEqual(['fake-team/cp1:default'])
      const restored = await Sandbox.create(snap.snapshotId, sdk())
      expect(await restored.files.read('/tmp/sdk/hello.txt')).toBe('hi there\n')
      await restored.kill()
      expect(await Sandbox.deleteSnapshot(snap.snapshotId, sdk())).toBe(true)
      expect(await Sandbox.deleteSnapshot(snap.snapshotId, sdk())).toBe(false)
    } finally {
      expect(await sbx.kill()).toBe(true)
    }
    expect(await Sandbox.kill(sbx.sandboxId, sdk())).toBe(false)
  })

  it('is refused with the real error shapes, and retries a 429 as the SDK does', async () => {
    await expect(Sandbox.create({ ...sdk(), apiKey: 'e2b_wrong' })).rejects.toBeInstanceOf(AuthenticationError)
    fake.inject({ where: 'api', method: 'POST', path: /^\/v2\/sandboxes$/, status: 429 })
    const sbx = await Sandbox.create(sdk())
    await sbx.kill()
    expect(fake.requests.filter((r) => r.path === '/v2/sandboxes' && r.method === 'POST').length).toBeGreaterThanOrEqual(3)
  })
})

describe('e2b() beyond the contract', () => {
  let session: ProviderSession
  beforeAll(async () => {
    session = await e2b({ apiKey: fake.apiKey, apiUrl: fake.url, sandboxUrl: fake.url }).connect()
  })
  afterAll(() => session?.close())

  /** Runs `fn` with a fresh sandbox, killed afterwards whatever `fn` does. */
  async function inSandbox(fn: (sbx: ProviderSandbox) => Promise<void>): Promise<void> {
    const sbx = await session.createSandbox({ timeoutSec: 120, labels: {}, network: false })
    try {
      await fn(sbx)
    } finally {
      await sbx.kill()
    }
  }

  it('carries every byte value out of a process, which the SDK turns into U+FFFD', async () => {
    await inSandbox(async (sbx) => {
      const proc = await sbx.start({ cmd: 'node', args: ['-e', 'const b=Buffer.alloc(256*64);for(let i=0;i<b.length;i++)b[i]=i%256;process.stdout.write(b);process.stderr.write(Buffer.from([0xff,0xfe,0xc3]))'] })
      const out: Buffer[] = []
      const err: Buffer[] = []
      proc.on('stdout', (b) => out.push(b))
      proc.on('stderr', (b) => err.push(b))
      expect((await proc.exited).exitCode).toBe(0)
      const expected = Buffer.alloc(256 * 64)
      for (let i = 0; i < expected.length; i++) expected[i] = i % 256
      expect(Buffer.concat(out).equals(expected)).toBe(true)
      expect([...Buffer.concat(err)]).toEqual([0xff, 0xfe, 0xc3])
    })
  })

  it('retries 503s and 429s on the API and envd, and sends the API key to the API only', async () => {
    fake.inject({ where: 'api', method: 'POST', path: /^\/v2\/sandboxes$/, status: 503 })
    fake.inject({ where: 'envd', method: 'POST', path: /^\/files$/, status: 502, times: 2 })
    fake.inject({ where: 'api', method: 'GET', path: /^\/snapshots$/, status: 429, times: 2 })
    const before = fake.requests.length
    const sbx = await session.createSandbox({ timeoutSec: 120, labels: { k: 'v' }, network: false })
    try {
      await sbx.upload('/tmp/retried/file.txt', Buffer.from('after two 502s\n'))
      const proc = await sbx.start({ cmd: 'cat', args: ['/tmp/retried/file.txt'] })
      const out: Buffer[] = []
      proc.on('stdout', (b) => out.push(b))
      expect((await proc.exited).exitCode).toBe(0)
      expect(Buffer.concat(out).toString()).toBe('after two 502s\n')
      expect(await session.findTemplate('vitest-sandbox-none')).toBeUndefined()
    } finally {
      await sbx.kill()
    }
    const seen = fake.requests.slice(before)
    expect(seen.filter((r) => r.where === 'envd').length).toBeGreaterThan(3)
    expect(seen.filter((r) => r.where === 'envd' && JSON.stringify(r.headers).includes(fake.apiKey))).toEqual([])
    // envd gets the sandbox's own token, and the user that owns the workspace path.
    const start = seen.find((r) => r.path === '/process.Process/Start')!
    expect(start.headers['x-access-token']).toMatch(/^[0-9a-f-]{36}$/)
    expect(start.headers.authorization).toBe(`Basic ${Buffer.from('root:').toString('base64')}`)
  })

  it('fails a start whose stream ends before the process starts, with envd\'s reason', async () => {
    await inSandbox(async (sbx) => {
      fake.state.endBeforeStart = 1
      await expect(sbx.start({ cmd: 'true' })).rejects.toThrow(/e2b: the process stream of sandbox \S+ ended before the process started: resource_exhausted: too many processes/)
      const proc = await sbx.start({ cmd: 'true' })
      expect((await proc.exited).exitCode).toBe(0)
    })
  })

  it('fails a process whose envd claims an envelope over the limit, without buffering it', async () => {
    await inSandbox(async (sbx) => {
      fake.state.oversizedEnvelope = 1
      const proc = await sbx.start({ cmd: 'sh', args: ['-c', 'echo out; sleep 30'] })
      await expect(proc.exited).rejects.toThrow(/e2b: lost the process stream of sandbox \S+ \(pid \d+\): envd sent an envelope of 1073741824 bytes, over the limit of 16777216/)
    })
  })

  it('reattaches a dropped stream and loses no byte: 2 MiB through cat with the stream cut five times', async () => {
    await inSandbox(async (sbx) => {
      const proc = await sbx.start({ cmd: 'cat', stdin: true })
      const out: Buffer[] = []
      proc.on('stdout', (b) => out.push(b))
      const data = Buffer.concat([Buffer.from(Array.from({ length: 256 }, (_, i) => i)), randomBytes(2 << 20)])
      const reattached = () => fake.requests.filter((r) => r.path === '/process.Process/Connect').length
      const before = reattached()
      let cuts = 0
      for (let off = 0; off < data.length; off += 64 * 1024) {
        await proc.write(data.subarray(off, off + 64 * 1024))
        if (off % (384 * 1024) === 0 && off > 0 && cuts < 5) {
          cuts += fake.dropStreams()
          // The next cut waits for this one's reattach.
          while (reattached() - before < cuts) await new Promise((r) => setTimeout(r, 20))
        }
      }
      await proc.closeStdin()
      expect((await proc.exited).exitCode).toBe(0)
      expect(cuts).toBe(5)
      const got = Buffer.concat(out)
      expect(got.length).toBe(data.length)
      expect(createHash('sha256').update(got).digest('hex')).toBe(createHash('sha256').update(data).digest('hex'))
    })
  })

  it('fails a process whose relay output is a forged frame header claiming 4 GiB, without buffering it', async () => {
    await inSandbox(async (sbx) => {
      // Code in a real sandbox could write it into the relay's stdout pipe through /proc; the fake writes it.
      fake.state.forgedFrame = 1
      const proc = await sbx.start({ cmd: 'sh', args: ['-c', 'echo out; sleep 30'] })
      await expect(proc.exited).rejects.toThrow(/e2b: lost the process stream of sandbox \S+ \(pid \d+\): the relay sent a frame of 4294967295 bytes, over the limit of 16777216/)
    })
  })

  it('stops reattaching a process once it is killed (the link closed, its sandbox goes next)', async () => {
    try {
      await inSandbox(async (sbx) => {
        const proc = await sbx.start({ cmd: 'sleep', args: ['30'] })
        const connects = () => fake.requests.filter((r) => r.path === '/process.Process/Connect').length
        const before = connects()
        fake.inject({ where: 'envd', method: 'POST', path: /^\/process\.Process\/Connect$/, status: 502, times: 20 })
        expect(fake.dropStreams()).toBe(1)
        while (connects() - before < 2) await new Promise((r) => setTimeout(r, 20))
        proc.kill()
        expect(await proc.exited).toMatchObject({ signal: 'SIGKILL', error: 'killed' })
        const tried = connects() - before
        await new Promise((r) => setTimeout(r, 3000))
        expect(connects() - before).toBe(tried)
      })
    } finally {
      fake.clearFaults()
    }
  })

  it('says a process is lost when its stream drops and envd no longer knows it', async () => {
    await inSandbox(async (sbx) => {
      const proc = await sbx.start({ cmd: 'sleep', args: ['30'] })
      // In one turn, before the host can reattach: as if envd had restarted.
      expect(fake.dropStreams()).toBe(1)
      fake.sandboxes.get(sbx.id)!.processes.clear()
      await expect(proc.exited).rejects.toThrow(/e2b: lost the process stream of sandbox \S+ \(pid \d+\): .*reattaching failed: .*not_found/)
    })
  })

  it('names the variable when no key is set', async () => {
    const saved = process.env.E2B_API_KEY
    delete process.env.E2B_API_KEY
    try {
      await expect(e2b().connect()).rejects.toThrow('e2b(): no API key. Set E2B_API_KEY in the environment (it never enters a sandbox), or pass e2b({ apiKey }).')
    } finally {
      if (saved !== undefined) process.env.E2B_API_KEY = saved
    }
  })
})

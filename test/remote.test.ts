/**
 * Remote providers end to end: real fixture suites through watasu() against a real
 * `vitest-sandbox serve` (also through a faulty network), and through opensandbox(), e2b() and
 * heyo() against the fakes of those services, with faults injected (a 503 on create, a 429 burst, 502s on uploads,
 * WebSockets cut mid-file), compared test by test with forks; afterwards nothing is left (checked with `vitest-sandbox reap`). And the provider's API
 * key never reaches a sandbox.
 */
import { execFile } from 'node:child_process'
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest'
import { SandboxClient } from '../src/protocol/client.js'
import { watasu } from '../src/providers/watasu.js'
import { startFakeE2B, type FakeE2B } from './support/fake-e2b.js'
import { startFakeHeyo, type FakeHeyo } from './support/fake-heyo.js'
import { startFakeOpenSandbox, type FakeOpenSandbox } from './support/fake-opensandbox.js'
import { startFaultProxy } from './support/fault-proxy.js'
import { CLI, startServe } from './support/serve.js'
import { runFixture, testsOf } from './support/vitest-run.js'

// Built, not spelled out: the secrets fixture scans the sandbox (the workspace, this file, included) for it.
const KEY_MARKER = ['vps', 'key', 'marker'].join('-')
let forks: Record<string, { status: string; failures: string[] }>
let forksCode: number | null

beforeAll(async () => {
  const run = await runFixture('features', { pool: 'forks', env: { VPS_FORWARDED: 'forwarded-value' } })
  forks = testsOf(run.json)
  forksCode = run.code
  expect(Object.keys(forks).length).toBeGreaterThan(20)
})

/** The CLI as its own process, asynchronously: the fake answers it from this process. */
function cli(command: string, env: Record<string, string>, args: string[] = []): Promise<{ status: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, command, ...args], { encoding: 'utf8', env: { ...process.env, ...env } }, (err, stdout, stderr) => {
      resolve({ status: err ? Number((err as { code?: number }).code ?? 1) : 0, stdout, stderr })
    })
  })
}
const reap = (env: Record<string, string>, args: string[] = []) => cli('reap', env, args)

/**
 * Cuts connections at most three times while a run goes on: the first time as soon as `ready()`
 * (so that a fast run sees a cut too), then at least 1.5 s apart. A cut counts when `cut()` found
 * something to cut.
 */
function cutWhileRunning(ready: () => boolean, cut: () => number): { readonly cuts: number; stop(): void } {
  let cuts = 0
  let last = 0
  const timer = setInterval(() => {
    if (cuts < 3 && Date.now() - last >= 1500 && ready() && cut() > 0) {
      cuts++
      last = Date.now()
    }
  }, 50)
  return { get cuts() { return cuts }, stop: () => clearInterval(timer) }
}

/** A run of the feature fixture reported every test as forks did, and left no pool sandbox alive. */
async function expectAsForksAndNoneLeft(run: Awaited<ReturnType<typeof runFixture>>, provider: 'watasu' | 'opensandbox' | 'e2b' | 'heyo', env: Record<string, string>): Promise<void> {
  expect(run.json, run.output).toBeDefined()
  expect(testsOf(run.json)).toEqual(forks)
  expect(run.code).toBe(forksCode)
  const left = await reap(env, ['--provider', provider, '--dry-run'])
  expect(left.stdout, left.stderr).toMatch(new RegExp(`${provider}: 0 pool sandboxes alive`))
}

describe('watasu() against vitest-sandbox serve', () => {
  let serve: Awaited<ReturnType<typeof startServe>>
  let env: Record<string, string>
  beforeAll(async () => {
    serve = await startServe({ token: `${KEY_MARKER}-${Date.now()}-watasu` })
    env = { VPS_PROVIDER: 'watasu', WATASU_API_URL: serve.apiUrl, WATASU_API_KEY: serve.token }
  })
  afterAll(() => serve?.close())

  it('reports the feature fixture exactly as forks does, on two sandboxes', { timeout: 240_000 }, async () => {
    const run = await runFixture('features', { env: { ...env, VPS_FORWARDED: 'forwarded-value' } })
    expect(run.output).toMatch(/sandbox: 2 sandboxes \(watasu\)/)
    await expectAsForksAndNoneLeft(run, 'watasu', env)
  })

  it('loses no result to a 503 on create, a 429 burst or process sockets cut mid-file (through a faulty network)', { timeout: 240_000 }, async () => {
    const proxy = await startFaultProxy(serve.apiUrl.replace(/\/v1$/, ''))
    try {
      proxy.inject({ method: 'POST', path: /^\/v1\/sandboxes$/, status: 503 })
      proxy.inject({ method: 'GET', path: /^\/v1\/sandbox_snapshots$/, status: 429, times: 3 })
      proxy.inject({ method: 'PUT', path: /^\/runtime\/v1\/files$/, status: 502, times: 2 })
      // Once both agents are linked (each sandbox's one process socket), cut every socket, a few times.
      const cutter = cutWhileRunning(() => proxy.seen.filter((r) => r.method === 'WS').length >= 2, () => proxy.dropSockets())
      const faulty = { ...env, WATASU_API_URL: `${proxy.url}/v1`, WATASU_SANDBOX_URL: proxy.url }
      const run = await runFixture('features', { env: { ...faulty, VPS_FORWARDED: 'forwarded-value' } }).finally(() => cutter.stop())
      await expectAsForksAndNoneLeft(run, 'watasu', env)
      expect(cutter.cuts).toBeGreaterThan(0)
      expect(proxy.seen.filter((r) => r.status).map((r) => r.status).sort()).toEqual([429, 429, 429, 502, 502, 503])
    } finally {
      await proxy.close()
    }
  })

  it('rides out a minute in which every call and every new socket is answered 503 or 429, and reports as forks', { timeout: 240_000 }, async () => {
    const proxy = await startFaultProxy(serve.apiUrl.replace(/\/v1$/, ''))
    try {
      const faulty = { ...env, WATASU_API_URL: `${proxy.url}/v1`, WATASU_SANDBOX_URL: proxy.url }
      proxy.outage(60_000)
      const run = await runFixture('features', { env: { ...faulty, VPS_FORWARDED: 'forwarded-value' } })
      await expectAsForksAndNoneLeft(run, 'watasu', env)
      const refused = proxy.seen.filter((r) => r.status)
      expect(new Set(refused.map((r) => r.status))).toEqual(new Set([429, 503]))
      expect(refused.length).toBeGreaterThan(10) // retried through the minute, not given up
    } finally {
      await proxy.close()
    }
  })

  it('asks serve for the limits given, which it enforces on each sandbox', { timeout: 120_000 }, async () => {
    const bomb = ['-e', 'const a = []; for (let i = 0; i < 24; i++) a.push(Buffer.alloc(32 * 1024 * 1024, 1))']
    for (const [limits, survives] of [[undefined, true], [{ memory: '256m' }, false]] as const) {
      const session = await watasu({ apiUrl: serve.apiUrl, apiKey: serve.token, limits }).connect()
      try {
        const sbx = await session.createSandbox({ timeoutSec: 60, labels: {}, network: false })
        const exit = await (await sbx.start({ cmd: 'node', args: [...bomb] })).exited
        expect(exit.exitCode === 0, JSON.stringify({ limits, exit })).toBe(survives)
        await sbx.kill()
      } finally {
        await session.close()
      }
    }
  })

  it('lets no test see the API key', { timeout: 120_000 }, async () => {
    const run = await runFixture('secrets', { env })
    expect(run.json?.numPassedTests, run.output).toBe(1)
  })

  it("starts every process with a timeout_ms far above the SDK's 60 s (the server enforces it, see protocol.test.ts)", async () => {
    const starts = vi.spyOn(SandboxClient.prototype, 'start')
    const session = await watasu({ apiUrl: serve.apiUrl, apiKey: serve.token }).connect()
    try {
      const sbx = await session.createSandbox({ timeoutSec: 60, labels: {}, network: false })
      const proc = await sbx.start({ cmd: 'true' })
      expect((await proc.exited).exitCode).toBe(0)
      expect(starts.mock.calls.map(([spec]) => spec.timeoutMs)).toEqual([86_400_000])
      await sbx.kill()
    } finally {
      starts.mockRestore()
      await session.close()
    }
  })
})

describe('opensandbox() against the fake OpenSandbox', () => {
  let fake: FakeOpenSandbox
  let env: Record<string, string>
  beforeAll(async () => {
    fake = await startFakeOpenSandbox({ apiKey: `${KEY_MARKER}-${Date.now()}-opensandbox` })
    env = { VPS_PROVIDER: 'opensandbox', OPEN_SANDBOX_DOMAIN: fake.domain, OPEN_SANDBOX_API_KEY: fake.apiKey }
  })
  afterAll(() => fake?.close())

  it('loses no result to a 503 on create, a 429 burst or WebSockets cut mid-file, and leaks no sandbox', { timeout: 300_000 }, async () => {
    fake.inject({ where: 'lifecycle', method: 'POST', path: /^\/sandboxes$/, status: 503 })
    fake.inject({ where: 'lifecycle', method: 'GET', path: /^\/snapshots$/, status: 429, times: 3 })
    fake.inject({ where: 'execd', method: 'POST', path: /^\/files\/upload$/, status: 502, times: 2 })
    // Cut every process socket a few times while test files run (the agents' links among them).
    const cutter = cutWhileRunning(() => fake.sandboxes.size >= 2 && [...fake.sandboxes.values()].some((s) => s.sessions.size > 0), () => fake.dropSockets())
    const run = await runFixture('features', { env: { ...env, VPS_FORWARDED: 'forwarded-value' } }).finally(() => cutter.stop())
    await expectAsForksAndNoneLeft(run, 'opensandbox', env)
    expect(cutter.cuts).toBeGreaterThan(0)
    expect(fake.sandboxes.size).toBe(0)
    // The key went to the lifecycle server only: never to execd, which runs inside the sandbox.
    const execd = fake.requests.filter((r) => r.where === 'execd')
    expect(execd.length).toBeGreaterThan(10)
    expect(execd.filter((r) => JSON.stringify(r.headers).includes(KEY_MARKER))).toEqual([])
  })

  it('lets no test see the API key', { timeout: 120_000 }, async () => {
    const run = await runFixture('secrets', { env })
    expect(run.json?.numPassedTests, run.output).toBe(1)
  })

  it('reap lists and kills the sandboxes the pool left, by age', { timeout: 60_000 }, async () => {
    const { opensandbox } = await import('../src/providers/opensandbox.js')
    const session = await opensandbox({ domain: fake.domain, apiKey: fake.apiKey }).connect()
    const left = await session.createSandbox({ timeoutSec: 600, labels: { 'vitest-sandbox': 'pool', 'vitest-sandbox-run': 'vps-leaked' }, network: false })
    const other = await session.createSandbox({ timeoutSec: 600, labels: { owner: 'someone-else' }, network: false })
    try {
      expect((await reap(env, ['--provider', 'opensandbox', '--run', 'vps-leaked', '--older-than', '1h'])).stdout).toMatch(/1 pool sandbox alive, 0 to reap/)
      const r = await reap(env)
      expect(r.stdout, r.stderr).toContain(`killed: ${left.id} (run vps-leaked`)
      expect((await session.listSandboxes({})).map((s) => s.id)).toEqual([other.id])
    } finally {
      await other.kill()
      await session.close()
    }
  })

  it('fails before any sandbox exists when the key is missing, naming the variable', { timeout: 60_000 }, async () => {
    const before = fake.state.created
    const run = await runFixture('secrets', { env: { ...env, OPEN_SANDBOX_API_KEY: '' } })
    expect(run.code).toBe(1)
    expect(run.output).toMatch(/opensandbox\(\): no API key\. Set OPEN_SANDBOX_API_KEY in the environment \(it never enters a sandbox\), or pass opensandbox\(\{ apiKey \}\)/)
    expect(fake.state.created).toBe(before)
    const r = await reap({ OPEN_SANDBOX_API_KEY: '' }, ['--provider', 'opensandbox'])
    expect(r.stderr).toMatch(/Set OPEN_SANDBOX_API_KEY/)
  })
  it('doctor checks the provider: reachable and key accepted, or the fix', { timeout: 60_000 }, async () => {
    const ok = await cli('doctor', env, ['--provider', 'opensandbox'])
    expect(ok.stdout, ok.stderr).toMatch(/✔ opensandbox: reachable with OPEN_SANDBOX_API_KEY; \d+ pool sandboxes? alive/)
    expect(ok.status).toBe(0)
    const wrong = await cli('doctor', { ...env, OPEN_SANDBOX_API_KEY: 'not-the-key' }, ['--provider', 'opensandbox'])
    expect(wrong.status).toBe(1)
    expect(wrong.stdout).toMatch(/✘ opensandbox: GET \/sandboxes\?.*Authentication credentials are invalid[\s\S]*fix: the provider refused OPEN_SANDBOX_API_KEY: check its value/)
    const unset = await cli('doctor', { OPEN_SANDBOX_API_KEY: '' }, ['--provider', 'opensandbox'])
    expect(unset.stdout).toMatch(/✘ opensandbox: OPEN_SANDBOX_API_KEY is not set/)
    const none = await cli('doctor', {}, ['--provider', 'nonesuch'])
    expect(none.stderr).toMatch(/unknown --provider 'nonesuch'; the remote providers are watasu, opensandbox, e2b, heyo/)
  })
})

describe('e2b() against the fake E2B', () => {
  let fake: FakeE2B
  let env: Record<string, string>
  beforeAll(async () => {
    fake = await startFakeE2B({ apiKey: `${KEY_MARKER}-${Date.now()}-e2b` })
    env = { VPS_PROVIDER: 'e2b', E2B_API_URL: fake.url, E2B_SANDBOX_URL: fake.url, E2B_API_KEY: fake.apiKey }
  })
  afterAll(() => fake?.close())

  it('loses no result to a 503 on create, a 429 burst, 502s on uploads or process streams cut mid-file, and leaks no sandbox', { timeout: 300_000 }, async () => {
    fake.inject({ where: 'api', method: 'POST', path: /^\/v2\/sandboxes$/, status: 503 })
    fake.inject({ where: 'api', method: 'GET', path: /^\/snapshots$/, status: 429, times: 3 })
    fake.inject({ where: 'envd', method: 'POST', path: /^\/files$/, status: 502, times: 2 })
    // Once the agents talk (their input calls), cut every process stream, a few times: each is
    // reattached, and the relay sends again what the drop lost.
    const cutter = cutWhileRunning(() => fake.requests.filter((r) => r.path === '/process.Process/SendInput').length > 20, () => fake.dropStreams())
    const run = await runFixture('features', { env: { ...env, VPS_FORWARDED: 'forwarded-value' } }).finally(() => cutter.stop())
    await expectAsForksAndNoneLeft(run, 'e2b', env)
    expect(cutter.cuts).toBeGreaterThan(0)
    expect(fake.requests.filter((r) => r.path === '/process.Process/Connect').length).toBeGreaterThanOrEqual(cutter.cuts)
    expect(run.output).not.toMatch(/was lost|running it again/)
    expect(fake.sandboxes.size).toBe(0)
    // The key went to the API only: never to envd, which runs inside the sandbox.
    const envd = fake.requests.filter((r) => r.where === 'envd')
    expect(envd.length).toBeGreaterThan(10)
    expect(envd.filter((r) => JSON.stringify(r.headers).includes(KEY_MARKER))).toEqual([])
  })

  it('lets no test see the API key', { timeout: 120_000 }, async () => {
    const run = await runFixture('secrets', { env })
    expect(run.json?.numPassedTests, run.output).toBe(1)
  })

  it('doctor and reap reach it with E2B_API_KEY, or name the fix', { timeout: 60_000 }, async () => {
    const ok = await cli('doctor', env, ['--provider', 'e2b'])
    expect(ok.stdout, ok.stderr).toMatch(/✔ e2b: reachable with E2B_API_KEY; \d+ pool sandboxes? alive/)
    const wrong = await cli('doctor', { ...env, E2B_API_KEY: 'not-the-key' }, ['--provider', 'e2b'])
    expect(wrong.status).toBe(1)
    expect(wrong.stdout).toMatch(/✘ e2b: [\s\S]*Invalid API key[\s\S]*fix: the provider refused E2B_API_KEY: check its value/)
    const { e2b } = await import('../src/providers/e2b.js')
    const session = await e2b({ apiUrl: fake.url, sandboxUrl: fake.url, apiKey: fake.apiKey }).connect()
    const left = await session.createSandbox({ timeoutSec: 600, labels: { 'vitest-sandbox': 'pool', 'vitest-sandbox-run': 'vps-leaked' }, network: false })
    try {
      const r = await reap(env)
      expect(r.stdout, r.stderr).toContain(`killed: ${left.id} (run vps-leaked`)
      expect(await session.listSandboxes({})).toEqual([])
    } finally {
      await session.close()
    }
  })
})

describe('heyo() against the fake Heyo', () => {
  let daemon: FakeHeyo
  let cloud: FakeHeyo
  let env: Record<string, string>
  beforeAll(async () => {
    daemon = await startFakeHeyo({ mode: 'daemon' })
    cloud = await startFakeHeyo({ mode: 'cloud' })
    // The daemon takes no key; one is set anyway (the client sends it), for the secrets fixture to look for.
    env = { VPS_PROVIDER: 'heyo', HEYO_BASE_URL: daemon.url, HEYO_API_KEY: `${KEY_MARKER}-${Date.now()}-heyo`, VPS_NETWORK: 'allow' }
  })
  afterAll(async () => {
    await daemon?.close()
    await cloud?.close()
  })
  const deploys = (fake: FakeHeyo) => fake.requests.filter((r) => r.path === '/sandbox-deploy').length

  it('reports the feature fixture as forks does through a 503 on create, a 429 burst, 502s on uploads and shells cut mid-file, and leaks no sandbox', { timeout: 300_000 }, async () => {
    daemon.inject({ method: 'POST', path: /^\/sandbox-deploy$/, status: 503 })
    daemon.inject({ method: 'GET', path: /^\/deployed-sandboxes$/, status: 429, times: 3 })
    daemon.inject({ method: 'POST', path: /\/write-file$/, status: 502, times: 2 })
    // Once test files run (their agents' shells are open), cut every shell socket a few times.
    const cutter = cutWhileRunning(() => daemon.sandboxes.size >= 2, () => daemon.dropShells())
    const run = await runFixture('features', { env: { ...env, VPS_FORWARDED: 'forwarded-value' } }).finally(() => cutter.stop())
    await expectAsForksAndNoneLeft(run, 'heyo', env)
    expect(cutter.cuts).toBeGreaterThan(0)
    expect(daemon.sandboxes.size).toBe(0)
  })

  it('lets no test see the API key', { timeout: 120_000 }, async () => {
    const run = await runFixture('secrets', { env })
    expect(run.json?.numPassedTests, run.output).toBe(1)
  })

  it('refuses a run that keeps the network off (Heyo cannot), before any sandbox exists', { timeout: 60_000 }, async () => {
    const before = deploys(daemon)
    const run = await runFixture('secrets', { env: { ...env, VPS_NETWORK: '' } })
    expect(run.code).toBe(1)
    expect(run.output).toMatch(/sandbox: heyo sandboxes cannot be cut off from the network, and this run keeps it off \(network: 'none', the default\)\. To run there with the network reachable from tests, set sandbox\(\{ network: 'allow' \}\)/)
    expect(deploys(daemon)).toBe(before)
  })

  it("on the cloud, which keeps no templates: each sandbox gets its dependencies itself, no test sees the key, and a missing key is named", { timeout: 180_000 }, async () => {
    // HEYO_ENV says what the URL is: a loopback one would otherwise be taken for a daemon.
    const cloudEnv = { ...env, HEYO_BASE_URL: cloud.url, HEYO_API_KEY: `${KEY_MARKER}-${cloud.apiKey}`, HEYO_ENV: 'cloud' }
    cloud.acceptKey(cloudEnv.HEYO_API_KEY)
    const run = await runFixture('secrets', { env: cloudEnv })
    expect(run.json?.numPassedTests, run.output).toBe(1)
    expect(run.output).toMatch(/sandbox: template: none can be kept on heyo \(heyo: Heyo's cloud cannot make an image from a sandbox \(only a local Heyo daemon has snapshot-image\)[^\n]*\); each sandbox gets its dependencies copied from the host's node_modules itself, before its first test file/)
    expect(cloud.requests.filter((r) => r.path.includes('snapshot-image'))).toEqual([])
    // No builder: the one sandbox copied the dependencies itself.
    expect(cloud.requests.filter((r) => r.path === '/sandbox-deploy').length).toBe(1)
    const noKey = await runFixture('secrets', { env: { ...cloudEnv, HEYO_API_KEY: '' } })
    expect(noKey.code).toBe(1)
    expect(noKey.output).toMatch(/heyo\(\): no API key for Heyo's cloud at http:\/\/127\.0\.0\.1:\d+\. Set HEYO_API_KEY in the environment/)
    expect(cloud.requests.filter((r) => r.path === '/sandbox-deploy').length).toBe(1)
  })

  it('doctor and reap reach it, or name the fix', { timeout: 60_000 }, async () => {
    const ok = await cli('doctor', env, ['--provider', 'heyo'])
    expect(ok.stdout, ok.stderr).toMatch(/✔ heyo: reachable with HEYO_API_KEY; \d+ pool sandboxes? alive/)
    const wrong = await cli('doctor', { ...env, HEYO_BASE_URL: cloud.url, HEYO_API_KEY: 'not-the-key', HEYO_ENV: 'cloud' }, ['--provider', 'heyo'])
    expect(wrong.status).toBe(1)
    expect(wrong.stdout).toMatch(/✘ heyo: GET \/deployed-sandboxes: Unauthorized[\s\S]*fix: the provider refused HEYO_API_KEY: check its value/)
    const { heyo } = await import('../src/providers/heyo.js')
    const session = await heyo({ baseUrl: daemon.url }).connect()
    const left = await session.createSandbox({ timeoutSec: 600, labels: { 'vitest-sandbox': 'pool', 'vitest-sandbox-run': 'vps-leaked' }, network: true })
    try {
      const r = await reap({ ...env, HEYO_API_KEY: '' })
      expect(r.stdout, r.stderr).toContain(`killed: ${left.id} (run vps-leaked`)
      expect(await session.listSandboxes({})).toEqual([])
    } finally {
      await session.close()
    }
  })
})

/**
 * Fanning files out: the schedule arithmetic, and real runs of a fixture whose files sleep for
 * known times, with Vitest's own results cache deciding the order and `sandboxes: 'auto'`.
 */
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { autoSandboxes, greedyWallMs, idealWallMs, type RunHistory } from '../src/pool/schedule.js'
import { SlotQueue } from '../src/pool/slots.js'
import { SandboxUsage, type UsageReport } from '../src/pool/usage.js'
import { REPO, runFixture, testsOf } from './support/vitest-run.js'

describe('schedule arithmetic', () => {
  it('computes the ideal and the longest-first greedy wall time', () => {
    expect(idealWallMs([], 4)).toBe(0)
    expect(idealWallMs([5, 1, 1, 1], 4)).toBe(5) // the longest file
    expect(idealWallMs([4, 4, 4, 4], 2)).toBe(8) // the total over the slots
    expect(greedyWallMs([1, 5, 1, 1], 2)).toBe(5)
    expect(greedyWallMs([3, 3, 2, 2, 2], 2)).toBe(7) // greedy is not optimal (6): the tolerance covers it
    expect(greedyWallMs([2, 2], 1)).toBe(4)
  })

  it("sizes 'auto' to the fewest sandboxes within 10% of the best", () => {
    const known = (durations: number[], unknown = 0): RunHistory => ({ durations, unknown })
    const cases: Array<[string, RunHistory, number, number, number]> = [
      ['nothing to run', known([]), 1, 16, 1],
      ['no history: a slot per file, up to the cap', known([], 10), 1, 16, 10],
      ['no history, capped', known([], 40), 1, 16, 16],
      ['equal files fill every slot', known([1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000]), 2, 16, 4],
      ['one long file bounds the run: more sandboxes do not help', known([20_000, 1000, 1000, 1000, 1000, 1000]), 1, 16, 2],
      ['never more sandboxes than files to fill them', known([1000, 1000, 1000, 1000]), 4, 8, 1],
      ['the cap wins', known(new Array(100).fill(1000)), 1, 8, 8],
    ]
    for (const [name, history, concurrency, max, expected] of cases) expect(autoSandboxes(history, concurrency, max), name).toBe(expected)
  })
})

describe('the slot queue', () => {
  const host = (id: string) => ({ id, active: 0, link: { alive: true }, usage: new SandboxUsage(id) })

  it('grants in the order asked, least-loaded first, and a released slot to the next in line', async () => {
    let starved = 0
    const done: number[] = []
    const q = new SlotQueue<ReturnType<typeof host>>(2, () => starved++, (ms) => done.push(ms))
    const a = host('a')
    const b = host('b')
    q.hosts.push(a, b)
    const leases = await Promise.all([q.lease(), q.lease(), q.lease()])
    expect(leases.map((l) => l.host.id)).toEqual(['a', 'b', 'a'])
    q.lease() // b's second slot
    const fifth = q.lease()
    const sixth = q.lease()
    await new Promise((r) => setImmediate(r))
    expect(q.waiters).toBe(2)
    expect(starved).toBeGreaterThan(0)
    leases[1].release()
    expect((await fifth).host.id).toBe('b')
    expect(q.waiters).toBe(1)
    leases[1].release() // twice is once
    expect(done).toHaveLength(1)
    q.failAll(new Error('gone'))
    await expect(sixth).rejects.toThrow('gone')
  })

  it('withdraws a request whose worker was stopped, and skips lost hosts', async () => {
    const q = new SlotQueue<ReturnType<typeof host>>(1, () => {}, () => {})
    const lost = { ...host('lost'), link: { alive: false } }
    const live = host('live')
    q.hosts.push(lost, live)
    const first = await q.lease()
    expect(first.host.id).toBe('live')
    const stop = new AbortController()
    const withdrawn = q.lease(stop.signal)
    const next = q.lease()
    stop.abort()
    await expect(withdrawn).rejects.toThrow(/stopped before it got a sandbox/)
    first.release()
    expect((await next).host.id).toBe('live')
  })
})

const FIXTURE = path.join(REPO, 'fixtures/fanout')
const CACHE = path.join(FIXTURE, 'node_modules')
/** Duration order of the fixture's files (f sleeps longest; names are not in that order by size). */
const LONGEST_FIRST = ['f', 'e', 'd', 'c', 'b', 'a'].map((n) => `${n}.test.ts`)

/** The history Vitest recorded for the fixture (4.1's results cache), as the pool reads it. */
function recordedHistory(): RunHistory {
  const dir = path.join(CACHE, '.vite/vitest')
  const file = path.join(dir, fs.readdirSync(dir)[0], 'results.json')
  const results = JSON.parse(fs.readFileSync(file, 'utf8')).results as Array<[string, { duration: number }]>
  return { durations: results.map(([, r]) => r.duration), unknown: 0 }
}

function startOrder(json: any): string[] {
  return [...json.testResults].sort((a, b) => a.startTime - b.startTime).map((t: { name: string }) => path.basename(t.name))
}

function readUsage(file: string): UsageReport {
  return JSON.parse(fs.readFileSync(file, 'utf8'))
}

/** What must hold of any usage report. */
function expectUsageAddsUp(usage: UsageReport, files: number): void {
  expect(usage.files).toBe(files)
  expect(usage.sandboxes.reduce((a, s) => a + s.files, 0)).toBe(files)
  for (const s of usage.sandboxes) expect(s.busyMs + s.idleMs).toBe(s.lifetimeMs)
  expect(usage.sandboxSeconds).toBeCloseTo(usage.sandboxes.reduce((a, s) => a + s.lifetimeMs, 0) / 1000, 6)
  const total = usage.fileMs.reduce((a, b) => a + b, 0)
  expect(usage.idealMs).toBeCloseTo(Math.max(Math.max(...usage.fileMs), total / usage.slots), 6)
  expect(usage.efficiency).toBeCloseTo(usage.idealMs / usage.wallMs, 6)
}

describe('fan-out on real runs', () => {
  let dir: string
  let forks: Awaited<ReturnType<typeof runFixture>>
  beforeAll(async () => {
    fs.rmSync(CACHE, { recursive: true, force: true })
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vps-fanout-'))
    // Records every file's duration in Vitest's results cache, as any earlier run would.
    forks = await runFixture('fanout', { pool: 'forks' })
    expect(forks.code, forks.output).toBe(0)
  }, 120_000)
  afterAll(() => {
    fs.rmSync(dir, { recursive: true, force: true })
    fs.rmSync(CACHE, { recursive: true, force: true })
  })

  it('runs the longest recorded files first, one queue for every slot', { timeout: 120_000 }, async () => {
    const usageFile = path.join(dir, 'one.json')
    const run = await runFixture('fanout', { env: { VPS_SANDBOXES: '1', VPS_USAGE_FILE: usageFile } })
    expect(testsOf(run.json), run.output).toEqual(testsOf(forks.json))
    expect(startOrder(run.json)).toEqual(LONGEST_FIRST)
    const usage = readUsage(usageFile)
    expectUsageAddsUp(usage, 6)
    expect(usage.sandboxes).toHaveLength(1)
    expect(run.output).toMatch(/sandbox: 1 sandbox \(local\), 6 files in [\d.]+s:\n {2}sbx_\w+: 6 files, busy [\d.]+s, idle [\d.]+s, created in [\d.]+s\n {2}efficiency \d+%/)
  })

  it("sizes 'auto' from the recorded durations", { timeout: 120_000 }, async () => {
    const expected = autoSandboxes(recordedHistory(), 1, 6)
    expect(expected).toBeGreaterThan(1)
    expect(expected).toBeLessThan(6)
    const usageFile = path.join(dir, 'auto.json')
    const run = await runFixture('fanout', { env: { VPS_SANDBOXES: 'auto', VPS_MAX_SANDBOXES: '6', VPS_USAGE_FILE: usageFile } })
    expect(testsOf(run.json), run.output).toEqual(testsOf(forks.json))
    expect(run.output).toContain(`sandbox: 'auto' chose ${expected} sandboxes (of at most 6) for 6 files,`)
    const usage = readUsage(usageFile)
    expect(usage.sandboxes).toHaveLength(expected)
    expect(usage.slots).toBe(expected)
    expectUsageAddsUp(usage, 6)
  })

  it('lets no file wait for a sandbox that is late: the ready one runs them all', { timeout: 120_000 }, async () => {
    const usageFile = path.join(dir, 'late.json')
    // The second sandbox is created 20 s late; the six files take a few seconds on the first.
    const run = await runFixture('fanout', { env: { VPS_SANDBOXES: '2', VPS_LATE_MS: '20000', VPS_USAGE_FILE: usageFile } })
    expect(testsOf(run.json), run.output).toEqual(testsOf(forks.json))
    const usage = readUsage(usageFile)
    expectUsageAddsUp(usage, 6)
    const [first, late] = usage.sandboxes
    expect(first.files).toBe(6)
    expect(late.files).toBe(0)
    expect(late.createMs).toBeGreaterThanOrEqual(20_000)
    expect(late.busyMs).toBe(0)
  })
})

describe("the agent's module cache on real runs", () => {
  /** Module fetches and resolutions the host answered in a run of the `modules` fixture (one sandbox). */
  async function hostFetches(files: string[], relay: boolean): Promise<number> {
    const usageFile = path.join(os.tmpdir(), `vps-modules-usage-${process.pid}-${Date.now()}.json`)
    const run = await runFixture('modules', { args: files, env: { VPS_USAGE_FILE: usageFile, ...(relay ? { VPS_RELAY: '1' } : {}) } })
    expect(run.code, run.output).toBe(0)
    expect(run.json.numPassedTests).toBe(files.length)
    const usage = readUsage(usageFile)
    fs.rmSync(usageFile, { force: true })
    expect(usage.sandboxes).toHaveLength(1)
    return usage.sandboxes[0].moduleRequests
  }

  it("answers a shared module graph once per sandbox: each further file costs the host only its own test file's resolution and fetch", { timeout: 180_000 }, async () => {
    const all = ['a', 'b', 'c', 'd'].map((n) => `test/${n}.test.ts`)
    const relayedOne = await hostFetches(all.slice(0, 1), true)
    const relayedAll = await hostFetches(all, true)
    // The graph (index and five modules), Vitest's own modules and the resolutions every worker
    // starts with cross once; each further file resolves and fetches its own test file.
    expect(relayedOne).toBeGreaterThan(6)
    expect(relayedAll - relayedOne).toBe(3 * 2)
    // Workers on the direct channel bypass the agent (and its cache): every file fetches it all.
    const directOne = await hostFetches(all.slice(0, 1), false)
    const directAll = await hostFetches(all, false)
    expect(directOne).toBe(relayedOne)
    expect(directAll).toBe(4 * directOne)
  })
})

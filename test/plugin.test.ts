/**
 * The Vitest plugin: `pool: 'sandbox'` and `vitest --pool=sandbox` are the same pool as
 * `pool: sandbox()`; a config that chooses another pool keeps it; the config's `maxWorkers` stands.
 */
import { describe, expect, it } from 'vitest'
import { runFixture, testsOf } from './support/vitest-run.js'

const FEATURES_ENV = { VPS_FORWARDED: 'forwarded-value' }

/** Whether any two test files of a run overlapped in time. */
function overlapped(json: any): boolean {
  const spans = json.testResults.map((t: { startTime: number; endTime: number }) => [t.startTime, t.endTime]).sort((a: number[], b: number[]) => a[0] - b[0])
  return spans.some(([start]: number[], i: number) => i > 0 && start < spans[i - 1][1])
}

describe('sandboxPlugin()', () => {
  it("makes pool: 'sandbox' and --pool=sandbox the sandbox pool, and leaves a config that says forks on forks", { timeout: 240_000 }, async () => {
    const direct = await runFixture('features', { env: FEATURES_ENV })
    expect(direct.json, direct.output).toBeDefined()
    expect(direct.output).toMatch(/sandbox: 1 sandbox \(local\), \d+ files/)
    const expected = testsOf(direct.json)

    const named = await runFixture('features', { env: { ...FEATURES_ENV, VPS_POOL: 'plugin' } })
    expect(testsOf(named.json), named.output).toEqual(expected)
    expect(named.output).toMatch(/sandbox: 1 sandbox \(local\), \d+ files/)
    expect(named.code).toBe(direct.code)

    const cli = await runFixture('features', { env: { ...FEATURES_ENV, VPS_POOL: 'cli' }, args: ['--pool=sandbox'] })
    expect(testsOf(cli.json), cli.output).toEqual(expected)
    expect(cli.output).toMatch(/sandbox: 1 sandbox \(local\), \d+ files/)

    // The same config without --pool: the plugin changes nothing, the files run on forks.
    const forks = await runFixture('features', { env: { ...FEATURES_ENV, VPS_POOL: 'cli' } })
    expect(testsOf(forks.json), forks.output).toEqual(expected)
    expect(forks.output).not.toMatch(/sandbox: \d+ sandbox/)
  })

  it("respects the config's maxWorkers instead of sizing the scheduler to the sandboxes", { timeout: 120_000 }, async () => {
    const env = { VPS_POOL: 'plugin', VPS_SANDBOXES: '2' }
    const sized = await runFixture('fanout', { env })
    expect(sized.json?.numPassedTests, sized.output).toBe(6)
    expect(overlapped(sized.json)).toBe(true)
    const one = await runFixture('fanout', { env: { ...env, VPS_MAX_WORKERS: '1' } })
    expect(one.json?.numPassedTests, one.output).toBe(6)
    expect(overlapped(one.json)).toBe(false)
  })
})

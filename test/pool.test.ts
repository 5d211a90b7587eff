/**
 * `pool: sandbox()` against real Vitest: each fixture project runs with the sandbox pool and with
 * `pool: 'forks'`, and the reports must agree test by test.
 */
import fs from 'node:fs'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { sandbox } from '../src/index.js'
import { REPO, runFixture, testsOf } from './support/vitest-run.js'

describe('sandbox pool vs forks', () => {
  // devalue is the codec for sandboxes on another Node major; forcing it here runs it for real.
  it('reports the feature fixture exactly as forks does, with the v8 and the devalue codec', async () => {
    const env = { VPS_FORWARDED: 'forwarded-value' }
    const [forks, ...sandboxed] = await Promise.all([
      runFixture('features', { pool: 'forks', env }),
      runFixture('features', { pool: 'sandbox', env }),
      runFixture('features', { pool: 'sandbox', env: { ...env, VITEST_SANDBOX_CODEC: 'devalue' } }),
    ])
    expect(forks.json, forks.output).toBeDefined()
    const expected = testsOf(forks.json)
    expect(Object.keys(expected).length).toBeGreaterThan(20)
    for (const sbx of sandboxed) {
      expect(sbx.json, sbx.output).toBeDefined()
      expect(testsOf(sbx.json)).toEqual(expected)
      expect(sbx.code).toBe(forks.code)
      // What the JSON report leaves out: console output and unhandled errors, attributed the same way.
      for (const text of ['a log line from a test', 'an error line from a test', 'Unhandled Rejection', 'nobody handles this', "code: 'E_UNHANDLED'", 'process.exit unexpectedly called with "3"', 'stdout | test/console.test.ts > logs to stdout and stderr']) {
        expect(forks.output).toContain(text)
        expect(sbx.output).toContain(text)
      }
      expect(sbx.output).not.toMatch(/Timeout terminating|Failed to terminate/)
    }
  })

  it('reports a worker that dies as forks does, and the run goes on', async () => {
    const [forks, sbx] = await Promise.all([runFixture('crash', { pool: 'forks' }), runFixture('crash', { pool: 'sandbox' })])
    expect(testsOf(sbx.json)).toEqual(testsOf(forks.json))
    expect(sbx.code).toBe(1)
    expect(forks.output).toContain('[vitest-pool]: Worker forks emitted error')
    expect(sbx.output).toContain('[vitest-pool]: Worker sandbox emitted error')
    expect(sbx.output).toMatch(/Worker exited unexpectedly/)
    expect(testsOf(sbx.json)['fixtures/crash/test/ok.test.ts > still runs'].status).toBe('passed')
  })

  // forks waits 60 s for the dead worker on Vitest 4.1; the sandbox pool answers the start at
  // once, so a 30 s test timeout catches a regression to waiting.
  it('fails fast, with the worker\'s own error, when a worker cannot start', { timeout: 30_000 }, async () => {
    const run = await runFixture('badstart')
    expect(run.code).toBe(1)
    expect(run.output).toContain("Cannot find module '/nonexistent/preload.cjs'")
    expect(run.output).toMatch(/Worker exited unexpectedly|exited with code 1 before it started/)
  })
})

describe('host-owned files', () => {
  it('vitest -u updates .snap files, inline snapshots and file snapshots on the host', async () => {
    const dir = path.join(REPO, 'fixtures/update/test')
    const files = ['update.test.ts', '__snapshots__/update.test.ts.snap', 'files/out.txt'].map((f) => path.join(dir, f))
    const originals = files.map((f) => fs.readFileSync(f, 'utf8'))
    try {
      const stale = await runFixture('update')
      expect(stale.json.numFailedTests, stale.output).toBe(3)
      expect(files.map((f) => fs.readFileSync(f, 'utf8'))).toEqual(originals) // nothing written without -u
      const updated = await runFixture('update', { args: ['-u'] })
      expect(updated.json.numPassedTests, updated.output).toBe(3)
      expect(updated.output).toMatch(/3 updated/)
      const [test, snap, file] = files.map((f) => fs.readFileSync(f, 'utf8'))
      expect(test).toContain('toMatchInlineSnapshot(`"new inline"`)')
      expect(snap).toContain('"version": 2')
      expect(file).toBe('new file content\n')
      const again = await runFixture('update')
      expect(again.json.numPassedTests, again.output).toBe(3)
    } finally {
      files.forEach((f, i) => fs.writeFileSync(f, originals[i]))
    }
  })
})

describe('options', () => {
  it('rejects unknown options and bad values before any sandbox exists, naming the fix', () => {
    const cases: Array<[unknown, RegExp]> = [
      [{ sandbox: 2 }, /unknown option 'sandbox'; the options are provider, sandboxes, maxSandboxes, concurrency/],
      [{ sandboxes: 0 }, /sandboxes must be a whole number from 1 to 1000 \(got 0\)/],
      [{ concurrency: 1.5 }, /concurrency must be a whole number/],
      [{ network: 'open' }, /network must be 'none' or 'allow' \(got 'open'\)/],
      [{ env: 'CI' }, /env must be an array of strings \(got 'CI'\)/],
      [{ template: { setup: 'npm ci' } }, /template.setup must be an array of strings/],
      [{ template: { image: 'x' } }, /unknown option 'template.image'/],
      [{ workspace: { includes: ['**'] } }, /unknown option 'workspace.includes'/],
      [{ provider: 'local' }, /provider must be a provider such as local\(\)/],
      [{ timeout: 5 }, /timeout must be a whole number from 10/],
      [{ sandboxes: 'many' }, /sandboxes must be a whole number from 1 to 1000 or 'auto' \(got 'many'\)/],
      [{ sandboxes: 'auto', maxSandboxes: 0 }, /maxSandboxes must be a whole number from 1 to 1000 \(got 0\)/],
      [{ usageFile: true }, /usageFile must be a file name such as 'sandbox-usage.json' \(got true\)/],
      [{ workspace: { gitignore: 'yes' } }, /workspace.gitignore must be true or false \(got 'yes'\)/],
      [{ allowWrite: 'src/x.ts' }, /allowWrite must be an array of strings/],
    ]
    for (const [options, message] of cases) expect(() => sandbox(options as never)).toThrow(message)
  })
})

/**
 * What real projects need from the workspace a sandbox is given: their gitignored build, a run
 * whose own output grows under the root, and a template that fails or takes longer than Vitest
 * lets a worker start, or hangs.
 */
import { execFile, execFileSync } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { promisify } from 'node:util'
import { describe, expect, it } from 'vitest'
import { REPO, runFixture, testsOf } from './support/vitest-run.js'
import { hostProcessesMatching } from './support/engine.js'

describe('the workspace a sandbox is given', () => {
  it('has the gitignored build that tests import, spawn and start workers from, while the run writes a growing log under the root', async () => {
    const fixture = path.join(REPO, 'fixtures/build')
    execFileSync(process.execPath, [path.join(fixture, 'build.mjs')])
    const log = path.join(fixture, 'run.log')
    try {
      const forks = await runFixture('build', { pool: 'forks' })
      const sbx = await runFixture('build', { pool: 'sandbox', outputFile: log })
      const expected = testsOf(forks.json)
      expect(Object.values(expected).every((t) => t.status === 'passed'), forks.output).toBe(true)
      expect(Object.keys(expected).length).toBe(7)
      expect(testsOf(sbx.json), sbx.output).toEqual(expected)
      expect(sbx.code).toBe(0)
    } finally {
      fs.rmSync(path.join(fixture, 'dist'), { recursive: true, force: true })
      fs.rmSync(log, { force: true })
    }
  })
})

describe('a template that cannot be built, or takes long', () => {
  it('reports every file as failed with the reason, and prints the full error once', async () => {
    const run = await runFixture('badtemplate')
    expect(run.code).toBe(1)
    const files = run.json?.testResults ?? []
    expect(files.map((f: any) => path.basename(f.name)).sort(), run.output).toEqual(['one.test.ts', 'three.test.ts', 'two.test.ts'])
    for (const f of files) {
      expect(f.status).toBe('failed')
      expect(f.message).toMatch(/the sandbox pool could not start \(sandbox: building the template vitest-sandbox-[0-9a-f]{24} failed; nothing was cached\.\); the full error is printed above/)
    }
    expect(run.output).toMatch(/sandbox: template: running "echo \\"setting things up\\"; .*\nsandbox: template: failed/)
    // Nothing cached: the project has no template afterwards.
    const ls = await promisify(execFile)(process.execPath, [path.join(REPO, 'dist/cli/index.js'), 'template', 'ls'], { cwd: path.join(REPO, 'fixtures/badtemplate') })
    expect(ls.stdout).not.toContain("(this project's)")
    // The setup's output, on a line of its own: once, however many files there are.
    expect(run.output.split('\n').filter((l) => l === 'the setup broke').length, run.output).toBe(1)
    expect(run.output).toMatch(/exit 3/)
    expect(run.output).not.toMatch(/Caused by: Caused by/)
  })

  // Vitest gives a worker 90 s to start; the template is built before any worker needs it.
  it('loses no file when the template takes longer to build than a worker may take to start', { timeout: 240_000 }, async () => {
    const run = await runFixture('slowtemplate', { env: { VPS_TEMPLATE_NONCE: String(Date.now()) } })
    expect(run.output).not.toMatch(/Timeout starting/)
    expect(Object.values(testsOf(run.json)).map((t) => t.status), run.output).toEqual(['passed', 'passed', 'passed', 'passed'])
    expect(run.code).toBe(0)
  })

  it('stops a build that hangs at template.timeout: every file fails with the step that hung, and nothing of the build is left', { timeout: 120_000 }, async () => {
    const nonce = `hang-${process.pid}-${Date.now()}`
    const run = await runFixture('slowtemplate', { env: { VPS_TEMPLATE_NONCE: nonce, VPS_SETUP_SECONDS: '1000', VPS_TEMPLATE_TIMEOUT: '3' } })
    expect(run.code).toBe(1)
    const files = run.json?.testResults ?? []
    expect(files.map((f: any) => f.status), run.output).toEqual(['failed', 'failed'])
    for (const f of files) expect(f.message).toMatch(/building the template vitest-sandbox-[0-9a-f]{24} failed; nothing was cached/)
    expect(run.output).toContain(`the build took longer than template.timeout (3 s) and was stopped while running "sleep 1000 # ${nonce}"`)
    expect(hostProcessesMatching(nonce)).toEqual([])
  })
})

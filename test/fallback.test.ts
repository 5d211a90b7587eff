/**
 * `fallback: 'forks'` against a provider that refuses connections: off, every file fails with the
 * reason; on, the files run on the host's forks pool after a loud warning.
 */
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { runFixture } from './support/vitest-run.js'

describe('fallback', () => {
  it('is off by default: nothing runs on the host, every file fails with the reason', { timeout: 120_000 }, async () => {
    const marker = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'vps-fallback-')), 'ran')
    const run = await runFixture('unreachable', { env: { VPS_MARKER: marker } })
    expect(run.code).toBe(1)
    expect(run.json?.numPassedTests, run.output).toBe(0)
    expect(run.output).toMatch(/ECONNREFUSED|connect|refused/i)
    expect(run.output).not.toMatch(/WARNING/)
    expect(fs.existsSync(marker)).toBe(false)
  })

  it("with fallback: 'forks', runs the files on the host after a loud warning", { timeout: 120_000 }, async () => {
    const marker = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'vps-fallback-')), 'ran')
    const run = await runFixture('unreachable', { env: { VPS_MARKER: marker, VPS_FALLBACK: 'forks' } })
    expect(run.code, run.output).toBe(0)
    expect(run.json?.numPassedTests).toBe(1)
    expect(run.output).toMatch(/sandbox: WARNING: watasu cannot be reached \(.+\)\.\nsandbox: fallback: 'forks' is set, so every test file runs on Vitest's forks pool ON THIS MACHINE, outside any sandbox\./)
    expect(run.output.match(/WARNING/g)).toHaveLength(1)
    expect(fs.readFileSync(marker, 'utf8')).toMatch(/^pid \d+$/)
  })

  it('refuses an unknown fallback, naming the values', async () => {
    const { sandbox } = await import('../src/index.js')
    expect(() => sandbox({ fallback: 'threads' as never })).toThrow(/fallback must be 'none' or 'forks' \(got 'threads'\)/)
  })
})

/** `--coverage` with v8 and istanbul: the sandbox pool reports host paths and the forks numbers. */
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { REPO, runFixture } from './support/vitest-run.js'

async function coverage(provider: 'v8' | 'istanbul', pool: 'forks' | 'sandbox') {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `vps-cov-${provider}-${pool}-`))
  try {
    const run = await runFixture('coverage', { pool, args: ['--coverage'], env: { VPS_COVERAGE: provider, VPS_COVERAGE_DIR: dir } })
    expect(run.code, run.output).toBe(0)
    return {
      summary: JSON.parse(fs.readFileSync(path.join(dir, 'coverage-summary.json'), 'utf8')),
      final: JSON.parse(fs.readFileSync(path.join(dir, 'coverage-final.json'), 'utf8')),
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

describe.each(['v8', 'istanbul'] as const)('coverage with %s', (provider) => {
  it('matches the forks pool file by file, with host paths', async () => {
    const [forks, sbx] = await Promise.all([coverage(provider, 'forks'), coverage(provider, 'sandbox')])
    const shapes = path.join(REPO, 'fixtures/coverage/src/shapes.ts')
    expect(Object.keys(sbx.summary).sort()).toEqual(['total', shapes, path.join(REPO, 'fixtures/coverage/src/untested.ts')].sort())
    expect(sbx.summary[shapes].lines.pct).toBeGreaterThan(0)
    expect(sbx.summary[shapes].lines.pct).toBeLessThan(100)
    expect(sbx.summary).toEqual(forks.summary)
    expect(sbx.final).toEqual(forks.final) // every statement, branch and function count
  })
})

describe('files no test imports, transformed on the host for the coverage report', () => {
  it('run none of their code on the host, even when no test file runs at all', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vps-cov-none-'))
    const marker = path.join(dir, 'ran-on-the-host')
    const evil = path.join(REPO, 'fixtures/coverage/src/evil-glob.js')
    // Glob options Vite evaluates as code; tagged templates make calls without a parenthesis.
    fs.writeFileSync(evil, `export const m = import.meta.glob('./*.ts', { eager: !Function\`process.getBuiltinModule('fs').writeFileSync(${JSON.stringify(marker)}, '1')\`\`\` })\n`)
    try {
      for (const provider of ['v8', 'istanbul']) {
        const run = await runFixture('coverage', { pool: 'sandbox', args: ['--coverage', '--passWithNoTests', 'matches-no-test-file'], env: { VPS_COVERAGE: provider, VPS_COVERAGE_DIR: path.join(dir, provider) } })
        expect(fs.existsSync(marker), run.output).toBe(false)
      }
    } finally {
      fs.rmSync(evil, { force: true })
      fs.rmSync(dir, { recursive: true, force: true })
    }
  })
})

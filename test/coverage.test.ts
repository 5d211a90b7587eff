/** `--coverage` with v8 and istanbul: the sandbox pool reports host paths and the forks numbers. */
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { hostProcessesMatching } from './support/engine.js'
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

describe('source maps the host reads for the coverage report', () => {
  const src = path.join(REPO, 'fixtures/coverage/src')
  /** Host processes of a Vitest run in the coverage fixture, by resident memory (kB). */
  const fixtureRuns = () =>
    hostProcessesMatching('vitest.mjs run').filter((pid) => {
      try {
        return fs.readlinkSync(`/proc/${pid}/cwd`) === path.join(REPO, 'fixtures/coverage')
      } catch {
        return false
      }
    })
  const rss = (pid: number) => Number(/VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0)

  /** Run the fixture with these files in src/ (and a canary outside the workspace); the host is stopped past 2 GB of memory. */
  async function withFiles(files: Record<string, string | { link: string }>, runs: Array<{ provider: 'v8' | 'istanbul'; args: string[]; projects?: boolean }>) {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vps-cov-maps-'))
    const canary = path.join(dir, 'canary.txt')
    fs.writeFileSync(canary, `CANARY-${process.pid}-${Date.now()}`)
    const written = Object.entries(files).map(([named, text]) => {
      const name = named.replace('CANARY_PATH', canary.slice(1))
      fs.mkdirSync(path.dirname(path.join(src, name)), { recursive: true })
      if (typeof text === 'string') fs.writeFileSync(path.join(src, name), text.replaceAll('CANARY_PATH', canary))
      else fs.symlinkSync(text.link.replaceAll('CANARY_PATH', canary), path.join(src, name))
      return path.join(src, name.split('/')[0])
    })
    let ballooned = 0
    const watch = setInterval(() => {
      for (const pid of fixtureRuns()) if (rss(pid) > 2 * 1024 * 1024) (ballooned = rss(pid)), process.kill(pid, 'SIGKILL')
    }, 100)
    try {
      const out = []
      for (const r of runs) {
        const reports = path.join(dir, `${r.provider}-${out.length}`)
        const run = await runFixture('coverage', { pool: 'sandbox', args: ['--coverage', '--coverage.reporter=json', '--coverage.reporter=html', ...r.args], env: { VPS_COVERAGE: r.provider, VPS_COVERAGE_DIR: reports, ...(r.projects ? { VPS_COVERAGE_PROJECTS: '1' } : {}) } })
        const final = path.join(reports, 'coverage-final.json')
        const keys = fs.existsSync(final) ? Object.keys(JSON.parse(fs.readFileSync(final, 'utf8'))) : []
        const html = fs.existsSync(reports) ? fs.readdirSync(reports, { recursive: true, encoding: 'utf8' }).filter((f) => f.endsWith('.html')).map((f) => fs.readFileSync(path.join(reports, f), 'utf8')).join('\n') : ''
        out.push({ ...r, run, keys, html, ballooned })
      }
      return { canary: fs.readFileSync(canary, 'utf8'), canaryPath: canary, out }
    } finally {
      clearInterval(watch)
      for (const w of written) fs.rmSync(w, { recursive: true, force: true })
      fs.rmSync(dir, { recursive: true, force: true })
    }
  }

  it("of a file no test imports: no host file's name or text reaches the report, through every project or with no test run", async () => {
    // The map names the canary and the host's environment; the glob fails the first screened transform.
    const map = Buffer.from(JSON.stringify({ version: 3, sources: ['CANARY_PATH', '/proc/self/environ'], names: [], mappings: 'AAAA;ACAA' })).toString('base64')
    const { canary, canaryPath, out } = await withFiles({ 'evil-map.js': `export const g = import.meta.glob('../../../../../outside/*.js')\n//# sourceMappingURL=data:application/json;base64,${map}\n` }, [
      { provider: 'v8', args: [], projects: true },
      { provider: 'istanbul', args: [], projects: true },
      { provider: 'v8', args: ['--passWithNoTests', 'matches-no-test-file'] },
    ])
    for (const o of out) {
      expect(o.keys.length, o.run.output).toBeGreaterThan(0)
      expect(o.keys.filter((k) => !k.startsWith(src + path.sep)), o.run.output).toEqual([])
      expect(o.html).not.toContain(canary)
      expect(o.html).not.toContain('PATH=')
      expect(o.run.output).not.toContain(canaryPath)
    }
  })

  it("of a tested file, whose sourceRoot leads through a link: Vite's joining and the check's agree", async () => {
    const deep = 'deep/1/2/3/4/5/6/7/8/9/10/11/12/13/14/15/16/17/18/19'
    const climb = '../'.repeat(deep.split('/').length + path.relative('/', src).split('/').length - 1)
    const map = JSON.stringify({ version: 3, sourceRoot: 'lnk', sources: [`${climb}CANARY_PATH`.replace(/\/\//g, '/')], names: [], mappings: 'AAAA;AACA' })
    fs.mkdirSync(path.join(src, 'lnk-case', deep), { recursive: true })
    fs.symlinkSync(deep, path.join(src, 'lnk-case', 'lnk'))
    const test = path.join(REPO, 'fixtures/coverage/test/root-link.test.ts')
    fs.writeFileSync(test, "import { expect, it } from 'vitest'\nimport { a } from '../src/lnk-case/evil.js'\nit('imports it', () => expect(a).toBe(1))\n")
    try {
      const { canary, canaryPath, out } = await withFiles({ 'lnk-case/evil.js': `export const a = 1\nexport const b = 2\n//# sourceMappingURL=data:application/json,${map}\n` }, [{ provider: 'v8', args: ['test/root-link.test.ts'] }])
      for (const o of out) {
        expect(o.run.code, o.run.output).toBe(0)
        expect(o.keys.filter((k) => !k.startsWith(src + path.sep)), o.run.output).toEqual([])
        expect(o.html).not.toContain(canary)
        expect(o.run.output).not.toContain(canaryPath)
      }
    } finally {
      fs.rmSync(test, { force: true })
    }
  })

  it('named /dev/zero (as a map file, or in a comment of a file with no map): the host reads none', async () => {
    const { out } = await withFiles(
      {
        'zero-map.js': "export const g = import.meta.glob('../../../../../outside/*.nothing')\n//# sourceMappingURL=/dev/zero\n",
        'zero-comment.js': 'export const x = 1\n// #sourceMappingURL=/dev/zero\n',
      },
      [{ provider: 'v8', args: [], projects: true }, { provider: 'v8', args: ['--passWithNoTests', 'matches-no-test-file'] }],
    )
    for (const o of out) {
      expect(o.ballooned, o.run.output).toBe(0)
      expect(o.keys).toEqual(expect.arrayContaining([path.join(src, 'zero-comment.js')]))
    }
  })

  it('listed through links or names a file URL reads as another path: no host file, nor the host environment, is reported or read', async () => {
    const climb = '%2e%2e/'.repeat(path.relative('/', src).split('/').length + 1)
    const { canary, out } = await withFiles(
      {
        'link.js': { link: 'CANARY_PATH' },
        'environ.js': { link: '/proc/self/environ' },
        'zero-link.js': { link: '/dev/zero' },
        [`${climb}CANARY_PATH`]: 'export const x = 1\n',
        [`${climb}dev/zero`]: 'export const x = 1\n',
      },
      [{ provider: 'v8', args: [] }, { provider: 'istanbul', args: [] }],
    )
    for (const o of out) {
      expect(o.ballooned, o.run.output).toBe(0)
      expect(o.run.code, o.run.output).toBe(0)
      expect(o.keys.filter((k) => !k.startsWith(src + path.sep)), o.run.output).toEqual([])
      expect(o.keys.filter((k) => /link|environ|%/.test(k))).toEqual([])
      expect(o.html).not.toContain(canary)
      expect(o.html).not.toContain('PATH=')
    }
  })
})

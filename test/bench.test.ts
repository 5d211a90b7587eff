/**
 * `vitest bench` in sandboxes: the benchmarks run in the sandbox's workers and report to the host
 * as under forks (times differ; files, groups, names and counts do not); `--outputJson` writes
 * the host's report and `--compare` reads one back.
 */
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { spawn } from 'node:child_process'
import { expect, it } from 'vitest'
import { REPO, VITEST } from './support/vitest-run.js'

const FIXTURE = path.join(REPO, 'fixtures/bench')

async function bench(pool: 'forks' | 'sandbox', args: string[]): Promise<{ code: number | null; output: string }> {
  const child = spawn(process.execPath, [VITEST, 'bench', '--run', ...args], { cwd: FIXTURE, env: { ...process.env, VPS_POOL: pool, NO_COLOR: '1', FORCE_COLOR: '0', CI: 'true' } })
  let output = ''
  child.stdout.on('data', (d) => (output += d))
  child.stderr.on('data', (d) => (output += d))
  const code = await new Promise<number | null>((r) => child.once('exit', r))
  return { code, output }
}

/** What does not depend on timing: each file's groups with their benchmarks' names and ids. */
const shape = (report: any) =>
  report.files.map((f: any) => ({ filepath: f.filepath, groups: f.groups.map((g: any) => ({ fullName: g.fullName, benchmarks: g.benchmarks.map((b: any) => ({ id: b.id, name: b.name, measured: b.sampleCount > 0 && b.hz > 0 })) })) }))

it('runs benchmarks in sandboxes with the results shape of forks, --outputJson and --compare included', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vps-bench-'))
  try {
    const out = (pool: string) => path.join(dir, `${pool}.json`)
    const [forks, sbx] = [await bench('forks', ['--outputJson', out('forks')]), await bench('sandbox', ['--outputJson', out('sandbox')])]
    expect(forks.code, forks.output).toBe(0)
    expect(sbx.code, sbx.output).toBe(0)
    expect(sbx.output).toMatch(/sandbox: 1 sandbox \(local\)/)
    const expected = shape(JSON.parse(fs.readFileSync(out('forks'), 'utf8')))
    expect(expected[0].groups.flatMap((g: any) => g.benchmarks.map((b: any) => b.name)).sort()).toEqual(['Array.prototype.sort', 'sum with reduce', 'toSorted'])
    expect(shape(JSON.parse(fs.readFileSync(out('sandbox'), 'utf8')))).toEqual(expected)
    // Compared with forks' report: each benchmark's row gets its baseline.
    const compared = await bench('sandbox', ['--compare', out('forks')])
    expect(compared.code, compared.output).toBe(0)
    for (const name of ['Array.prototype.sort', 'toSorted', 'sum with reduce']) expect(compared.output).toMatch(new RegExp(`${name.replace(/\./g, '\\.')} .*\\(baseline\\)`))
  } finally {
    fs.rmSync(dir, { recursive: true, force: true })
  }
})

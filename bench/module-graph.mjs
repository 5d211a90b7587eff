// A suite with a real module graph: BENCH_FILES test files (160), each importing one entry that
// pulls in BENCH_MODULES modules (220, ten layers, each module importing three of the layer below).
// Under forks, under sandbox() on local sandboxes (direct channel), and under watasu() to a
// `vitest-sandbox serve` through a loopback proxy at 0 and 50 ms round trip, with the same number
// of slots. Wall time against forks and Vitest's own import/setup breakdown, median of
// BENCH_ROUNDS interleaved rounds after a warm-up of each (`npm run bench:graph`).
import { spawn } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { startLatencyProxy } from './latency-proxy.mjs'
import { startServe, stopServe, watasuEnv } from './serve.mjs'

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const suite = path.join(repo, '.bench', 'graph')
const FILES = Number(process.env.BENCH_FILES ?? 160)
const MODULES = Number(process.env.BENCH_MODULES ?? 220)
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 2)
const SLOTS = Number(process.env.BENCH_SLOTS ?? os.cpus().length)
const LAYERS = 10
const perLayer = Math.ceil(MODULES / LAYERS)

fs.rmSync(suite, { recursive: true, force: true })
fs.mkdirSync(path.join(suite, 'src'), { recursive: true })
fs.mkdirSync(path.join(suite, 'test'))
fs.writeFileSync(
  path.join(suite, 'vitest.config.ts'),
  `import { defineConfig } from 'vitest/config'
import { sandbox, watasu } from 'vitest-pool-sandbox'
const slots = Number(process.env.SLOTS)
const pool = process.env.P === 'forks' ? 'forks' : sandbox({ sandboxes: slots, concurrency: 1, ...(process.env.P === 'watasu' ? { provider: watasu(), template: { dependencies: 'copy' } } : {}) })
export default defineConfig({ test: { pool, maxWorkers: slots } })
`,
)
for (let i = 0; i < MODULES; i++) {
  const layer = Math.floor(i / perLayer)
  const below = layer === 0 ? [] : [0, 1, 2].map((k) => (layer - 1) * perLayer + ((i * 7 + k * 5) % perLayer))
  const imports = [...new Set(below)].map((j) => `import { f as f${j} } from './m${j}'\n`).join('')
  const body = below.length ? [...new Set(below)].map((j) => `f${j}(x)`).join(' + ') : `x + ${i}`
  fs.writeFileSync(path.join(suite, 'src', `m${i}.ts`), `${imports}export const name: string = 'm${i}'\nexport function f(x: number): number {\n  return (${body}) % 1000003\n}\n`)
}
const top = Array.from({ length: MODULES - (LAYERS - 1) * perLayer }, (_, k) => (LAYERS - 1) * perLayer + k)
fs.writeFileSync(path.join(suite, 'src', 'index.ts'), `${top.map((j) => `import { f as f${j} } from './m${j}'\n`).join('')}export function total(x: number): number {\n  return ${top.map((j) => `f${j}(x)`).join(' + ')}\n}\n`)
for (let k = 0; k < FILES; k++) {
  fs.writeFileSync(path.join(suite, 'test', `t${k}.test.ts`), `import { expect, test } from 'vitest'\nimport { total } from '../src/index'\ntest('graph ${k}', () => expect(total(${k})).toBe(total(${k})))\ntest('finite ${k}', () => expect(Number.isFinite(total(${k}))).toBe(true))\n`)
}

async function run(name, env) {
  const started = Date.now()
  const child = spawn(process.execPath, [path.join(repo, 'node_modules/vitest/vitest.mjs'), 'run'], { cwd: suite, env: { ...process.env, NO_COLOR: '1', SLOTS: String(SLOTS), ...env }, stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  child.stdout.on('data', (d) => (out += d))
  child.stderr.on('data', (d) => (out += d))
  const code = await new Promise((r) => child.once('exit', r))
  const wallMs = Date.now() - started
  const passed = Number(/Tests\s+(\d+) passed/.exec(out)?.[1])
  if (code !== 0 || passed !== FILES * 2) throw new Error(`${name} failed (${code}):\n${out}`)
  // Vitest's own breakdown: "Duration 12.3s (transform 1.2s, setup 0ms, import 3.4s, ...)".
  const part = (k) => {
    const m = new RegExp(`${k} ([\\d.]+)(ms|s)\\b`).exec(out)
    return m ? Number(m[1]) * (m[2] === 's' ? 1000 : 1) : NaN
  }
  return { wallMs, importMs: part('import'), setupMs: part('setup') }
}

const serve = await startServe()
const proxies = { 0: await startLatencyProxy({ target: { host: serve.host, port: serve.port } }), 50: await startLatencyProxy({ target: { host: serve.host, port: serve.port }, rttMs: 50 }) }
// BENCH_POOLS: a subset by key (forks, local, watasu0, watasu50); forks is always run, as the base.
const wanted = new Set(['forks', ...(process.env.BENCH_POOLS ?? 'local,watasu0,watasu50').split(',')])
const configs = [
  { key: 'forks', name: 'forks', env: { P: 'forks' } },
  { key: 'local', name: 'sandbox, local()', env: { P: 'local' } },
  { key: 'watasu0', name: 'sandbox, watasu() → serve, 0 ms', env: { P: 'watasu', ...watasuEnv(serve, proxies[0]) } },
  { key: 'watasu50', name: 'sandbox, watasu() → serve, 50 ms', env: { P: 'watasu', ...watasuEnv(serve, proxies[50]) } },
].filter((c) => wanted.has(c.key))
const results = new Map(configs.map((c) => [c.name, []]))
try {
  for (const c of configs) await run(c.name, c.env) // warm-up: templates, caches
  for (let r = 0; r < ROUNDS; r++) {
    for (const c of configs) {
      const m = await run(c.name, c.env)
      results.get(c.name).push(m)
      console.error(`round ${r + 1}, ${c.name}: ${(m.wallMs / 1000).toFixed(1)} s (import ${(m.importMs / 1000).toFixed(1)} s)`)
    }
  }
} finally {
  for (const p of Object.values(proxies)) await p.close()
  await stopServe(serve)
  fs.rmSync(suite, { recursive: true, force: true })
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor((xs.length - 1) / 2)]
const med = (name, key) => median(results.get(name).map((m) => m[key]))
const forks = med('forks', 'wallMs')
const s = (ms) => `${(ms / 1000).toFixed(1)} s`
console.log(`${FILES} test files, each importing a graph of ${MODULES} modules; ${SLOTS} slots (forks: maxWorkers ${SLOTS}; sandbox: ${SLOTS} sandboxes × concurrency 1); median of ${ROUNDS} interleaved rounds after a warm-up; ${os.cpus().length} CPUs (${os.cpus()[0].model}), Node ${process.versions.node}, ${new Date().toISOString().slice(0, 10)}\n`)
console.log('| pool | wall | vs forks | Vitest import | Vitest setup |')
console.log('|---|---|---|---|---|')
for (const c of configs) console.log(`| ${c.name} | ${s(med(c.name, 'wallMs'))} | ${(med(c.name, 'wallMs') / forks).toFixed(2)}× | ${s(med(c.name, 'importMs'))} | ${s(med(c.name, 'setupMs'))} |`)
process.exit(0)

// The start of a run and watch-mode reruns: (c) time from starting Vitest to the first test result,
// cold (an empty provider state: the template is built) and warm, under forks, `local()` and
// `watasu()` → `vitest-sandbox serve` through a loopback proxy adding 0 or 50 ms of round trip;
// (d) bytes sent to the provider on the first run, on an unchanged rerun and on a rerun after one
// source file changed, split into file uploads and API calls (plain HTTP) and process streams
// (WebSocket: RPC, module code). Prints Markdown tables with the machine and date.
import { spawn } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import readline from 'node:readline'
import { fileURLToPath } from 'node:url'
import { startLatencyProxy } from './latency-proxy.mjs'
import { startServe, stopServe, watasuEnv } from './serve.mjs'

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const suite = path.join(repo, '.bench', 'start')
const FILES = Number(process.env.BENCH_FILES ?? 8)
const SANDBOXES = Number(process.env.BENCH_SANDBOXES ?? 2)
const RTTS = (process.env.BENCH_RTT ?? '0,50').split(',').map(Number)

fs.rmSync(suite, { recursive: true, force: true })
fs.mkdirSync(path.join(suite, 'test'), { recursive: true })
fs.mkdirSync(path.join(suite, 'src'))
fs.writeFileSync(
  path.join(suite, 'vitest.config.ts'),
  `import { defineConfig } from 'vitest/config'
import { local, sandbox, watasu } from 'vitest-pool-sandbox'
const P = process.env.P
const provider = P === 'local' ? local({ stateDir: process.env.STATE }) : watasu()
export default defineConfig({ test: P === 'forks' ? { pool: 'forks', maxWorkers: ${SANDBOXES} } : { pool: sandbox({ provider, sandboxes: ${SANDBOXES}, concurrency: 1, template: { dependencies: P === 'local' ? 'host' : 'copy' } }) } })
`,
)
const writeValue = (v) => fs.writeFileSync(path.join(suite, 'src/value.ts'), `export const value = ${JSON.stringify(v)}\n`)
writeValue('one')
for (let i = 0; i < FILES; i++) {
  fs.writeFileSync(path.join(suite, 'test', `t${i}.test.ts`), `import { expect, test } from 'vitest'\nimport { value } from '../src/value'\ntest('reads the value', () => expect(typeof value).toBe('string'))\n`)
}
// Vitest in watch mode through its API: the first run, an unchanged rerun, a rerun after src/value.ts
// changed. At each step it prints a MARK line and waits for a line on stdin (the bench reads the
// proxy's counters in between).
fs.writeFileSync(
  path.join(suite, 'drive.mjs'),
  `import fs from 'node:fs'
import readline from 'node:readline'
import { createVitest } from 'vitest/node'
const lines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]()
let first
const vitest = await createVitest('test', { watch: true, reporters: [{ onTestCaseResult: () => (first ??= Date.now()) }] })
const step = async (name) => {
  const failed = vitest.state.getCountOfFailedTests()
  if (failed) throw new Error(name + ': ' + failed + ' failed tests')
  console.log('MARK ' + name + ' ' + (first - Number(process.env.T0)))
  await lines.next()
}
try {
  await vitest.start()
  await step('first')
  await vitest.rerunFiles()
  await step('unchanged')
  fs.writeFileSync('src/value.ts', 'export const value = "two"\\n')
  await vitest.rerunFiles()
  await step('changed')
} finally {
  await vitest.close()
}
// stdin stays open (the bench's end of the pipe), which would keep this process alive.
process.exit(0)
`,
)

/** One watch session; returns the time to the first result and the bytes sent at each step. */
async function session(pool, env, proxy) {
  writeValue('one')
  const t0 = Date.now()
  const child = spawn(process.execPath, ['drive.mjs'], { cwd: suite, env: { ...process.env, ...env, NO_COLOR: '1', P: pool, T0: String(t0) }, stdio: ['pipe', 'pipe', 'pipe'] })
  let err = ''
  child.stderr.on('data', (d) => (err += d))
  const steps = {}
  let firstResult
  let last = proxy ? { ...proxy.bytes } : undefined
  for await (const line of readline.createInterface({ input: child.stdout })) {
    const m = /^MARK (\w+) (\d+)/.exec(line)
    if (!m) continue
    firstResult ??= Number(m[2])
    if (proxy) {
      steps[m[1]] = { http: proxy.bytes.httpUp - last.httpUp, stream: proxy.bytes.streamUp - last.streamUp }
      last = { ...proxy.bytes }
    }
    child.stdin.write('next\n')
  }
  const code = await new Promise((r) => (child.exitCode !== null ? r(child.exitCode) : child.once('exit', r)))
  if (code !== 0 || firstResult === undefined) throw new Error(`${pool} session failed (${code}):\n${err}`)
  return { firstResult, steps }
}

const rows = []
const bytes = []
rows.push({ pool: 'forks', rtt: '–', cold: (await session('forks', {})).firstResult, warm: (await session('forks', {})).firstResult })
{
  const state = fs.mkdtempSync(path.join(os.tmpdir(), 'vps-bench-state-'))
  try {
    const cold = await session('local', { STATE: state })
    rows.push({ pool: 'local()', rtt: '–', cold: cold.firstResult, warm: (await session('local', { STATE: state })).firstResult })
  } finally {
    fs.rmSync(state, { recursive: true, force: true })
  }
}
for (const rtt of RTTS) {
  // A fresh `serve` per round trip: its first session builds the template (cold).
  const serve = await startServe()
  const proxy = await startLatencyProxy({ target: { host: serve.host, port: serve.port }, rttMs: rtt })
  try {
    const cold = await session('watasu', watasuEnv(serve, proxy), proxy)
    const warm = await session('watasu', watasuEnv(serve, proxy), proxy)
    rows.push({ pool: 'watasu() → serve', rtt: `${rtt} ms`, cold: cold.firstResult, warm: warm.firstResult })
    bytes.push({ rtt, ...warm.steps })
    console.error(`${rtt} ms: cold ${cold.firstResult} ms, warm ${warm.firstResult} ms`)
  } finally {
    await proxy.close()
    await stopServe(serve)
  }
}
fs.rmSync(suite, { recursive: true, force: true })

const s = (ms) => `${(ms / 1000).toFixed(1)} s`
const kb = (b) => (b < 1024 ** 2 ? `${(b / 1024).toFixed(1)} kB` : `${(b / 1024 ** 2).toFixed(2)} MB`)
console.log(`${FILES} test files, ${SANDBOXES} sandboxes (forks: ${SANDBOXES} workers), watch mode through Vitest's API; ${os.cpus().length} CPUs (${os.cpus()[0].model}), ${(os.totalmem() / 1024 ** 3).toFixed(0)} GB, Node ${process.versions.node}, ${new Date().toISOString().slice(0, 10)}\n`)
console.log('| pool | round trip | first result, cold | first result, warm |')
console.log('|---|---|---|---|')
for (const r of rows) console.log(`| ${r.pool} | ${r.rtt} | ${s(r.cold)} | ${s(r.warm)} |`)
console.log('\n| round trip | step | uploads and API calls (HTTP) | process streams (WebSocket) |')
console.log('|---|---|---|---|')
for (const b of bytes) for (const step of ['first', 'unchanged', 'changed']) console.log(`| ${b.rtt} ms | ${step} | ${kb(b[step].http)} | ${kb(b[step].stream)} |`)

// Fan-out through a network: files that each sleep, on 1, 4 and 16 sandboxes of a
// `vitest-sandbox serve` reached through a loopback proxy adding 0 or 50 ms of round trip.
// For each run: wall time against the ideal (max(longest file, total ÷ slots)), time from
// `vitest run` to the first test result, bytes sent to the provider, host CPU of the Vitest
// process per test file, and the peak memory of the provider's process tree per sandbox.
// Prints a Markdown table with the machine and date; paste it into the README.
import { spawn } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { startLatencyProxy } from './latency-proxy.mjs'
import { cpuSeconds, treeRss } from './proc.mjs'
import { startServe, stopServe, watasuEnv } from './serve.mjs'

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const suite = path.join(repo, '.bench', 'fanout')
const logs = path.join(repo, '.bench', 'fanout-logs')
const FILES = Number(process.env.BENCH_FILES ?? 32)
const SLEEP_MS = Number(process.env.BENCH_SLEEP_MS ?? 5000)
const COUNTS = (process.env.BENCH_SANDBOXES ?? '1,4,16').split(',').map(Number)
const RTTS = (process.env.BENCH_RTT ?? '0,50').split(',').map(Number)

fs.rmSync(suite, { recursive: true, force: true })
fs.mkdirSync(path.join(suite, 'test'), { recursive: true })
fs.writeFileSync(
  path.join(suite, 'vitest.config.ts'),
  `import { defineConfig } from 'vitest/config'
import { sandbox, watasu } from 'vitest-pool-sandbox'
const n = Number(process.env.N)
// P=forks: the same files on n forks workers on this machine, the floor its CPUs allow.
export default defineConfig({ test: process.env.P === 'forks' ? { pool: 'forks', maxWorkers: n } : { pool: sandbox({ provider: watasu(), sandboxes: n, concurrency: 1, template: { dependencies: 'copy' }, usageFile: process.env.USAGE }) } })
`,
)
for (let i = 0; i < FILES; i++) {
  fs.writeFileSync(path.join(suite, 'test', `s${i}.test.ts`), `import { test } from 'vitest'\ntest('sleeps', () => new Promise((r) => setTimeout(r, ${SLEEP_MS})), ${SLEEP_MS * 4})\n`)
}

async function run(serve, proxy, n, pool = 'sandbox') {
  const usage = path.join(os.tmpdir(), `vps-bench-usage-${process.pid}-${n}.json`)
  const report = path.join(os.tmpdir(), `vps-bench-report-${process.pid}-${n}.json`)
  const before = { ...proxy.bytes }
  const started = Date.now()
  const child = spawn(process.execPath, [path.join(repo, 'node_modules/vitest/vitest.mjs'), 'run', '--reporter=default', '--reporter=json', `--outputFile.json=${report}`], {
    cwd: suite,
    env: { ...process.env, DEBUG: process.env.DEBUG ?? 'vitest-pool-sandbox:fleet', NO_COLOR: '1', N: String(n), USAGE: usage, P: pool, ...watasuEnv(serve, proxy) },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let out = ''
  child.stdout.on('data', (d) => (out += d))
  child.stderr.on('data', (d) => (out += d))
  let peak = 0
  let cpu = 0
  const sampler = setInterval(() => {
    peak = Math.max(peak, treeRss(serve.child.pid, { self: true }).total)
    try {
      cpu = cpuSeconds(child.pid)
    } catch {}
  }, 250)
  const code = await new Promise((r) => child.once('exit', r))
  clearInterval(sampler)
  const wallMs = Date.now() - started
  // Every run's output is kept, so an outlier can be explained (a rerun, a lost sandbox).
  fs.mkdirSync(logs, { recursive: true })
  fs.writeFileSync(path.join(logs, `${pool}-${n}-${proxy.rttMs}ms.log`), out)
  const reruns = out.split('running it again on another sandbox').length - 1
  if (reruns) console.error(`${pool} on ${n}: ${reruns} files ran again after a lost sandbox or worker`)
  const json = JSON.parse(fs.readFileSync(report, 'utf8'))
  if (code !== 0 || json.numPassedTests !== FILES) throw new Error(`run on ${n} sandboxes failed (${code}):\n${out}`)
  const u = pool === 'forks' ? undefined : JSON.parse(fs.readFileSync(usage, 'utf8'))
  const firstResult = Math.min(...json.testResults.map((t) => t.endTime)) - started
  fs.rmSync(usage, { force: true })
  fs.rmSync(report, { force: true })
  return { n, wallMs, usage: u, firstResult, up: proxy.bytes.up - before.up, cpu, peak }
}

const serve = await startServe()
const baseline = treeRss(serve.child.pid, { self: true }).total
const rows = []
/** Wall time of the same files under forks with as many workers as slots. */
const forks = new Map()
try {
  {
    // The template (the repository's node_modules copied once), before anything is measured.
    const proxy = await startLatencyProxy({ target: { host: serve.host, port: serve.port } })
    const t = Date.now()
    await run(serve, proxy, Math.max(...COUNTS))
    console.error(`warm-up (template build and one run): ${((Date.now() - t) / 1000).toFixed(1)} s`)
    for (const n of COUNTS) forks.set(n, (await run(serve, proxy, n, 'forks')).wallMs)
    await proxy.close()
  }
  for (const rtt of RTTS) {
    const proxy = await startLatencyProxy({ target: { host: serve.host, port: serve.port }, rttMs: rtt })
    for (const n of COUNTS) {
      const r = await run(serve, proxy, n)
      const ideal = Math.max(SLEEP_MS, (FILES * SLEEP_MS) / n)
      rows.push({ rtt, ...r, ideal })
      console.error(`${rtt} ms, ${n} sandboxes: ${(r.wallMs / 1000).toFixed(1)} s (ideal ${(ideal / 1000).toFixed(1)} s)`)
    }
    await proxy.close()
  }
} finally {
  await stopServe(serve)
  fs.rmSync(suite, { recursive: true, force: true })
}

const s = (ms) => `${(ms / 1000).toFixed(1)} s`
const mb = (b) => `${(b / 1024 ** 2).toFixed(0)} MB`
console.log(`${FILES} files of ${SLEEP_MS / 1000} s each, concurrency 1, warm template, watasu() → \`vitest-sandbox serve\` through a loopback proxy; ${os.cpus().length} CPUs (${os.cpus()[0].model}), ${(os.totalmem() / 1024 ** 3).toFixed(0)} GB, Node ${process.versions.node}, ${new Date().toISOString().slice(0, 10)}\n`)
console.log('| round trip | sandboxes | wall | ideal | wall ÷ ideal | forks, as many workers (this machine\'s floor) | first result | sent to the provider | host CPU per file | provider memory per sandbox (peak, busy) |')
console.log('|---|---|---|---|---|---|---|---|---|---|')
for (const r of rows) {
  console.log(`| ${r.rtt} ms | ${r.n} | ${s(r.wallMs)} | ${s(r.ideal)} | ${(r.wallMs / r.ideal).toFixed(2)}× | ${s(forks.get(r.n))} (${(forks.get(r.n) / r.ideal).toFixed(2)}×) | ${s(r.firstResult)} | ${mb(r.up)} | ${((r.cpu / FILES) * 1000).toFixed(0)} ms | ${mb((r.peak - baseline) / r.n)} |`)
}

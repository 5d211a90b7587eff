// A real suite's wall time in local sandboxes with the default limits (cgroups, a filesystem of
// its own per sandbox) and with them off (`local({ limits: false })`), interleaved in one session.
//   BENCH_SUITE=<project root> [BENCH_ARGS='--project runtime'] [BENCH_ROUNDS=3] [BENCH_SANDBOXES=2] node bench/limits.mjs
// Prints a Markdown table with the machine and date; paste it into the README.
import { spawnSync } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const suite = process.env.BENCH_SUITE
if (!suite) throw new Error('BENCH_SUITE: the root of a project whose suite to run (fetched and installed from its lockfile)')
const args = (process.env.BENCH_ARGS ?? '').split(' ').filter(Boolean)
const rounds = Number(process.env.BENCH_ROUNDS ?? 3)
const sandboxes = Number(process.env.BENCH_SANDBOXES ?? 2)

function run(limits) {
  const report = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'vps-bench-limits-')), 'report.json')
  const options = JSON.stringify({ sandboxes, local: limits ? {} : { limits: false } })
  const t = performance.now()
  const r = spawnSync(process.execPath, [path.join(repo, 'dist/cli/check-run.js'), suite, 'sandbox', report, options, ...args], { cwd: suite, encoding: 'utf8', env: { ...process.env, NO_COLOR: '1', CI: 'true' } })
  const ms = performance.now() - t
  const json = fs.existsSync(report) ? JSON.parse(fs.readFileSync(report, 'utf8')) : undefined
  fs.rmSync(path.dirname(report), { recursive: true, force: true })
  if (!json) throw new Error(`run (limits ${limits ? 'on' : 'off'}) wrote no report:\n${r.stdout}\n${r.stderr}`)
  return { ms, passed: json.numPassedTests, failed: json.numFailedTests }
}

run(true) // the template, once
const times = { on: [], off: [] }
let counts
for (let i = 0; i < rounds; i++) {
  for (const mode of i % 2 ? ['off', 'on'] : ['on', 'off']) {
    const r = run(mode === 'on')
    times[mode].push(r.ms)
    counts ??= r
    if (r.passed !== counts.passed || r.failed !== counts.failed) throw new Error(`limits ${mode}: ${r.passed} passed, ${r.failed} failed; the first run had ${counts.passed} and ${counts.failed}`)
  }
}
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]
const s = (ms) => `${(ms / 1000).toFixed(1)} s`
console.log(`${os.cpus().length} cores, ${Math.round(os.totalmem() / 1024 ** 3)} GiB, ${os.platform()} ${os.release()}, Node ${process.version}, ${new Date().toISOString().slice(0, 10)}`)
console.log(`${path.basename(suite)} ${args.join(' ')}: ${counts.passed} passed, ${counts.failed} failed; ${sandboxes} sandboxes; median of ${rounds}`)
console.log('\n| limits | wall time | ratio |\n|---|---|---|')
console.log(`| off (\`local({ limits: false })\`) | ${s(median(times.off))} | 1.00 |`)
console.log(`| on (defaults: cgroups, a filesystem per sandbox) | ${s(median(times.on))} | ${(median(times.on) / median(times.off)).toFixed(2)} |`)

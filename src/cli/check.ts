/**
 * `vitest-sandbox check [vitest args]`: runs the project's suite with `pool: 'forks'` and with the
 * sandbox pool, one after the other, and prints every test whose result differs (status or
 * failure message) and the wall time of both. Exit code 0 when the results are the same.
 */
import { spawn } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const RUNNER = path.join(path.dirname(fileURLToPath(import.meta.url)), 'check-run.js')

export interface CheckOptions {
  root: string
  /** Vitest's own arguments, as for `vitest run`. */
  args: string[]
  /** sandbox() options for the sandbox run (e.g. { sandboxes: 2 }). */
  sandbox: Record<string, unknown>
  log(line: string): void
}

interface Result {
  status: string
  message: string
}

interface Run {
  pool: 'forks' | 'sandbox'
  seconds: number
  code: number | null
  tests: Map<string, Result>
  logFile: string
}

// eslint-disable-next-line no-control-regex
const ANSI = /\u001B\[[0-9;]*m/g

/** Per test (and per file): status and failure messages; what a report says about it. */
export function resultsOf(report: any, root: string): Map<string, Result> {
  const out = new Map<string, Result>()
  for (const file of report?.testResults ?? []) {
    const rel = path.relative(root, file.name)
    out.set(`${rel} (file)`, { status: file.status, message: String(file.message ?? '').replace(ANSI, '') })
    for (const t of file.assertionResults ?? []) out.set(`${rel} > ${t.fullName}`, { status: t.status, message: (t.failureMessages ?? []).join('\n').replace(ANSI, '') })
  }
  return out
}

async function runOnce(opts: CheckOptions, pool: 'forks' | 'sandbox', dir: string): Promise<Run> {
  const report = path.join(dir, `${pool}.json`)
  const logFile = path.join(dir, `${pool}.log`)
  const out = fs.openSync(logFile, 'w')
  const started = performance.now()
  const child = spawn(process.execPath, [RUNNER, opts.root, pool, report, JSON.stringify(opts.sandbox), ...opts.args], { cwd: opts.root, stdio: ['ignore', out, out] })
  const code = await new Promise<number | null>((resolve) => child.once('exit', (c) => resolve(c)))
  fs.closeSync(out)
  const seconds = (performance.now() - started) / 1000
  const tests = fs.existsSync(report) ? resultsOf(JSON.parse(fs.readFileSync(report, 'utf8')), opts.root) : new Map<string, Result>()
  return { pool, seconds, code, tests, logFile }
}

function summary(run: Run): string {
  const count = (s: string) => [...run.tests].filter(([k, t]) => !k.endsWith(' (file)') && t.status === s).length
  const all = [...run.tests.keys()].filter((k) => !k.endsWith(' (file)')).length
  return `${all} tests (${count('passed')} passed, ${count('failed')} failed, ${count('pending') + count('skipped') + count('todo')} skipped) in ${run.seconds.toFixed(1)} s, exit code ${run.code}`
}

function firstLines(text: string): string {
  return text.split('\n').filter(Boolean).slice(0, 3).join(' | ').slice(0, 300) || '(no message)'
}

export async function check(opts: CheckOptions): Promise<number> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vitest-sandbox-check-'))
  opts.log(`vitest-sandbox check: ${opts.root}${opts.args.length ? ` (vitest run ${opts.args.join(' ')})` : ''}`)
  const runs: Run[] = []
  for (const pool of ['forks', 'sandbox'] as const) {
    opts.log(`  running with pool ${pool === 'forks' ? "'forks'" : `sandbox(${JSON.stringify(opts.sandbox)})`} ...`)
    const run = await runOnce(opts, pool, dir)
    runs.push(run)
    opts.log(`  ${pool.padEnd(7)} ${summary(run)}`)
    if (!run.tests.size) {
      const tail = fs.readFileSync(run.logFile, 'utf8').trim().split('\n').slice(-30).join('\n')
      opts.log(`  the ${pool} run reported no results; the end of its output (${run.logFile}):\n${tail}`)
      return 1
    }
  }
  const [forks, sbx] = runs
  opts.log(`  wall time: sandbox ${(sbx.seconds / forks.seconds).toFixed(2)}× forks`)
  const differences: string[] = []
  for (const key of new Set([...forks.tests.keys(), ...sbx.tests.keys()])) {
    const a = forks.tests.get(key)
    const b = sbx.tests.get(key)
    if (a && b && a.status === b.status && a.message === b.message) continue
    differences.push(
      `  ✗ ${key}\n      forks:   ${a ? `${a.status}${a.message ? `: ${firstLines(a.message)}` : ''}` : 'not reported'}\n      sandbox: ${b ? `${b.status}${b.message ? `: ${firstLines(b.message)}` : ''}` : 'not reported'}`,
    )
  }
  if (forks.code !== sbx.code) differences.push(`  ✗ exit code: forks ${forks.code}, sandbox ${sbx.code}`)
  opts.log(`  ${differences.length} difference${differences.length === 1 ? '' : 's'}${differences.length ? ':' : ''} (reports and logs: ${dir})`)
  for (const d of differences) opts.log(d)
  return differences.length ? 1 : 0
}

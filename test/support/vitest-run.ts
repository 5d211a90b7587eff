import { spawn } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'

export const REPO = path.resolve(import.meta.dirname, '../..')
export const VITEST = path.join(REPO, 'node_modules/vitest/vitest.mjs')

export interface FixtureRun {
  code: number | null
  output: string
  json: any
}

/** Run Vitest on a fixture project (as a user would, in its own process) with the JSON reporter too. */
export async function runFixture(name: string, opts: { pool?: 'forks' | 'sandbox'; args?: string[]; env?: Record<string, string>; node?: string; vitest?: string; outputFile?: string } = {}): Promise<FixtureRun> {
  const cwd = path.join(REPO, 'fixtures', name)
  const out = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'vps-run-')), 'report.json')
  const child = spawn(opts.node ?? process.execPath, [opts.vitest ?? VITEST, 'run', '--reporter=default', '--reporter=json', `--outputFile.json=${out}`, ...(opts.args ?? [])], {
    cwd,
    env: { ...process.env, VPS_POOL: opts.pool ?? 'sandbox', NO_COLOR: '1', FORCE_COLOR: '0', CI: 'true', ...opts.env },
    // `vitest run > file` when outputFile is given: a file that grows during the run.
    stdio: ['ignore', opts.outputFile ? fs.openSync(opts.outputFile, 'w') : 'pipe', opts.outputFile ? fs.openSync(opts.outputFile, 'a') : 'pipe'],
  })
  let output = ''
  child.stdout?.on('data', (d) => (output += d))
  child.stderr?.on('data', (d) => (output += d))
  const code = await new Promise<number | null>((r) => child.once('exit', r))
  if (opts.outputFile) output = fs.readFileSync(opts.outputFile, 'utf8')
  const json = fs.existsSync(out) ? JSON.parse(fs.readFileSync(out, 'utf8')) : undefined
  fs.rmSync(path.dirname(out), { recursive: true, force: true })
  return { code, output, json }
}

/** Per test: file (relative), full name, state and failure messages; the comparable part of a report. */
export function testsOf(json: any): Record<string, { status: string; failures: string[] }> {
  const out: Record<string, { status: string; failures: string[] }> = {}
  for (const file of json.testResults) {
    const rel = path.relative(REPO, file.name)
    out[`${rel} (file)`] = { status: file.status, failures: file.message ? [file.message] : [] }
    for (const t of file.assertionResults) out[`${rel} > ${t.fullName}`] = { status: t.status, failures: t.failureMessages }
  }
  return out
}

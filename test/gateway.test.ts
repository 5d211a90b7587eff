/**
 * Attacks on the host gateway through real Vitest in real sandboxes (fixtures/gateway-attack):
 * raw frames on a worker's private channel (a reused call id, an answer the host never asked for,
 * a method off the list, a 3 GiB header, results for another test file), and calls the gateway
 * screens (every id form, for existing and missing host files alike; coverage data naming host
 * files, `__proto__` keys and paths with `..`; error stacks naming host files; VITE_ variables),
 * and seeded fuzzers writing random frame streams cut at random byte boundaries (test/fuzz).
 * The host's output, reports, coverage reports, Object.prototype and files are checked afterwards,
 * on local sandboxes (a direct socket per worker) and relayed through watasu() → serve (the agent's
 * link and module cache), whose API key must not reach the sandbox either.
 */
import { createHash } from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { startServe } from './support/serve.js'
import { REPO, runFixture, testsOf } from './support/vitest-run.js'

const FIXTURE = path.join(REPO, 'fixtures/gateway-attack')
let hostDir: string

function hashes(dir: string): Record<string, string> {
  const out: Record<string, string> = {}
  for (const e of fs.readdirSync(dir, { withFileTypes: true, recursive: true })) {
    const p = path.join(e.parentPath, e.name)
    // Vitest's own writes (its results cache, the coverage reports) are checked elsewhere.
    if (e.isFile() && !p.includes(`${path.sep}coverage${path.sep}`) && !p.includes(`${path.sep}node_modules${path.sep}.vite${path.sep}`)) out[path.relative(dir, p)] = createHash('sha256').update(fs.readFileSync(p)).digest('hex')
  }
  return out
}

function filesUnder(dir: string): string[] {
  if (!fs.existsSync(dir)) return []
  return fs.readdirSync(dir, { withFileTypes: true, recursive: true }).filter((e) => e.isFile()).map((e) => path.join(e.parentPath, e.name))
}

beforeAll(() => {
  hostDir = fs.mkdtempSync(path.join(os.tmpdir(), 'vps-gw-'))
  fs.writeFileSync(path.join(hostDir, 'secret.js'), 'attack-secret-outside\nattack-secret-line-2\n')
  fs.writeFileSync(path.join(FIXTURE, '.env'), 'VITE_DOTENV=attack-secret-vite-dotenv\n')
})

afterAll(() => {
  for (const f of ['.env', 'coverage']) fs.rmSync(path.join(FIXTURE, f), { recursive: true, force: true })
  fs.rmSync(hostDir, { recursive: true, force: true })
})

const VIOLATIONS: Record<string, RegExp> = {
  'dup-id': /a second call with id .* while the first is in flight/,
  answer: /an answer, but the host asked the worker nothing/,
  method: /a call of "__defineGetter__", which is not on the host gateway's list/,
  huge: /message of 3221225472 bytes is over the limit/,
  forge: /onTaskUpdate: task "-?\d+_0" is not a task of this worker's file/,
  'coverage-env': /onAfterSuiteRun: environment "__proto__" is neither a Vite environment of the host nor the test environment/,
  cancel: /onCancel: the run is cancelled only for --bail \(set to off\)/,
  summary: /snapshotSaved: a summary of a file that is not this worker's/,
}

const CASES = [
  { mode: 'none', coverage: 'istanbul', relayed: false },
  { mode: 'new', coverage: 'v8', relayed: false },
  { mode: 'all', coverage: 'istanbul', relayed: false },
  // The relayed path: watasu() against a real `vitest-sandbox serve` whose API key is a secret too.
  { mode: 'new', coverage: 'v8', relayed: true },
] as const

describe('the host gateway, attacked from sandboxed test code', () => {
  for (const { mode, coverage, relayed } of CASES) {
    it(`ends every worker that breaks its protocol and screens the rest (update mode '${mode}', ${coverage} coverage${relayed ? ', relayed through watasu()' : ''})`, async () => {
      const before = hashes(FIXTURE)
      const hostBefore = hashes(hostDir)
      const secret = path.join(hostDir, 'secret.js')
      fs.rmSync(path.join(FIXTURE, 'coverage'), { recursive: true, force: true })
      const serve = relayed ? await startServe({ token: `attack-secret-api-key-${Date.now()}` }) : undefined
      const run = await runFixture('gateway-attack', {
        args: [`--update=${mode}`, '--coverage.enabled', '--coverage.reportOnFailure', `--coverage.provider=${coverage}`, '--coverage.reporter=json', '--coverage.reporter=html', '--reporter=./proto-reporter.ts'],
        env: { VPS_HOST_SECRET: secret, VPS_HOST_DIR: hostDir, VITE_ATTACK: 'attack-secret-vite-env', ...(serve ? { VPS_PROVIDER: 'watasu', WATASU_API_URL: serve.apiUrl, WATASU_API_KEY: serve.token } : {}) },
      }).finally(() => serve?.close())
      if (relayed) expect(run.output).toMatch(/sandbox: 1 sandbox \(watasu\)/)
      const tests = testsOf(run.json ?? { testResults: [] })
      for (const [name, why] of Object.entries(VIOLATIONS)) {
        const file = tests[`fixtures/gateway-attack/test/violation/${name}.test.ts (file)`]
        const failures = Object.entries(tests).filter(([k]) => k.startsWith(`fixtures/gateway-attack/test/violation/${name}.test.ts`)).flatMap(([, t]) => t.failures)
        expect(file?.status, `${name}\n${run.output}`).toBe('failed')
        expect(failures.join('\n'), name).toMatch(/broke the host gateway's protocol and was ended/)
        expect(failures.join('\n'), name).toMatch(why)
      }
      // The fuzzers (seeded, printed): each file passes or is ended for a violation, nothing else.
      const fuzzed = Object.entries(tests).filter(([k]) => k.includes('/fuzz/'))
      expect(fuzzed.filter(([k]) => k.endsWith('(file)')).length, run.output).toBe(3)
      for (const [name, t] of fuzzed) if (t.status === 'failed') expect(t.failures.join('\n'), name).toMatch(/vitest-pool-sandbox: the test worker broke the host gateway's protocol and was ended/)
      expect(run.output).toMatch(/gateway fuzz fuzz-1: seed \d+/)
      // fuzz-1 sends 160 MiB in frames under the limit and a real 400 MiB one over it.
      expect(Number(/^HOST-PEAK-RSS (\d+) MiB$/m.exec(run.output)?.[1]), run.output).toBeLessThan(1024)
      const others = Object.entries(tests).filter(([k]) => !k.includes('/violation/') && !k.includes('/fuzz/'))
      expect(others.filter(([, t]) => t.status !== 'passed'), run.output).toEqual([])
      expect(others.length, run.output).toBe(17)
      expect(run.output).not.toContain('attack-secret')
      expect(run.output).toMatch(/^HOST-PROTO clean$/m)
      // Coverage: reports of given files only, written only under the coverage folder.
      const reports = filesUnder(path.join(FIXTURE, 'coverage'))
      expect(reports.length, run.output).toBeGreaterThan(0)
      for (const f of reports) expect(fs.readFileSync(f, 'utf8'), f).not.toContain('attack-secret')
      const json = JSON.parse(fs.readFileSync(path.join(FIXTURE, 'coverage/coverage-final.json'), 'utf8'))
      expect(Object.keys(json)).toEqual([path.join(FIXTURE, 'src/sum.ts')])
      expect(fs.existsSync('/tmp/vps-escape.ts')).toBe(false)
      // No host file changed: the fixture (but Vitest's cache and coverage folders) and the host folder.
      expect(hashes(FIXTURE)).toEqual(before)
      expect(hashes(hostDir)).toEqual(hostBefore)
    })
  }
})

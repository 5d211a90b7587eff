/**
 * Attacks from sandboxed test code on the host-side services it can call: module loading (fetch,
 * resolve, the module graph), the snapshot channel, attachments; plus secrets of the workspace.
 * Every file of the fixture is hashed before and after each run: only what Vitest itself would
 * write in that run's update mode may change.
 */
import { createHash } from 'node:crypto'
import fs from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { REPO, runFixture, testsOf } from './support/vitest-run.js'

const FIXTURE = path.join(REPO, 'fixtures/attack')
let hostDir: string
let server: net.Server
let env: Record<string, string>

function hashes(): Record<string, string> {
  const out: Record<string, string> = {}
  const walk = (dir: string) => {
    for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name)
      if (e.name === 'node_modules') continue
      if (e.isSymbolicLink()) out[path.relative(FIXTURE, p)] = `-> ${fs.readlinkSync(p)}`
      else if (e.isDirectory()) walk(p)
      else out[path.relative(FIXTURE, p)] = createHash('sha256').update(fs.readFileSync(p)).digest('hex')
    }
  }
  walk(FIXTURE)
  return out
}

beforeAll(async () => {
  hostDir = fs.mkdtempSync(path.join(os.tmpdir(), 'vps-host-'))
  fs.writeFileSync(path.join(hostDir, 'secret.txt'), 'attack-secret-outside\n')
  fs.writeFileSync(path.join(hostDir, 'unparsable.js'), 'attack-secret-parse: this is not ( javascript }}}\n')
  fs.writeFileSync(path.join(os.homedir(), '.vps-attack-secret'), 'attack-secret-in-home\n')
  fs.writeFileSync(path.join(FIXTURE, '.env'), 'API_KEY=attack-secret-dotenv\n')
  fs.writeFileSync(path.join(FIXTURE, '.npmrc'), '//registry.npmjs.org/:_authToken=attack-secret-npmrc\n')
  // Links in the workspace that lead out of it: a file and a folder of the host.
  fs.symlinkSync(path.join(hostDir, 'secret.txt'), path.join(FIXTURE, 'link-to-secret'))
  fs.symlinkSync(hostDir, path.join(FIXTURE, 'link-to-host'))
  server = net.createServer((c) => c.end('attack-secret-over-tcp'))
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  env = {
    VPS_ATTACK_SECRET: 'attack-secret-in-env',
    VPS_ATTACK_PORT: String((server.address() as net.AddressInfo).port),
    VPS_HOST_SECRET: path.join(hostDir, 'secret.txt'),
    VPS_HOST_UNPARSABLE: path.join(hostDir, 'unparsable.js'),
  }
})

afterAll(() => {
  server.close()
  for (const f of ['.env', '.npmrc', '.vitest-attachments', 'link-to-secret', 'link-to-host']) fs.rmSync(path.join(FIXTURE, f), { recursive: true, force: true })
  fs.rmSync(path.join(os.homedir(), '.vps-attack-secret'), { force: true })
  fs.rmSync(hostDir, { recursive: true, force: true })
})

const EXPECTED_CHANGES = { none: [], new: ['test/out/new-output.txt'], all: ['test/existing.txt', 'test/out/new-output.txt'] }

describe('attacks from sandboxed test code', () => {
  for (const mode of ['none', 'new', 'all'] as const) {
    it(`reveal nothing and change no host file but what Vitest writes in update mode '${mode}'`, async () => {
      const before = hashes()
      const existing = fs.readFileSync(path.join(FIXTURE, 'test/existing.txt'))
      try {
        const run = await runFixture('attack', { args: [`--update=${mode}`], env })
        const tests = testsOf(run.json ?? { testResults: [] })
        expect(Object.entries(tests).filter(([, t]) => t.status !== 'passed'), run.output).toEqual([])
        expect(Object.keys(tests).length, run.output).toBe(23)
        expect(run.output).not.toContain('attack-secret')
        const after = hashes()
        const changed = Object.keys({ ...before, ...after }).filter((f) => before[f] !== after[f]).sort()
        expect(changed).toEqual(EXPECTED_CHANGES[mode])
        expect(fs.existsSync('/tmp/vps-attack-written')).toBe(false)
        expect(fs.readdirSync(hostDir).sort()).toEqual(['secret.txt', 'unparsable.js'])
        expect(fs.readFileSync(path.join(hostDir, 'secret.txt'), 'utf8')).toBe('attack-secret-outside\n')
      } finally {
        fs.rmSync(path.join(FIXTURE, 'test/out'), { recursive: true, force: true })
        fs.writeFileSync(path.join(FIXTURE, 'test/existing.txt'), existing)
      }
    })
  }

  it('sends secrets of the workspace only when workspace.include names them', async () => {
    const run = await runFixture('attack', { args: ['--update=none', 'test/read.test.ts', '-t', 'secrets'], env: { ...env, VPS_INCLUDE: '.env,.npmrc', VPS_INCLUDED: '.env,.npmrc' } })
    const tests = testsOf(run.json ?? { testResults: [] })
    expect(tests['fixtures/attack/test/read.test.ts > cannot read secrets of the workspace unless they are included']?.status, run.output).toBe('passed')
  })
})

/**
 * Vitest 4.0 (from npm, installed in fixtures/vitest40 by scripts/setup.mjs) speaks an older pool
 * protocol: the pool refuses it when the config is loaded, once, with the fix, and starts nothing.
 */
import { spawnSync } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { runningVitestVersion } from '../src/pool/vitest-version.js'
import { REPO } from './support/vitest-run.js'

const FIXTURE = path.join(REPO, 'fixtures/vitest40')
const REFUSAL = 'vitest-pool-sandbox needs Vitest 4.1 or newer; this project runs Vitest 4.0.1. Fix: npm install --save-dev vitest@^4.1'

describe.each(['sandbox()', 'plugin'])('Vitest 4.0 with %s', (way) => {
  it('is refused once, before any sandbox or test', () => {
    const r = spawnSync(process.execPath, [path.join(FIXTURE, 'node_modules/vitest/vitest.mjs'), 'run'], {
      cwd: FIXTURE,
      env: { ...process.env, NO_COLOR: '1', CI: 'true', VPS_WAY: way, DEBUG: 'vitest-pool-sandbox:*' },
      encoding: 'utf8',
      timeout: 60_000,
    })
    const output = r.stdout + r.stderr
    expect(r.status, output).toBe(1)
    expect(output.split(REFUSAL).length - 1, output).toBe(1)
    // Nothing ran: no file was collected and no sandbox was asked for.
    expect(output).not.toMatch(/one of several files|sandbox: \d+ sandbox|fleet|sbx_/)
  })
})

describe('runningVitestVersion', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vps-version-'))
  const write = (rel: string, text: string) => {
    fs.mkdirSync(path.dirname(path.join(dir, rel)), { recursive: true })
    fs.writeFileSync(path.join(dir, rel), text)
  }
  write('node_modules/vitest/package.json', JSON.stringify({ name: 'vitest', version: '4.0.17' }))
  write('node_modules/vitest/vitest.mjs', '')
  write('node_modules/other/package.json', JSON.stringify({ name: 'other', version: '1.0.0' }))
  write('node_modules/other/bin/cli.js', '')
  fs.mkdirSync(path.join(dir, 'node_modules/.bin'))
  fs.symlinkSync('../vitest/vitest.mjs', path.join(dir, 'node_modules/.bin/vitest'))

  it("is the version of the Vitest package around the script, through the bin's link", () => {
    expect(runningVitestVersion(path.join(dir, 'node_modules/vitest/vitest.mjs'))).toBe('4.0.17')
    expect(runningVitestVersion(path.join(dir, 'node_modules/.bin/vitest'))).toBe('4.0.17')
  })

  it('is unknown when another program started the process', () => {
    expect(runningVitestVersion(path.join(dir, 'node_modules/other/bin/cli.js'))).toBeUndefined()
    expect(runningVitestVersion(path.join(dir, 'missing.js'))).toBeUndefined()
    expect(runningVitestVersion('')).toBeUndefined()
  })
})

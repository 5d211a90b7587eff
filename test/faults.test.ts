/**
 * A full disk under the engine's state folder (a small filesystem mounted there for the test):
 * whether it is full before the engine starts, too full for a sandbox's disk limit, or full while
 * sandboxes unpack the workspace, every file of the run fails with the reason and the fix, in a
 * few lines, and nothing of the sandboxes is left in the folder.
 */
import { execFileSync } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { tempDir } from './support/engine.js'
import { runFixture } from './support/vitest-run.js'

describe.skipIf(process.getuid?.() !== 0)('a full disk under the state folder', () => {
  let state: string
  const mount = (size: string) => execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size},mode=0755`, 'tmpfs', state])
  const run = (env: Record<string, string> = {}) => runFixture('faults', { env: { VPS_STATE_DIR: state, ...env } })
  const failures = (json: any) => (json?.testResults ?? []).map((f: any) => [path.basename(f.name), f.status, f.message])
  const leftInState = () => [
    ...fs.readdirSync(path.join(state, 'sandboxes')).flatMap((d) => fs.readdirSync(path.join(state, 'sandboxes', d)).map((s) => `${d}/${s}`)),
    ...fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').map((l) => l.split(' ')[4]).filter((p) => p?.startsWith(`${state}/`)),
  ]

  beforeEach(() => {
    state = tempDir('full-state')
  })
  afterEach(() => {
    execFileSync('umount', ['--lazy', state])
    fs.rmSync(state, { recursive: true, force: true })
  })

  it('before the engine starts: every file fails naming the folder and the fix', async () => {
    mount('32m')
    const { code, json, output } = await run()
    expect(code).toBe(1)
    expect(failures(json).map(([name, status]: string[]) => [name, status]).sort(), output).toEqual([['quick.test.ts', 'failed'], ['second.test.ts', 'failed']])
    expect(output).toContain(`the state folder ${state} is full`)
    expect(output).toMatch(/fix: free space on its disk, or give local\(\{ stateDir \}\) a folder on a disk with room/)
  })

  it("without room for a sandbox's disk limit: every file fails with the sizes and the fix", async () => {
    mount('400m')
    const { code, json, output } = await run()
    expect(code).toBe(1)
    for (const [, status, message] of failures(json)) {
      expect(status).toBe('failed')
      expect(message).toMatch(/not enough free disk for another sandbox: its disk limit is 4 GiB, but .* has 0 B to give .* Free disk space there, lower `local\(\{ limits: \{ disk \} \}\)`/)
    }
    expect(leftInState()).toEqual([])
  })

  it('while a sandbox unpacks the workspace: every file fails with ENOSPC in a few lines, and nothing is left', async () => {
    mount('400m')
    // A run that fits first (no disk limit: the sandboxes write into the state folder itself),
    // with its own temporary folder, to learn the size of the workspace bundle it uploads.
    const tmp = tempDir('full-tmp')
    let bundle = 0
    const sizes = setInterval(() => {
      try {
        for (const d of fs.readdirSync(tmp)) for (const f of fs.readdirSync(path.join(tmp, d))) if (f.endsWith('.tar')) bundle = Math.max(bundle, fs.statSync(path.join(tmp, d, f)).size)
      } catch {
        // A bundle removed while we looked.
      }
    }, 20)
    const fits = await run({ VPS_FAULT_LIMITS: 'off', VPS_FAULT_SANDBOXES: '1', TMPDIR: tmp }).finally(() => clearInterval(sizes))
    fs.rmSync(tmp, { recursive: true, force: true })
    expect(fits.json?.numPassedTests, fits.output).toBe(2)
    expect(bundle).toBeGreaterThan(0)
    // Room for the upload, not for what tar unpacks from it.
    const { bavail, bsize } = fs.statfsSync(state)
    execFileSync('fallocate', ['-l', String(bavail * bsize - Math.round(bundle * 1.3)), path.join(state, 'ballast')])
    const { code, json, output } = await run({ VPS_FAULT_LIMITS: 'off', VPS_FAULT_SANDBOXES: '1' })
    expect(code).toBe(1)
    expect(failures(json).length, output).toBe(2)
    for (const [, status, message] of failures(json)) {
      expect(status).toBe('failed')
      expect(message).toMatch(/No space left on device/)
    }
    // tar names every file it could not write: the reason keeps the last lines.
    expect(output).toMatch(/the agent exited \(code 2\): \(\d+ lines before\) … tar: /)
    expect(output.split('\n').filter((l) => /Cannot write: No space left/.test(l)).length, output).toBeLessThan(20)
    expect(leftInState()).toEqual([])
  })
})

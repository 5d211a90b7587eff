/**
 * Nothing outlives the run: SIGTERM, Ctrl-C (SIGINT) and --bail leave no sandbox behind, nor its
 * folders, filesystems, loop devices or cgroups; after SIGKILL the sandboxes die with Vitest and
 * the next run removes what was left and works.
 */
import { spawn } from 'node:child_process'
import path from 'node:path'
import { expect, it } from 'vitest'
import { hostProcessesMatching, leftoversOf, waitFor } from './support/engine.js'
import { REPO, runFixture } from './support/vitest-run.js'

function startSlowRun(mark: string, args: string[] = []) {
  return spawn(process.execPath, [path.join(REPO, 'node_modules/vitest/vitest.mjs'), 'run', ...args], {
    cwd: path.join(REPO, 'fixtures/slow'),
    env: { ...process.env, VPS_SLOW_MARK: mark, NO_COLOR: '1' },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
}

it.each(['SIGTERM', 'SIGINT'] as const)('%s to Vitest kills every sandbox and leaves nothing of them', async (signal) => {
  const mark = `${signal}-${process.pid}-${Date.now()}`
  const child = startSlowRun(mark)
  child.stdout.resume()
  child.stderr.resume()
  const exited = new Promise((r) => child.once('exit', r))
  await waitFor(() => hostProcessesMatching(`vps-slow-${mark}`).length > 0, 30_000, 'the slow test to be running in its sandbox')
  const sandboxesBefore = hostProcessesMatching('sandbox-init.js').length
  expect(sandboxesBefore).toBeGreaterThan(0)
  expect(leftoversOf(child.pid!).length).toBeGreaterThan(0) // what the check below looks for
  child.kill(signal)
  await exited
  await waitFor(() => hostProcessesMatching(`vps-slow-${mark}`).length === 0, 5000, 'the sandboxed test to be gone')
  expect(leftoversOf(child.pid!)).toEqual([])
})

it('SIGKILL to Vitest: its sandboxes die with it, and the next run removes what they left and passes', { timeout: 120_000 }, async () => {
  const mark = `SIGKILL-${process.pid}-${Date.now()}`
  const child = startSlowRun(mark)
  child.stdout.resume()
  child.stderr.resume()
  const exited = new Promise((r) => child.once('exit', r))
  await waitFor(() => hostProcessesMatching(`vps-slow-${mark}`).length > 0, 30_000, 'the slow test to be running in its sandbox')
  child.kill('SIGKILL')
  await exited
  await waitFor(() => hostProcessesMatching(`vps-slow-${mark}`).length === 0, 5000, 'the sandboxed test to die with Vitest')
  // No exit handler ran: its sandboxes' filesystems, devices and groups are still there.
  if (process.getuid?.() === 0) expect(leftoversOf(child.pid!)).not.toEqual([])
  const next = await runFixture('faults', { args: ['test/quick.test.ts'] })
  expect(next.json?.numPassedTests, next.output).toBe(1)
  expect(next.code).toBe(0)
  expect(leftoversOf(child.pid!)).toEqual([])
})

it('--bail stops the run and kills every sandbox', async () => {
  const mark = `bail-${process.pid}-${Date.now()}`
  const child = startSlowRun(mark, ['--bail=1'])
  let output = ''
  child.stdout.on('data', (d) => (output += d))
  child.stderr.on('data', (d) => (output += d))
  const exited = new Promise((r) => child.once('exit', r))
  // The slow file did start in its sandbox before the other file's failure stopped the run.
  await waitFor(() => hostProcessesMatching(`vps-slow-${mark}`).length > 0, 30_000, 'the slow test to be running')
  const code = await exited
  expect(code, output).toBe(1)
  expect(output).toMatch(/fails after the slow file has started/)
  expect(hostProcessesMatching(`vps-slow-${mark}`)).toEqual([])
})

/**
 * Watch mode: a rerun sends the warm sandbox only what changed on disk, and tests see it; a change
 * of the dependencies (a manifest, a lockfile) replaces the warm sandboxes instead; a module that
 * changed is fetched again, not answered from the agent's module cache.
 */
import { spawn } from 'node:child_process'
import path from 'node:path'
import { expect, it } from 'vitest'
import { REPO } from './support/vitest-run.js'

async function watch(mode = '', fixture = 'watch', env: Record<string, string> = {}): Promise<{ output: string; run: (n: number) => unknown }> {
  const child = spawn(process.execPath, [path.join(REPO, 'test/support/watch-driver.mjs'), path.join(REPO, 'fixtures', fixture), mode], {
    env: { ...process.env, NO_COLOR: '1', DEBUG: 'vitest-pool-sandbox:fleet', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let output = ''
  child.stdout.on('data', (d) => (output += d))
  child.stderr.on('data', (d) => (output += d))
  await new Promise((r) => child.once('exit', r))
  return { output, run: (n: number) => JSON.parse(new RegExp(`^RUN${n} (.*)$`, 'm').exec(output)?.[1] ?? 'null') }
}

const FAILED = ['reads the second version of the data file: failed', 'no longer sees the deleted file: failed']
const PASSED = ['reads the second version of the data file: passed', 'no longer sees the deleted file: passed']
const ready = (output: string) => output.match(/vitest-pool-sandbox:fleet sandbox \S+ ready/g) ?? []

it('syncs changed and deleted files to the warm sandbox before a rerun', async () => {
  const { output, run } = await watch()
  expect(run(1), output).toEqual(FAILED)
  expect(run(2), output).toEqual(PASSED)
  expect(ready(output)).toHaveLength(1)
  // Only the delta crossed (the data file's change and removal, and whatever other tests running
  // meanwhile changed in the repository, which is the fixture's workspace), to the same sandbox.
  expect(output).toMatch(/sandbox: synced \d+ changed files? and \d+ removed files? to 1 sandbox/)
  const synced = /syncing changed (\[.*?\]) and removed (\[.*?\])$/m.exec(output)
  expect(JSON.parse(synced![1]), output).toContain('fixtures/watch/data/value.txt')
  expect(JSON.parse(synced![2]), output).toContain('fixtures/watch/data/gone.txt')
  expect(output.match(/sandbox: 1 sandbox \(local\), 2 files in [\d.]+s:\n {2}sbx_\w+: 2 files,/g)).toHaveLength(1)
})

it('replaces the warm sandboxes when the dependencies change, with the workspace as it is now', async () => {
  const { output, run } = await watch('deps')
  expect(run(1), output).toEqual(FAILED)
  expect(run(2), output).toEqual(PASSED)
  expect(output).toContain('sandbox: the dependencies changed; preparing the template again and replacing the warm sandboxes')
  expect(output).not.toContain('sandbox: synced')
  expect(ready(output), output).toHaveLength(2)
})

it("imports a changed module's new code on a rerun, past the agent's module cache", async () => {
  // Relayed: the workers' fetches go through the agent, whose cache held the first version.
  const { output, run } = await watch('module', 'modules', { VPS_RELAY: '1' })
  const others = ['a', 'b', 'c', 'd'].map((n) => `${n}: the shared graph: passed`)
  expect(run(1), output).toEqual(expect.arrayContaining([...others, 'sees the first version of data/value.ts: passed']))
  expect(run(2), output).toEqual(expect.arrayContaining([...others, 'sees the first version of data/value.ts: failed']))
  expect(ready(output)).toHaveLength(1)
})

/** Watch mode: a rerun sends the warm sandbox only what changed on disk, and tests see it. */
import { spawn } from 'node:child_process'
import path from 'node:path'
import { expect, it } from 'vitest'
import { REPO } from './support/vitest-run.js'

it('syncs changed and deleted files to the warm sandbox before a rerun', async () => {
  const child = spawn(process.execPath, [path.join(REPO, 'test/support/watch-driver.mjs'), path.join(REPO, 'fixtures/watch')], { env: { ...process.env, NO_COLOR: '1' }, stdio: ['ignore', 'pipe', 'pipe'] })
  let output = ''
  child.stdout.on('data', (d) => (output += d))
  child.stderr.on('data', (d) => (output += d))
  await new Promise((r) => child.once('exit', r))
  const run = (n: number) => JSON.parse(new RegExp(`^RUN${n} (.*)$`, 'm').exec(output)?.[1] ?? 'null')
  expect(run(1), output).toEqual(['reads the second version of the data file: failed', 'no longer sees the deleted file: failed'])
  expect(run(2), output).toEqual(['reads the second version of the data file: passed', 'no longer sees the deleted file: passed'])
  // Only the delta crossed: one changed file, one removal, and the same single sandbox stayed warm.
  expect(output).toContain('sandbox: synced 1 changed file and 1 removed file to 1 sandbox')
  expect(output.match(/sandbox: 1 sandbox \(local\): sbx_\w+ 2 files/g)).toHaveLength(1)
})

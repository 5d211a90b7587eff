/**
 * A sandbox dies under a running test file (the harness SIGKILLs its bubblewrap from the host):
 * before the file reported anything, the file runs again on another sandbox; after, it fails with
 * an error naming the provider, the sandbox and the file. The run goes on either way.
 */
import fs from 'node:fs'
import { expect, it } from 'vitest'
import { hostProcessesMatching } from './support/engine.js'
import { runFixture } from './support/vitest-run.js'

function parentOf(pid: number): number {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
  return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1])
}

function cmdline(pid: number): string {
  return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ')
}

/** The outermost bubblewrap above `pid`: killing it ends the whole sandbox. */
function sandboxOf(pid: number): number | undefined {
  let found: number | undefined
  for (let p = pid; p > 1; p = parentOf(p)) if (cmdline(p).includes('bwrap ')) found = p
  return found
}

/** Kill the sandbox of the first process whose title is `title`, once. */
async function killSandboxOnce(title: string, done: Promise<unknown>): Promise<boolean> {
  let finished = false
  void done.then(() => (finished = true))
  while (!finished) {
    const [pid] = hostProcessesMatching(title)
    const bwrap = pid && sandboxOf(pid)
    if (bwrap) {
      process.kill(bwrap, 'SIGKILL')
      return true
    }
    await new Promise((r) => setTimeout(r, 25))
  }
  return false
}

it('reruns a file whose sandbox died before it reported results, and fails one that had reported', async () => {
  const run = runFixture('lost')
  const [before, after] = await Promise.all([killSandboxOnce('vps-kill-before-results', run), killSandboxOnce('vps-kill-after-results', run)])
  const { json, output } = await run
  expect(before && after, output).toBe(true)
  const files = Object.fromEntries(json.testResults.map((f: any) => [f.name.split('/').pop(), f]))
  // Rerun: passed, and said so.
  expect(files['before-results.test.ts'].assertionResults.map((t: any) => t.status)).toEqual(['passed'])
  expect(output).toMatch(/sandbox sbx_\w+ \(provider local\) was lost before \S*test\/before-results\.test\.ts reported results .*; running it again on another sandbox \(rerun 1 of 2\)/)
  // Collected already (a result): no rerun, but an error naming provider, sandbox and file. Vitest
  // then reports the file's tests as it does for any worker that died (not as passed).
  expect(files['after-results.test.ts'].assertionResults.map((t: any) => t.status)).not.toContain('passed')
  expect(output).toMatch(/sandbox sbx_\w+ \(provider local\) was lost while running \S*test\/after-results\.test\.ts: /)
  expect(output).not.toMatch(/after-results\.test\.ts reported results/)
})

// The TTL is for a host that dies; a live run renews it, however long it takes.
it('keeps a sandbox alive past its TTL while the run goes on', { timeout: 120_000 }, async () => {
  const run = await runFixture('longrun')
  expect(run.output).not.toMatch(/was lost|timed out after/)
  expect(run.json?.numPassedTests, run.output).toBe(1)
  expect(run.code).toBe(0)
})

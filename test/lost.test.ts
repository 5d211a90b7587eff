/**
 * A sandbox dies under a running test file (the harness SIGKILLs its bubblewrap from the host), its
 * agent is killed, or it stops answering (SIGSTOP to every process in it): before the file reported anything, the file
 * runs again on another sandbox; after, it fails with an error naming the provider, the sandbox
 * and the file. The run goes on either way, and the stopped sandbox is gone at its end.
 */
import fs from 'node:fs'
import { expect, it } from 'vitest'
import { descendants, hostProcessesMatching } from './support/engine.js'
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

/** Kill (or stop) the sandbox of the first process whose title is `title`, once; resolves with its bubblewrap's pid. */
async function killSandboxOnce(title: string, done: Promise<unknown>, signal: 'SIGKILL' | 'SIGSTOP' = 'SIGKILL'): Promise<number | undefined> {
  let finished = false
  void done.then(() => (finished = true))
  while (!finished) {
    const [pid] = hostProcessesMatching(title)
    const bwrap = pid && sandboxOf(pid)
    if (bwrap) {
      // Stopped from the innermost process out, so that none of them notices the others stop.
      for (const p of signal === 'SIGSTOP' ? [...descendants(bwrap).reverse(), bwrap] : [bwrap]) process.kill(p, signal)
      return bwrap
    }
    await new Promise((r) => setTimeout(r, 25))
  }
  return undefined
}

it('reruns a file whose sandbox died before it reported results, and fails one that had reported', async () => {
  const run = runFixture('lost')
  const [before, after] = await Promise.all([killSandboxOnce('vps-kill-before-results', run), killSandboxOnce('vps-kill-after-results', run)])
  const { json, output } = await run
  expect(before && after, output).toBeTruthy()
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

/** SIGKILL the agent above the first process whose title is `title`, once (its sandbox lives on). */
async function killAgentOnce(title: string, done: Promise<unknown>): Promise<boolean> {
  let finished = false
  void done.then(() => (finished = true))
  while (!finished) {
    const [pid] = hostProcessesMatching(title)
    let agent: number | undefined
    for (let p = pid; p && p > 1 && !agent; p = parentOf(p)) if (cmdline(p).includes('agent.js')) agent = p
    if (agent) {
      process.kill(agent, 'SIGKILL')
      return true
    }
    await new Promise((r) => setTimeout(r, 25))
  }
  return false
}

it('reruns a file whose agent was killed (its sandbox still up) on another sandbox', { timeout: 120_000 }, async () => {
  const run = runFixture('lost')
  const killed = await killAgentOnce('vps-kill-before-results', run)
  const { json, output } = await run
  expect(killed, output).toBe(true)
  const files = Object.fromEntries(json.testResults.map((f: any) => [f.name.split('/').pop(), f]))
  expect(files['before-results.test.ts'].assertionResults.map((t: any) => t.status), output).toEqual(['passed'])
  expect(files['after-results.test.ts'].assertionResults.map((t: any) => t.status), output).toEqual(['passed', 'passed'])
  expect(output).toMatch(/sandbox sbx_\w+ \(provider local\) was lost before \S*test\/before-results\.test\.ts reported results \(the agent exited \(killed\)\); running it again on another sandbox \(rerun 1 of 2\)/)
})

it('reruns a file whose sandbox stopped answering (SIGSTOP) on another sandbox, and ends the stopped one', { timeout: 120_000 }, async () => {
  const run = runFixture('lost')
  const stopped = await killSandboxOnce('vps-kill-before-results', run, 'SIGSTOP')
  const { json, output } = await run
  expect(stopped, output).toBeTruthy()
  const files = Object.fromEntries(json.testResults.map((f: any) => [f.name.split('/').pop(), f]))
  expect(files['before-results.test.ts'].assertionResults.map((t: any) => t.status), output).toEqual(['passed'])
  expect(files['after-results.test.ts'].assertionResults.map((t: any) => t.status), output).toEqual(['passed', 'passed'])
  expect(output).toMatch(/sandbox sbx_\w+ \(provider local\) was lost before \S*test\/before-results\.test\.ts reported results \(no heartbeat from the agent for \d+s\); running it again on another sandbox/)
  expect(fs.existsSync(`/proc/${stopped}`)).toBe(false)
})

// The TTL is for a host that dies; a live run renews it, however long it takes.
it('keeps a sandbox alive past its TTL while the run goes on', { timeout: 120_000 }, async () => {
  const run = await runFixture('longrun')
  expect(run.output).not.toMatch(/was lost|timed out after/)
  expect(run.json?.numPassedTests, run.output).toBe(1)
  expect(run.code).toBe(0)
})

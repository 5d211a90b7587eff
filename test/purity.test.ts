/**
 * The worker a test file runs in looks like a forks worker: the pool adds no globals, no process
 * listeners or properties, no console output; its cwd and execArgv are the same. Environment
 * variables are the one deliberate difference: the host's are scrubbed, the sandbox's own basics
 * (PATH, HOME, USER, LANG, TMPDIR) are there.
 */
import { expect, it } from 'vitest'
import { runFixture } from './support/vitest-run.js'

function report(output: string) {
  const line = /^PURITY (.*)$/m.exec(output)
  expect(line, output).not.toBeNull()
  return JSON.parse(line![1])
}

it('adds nothing of its own to the worker', async () => {
  const env = { VPS_HOST_ONLY: 'host-only' }
  const [forks, sbx] = await Promise.all([runFixture('purity', { pool: 'forks', env }), runFixture('purity', { pool: 'sandbox', env })])
  const f = report(forks.output)
  const s = report(sbx.output)
  expect(s.globals).toEqual(f.globals)
  // Forks talks to its worker over Node's IPC channel (process.send, 'message' listeners); the
  // sandbox worker uses a private fd instead, so it has fewer, never more, but one: a SIGUSR1
  // listener keeps a sibling from opening its debugger (worker.ts).
  const counts = (list: string[]) => Object.fromEntries(list.map((e) => [e.slice(0, e.lastIndexOf(':')), Number(e.slice(e.lastIndexOf(':') + 1))]))
  const forksListeners = counts(f.processListeners)
  const own: Record<string, number> = { SIGUSR1: 1 }
  for (const [event, n] of Object.entries(counts(s.processListeners))) expect(n, event).toBeLessThanOrEqual((forksListeners[event] ?? 0) + (own[event] ?? 0))
  expect(f.processKeys.filter((k: string) => !s.processKeys.includes(k)).sort()).toEqual(['_disconnect', '_handleQueue', '_pendingMessage', '_send', 'channel', 'connected', 'disconnect', 'send'])
  expect(s.processKeys.filter((k: string) => !f.processKeys.includes(k))).toEqual([])
  expect(s.cwd).toBe(f.cwd)
  expect(s.execArgv).toEqual(f.execArgv)
  const basics = ['HOME', 'LANG', 'PATH', 'TMPDIR', 'USER']
  expect(f.envKeys).toContain('VPS_HOST_ONLY')
  expect(s.envKeys).not.toContain('VPS_HOST_ONLY')
  expect(s.envKeys).toEqual(expect.arrayContaining([...basics, 'VITEST', 'TEST', 'NODE_ENV', 'VITEST_MODE', 'MODE', 'DEV', 'PROD', 'SSR', 'BASE_URL']))
  expect(s.envKeys.filter((k: string) => !f.envKeys.includes(k) && !basics.includes(k))).toEqual([])
  expect(s.path.split(':')[0]).toMatch(/\/node_modules\/\.bin$/)
  expect(s.nodeOnPath).toBe(true)
})

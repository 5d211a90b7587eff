/**
 * A code generator's tests: a test writes a TypeScript module inside its sandbox and imports it.
 * The host's Vite, which serves every module, does not have the file: the sandbox sends its text
 * and the host transforms it as if it were at its path (transpiled, source-mapped). Nothing the
 * tests write reaches the host's workspace.
 */
import fs from 'node:fs'
import path from 'node:path'
import { expect, it } from 'vitest'
import { startServe } from './support/serve.js'
import { REPO, runFixture, testsOf } from './support/vitest-run.js'

const FIXTURE = path.join(REPO, 'fixtures/generated')
const GENERATED = path.join(FIXTURE, 'generated')

it('imports modules its tests wrote in their sandboxes, as forks does, each sandbox its own text', async () => {
  try {
    fs.rmSync(GENERATED, { recursive: true, force: true })
    const forks = await runFixture('generated', { pool: 'forks' })
    fs.rmSync(GENERATED, { recursive: true, force: true })
    const sbx = await runFixture('generated', { pool: 'sandbox' })
    const [expected, got] = [testsOf(forks.json), testsOf(sbx.json)]
    // The generated client: its types stripped, its error at the TypeScript line, as under forks.
    const client = (tests: typeof got) => Object.fromEntries(Object.entries(tests).filter(([name]) => name.includes('client.test.ts')))
    expect(Object.values(client(expected)).map((t) => t.status)).toEqual(['passed', 'passed', 'passed'])
    expect(client(got)).toEqual(client(expected))
    // Written again, written with other text by another file, JSON, and one importing another by its
    // output name in a web transform (Redocly's generated TanStack client): each import gets the text its
    // sandbox holds. (`vitest run` under forks serves the first transform of a path: its watcher is off.)
    for (const file of ['regenerate', 'shared-a', 'shared-b', 'json', 'consumer']) expect(got[`fixtures/generated/test/${file}.test.ts (file)`]?.status, sbx.output).toBe('passed')
    // Written outside the project (a temp folder): its paths read as the sandbox's, as forks reads them.
    const outside = 'fixtures/generated/test/outside.test.ts > imports modules it wrote under the temp folder'
    expect(expected[outside]?.status).toBe('passed')
    expect(got[outside], sbx.output).toEqual(expected[outside])
    expect(sbx.output).toMatch(/sandbox: 2 sandboxes \(local\)/)
    expect(fs.existsSync(GENERATED)).toBe(false)
  } finally {
    fs.rmSync(GENERATED, { recursive: true, force: true })
  }
})

it('imports them the same way relayed (watasu() through serve), through the agent and its module cache', async () => {
  const serve = await startServe()
  try {
    fs.rmSync(GENERATED, { recursive: true, force: true })
    const run = await runFixture('generated', { env: { VPS_PROVIDER: 'watasu', WATASU_API_URL: serve.apiUrl, WATASU_API_KEY: serve.token } })
    expect(run.output).toMatch(/sandbox: 2 sandboxes \(watasu\)/)
    const tests = testsOf(run.json)
    expect(Object.keys(tests).length, run.output).toBeGreaterThan(8)
    expect(Object.entries(tests).filter(([, t]) => t.status !== 'passed'), run.output).toEqual([])
    expect(fs.existsSync(GENERATED)).toBe(false)
  } finally {
    fs.rmSync(GENERATED, { recursive: true, force: true })
    await serve.close()
  }
})

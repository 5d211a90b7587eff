// No test file can change the code another file's worker runs (an outside attack rewrote the
// worker entry a later file of the same sandbox ran, and so spoke for it): the pool's runtime runs
// from the package's read-only copy, and a run's dependencies are read-only but for their caches.
import fs from 'node:fs'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { Engine } from '../src/engine/engine.js'
import type { LocalSandbox } from '../src/engine/sandbox.js'
import { tempDir } from './support/engine.js'
import { runFixture, testsOf } from './support/vitest-run.js'

describe('read-only folders of a sandbox', () => {
  let engine: Engine
  let state: string
  beforeAll(async () => {
    state = tempDir('isolation')
    engine = await Engine.start({ stateDir: state })
  })
  afterAll(async () => {
    await engine?.close()
    fs.rmSync(state, { recursive: true, force: true })
  })

  async function sh(sandbox: LocalSandbox, script: string): Promise<string> {
    const p = await sandbox.spawn({ cmd: '/bin/sh', args: ['-c', script] })
    await new Promise((r) => (p.exit ? r(p.exit) : p.once('exit', r)))
    return p.eventsSince(0).map((e) => e.data.toString()).join('')
  }

  it('keeps dependencies a template installed (owned by the sandbox) from being changed, but not their caches', async () => {
    const builder = await engine.createSandbox({})
    await sh(builder, 'mkdir -p /work/app/node_modules/dep && echo "module.exports = 1" > /work/app/node_modules/dep/index.js')
    const template = await engine.snapshot(builder.id, { name: 'isolation-template' })
    await engine.kill(builder.id)
    const write = 'echo "module.exports = 2" >> /work/app/node_modules/dep/index.js 2>&1; echo "write=$?"; mkdir -p /work/app/node_modules/.cache/x && echo ok > /work/app/node_modules/.cache/x/y && echo cache=ok'
    const open = await engine.createSandbox({ template: template.id })
    expect(await sh(open, write)).toMatch(/write=0/)
    const closed = await engine.createSandbox({ template: template.id, readOnly: ['/work/app/node_modules'] })
    const out = await sh(closed, write)
    expect(out).toMatch(/Read-only file system/)
    expect(out).toMatch(/write=[1-9]/)
    expect(out).toMatch(/cache=ok/)
    expect(await sh(closed, 'cat /work/app/node_modules/dep/index.js')).toBe('module.exports = 1\n')
    // Nor planted where Node looks for what a dependency requires: folders above, and home's.
    const plant = (dir: string) => `mkdir -p ${dir}/bufferutil 2>/dev/null && echo x > ${dir}/bufferutil/index.js 2>/dev/null && echo planted || echo refused`
    for (const dir of ['/work/node_modules', '/node_modules', '$HOME/.node_modules', '$HOME/.node_libraries']) {
      expect(await sh(closed, plant(dir)), dir).toBe('refused\n')
      expect(await sh(open, plant(dir)), dir).toBe('planted\n')
    }
    await expect(engine.createSandbox({ readOnly: ['relative/node_modules'] })).rejects.toThrow('must be a normalized absolute path below /')
  })
})

describe('one file against the next in the same sandbox (a real run)', () => {
  it("cannot change Vitest, the pool's runtime or the worker entry the next file runs", async () => {
    const run = await runFixture('tamper')
    const tests = testsOf(run.json)
    expect(tests['fixtures/tamper/test/a-tamper.test.ts (file)'], run.output).toEqual({ status: 'passed', failures: [] })
    expect(tests["fixtures/tamper/test/b-victim.test.ts > runs under the pool's own worker"].status, run.output).toBe('passed')
    expect(tests['fixtures/tamper/test/b-victim.test.ts > fails honestly'].failures.join('\n')).toMatch(/expected 2 to be 3/)
  })
})

describe('links in a template', () => {
  it('lead no folder the engine makes, mounts on or binds out of the sandbox', async () => {
    const state = tempDir('links')
    const engine = await Engine.start({ stateDir: state })
    const outside = tempDir('links-outside')
    try {
      const builder = await engine.createSandbox({})
      const p = await builder.spawn({ cmd: '/bin/sh', args: ['-c', `mkdir -p /work/app/node_modules && ln -s ${outside} /home/sandbox/A && ln -s ${outside} /work/app/node_modules/.cache`] })
      await new Promise((r) => (p.exit ? r(p.exit) : p.once('exit', r)))
      const template = await engine.snapshot(builder.id, { name: 'links-template' })
      await engine.kill(builder.id)
      for (const readOnly of [['/home/sandbox/A/made/y/node_modules'], ['/home/sandbox/A'], ['/work/app/node_modules']]) {
        await expect(engine.createSandbox({ template: template.id, readOnly }), readOnly[0]).rejects.toThrow(/leads out of the sandbox through a link in its files/)
      }
      expect(fs.readdirSync(outside)).toEqual([])
    } finally {
      await engine.close()
      fs.rmSync(state, { recursive: true, force: true })
      fs.rmSync(outside, { recursive: true, force: true })
    }
  })
})

/**
 * Attachments of files a test writes inside its sandbox (`annotate(…, { path })`): their bytes come
 * from the sandbox, and the host's attachments folder and reporters get what forks gives them,
 * byte for byte and name for name. Nothing the test writes reaches the host's workspace.
 */
import crypto from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { expect, it } from 'vitest'
import { REPO, runFixture, testsOf } from './support/vitest-run.js'

const FIXTURE = path.join(REPO, 'fixtures/attachments')
const OUTSIDE = '/tmp/vps-attachments-fixture'

/** The files of the attachments folder, by name, as hashes of their bytes. */
function attachmentsFolder(): Record<string, string> {
  const dir = path.join(FIXTURE, '.vitest-attachments')
  return Object.fromEntries(fs.readdirSync(dir).map((f) => [f, crypto.createHash('sha256').update(fs.readFileSync(path.join(dir, f))).digest('hex')]))
}

const clean = () => {
  for (const f of [path.join(FIXTURE, 'generated'), path.join(FIXTURE, '.vitest-attachments'), OUTSIDE]) fs.rmSync(f, { recursive: true, force: true })
}

it('carries files a test wrote in its sandbox into the host attachments folder as forks does', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vps-attach-'))
  try {
    const run = async (pool: 'forks' | 'sandbox') => {
      clean()
      const annotations = path.join(dir, `${pool}.json`)
      const result = await runFixture('attachments', { pool, args: ['--reporter=./annotations-reporter.ts'], env: { VPS_ANNOTATIONS: annotations } })
      return { ...result, annotations: JSON.parse(fs.readFileSync(annotations, 'utf8')), folder: attachmentsFolder() }
    }
    const forks = await run('forks')
    const sbx = await run('sandbox')
    expect(forks.code, forks.output).toBe(0)
    expect(testsOf(sbx.json)).toEqual(testsOf(forks.json))
    expect(forks.annotations.map((a: any) => a.attachment?.path)).toEqual([
      expect.stringMatching(/^\.vitest-attachments\/the-report-[0-9a-f]{40}\.txt$/),
      expect.stringMatching(/^\.vitest-attachments\/a-chart-[0-9a-f]{40}\.svg$/),
      expect.stringMatching(/^\.vitest-attachments\/the-input-[0-9a-f]{40}\.json$/),
      undefined,
    ])
    expect(sbx.annotations).toEqual(forks.annotations)
    expect(Object.keys(sbx.folder)).toHaveLength(3)
    expect(sbx.folder).toEqual(forks.folder)
    // What the sandboxed test wrote stayed in its sandbox.
    expect(fs.existsSync(path.join(FIXTURE, 'generated'))).toBe(false)
    expect(fs.existsSync(OUTSIDE)).toBe(false)
  } finally {
    clean()
    fs.rmSync(dir, { recursive: true, force: true })
  }
})

it("never lets a test file's attachment replace another file's under forks' name", async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vps-attach-'))
  try {
    clean()
    const annotations = path.join(dir, 'collide.json')
    const run = await runFixture('attachments', { args: ['--reporter=./annotations-reporter.ts'], env: { VPS_ANNOTATIONS: annotations, VPS_COLLIDE: '1' } })
    expect(run.code, run.output).toBe(0)
    const got = JSON.parse(fs.readFileSync(annotations, 'utf8'))
    const textOf = (test: string) => got.find((a: any) => a.test === test)?.attachment?.text
    expect(textOf('attaches a screenshot it made')).toBe('the genuine screenshot\n')
    expect(textOf('attaches a screenshot of the same name later')).toBe('a forged screenshot\n')
    expect(Object.keys(attachmentsFolder())).toHaveLength(2)
  } finally {
    clean()
    fs.rmSync(dir, { recursive: true, force: true })
  }
})

/** The rules of the host's snapshot file service, on their own (the pool tests drive them through real Vitest). */
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { collectWorkspace } from '../src/workspace/collect.js'
import { inlineSnapshotChange } from '../src/pool/inline-snapshots.js'
import { HostFiles, parseSnapFile } from '../src/pool/host-files.js'
import { RUN_LIMITS, RunBudget } from '../src/pool/gateway/budget.js'

const test = (body: string) => `import { expect, it } from 'vitest'\n\nit('x', () => {\n${body}\n})\n`

describe('inline snapshot updates', () => {
  it('accepts what Vitest writes: a new snapshot, one with property matchers, a multi-line one', () => {
    const before = test(`  expect(1).toMatchInlineSnapshot()\n  expect({ a: 1 }).toMatchInlineSnapshot({ a: expect.any(Number) })\n  expect('y').toMatchInlineSnapshot(  )`)
    const after = test(`  expect(1).toMatchInlineSnapshot(\`1\`)\n  expect({ a: 1 }).toMatchInlineSnapshot({ a: expect.any(Number) }, \`\n    {\n      "a": Any<Number>,\n    }\n  \`)\n  expect('y').toMatchInlineSnapshot(  \`"y"\`)`)
    expect(inlineSnapshotChange(before, after, 'new')).toBeUndefined()
    expect(inlineSnapshotChange(before, after, 'all')).toBeUndefined()
  })

  it('changes an existing snapshot only in mode all', () => {
    const before = test('  expect(2).toMatchInlineSnapshot(`1`)')
    const after = test('  expect(2).toMatchInlineSnapshot(`2`)')
    expect(inlineSnapshotChange(before, after, 'new')).toMatch(/only `vitest -u`/)
    expect(inlineSnapshotChange(before, after, 'all')).toBeUndefined()
  })

  it('refuses any change of code, and snapshot arguments that are code', () => {
    const before = test('  expect(1).toMatchInlineSnapshot()')
    for (const after of [
      test('  expect(2).toMatchInlineSnapshot(`1`)'),
      test('  expect(1).toMatchInlineSnapshot(`1`)\n  process.exit(0)'),
      test('  expect(1).toMatchInlineSnapshot(`${process.exit(0)}`)'),
      test('  expect(1).toMatchInlineSnapshot(`1` + require("fs"))'),
      test('  expect(1).toMatchInlineSnapshot("1")'),
      test('  expect(1).toMatchInlineSnapshot(`1'),
    ]) {
      expect(inlineSnapshotChange(before, after, 'all'), after).toBeDefined()
    }
  })

  it('does not take call sites in comments, strings or template text for real ones', () => {
    for (const site of ['// expect(1).toMatchInlineSnapshot()', '/* expect(1).toMatchInlineSnapshot() */', "const s = 'toMatchInlineSnapshot()'", 'const t = `x toMatchInlineSnapshot() y`']) {
      const before = test(`  ${site}\n  run()`)
      // In real JS the "literal" below ends the comment or string: code would follow.
      const after = before.replace('toMatchInlineSnapshot()', "toMatchInlineSnapshot(`\n*/ '` + process.exit(0) + `\n`)")
      expect(inlineSnapshotChange(before, after, 'all'), site).toBeDefined()
    }
    const regex = test('  const re = /toMatchInlineSnapshot()/\n  expect(1).toMatchInlineSnapshot()')
    expect(inlineSnapshotChange(regex, regex.replace('expect(1).toMatchInlineSnapshot()', 'expect(1).toMatchInlineSnapshot(`1`)'), 'new')).toBeUndefined()
    expect(inlineSnapshotChange(regex, regex.replace('/toMatchInlineSnapshot()/', '/toMatchInlineSnapshot(`x`)/'), 'all')).toBeDefined()
  })
})

describe('inline snapshot updates read by a JavaScript parser too', () => {
  it('refuses a "snapshot" the lexer found in a regex or JSX text: the parser sees code there', () => {
    // A `/` after `)` is a regex to JavaScript: its "call" is text, and the literal written into it closes the regex.
    const regex = test('  expect(1).toBe(1)') + 'if (1) /[aInlineSnapshot()]/\n'
    const injected = regex.replace('/[aInlineSnapshot()]/', '/[aInlineSnapshot(`]/;process.exit(7);//`)]/')
    expect(inlineSnapshotChange(regex, injected, 'new', 'x.test.ts')).toMatch(/not, to a JavaScript parser, a template literal argument/)
    // JSX text: `{…}` inside it is an expression.
    const jsx = "import { it } from 'vitest'\n\nit('x', () => {\n  const el = <p>el.aInlineSnapshot()</p>\n})\n"
    const inJsx = jsx.replace('aInlineSnapshot()', 'aInlineSnapshot(`{process.exit(7)}`)')
    expect(inlineSnapshotChange(jsx, inJsx, 'new', 'x.test.tsx')).toMatch(/not, to a JavaScript parser, a template literal argument/)
  })

  it('still accepts real updates in TypeScript and TSX files', () => {
    const ts = test('  const n: number = 1\n  expect(n as number).toMatchInlineSnapshot()')
    expect(inlineSnapshotChange(ts, ts.replace('toMatchInlineSnapshot()', 'toMatchInlineSnapshot(`1`)'), 'new', 'x.test.ts')).toBeUndefined()
    const tsx = test('  const el = <p>{1 as number}</p>\n  expect(el.type).toMatchInlineSnapshot()')
    expect(inlineSnapshotChange(tsx, tsx.replace('toMatchInlineSnapshot()', 'toMatchInlineSnapshot(`"p"`)'), 'new', 'x.test.tsx')).toBeUndefined()
  })
})

describe('.snap files', () => {
  const snap = '// Vitest Snapshot v1, https://vitest.dev/guide/snapshot.html\n\nexports[`a 1`] = `"x"`;\n\nexports[`b \\` 1`] = `\n{\n  "y": "\\${z}",\n}\n`;\n'
  it('reads what Vitest writes', () => {
    expect(parseSnapFile(snap)).toEqual(new Map([['a 1', '"x"'], ['b \\` 1', '\n{\n  "y": "\\${z}",\n}\n']]))
  })
  it('rejects anything else', () => {
    for (const bad of ['module.exports = {}', snap + 'require("child_process")\n', snap.replace('`"x"`', '`${process.exit()}`'), snap.replace('`"x"`;', '`"x"` + 1;')]) {
      expect(parseSnapFile(bad), bad).toBeUndefined()
    }
  })
})

describe('benchmark result paths (Vitest 5)', () => {
  it('are read relative to the project root, as Vitest reads them, and Vitest gets the path that was checked', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vps-bench-'))
    try {
      // The workspace holds the project in a subfolder; its private/ folder is not given.
      fs.mkdirSync(path.join(dir, 'pkg/private'), { recursive: true })
      fs.mkdirSync(path.join(dir, 'private'))
      fs.writeFileSync(path.join(dir, 'private/creds.json'), '{}')
      fs.writeFileSync(path.join(dir, 'pkg/private/creds.json'), '{"apiKey":"secret"}')
      fs.writeFileSync(path.join(dir, 'pkg/result.json'), '{}')
      const workspace = await collectWorkspace(dir, { exclude: ['pkg/private/'] })
      const files = new HostFiles({ workspace, mode: () => 'none', testFiles: () => [], snapFiles: () => new Set(), protectedFiles: new Set(), allowWrite: [], projectRoot: path.join(dir, 'pkg'), written: () => undefined })
      fs.writeFileSync(path.join(dir, 'pkg/bench.json'), JSON.stringify({ latency: { mean: 1 }, throughput: { mean: 2 }, period: 1, totalTime: 2 }))
      for (const method of ['readBenchmarkResult', 'writeBenchmarkResult']) {
        expect(files.benchmarkPath(method, 'private/creds.json'), method).toEqual({ refused: `${method} of private/creds.json: not a file given to the sandbox` })
        expect(files.benchmarkPath(method, 'bench.json'), method).toEqual({ path: path.join(dir, 'pkg/bench.json') })
        expect(files.benchmarkPath(method, 'new-result.json'), method).toEqual({ path: path.join(dir, 'pkg/new-result.json') })
      }
      // Written: a new .json file or a benchmark result, never data a test imports, a hook or a task file.
      expect(files.benchmarkPath('writeBenchmarkResult', 'result.json')).toEqual({ refused: 'writeBenchmarkResult of pkg/result.json refused: it exists and does not hold a benchmark result' })
      expect(files.benchmarkPath('writeBenchmarkResult', 'lefthook.yml')).toEqual({ refused: 'writeBenchmarkResult of pkg/lefthook.yml refused: only .json benchmark results are written' })
    } finally {
      fs.rmSync(dir, { recursive: true, force: true })
    }
  })
})

describe('file snapshot targets (toMatchFileSnapshot)', () => {
  it("are written next to the test or below it, never into a project's root folder, where tools read their configuration", async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vps-filesnap-'))
    try {
      // A test file at the workspace root (common in small packages), and one in a package of a monorepo.
      fs.mkdirSync(path.join(dir, 'packages/app/data'), { recursive: true })
      fs.writeFileSync(path.join(dir, 'index.test.ts'), '')
      fs.writeFileSync(path.join(dir, 'packages/app/package.json'), '{}')
      fs.writeFileSync(path.join(dir, 'packages/app/app.test.ts'), '')
      const workspace = await collectWorkspace(dir)
      const testFiles = [path.join(dir, 'index.test.ts'), path.join(dir, 'packages/app/app.test.ts')]
      // The run's bound of snapshot files written, at 1 KiB.
      const budget = new RunBudget({ ...RUN_LIMITS, written: { ...RUN_LIMITS.written, snapshots: 1024 } })
      const files = new HostFiles({ workspace, mode: () => 'new', testFiles: () => testFiles, snapFiles: () => new Set(), protectedFiles: new Set(), allowWrite: [], projectRoot: dir, written: (bytes) => budget.write('snapshots', bytes) })
      const write = (rel: string) => files.call('snapshot:write', [path.join(dir, rel), 'pre-commit:\n  commands: {}\n']).then(() => 'written', (e: Error) => e.message)
      for (const hook of ['lefthook.yml', 'compose.yaml', 'Taskfile.yaml', 'nodemon.json', 'packages/app/biome.json', 'packages/app/wrangler.json']) {
        expect(await write(hook), hook).toMatch(/file snapshots are not written into a project's root folder/)
        expect(fs.existsSync(path.join(dir, hook)), hook).toBe(false)
      }
      for (const data of ['snapshots/out.yml', 'packages/app/data/expected.json', '__snapshots__/lefthook.yml']) {
        expect(await write(data), data).toBe('written')
      }
      // As many file snapshots as a test makes, each new: written up to the run's bound, then refused.
      const fill = (i: number) => files.call('snapshot:write', [path.join(dir, `__snapshots__/fill-${i}.txt`), 'x'.repeat(400)]).then(() => 'written', (e: Error) => e.message)
      expect(await fill(1)).toBe('written')
      expect(await fill(2)).toBe('written')
      expect(await fill(3)).toMatch(/refused to create __snapshots__\/fill-3.txt from inside the sandbox: over 0.0009765625 MiB of snapshots written by the run's workers together/)
      expect(fs.existsSync(path.join(dir, '__snapshots__/fill-3.txt'))).toBe(false)
      // A path no refusal may quote whole.
      expect(await files.call('snapshot:read', ['/' + 'a'.repeat(100_000)]).catch((e: Error) => e.message)).toBe('snapshot:read takes a path of at most 4096 characters')
    } finally {
      fs.rmSync(dir, { recursive: true, force: true })
    }
  })
})

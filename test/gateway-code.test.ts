/**
 * What the host's Vite and coverage provider would run, or work through, from a module or report
 * a sandbox wrote: worker options (Vite evaluates them as code), the env statement Vite writes,
 * and coverage shaped to stall the host's report or overflow its stack.
 */
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { pathToFileURL } from 'node:url'
import { parseAst } from 'vite'
import { afterAll, describe, expect, it } from 'vitest'
import { RangeTally, screenCoverage } from '../src/pool/gateway/coverage.js'
import { RUN_LIMITS, RunBudget } from '../src/pool/gateway/budget.js'
import { screenImportMetaEnv } from '../src/pool/gateway/import-meta-env.js'
import { LocationTally } from '../src/pool/gateway/istanbul.js'
import { screenWorkerOptions } from '../src/pool/gateway/worker-options.js'
import { screenCss } from '../src/pool/gateway/css-screen.js'
import { fileRules } from '../src/pool/gateway/file-rules.js'
import { collectWorkspace } from '../src/workspace/collect.js'

const dir = fs.realpathSync(fs.mkdtempSync(path.join(os.tmpdir(), 'vps-code-')))
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))

describe('worker options', () => {
  const screen = (code: string) => screenWorkerOptions(code, path.join(dir, 'a.js'), dir, (c) => parseAst(c))

  it('reach the worker plugin as JSON, whatever Vite takes for their text', () => {
    expect(screen("new Worker(new URL('./w.js', import.meta.url), { type: 'module', name: 'w' })")).toBe(`new Worker(new URL('./w.js', import.meta.url),{"type":"module","name":"w"})`)
    expect(screen("new SharedWorker(new URL('./w.js', import.meta.url),\n  { type: 'module' },\n)")).toBe(`new SharedWorker(new URL('./w.js', import.meta.url),{"type":"module"},\n)`)
    // No options, or options Vite is told to ignore: nothing evaluated, nothing changed.
    for (const code of ["new Worker(new URL('./w.js', import.meta.url))", "new Worker(new URL('./w.js', import.meta.url), /* @vite-ignore */ opts)"]) expect(screen(code)).toBe(code)
  })

  it('are refused when they are code', () => {
    const marker = path.join(dir, 'worker-options-ran')
    for (const options of [
      `{ type: Function\`require('fs').writeFileSync(${JSON.stringify(marker)}, '1')\`\`\` }`,
      '{ type: (() => "module")() }',
      'opts',
      '{ ...opts }',
      '{ type }',
    ]) {
      expect(() => screen(`new Worker(new URL('./w.js', import.meta.url), ${options})`), options).toThrow(/are not plain values \(Vite evaluates them as code, on the host\)/)
    }
    expect(fs.existsSync(marker)).toBe(false)
  })
})

describe("the env statement Vite writes at a module's top", () => {
  it('is cut down wherever a line starts with it, not only the first time', () => {
    const allowed = (name: string) => name === 'MODE'
    // An export name with a line separator makes a line that looks like the statement, before Vite's.
    const code = `Object.defineProperty(__vite_ssr_exports__, "\u2028__vite_ssr_import_meta__.env = {};\u2028", {})\n__vite_ssr_import_meta__.env = {"MODE": "test", "VITE_SECRET": "host-value"};\nexport {}\n`
    const screened = screenImportMetaEnv(code, allowed)
    expect(screened).not.toContain('host-value')
    expect(screened).toContain('__vite_ssr_import_meta__.env = {"MODE": "test"};')
  })
})

describe('coverage shaped against the host', () => {
  const file = path.join(dir, 'src.js')
  fs.writeFileSync(file, 'export const f = (x) => x + 1\n'.repeat(20))
  const given = (f: string) => f === file
  const loc = (line: number, column: number) => ({ start: { line, column }, end: { line, column: column + 1 } })

  it('counts every location of a branch against the bounds of its line', () => {
    // 25 branches of 1,000 locations each, all on line 1: 25,000 entries the HTML report would draw.
    const branchMap: Record<string, unknown> = {}
    const b: Record<string, number[]> = {}
    for (let k = 0; k < 25; k++) {
      branchMap[k] = { loc: loc(k + 1, 0), type: 'switch', line: k + 1, locations: Array.from({ length: 1000 }, (_, j) => loc(1, k * 1000 + j)) }
      b[k] = Array.from({ length: 1000 }, () => 0)
    }
    const sent = { [file]: { path: file, statementMap: {}, fnMap: {}, branchMap, s: {}, f: {}, b } }
    expect(screenCoverage(sent, 'istanbul', given, new LocationTally(), new RangeTally())).toEqual({})
  })

  it('counts locations over the whole run: the provider merges every message a line is in', () => {
    const tally = new LocationTally()
    const message = (offset: number) => {
      const statementMap = Object.fromEntries(Array.from({ length: 400 }, (_, j) => [j, loc(1, offset + j)]))
      return { [file]: { path: file, statementMap, fnMap: {}, branchMap: {}, s: Object.fromEntries(Object.keys(statementMap).map((k) => [k, 1])), f: {}, b: {} } }
    }
    // The same locations again and again (honest files covering one module): always kept.
    for (let i = 0; i < 5; i++) expect(Object.keys(screenCoverage(message(0), 'istanbul', given, tally, new RangeTally()) as object)).toEqual([file])
    // New locations for the same line in each message: kept up to 1,000, then dropped.
    expect(Object.keys(screenCoverage(message(400), 'istanbul', given, tally, new RangeTally()) as object)).toEqual([file])
    expect(screenCoverage(message(800), 'istanbul', given, tally, new RangeTally())).toEqual({})
  })

  it('drops v8 ranges nested deeper than code nests (the provider recurses once per level)', () => {
    const result = (ranges: unknown[]) => ({ result: [{ scriptId: '1', url: pathToFileURL(file).href, functions: [{ functionName: 'f', ranges, isBlockCoverage: true }] }] })
    const deep = Array.from({ length: 5000 }, (_, i) => ({ startOffset: i, endOffset: 1024 * 1024 - i, count: i % 2 }))
    expect(screenCoverage(result(deep), 'v8', given, new LocationTally(), new RangeTally())).toEqual({ result: [] })
    const flat = Array.from({ length: 5000 }, (_, i) => ({ startOffset: i * 2, endOffset: i * 2 + 1, count: 1 }))
    expect((screenCoverage(result([{ startOffset: 0, endOffset: 20000, count: 1 }, ...flat]), 'v8', given, new LocationTally(), new RangeTally()) as { result: unknown[] }).result).toHaveLength(1)
  })

  it('bounds the nesting of the ranges a run sends for one file together (the provider merges them)', () => {
    const result = (ranges: unknown[]) => ({ result: [{ scriptId: '1', url: pathToFileURL(file).href, functions: [{ functionName: 'f', ranges, isBlockCoverage: true }] }] })
    const ranges = new RangeTally()
    // 20 messages of 250 nested ranges each, interleaved: 5,000 deep once merged.
    const kept = Array.from({ length: 20 }, (_, k) =>
      (screenCoverage(result(Array.from({ length: 250 }, (_, i) => ({ startOffset: k + 20 * i, endOffset: 1024 * 1024 - k - 20 * i, count: 1 }))), 'v8', given, new LocationTally(), ranges) as { result: unknown[] }).result.length,
    )
    expect(kept.filter((n) => n === 1).length).toBe(1)
    // The same ranges again (every honest file of a run sends them): kept each time.
    const honest = new RangeTally()
    const same = [{ startOffset: 0, endOffset: 500, count: 1 }, { startOffset: 10, endOffset: 20, count: 3 }]
    for (let i = 0; i < 5; i++) expect((screenCoverage(result(same), 'v8', given, new LocationTally(), honest) as { result: unknown[] }).result).toHaveLength(1)
  })
})

describe("workers' own output", () => {
  it('is passed on within the run bound, then dropped, saying so once', () => {
    const budget = new RunBudget({ ...RUN_LIMITS, output: 10 })
    expect([6, 3, 6, 6].map((n) => budget.passOutput(n))).toEqual(['pass', 'pass', 'first-drop', 'drop'])
    budget.newRun()
    expect(budget.passOutput(6)).toBe('pass')
  })
})

describe('what a plugin scans for, inside literals', () => {
  it('is escaped so that no tokenizer can take it for code, and means the same', async () => {
    const { defangLiterals } = await import('../src/pool/gateway/literal-scan.js')
    const code = "const a = 'import.meta.glob(\"./x\")' // new Worker(new URL('./w.js', import.meta.url))\nconst t = `new URL('./a', import.meta.url)`\nconst m = import.meta.glob('./y')\n"
    const out = defangLiterals(code)!
    expect(out).toBe("const a = 'impor\\x74.meta.glob(\"./x\")' // new Worke\\x72(new UR\\x4c('./w.js', import.meta.url))\nconst t = `new UR\\x4c('./a', import.meta.url)`\nconst m = import.meta.glob('./y')\n")
    // The strings mean what they meant.
    const values = (src: string) => new Function(`${src.replace('const m = import.meta.glob', '//')}; return [a, t]`)()
    expect(values(out)).toEqual(values(code))
  })
})

/**
 * The `vite:css` transform of a workspace `ws`, screened: `transform(code, id)` answers 'compiled'
 * or the refusal, and `compiled` lists the ids the plugin itself was given.
 */
async function cssHarness(ws: string) {
  const compiled: string[] = []
  const plugin = { name: 'vite:css', transform: { handler: async (code: string, id: string) => (compiled.push(id), { code }) } }
  const rules = fileRules(await collectWorkspace(ws), [])
  screenCss({ config: { root: ws, css: {} }, plugins: [plugin] } as never, () => rules)
  const transform = (code: string, id: string): Promise<string> => (plugin.transform.handler as any).call({ addWatchFile() {} }, code, id).then(() => 'compiled', (e: Error) => e.message)
  return { compiled, transform }
}

describe('style sheets whose compiler runs code', () => {
  it('are not compiled on the host for a sandbox (Less @plugin, Stylus use())', async () => {
    const css = await cssHarness(dir)
    const compiled = css.compiled
    const transform = (id: string) => css.transform('.a { color: red }', id)
    for (const id of [`${dir}/a.less`, `${dir}/a.styl`, `${dir}/a.stylus?inline`, `${dir}/App.vue?vue&type=style&index=0&lang.less`]) {
      expect(await transform(id), id).toMatch(/is Less or Stylus, whose compilers run code and read files a sheet names, on the host/)
    }
    expect(compiled).toEqual([])
    expect(await transform(`${dir}/a.css`)).toBe('compiled')
  })

  it('reads nothing an @import names that the sandbox is not given, before the compile reads it', async () => {
    const ws = path.join(dir, 'sheets')
    fs.mkdirSync(ws)
    fs.writeFileSync(path.join(ws, 'base.css'), '.b { margin: 0 }\n')
    fs.writeFileSync(path.join(ws, 'deep.css'), "@import '/dev/zero';\n")
    fs.writeFileSync(path.join(ws, 'x.less'), '@plugin "./p.js";\n')
    const css = await cssHarness(ws)
    const compiled = css.compiled
    const transform = (code: string) => css.transform(code, path.join(ws, 'a.css'))
    for (const code of ["@import '/dev/zero';", '@import url(/dev/zero);', "@import '../../../../../../../../dev/zero';", "@import './deep.css';", "@import './x.less';", "@import 'pkg/../../../etc/passwd';"]) {
      expect(await transform(code), code).toMatch(/names a file the sandbox is not given/)
    }
    expect(compiled).toEqual([])
    expect(await transform("@import './base.css';\n@import 'normalize.css';\n@import url('https://example.com/x.css');")).toBe('compiled')
  })
})

describe('source maps of given modules', () => {
  it('are kept only as large as their code could need (Vite expands every line of one)', async () => {
    const { ownSourceMap } = await import('../src/pool/gateway/source-maps.js')
    const ws = path.join(dir, 'maps')
    fs.mkdirSync(ws)
    const code = 'export const m = 1\n//# sourceMappingURL=m.js.map\n'
    fs.writeFileSync(path.join(ws, 'm.js'), code)
    const write = (mappings: string) => fs.writeFileSync(path.join(ws, 'm.js.map'), JSON.stringify({ version: 3, sources: ['m.ts'], names: [], mappings }))
    write('AAAA;AACA')
    const rules = fileRules(await collectWorkspace(ws), [])
    expect(ownSourceMap(code, path.join(ws, 'm.js'), rules).map).not.toBeNull()
    write(';'.repeat(3 * 1024 * 1024))
    expect(ownSourceMap(code, path.join(ws, 'm.js'), fileRules(await collectWorkspace(ws), [])).map).toBeNull()
  })
})

describe("what Vite's plugins evaluate on the host", () => {
  it('is JSON or nothing, whatever text their own scan takes for options; every other Function works', async () => {
    const { guardEvalValue } = await import('../src/pool/gateway/eval-guard.js')
    guardEvalValue()
    // Vite's evalValue, as written in its source.
    const evalValue = (rawValue: string) => new Function(`
    var console, exports, global, module, process, require
    return (\n${rawValue}\n)
  `)()
    const marker = path.join(dir, 'eval-ran')
    expect(() => evalValue(`{ a: Function\`require('fs').writeFileSync(${JSON.stringify(marker)}, '1')\`\`\` }`)).toThrow(SyntaxError)
    expect(() => evalValue("{ eager: true }")).toThrow(/must be JSON/)
    expect(fs.existsSync(marker)).toBe(false)
    expect(evalValue('{"eager":true,"query":{"raw":""}}')).toEqual({ eager: true, query: { raw: '' } })
    expect(new Function('a', 'b', 'return a + b')(1, 2)).toBe(3)
    expect(Function('return 7')()).toBe(7)
    expect((() => {}) instanceof Function).toBe(true)
  })
})

describe('text the gateway reads on the host', () => {
  it('is read in time linear in its length: long stack lines, url( and image-set( runs', async () => {
    const { canonicalStack } = await import('../src/pool/gateway/errors.js')
    const line = `    at ${'a ('.repeat(40_000)}${':1:1'.repeat(40_000)}x`
    const ws = path.join(dir, 'redos')
    fs.mkdirSync(ws)
    const css = await cssHarness(ws)
    for (const code of [`/* image-set(${'('.repeat(150_000)} */`, `.a { background: url(${' '.repeat(150_000)}x; }`]) await css.transform(code, path.join(ws, 'a.css'))
    // Each of these held the host for 24 to 28 s before: with a quadratic reading the test does
    // not finish within its timeout. The results still have to be right.
    expect(canonicalStack(`Error: x\n${line}\n    at f (/work/a.js:1:2)`, () => true).split('\n').at(-1)).toBe('    at f (/work/a.js:1:2)')
  }, 20_000)
})

/**
 * The glob check of load-screen.ts against Vite's own parser: the forms the attack suite cannot run
 * (a `**` pattern walks the host from its root: it would hang the run it failed in), and what it
 * lets through unchanged.
 */
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { parseAst } from 'vite'
import { afterAll, expect, it } from 'vitest'
import { screenLoads, type LoadingEnvironment } from '../src/pool/gateway/load-screen.js'
import { fileRules } from '../src/pool/gateway/file-rules.js'
import { collectWorkspace } from '../src/workspace/collect.js'

const dir = fs.realpathSync(fs.mkdtempSync(path.join(os.tmpdir(), 'vps-load-')))
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))

async function globCheck(): Promise<(code: string) => Promise<string>> {
  fs.mkdirSync(path.join(dir, 'ws/src'), { recursive: true })
  fs.writeFileSync(path.join(dir, 'ws/src/a.ts'), 'export {}\n')
  if (!fs.existsSync(path.join(dir, 'ws/src/out'))) fs.symlinkSync(os.tmpdir(), path.join(dir, 'ws/src/out'))
  const rules = fileRules(await collectWorkspace(path.join(dir, 'ws')), [])
  const plugin = { name: 'vite:import-glob', transform: { handler: async (code: string) => `expanded ${code.length}` } }
  const environment: LoadingEnvironment = { config: { root: path.join(dir, 'ws') }, pluginContainer: { load: async () => null, resolveId: async () => null, transform: async () => null }, plugins: [plugin] }
  screenLoads(environment, () => rules)
  const context = { parse: (code: string) => parseAst(code), resolve: async () => null }
  return (code) => (plugin.transform.handler as any).call(context, code, path.join(dir, 'ws/src/a.ts')).then(String, (e: Error) => e.message)
}

it('refuses globs that reach outside the workspace, in every form Vite reads, and passes the rest', async () => {
  const check = await globCheck()
  for (const code of [
    "import.meta.glob('**/atk/*.js')",
    "import.meta.glob('../../../../*')",
    "import.meta.glob('\\x2e\\x2e/../../*')",
    "import.meta.glob(/* ) */ '../../../*')",
    "import.meta.glob(['./*', '../../*'])",
    "import.meta.glob('./*', { base: '../../../' })",
    "import.meta.glob('./*/../../../*')",
    "import.meta.glob('./{..,x}/*')",
    "import.meta.glob('./*', { exhaustive: true })",
    "import.meta.glob('./out/*')",
    "import.meta.glob('./**')",
    "import.meta.glob(`${x}/*`)",
    "import.meta.glob('@alias/*')",
    // Vite's literal stripper reads `of /` as a division: it expands what a parser calls a regex.
    'for (const x of /import.meta.glob("../../../*", { eager: true })/\n[0]) {}',
  ]) {
    expect(await check(code), code).toMatch(/^vitest-pool-sandbox: import\.meta\.glob pattern .* in src\/a\.ts /)
  }
  expect(await check("import.meta.glob('./*.ts')")).toBe(`expanded ${"import.meta.glob('./*.ts')".length}`)
  // In a literal, the expression is escaped (same string) so no plugin's scan can take it for code.
  expect(await check("const s = 'import.meta.glob(\"../../*\")'")).toBe(`expanded ${"const s = 'impor\\x74.meta.glob(\"../../*\")'".length}`)
  // Options reach the plugin as their JSON.
  expect(await check("import.meta.glob(['/src/*', '!./a.ts'], { eager: true })")).toBe(`expanded ${`import.meta.glob(['/src/*', '!./a.ts'], {"eager":true})`.length}`)
})

it("lists only what the sandbox is given: a glob's matches that are not given are negated before Vite expands it", async () => {
  const ws = path.join(dir, 'listed')
  fs.mkdirSync(path.join(ws, 'src/data'), { recursive: true })
  for (const name of ['a.ts', 'data/one.json', 'data/server.key', 'data/[x].pem']) fs.writeFileSync(path.join(ws, 'src', name), '{}\n')
  const rules = fileRules(await collectWorkspace(ws), [])
  const plugin = { name: 'vite:import-glob', transform: { handler: async (code: string) => code } }
  const environment: LoadingEnvironment = { config: { root: ws }, pluginContainer: { load: async () => null, resolveId: async () => null, transform: async () => null }, plugins: [plugin] }
  screenLoads(environment, () => rules)
  const context = { parse: (code: string) => parseAst(code), resolve: async () => null }
  const expand = (code: string): Promise<string> => (plugin.transform.handler as any).call(context, code, path.join(ws, 'src/a.ts'))
  expect(await expand("const m = import.meta.glob('./data/*', { eager: true })")).toBe(`const m = import.meta.glob(["./data/*", "!./data/\\\\[x\\\\].pem", "!./data/server.key"], {"eager":true})`)
  expect(await expand("import.meta.glob('/src/**/*.json')")).toBe("import.meta.glob('/src/**/*.json')")
})

it('hands the glob plugin its options as data: options that are code, and patterns that take long to match, are refused', async () => {
  const check = await globCheck()
  const marker = path.join(dir, 'glob-options-ran')
  for (const code of [
    `import.meta.glob('./*.ts', { query: { leak: Function\`require('fs').writeFileSync(${JSON.stringify(marker)}, '1')\`\`\` } })`,
    "import.meta.glob('./*.ts', { ...{ eager: true } })",
    "import.meta.glob('./*.ts', { eager })",
    "import.meta.glob('./*.ts', { ['ea' + 'ger']: true })",
    "import.meta.glob('./*.ts', { query: `${process.env.HOME}` })",
  ]) {
    expect(await check(code), code).toMatch(/^vitest-pool-sandbox: import\.meta\.glob pattern "import\.meta\.glob" in src\/a\.ts has options that are not plain values/)
  }
  expect(fs.existsSync(marker)).toBe(false)
  // Plain options reach the plugin as JSON (what it evaluates is data).
  expect(await check("import.meta.glob('./*.ts', { eager: true, query: { raw: '' }, import: 'default' })")).toBe(`expanded ${`import.meta.glob('./*.ts', {"eager":true,"query":{"raw":""},"import":"default"})`.length}`)
  expect(await check("import.meta.glob('./*a*a*a*a*a*a*c')")).toMatch(/has more wildcards or alternatives than the sandbox pool matches/)
  // A third argument: where another tokenizer ends the call, its arguments are not these.
  expect(await check("import.meta.glob('./a.ts', {}, 0 in /'/)(\"../../*\" //'\n)")).toMatch(/takes one or two arguments/)
  expect(await check("import.meta.glob('./*.spec.*')")).toMatch(/^expanded /)
})

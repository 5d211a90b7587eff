/**
 * A workspace whose root (its git root) has no package.json, inside a folder that has one: what
 * Vite reads for a subpath import (`#x`) or a package importing itself by name is that manifest,
 * outside the workspace. From attack round 27: its name and its `imports` keys reached the
 * sandbox and the host's terminal. A real run of Vitest in local sandboxes.
 */
import { execFileSync, spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterAll, expect, it } from 'vitest'
import { REPO } from './support/vitest-run.js'

const dir = fs.realpathSync(fs.mkdtempSync(path.join(os.tmpdir(), 'vps-above-')))
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }))
const NAME = `vps-outer-${randomBytes(6).toString('hex')}`
const ws = path.join(dir, 'outer/ws')

const probes = `import { expect, it } from 'vitest'

const rpc = (globalThis as any).__vitest_worker__.rpc
const self = import.meta.filename
const text = (v: unknown) => JSON.stringify(v, (_, x) => (x instanceof Error ? { message: x.message, code: (x as any).code } : x))
const answer = async (call: () => Promise<unknown>, id: string) => (await call().then(text, (e: Error) => text(e))).split(id).join('X')

it('tells nothing of the package.json above the workspace', async () => {
  const pairs = [
    ['#nope', '#in'],
    ['#nope', '#qqqq'],
    ['${NAME}/nope', '${NAME.replace(/[0-9a-f]{12}$/, 'q'.repeat(12))}/nope'],
  ]
  for (const [asked, other] of pairs) {
    for (const importer of [self, self.replace(/above\\.test/, 'nowhere')]) {
      const fetched = await answer(() => rpc.fetch(asked, importer, 'ssr', {}), asked)
      expect(fetched).not.toContain('${NAME.slice(0, 10)}')
      expect(fetched, asked).toBe(await answer(() => rpc.fetch(other, importer, 'ssr', {}), other))
      expect(await answer(() => rpc.resolve(asked, importer, 'ssr'), asked)).toBe(await answer(() => rpc.resolve(other, importer, 'ssr'), other))
    }
  }
})
`

function plant(): void {
  fs.mkdirSync(path.join(ws, '.git'), { recursive: true })
  fs.mkdirSync(path.join(ws, 'test'), { recursive: true })
  fs.writeFileSync(path.join(dir, 'outer/package.json'), JSON.stringify({ name: NAME, imports: { '#in': './in.js' }, exports: { './in': './in.js' } }))
  fs.writeFileSync(path.join(dir, 'outer/in.js'), 'export default "attack-secret-above-workspace"\n')
  // The repository's dependencies, linked file by file (a copy would take long), and this package.
  execFileSync('cp', ['-al', path.join(REPO, 'node_modules'), path.join(ws, 'node_modules')])
  fs.mkdirSync(path.join(ws, 'node_modules/vitest-pool-sandbox'))
  fs.copyFileSync(path.join(REPO, 'package.json'), path.join(ws, 'node_modules/vitest-pool-sandbox/package.json'))
  fs.symlinkSync(path.join(REPO, 'dist'), path.join(ws, 'node_modules/vitest-pool-sandbox/dist'))
  fs.writeFileSync(path.join(ws, 'vitest.config.mjs'), "import { defineConfig } from 'vitest/config'\nimport { sandbox } from 'vitest-pool-sandbox'\nexport default defineConfig({ test: { pool: sandbox({ sandboxes: 1 }) } })\n")
  fs.writeFileSync(path.join(ws, 'test/above.test.ts'), probes)
  // A test that imports one: the host transforms it, and prints what fails.
  fs.writeFileSync(path.join(ws, 'test/imports.test.ts'), "import { it } from 'vitest'\n\nit('imports a subpath import', async () => {\n  await import('#nope')\n})\n")
}

it('a workspace without a package.json tells nothing of the one above it', async () => {
  plant()
  const child = spawn(process.execPath, [path.join(ws, 'node_modules/vitest/vitest.mjs'), 'run'], { cwd: ws, env: { ...process.env, NO_COLOR: '1', CI: 'true' }, stdio: ['ignore', 'pipe', 'pipe'] })
  let output = ''
  child.stdout.on('data', (d) => (output += d))
  child.stderr.on('data', (d) => (output += d))
  await new Promise((r) => child.once('exit', r))
  expect(output).toMatch(/✓ test\/above\.test\.ts/)
  // The test that imports `#nope` fails, as where no package.json maps it, naming no package.
  expect(output).toMatch(/Cannot find module '#nope'/)
  expect(output).not.toContain(NAME)
  expect(output).not.toContain('attack-secret')
}, 120_000)

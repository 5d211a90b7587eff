/**
 * The template key changes exactly when what the dependencies are made from changes; the package
 * manager and its frozen install come from the lockfile and `packageManager`; the engine keeps its
 * snapshots within their disk budget, least recently used first, never one a sandbox runs on.
 */
import fs from 'node:fs'
import path from 'node:path'
import { afterAll, describe, expect, it, vi } from 'vitest'
import { Engine } from '../src/engine/index.js'
import { templateKey, type KeyInputs } from '../src/template/key.js'
import { detectPackageManager } from '../src/template/package-manager.js'
import { createProgress } from '../src/template/progress.js'
import { tempDir } from './support/engine.js'

const dirs: string[] = []
afterAll(() => {
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true })
})

function workspace(files: Record<string, string>): string {
  const root = tempDir('key')
  dirs.push(root)
  for (const [rel, text] of Object.entries(files)) {
    fs.mkdirSync(path.dirname(path.join(root, rel)), { recursive: true })
    fs.writeFileSync(path.join(root, rel), text)
  }
  return root
}

const BASE_FILES = {
  'package.json': '{"name":"app","workspaces":["packages/*"]}',
  'package-lock.json': '{"lockfileVersion":3}',
  'packages/a/package.json': '{"name":"a"}',
  'src/index.ts': 'export const x = 1',
  'README.md': '# app',
  'node_modules/.package-lock.json': '{"installed":1}',
  'node_modules/dep/package.json': '{"name":"dep","version":"1.0.0"}',
}

describe('the template key', () => {
  const inputs = (root: string, over: Partial<KeyInputs> = {}): KeyInputs => ({
    root,
    dependencies: 'host',
    setup: ['npx prisma generate'],
    base: 'local',
    platform: { os: 'linux', arch: 'x64', node: '20' },
    ...over,
  })

  // [what changes, how, whether the key must change]
  const cases: Array<[string, (root: string) => Partial<KeyInputs> | void, boolean]> = [
    ['a source file', (r) => fs.writeFileSync(path.join(r, 'src/index.ts'), 'export const x = 2'), false],
    ['an unrelated file', (r) => fs.writeFileSync(path.join(r, 'README.md'), '# changed'), false],
    ['a new source file', (r) => fs.writeFileSync(path.join(r, 'src/new.ts'), 'export {}'), false],
    ['a manifest inside node_modules', (r) => fs.writeFileSync(path.join(r, 'node_modules/dep/package.json'), '{"name":"dep","version":"2.0.0"}'), false],
    ['the lockfile', (r) => fs.writeFileSync(path.join(r, 'package-lock.json'), '{"lockfileVersion":3,"x":1}'), true],
    ['the root manifest', (r) => fs.writeFileSync(path.join(r, 'package.json'), '{"name":"app","version":"2.0.0"}'), true],
    ["a workspace package's manifest", (r) => fs.writeFileSync(path.join(r, 'packages/a/package.json'), '{"name":"a","dependencies":{"x":"1"}}'), true],
    ['a new workspace package', (r) => {
      fs.mkdirSync(path.join(r, 'packages/b'))
      fs.writeFileSync(path.join(r, 'packages/b/package.json'), '{}')
    }, true],
    ['the package manager configuration', (r) => fs.writeFileSync(path.join(r, '.npmrc'), 'legacy-peer-deps=true'), true],
    ["the installed tree's record", (r) => fs.writeFileSync(path.join(r, 'node_modules/.package-lock.json'), '{"installed":2}'), true],
    ['template.setup', () => ({ setup: ['npx prisma generate', 'npx playwright install'] }), true],
    ['the dependency source', () => ({ dependencies: 'copy' }), true],
    ['the Node major', () => ({ platform: { os: 'linux', arch: 'x64', node: '22' } }), true],
    ['the architecture', () => ({ platform: { os: 'linux', arch: 'arm64', node: '20' } }), true],
    ['the OS', () => ({ platform: { os: 'darwin', arch: 'x64', node: '20' } }), true],
    ['the provider or its base image', () => ({ base: 'opensandbox:node:20' }), true],
  ]
  for (const [what, change, changes] of cases) {
    it(`${changes ? 'changes' : 'stays'} when ${what} changes`, () => {
      const root = workspace(BASE_FILES)
      const before = templateKey(inputs(root))
      const over = change(root) ?? {}
      expect(templateKey(inputs(root, over)) !== before).toBe(changes)
    })
  }

  it("ignores the host's installed tree when the package manager installs the dependencies", () => {
    const root = workspace(BASE_FILES)
    const before = templateKey(inputs(root, { dependencies: 'install' }))
    fs.writeFileSync(path.join(root, 'node_modules/.package-lock.json'), '{"installed":2}')
    expect(templateKey(inputs(root, { dependencies: 'install' }))).toBe(before)
  })

  it('differs for the same files at another path (dependencies live at the same absolute path)', () => {
    expect(templateKey(inputs(workspace(BASE_FILES)))).not.toBe(templateKey(inputs(workspace(BASE_FILES))))
  })
})

describe('the package manager and its frozen install', () => {
  const table: Array<[string, Record<string, string>, { name: string; version: string; install: string } | undefined]> = [
    ['package-lock.json', { 'package-lock.json': '{}' }, { name: 'npm', version: 'bundled', install: 'npm ci' }],
    ['npm pinned by packageManager', { 'package-lock.json': '{}', 'package.json': '{"packageManager":"npm@10.9.2"}' }, { name: 'npm', version: '10.9.2', install: "npm exec --yes --package='npm@10.9.2' -- npm ci" }],
    ['pnpm lockfile 9.0', { 'pnpm-lock.yaml': "lockfileVersion: '9.0'\n" }, { name: 'pnpm', version: '9', install: "npm exec --yes --package='pnpm@9' -- pnpm install --frozen-lockfile" }],
    ['pnpm lockfile 6.0', { 'pnpm-lock.yaml': "lockfileVersion: '6.0'\n" }, { name: 'pnpm', version: '8', install: "npm exec --yes --package='pnpm@8' -- pnpm install --frozen-lockfile" }],
    ['pnpm pinned with a hash', { 'pnpm-lock.yaml': "lockfileVersion: '9.0'\n", 'package.json': '{"packageManager":"pnpm@9.15.0+sha512.abc"}' }, { name: 'pnpm', version: '9.15.0', install: "npm exec --yes --package='pnpm@9.15.0' -- pnpm install --frozen-lockfile" }],
    ['yarn classic', { 'yarn.lock': '# yarn lockfile v1\n' }, { name: 'yarn', version: '1', install: "npm exec --yes --package='yarn@1' -- yarn install --frozen-lockfile" }],
    ['yarn berry', { 'yarn.lock': '__metadata:\n  version: 8\n' }, { name: 'yarn', version: '4', install: "npm exec --yes --package='@yarnpkg/cli-dist@4' -- yarn install --immutable" }],
    ['yarn berry with yarnPath', { 'yarn.lock': '__metadata:\n  version: 8\n', '.yarnrc.yml': 'yarnPath: .yarn/releases/yarn-4.5.0.cjs\n' }, { name: 'yarn', version: 'yarnPath', install: "node '.yarn/releases/yarn-4.5.0.cjs' install --immutable" }],
    ['bun', { 'bun.lock': '{}' }, { name: 'bun', version: 'latest', install: "npm exec --yes --package='bun@latest' -- bun install --frozen-lockfile" }],
    ['two lockfiles, packageManager decides', { 'package-lock.json': '{}', 'pnpm-lock.yaml': "lockfileVersion: '9.0'\n", 'package.json': '{"packageManager":"pnpm@10.4.1"}' }, { name: 'pnpm', version: '10.4.1', install: "npm exec --yes --package='pnpm@10.4.1' -- pnpm install --frozen-lockfile" }],
    ['no lockfile', { 'package.json': '{}' }, undefined],
  ]
  for (const [what, files, expected] of table) {
    it(what, () => {
      const pm = detectPackageManager(workspace(files))
      expect(pm && { name: pm.name, version: pm.version, install: pm.install }).toEqual(expected)
    })
  }
})

describe('build progress', () => {
  it('on a terminal: one live line with the step, the elapsed time and the last line of output', () => {
    vi.useFakeTimers()
    try {
      const drawn: string[] = []
      const logged: string[] = []
      const p = createProgress('sandbox: template', { log: (l) => logged.push(l), tty: { write: (t) => drawn.push(t), columns: 100 } })
      const last = () => drawn.at(-1)!.replace('\r\x1b[2K', '')
      p.step('installing with npm bundled (npm ci)')
      expect(last()).toBe('sandbox: template: installing with npm bundled (npm ci) (0.0s)')
      p.output(Buffer.from('\x1b[32madded 12 packages\x1b[0m\nnpm warn deprec'))
      vi.advanceTimersByTime(1000)
      // The last line so far (escape sequences removed), redrawn with the time.
      expect(last()).toBe('sandbox: template: installing with npm bundled (npm ci) (1.0s) | npm warn deprec')
      p.output(Buffer.from('ated inflight@1.0.6: leaks memory, and this line is far too long for the hundred columns of this terminal\n\n'))
      vi.advanceTimersByTime(250)
      expect(last()).toHaveLength(99)
      expect(last()).toMatch(/^sandbox: template: installing with npm bundled \(npm ci\) \(1\.3s\) \| npm warn deprecated inflight.*…$/)
      p.step('snapshotting')
      expect(last()).toBe('sandbox: template: snapshotting (1.3s)')
      p.end('ready')
      expect(last()).toBe('') // cleared
      expect(drawn.every((d) => d.startsWith('\r\x1b[2K'))).toBe(true)
      expect(logged).toEqual(['sandbox: template: ready (1.3s)'])
      const count = drawn.length
      vi.advanceTimersByTime(1000)
      expect(drawn).toHaveLength(count) // nothing drawn after the end
    } finally {
      vi.useRealTimers()
    }
  })

  it('elsewhere: one line per step, nothing drawn', () => {
    const logged: string[] = []
    const p = createProgress('sandbox: template', { log: (l) => logged.push(l) })
    p.step('uploading the workspace (3 files)')
    p.output(Buffer.from('noise\n'))
    p.step('running "true"')
    p.end('failed')
    expect(logged.map((l) => l.replace(/\(\d+\.\ds\)$/, '(t)'))).toEqual([
      'sandbox: template: uploading the workspace (3 files) (t)',
      'sandbox: template: running "true" (t)',
      'sandbox: template: failed (t)',
    ])
  })
})

describe("the engine's snapshot budget", () => {
  it('deletes the least recently used snapshots past the budget, never one a sandbox runs on', async () => {
    const stateDir = tempDir('budget')
    dirs.push(stateDir)
    // Each snapshot holds 1 MB; the budget fits two.
    const engine = await Engine.start({ stateDir, maxSnapshotBytes: 2_500_000 })
    try {
      const make = async (name: string) => {
        const s = await engine.createSandbox()
        const p = await s.spawn({ cmd: '/bin/sh', args: ['-c', `head -c 1000000 /dev/urandom > /${name}`], env: {} })
        await new Promise((r) => (p.exit ? r(p.exit) : p.once('exit', r)))
        const snap = await engine.snapshot(s.id, { name })
        await engine.kill(s.id)
        return snap
      }
      const a = await make('a')
      const b = await make('b')
      // `a` is used now: `b` becomes the least recently used, and `a` stays in use meanwhile.
      const user = await engine.createSandbox({ template: a.id })
      await make('c')
      const names = async () => (await engine.listSnapshots()).map((s) => s.name).sort()
      expect(await names()).toEqual(['a', 'c'])
      expect(fs.existsSync(engine.layers.layerDir(b.id))).toBe(false)
      // Over budget again while `a` (the oldest use now) has a sandbox on it: `c` goes instead.
      await make('d')
      expect(await names()).toEqual(['a', 'd'])
      expect(await engine.deleteSnapshot(a.id)).toBe('in_use')
      await engine.kill(user.id)
      expect(await engine.deleteSnapshot(a.id)).toBe('deleted')
    } finally {
      await engine.close()
    }
  })
})

/**
 * Templates in real runs: built once before any worker, reused by the next run (asserted from the
 * engine's request log), built once by two runs at the same time, managed by `vitest-sandbox
 * template ls | build | prune`, and, forced with `dependencies: 'install'`, installed inside the
 * template by npm and by pnpm from their lockfiles (from the registry), with registry credentials
 * given to the install step only.
 */
import { execFile } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { promisify } from 'node:util'
import { describe, expect, it } from 'vitest'
import { defaultStateDir } from '../src/engine/index.js'
import { watasu } from '../src/providers/watasu.js'
import { createProgress } from '../src/template/progress.js'
import { ensureTemplate } from '../src/template/template.js'
import { startTestEngine, tempDir } from './support/engine.js'
import { REPO, runFixture, testsOf } from './support/vitest-run.js'

const exec = promisify(execFile)
const CLI = path.join(REPO, 'dist/cli/index.js')
const REQUESTS = 'vitest-pool-sandbox:requests'

/** `vitest-sandbox ...` in `cwd`; async, so the engine in this process can keep answering. */
async function cli(args: string[], cwd: string, env: Record<string, string> = {}): Promise<{ code: number; out: string }> {
  try {
    const { stdout, stderr } = await exec(process.execPath, [CLI, ...args], { cwd, env: { ...process.env, ...env } })
    return { code: 0, out: stdout + stderr }
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string }
    return { code: e.code ?? 1, out: `${e.stdout ?? ''}${e.stderr ?? ''}` }
  }
}

/** What the run asked the engine for: processes started in builders, snapshots, uploads. */
function requests(output: string) {
  const lines = output.split('\n').filter((l) => l.includes(REQUESTS))
  return {
    builderStarts: lines.filter((l) => / start \S+ template-builder: /.test(l)),
    snapshots: lines.filter((l) => /POST \/v1\/sandboxes\/[^/]+\/snapshots 201/.test(l)),
    // Uploads other than the pool's own runtime files and the workspace tar: dependencies.
    dependencyUploads: lines.filter((l) => / PUT \/runtime\/v1\/files path=/.test(l) && !/path=\/tmp\/\.vitest-sandbox\/(bundle\.tar|workspace\.tar|uploaded\.json) /.test(l)),
  }
}

const statuses = (run: { json: unknown }) => Object.entries(testsOf(run.json)).filter(([k]) => !k.endsWith(' (file)')).map(([, t]) => t.status)
const nonce = () => `${Date.now()}-${randomBytes(3).toString('hex')}`
const TEMPLATE_FIXTURE = path.join(REPO, 'fixtures/template')

describe('a template with setup commands', () => {
  it('is built once before the first worker; the next run reuses it, uploading and installing nothing', { timeout: 180_000 }, async () => {
    const env = { VPS_TEMPLATE_NONCE: nonce(), DEBUG: REQUESTS }
    const ghost = path.join(TEMPLATE_FIXTURE, 'test/ghost.txt')
    fs.writeFileSync(ghost, 'in the workspace while the template is built')
    let first
    try {
      first = await runFixture('template', { env: { ...env, VPS_GHOST: '1' } })
    } finally {
      fs.rmSync(ghost, { force: true })
    }
    expect(statuses(first), first.output).toEqual(['passed', 'passed'])
    const built = requests(first.output)
    expect(built.builderStarts.some((l) => l.includes('made by setup')), first.output).toBe(true)
    expect(built.snapshots).toHaveLength(1)
    expect(built.dependencyUploads, 'the host node_modules are layered, never uploaded').toEqual([])
    expect(first.output).toMatch(/sandbox: template: building \(setup commands over the host node_modules, once per key\)/)
    expect(first.output).toMatch(/sandbox: template: running "mkdir -p \/home\/sandbox\/made/)
    expect(first.output).toMatch(/sandbox: template: ready \(\d+\.\ds\)/)

    // The ghost file went into the builder with the workspace; the template must not keep it.
    const second = await runFixture('template', { env })
    expect(statuses(second), second.output).toEqual(['passed', 'passed'])
    const reused = requests(second.output)
    expect(reused.builderStarts).toEqual([])
    expect(reused.snapshots).toEqual([])
    expect(reused.dependencyUploads).toEqual([])
    expect(second.output).not.toMatch(/sandbox: template:/)
  })

  it('is built once when two runs need it at the same time; the other waits and reuses it', { timeout: 180_000 }, async () => {
    const env = { VPS_TEMPLATE_NONCE: nonce(), VPS_SETUP_SECONDS: '4', DEBUG: REQUESTS }
    const runs = await Promise.all([runFixture('template', { env }), runFixture('template', { env })])
    for (const r of runs) expect(statuses(r), r.output).toEqual(['passed', 'passed'])
    const all = runs.map((r) => requests(r.output))
    expect(all.flatMap((r) => r.builderStarts.filter((l) => l.includes('made by setup')))).toHaveLength(1)
    expect(all.flatMap((r) => r.snapshots)).toHaveLength(1)
    const waited = runs.filter((r) => /template: built by another run meanwhile; reusing it/.test(r.output))
    expect(waited).toHaveLength(1)
    expect(waited[0].output).toMatch(/sandbox: template: waiting for another run on this machine, which builds it/)
  })

  it('template ls, build and prune manage the real templates of the project', { timeout: 180_000 }, async () => {
    const env = { VPS_TEMPLATE_NONCE: nonce() }
    const built = await cli(['template', 'build'], TEMPLATE_FIXTURE, env)
    expect(built.code, built.out).toBe(0)
    expect(built.out).toMatch(/template: running "mkdir -p \/home\/sandbox\/made/)
    const name = /template (vitest-sandbox-[0-9a-f]{24}) \(host\): (snap_\w+)/.exec(built.out)
    expect(name, built.out).not.toBeNull()
    const [, templateName, id] = name!

    const ls = await cli(['template', 'ls'], TEMPLATE_FIXTURE, env)
    expect(ls.code, ls.out).toBe(0)
    expect(ls.out).toMatch(/^KEY +ID +SIZE +CREATED +LAST USED/m)
    const row = ls.out.split('\n').find((l) => l.startsWith(templateName.slice('vitest-sandbox-'.length)))
    expect(row, ls.out).toMatch(new RegExp(`${id} +\\d+ KiB +\\d+s ago +- +\\(this project's\\)$`))

    // A run uses it (and records the use); building again finds it.
    const run = await runFixture('template', { env: { ...env, DEBUG: REQUESTS } })
    expect(statuses(run), run.output).toEqual(['passed', 'passed'])
    expect(requests(run.output).builderStarts).toEqual([])
    expect((await cli(['template', 'build'], TEMPLATE_FIXTURE, env)).out).toContain(`template ${templateName} (host): ${id}`)
    expect((await cli(['template', 'ls'], TEMPLATE_FIXTURE, env)).out).toMatch(new RegExp(`${id} +\\d+ KiB +\\d+s ago +\\d+s ago +\\(this project's\\)`))

    // prune keeps the current template unless --all; --dry-run deletes nothing.
    expect((await cli(['template', 'prune', '--older-than', '0s'], TEMPLATE_FIXTURE, env)).out).not.toContain(id)
    const dry = await cli(['template', 'prune', '--all', '--dry-run'], TEMPLATE_FIXTURE, env)
    expect(dry.out).toMatch(new RegExp(`would delete ${templateName} \\(${id}`))
    expect((await cli(['template', 'ls'], TEMPLATE_FIXTURE, env)).out).toContain(id)
    const pruned = await cli(['template', 'prune', '--all'], TEMPLATE_FIXTURE, env)
    expect(pruned.code, pruned.out).toBe(0)
    expect(pruned.out).toMatch(new RegExp(`deleted: ${templateName} \\(${id}`))
    expect((await cli(['template', 'ls'], TEMPLATE_FIXTURE, env)).out).not.toContain(id)
  })

  it('template commands say what is wrong with bad input', async () => {
    expect(await cli(['template'], TEMPLATE_FIXTURE)).toMatchObject({ code: 1, out: expect.stringMatching(/template: give one action: template ls, template build or template prune \(got none\)/) })
    expect(await cli(['template', 'list'], TEMPLATE_FIXTURE)).toMatchObject({ code: 1, out: expect.stringMatching(/unknown action 'list'; use template ls, template build or template prune/) })
    expect(await cli(['template', 'ls', '--provider', 'nope'], TEMPLATE_FIXTURE)).toMatchObject({ code: 1, out: expect.stringMatching(/unknown --provider 'nope'; the providers are local, watasu, opensandbox/) })
    expect(await cli(['template', 'prune', '--older-than', 'soon'], TEMPLATE_FIXTURE)).toMatchObject({ code: 1, out: expect.stringMatching(/--older-than must be a duration such as 90s, 30m, 2h or 7d \(got 'soon'\)/) })
  })
})

describe('builds coordinated through a remote provider', () => {
  it('two runs on different machines build one template: the later builder yields to the older one', { timeout: 120_000 }, async () => {
    // A Watasu-compatible server (the engine over the protocol): no lock on this machine, only
    // the provider's listing of builders, as between two CI machines.
    const engine = await startTestEngine({ allowNetwork: true })
    const root = tempDir('remote-build')
    fs.writeFileSync(path.join(root, 'package.json'), '{"name":"remote-build"}')
    try {
      const lines: string[][] = [[], []]
      const build = async (i: number) => {
        const session = await watasu({ apiUrl: `${engine.handle.url}/v1`, apiKey: engine.handle.token }).connect()
        expect(session.lockTemplate).toBeUndefined()
        try {
          const spec = { root, setup: ['sleep 3; echo built'], dependencies: 'copy' as const, installEnv: [], files: [], timeoutSec: 600 }
          return await ensureTemplate(session, spec, 'watasu', () => createProgress('template', { log: (l) => lines[i].push(l) }), { 'vitest-sandbox': 'pool', 'vitest-sandbox-run': `run-${i}` })
        } finally {
          await session.close()
        }
      }
      const [a, b] = await Promise.all([build(0), build(1)])
      expect(a.id).toBeDefined()
      expect(b.id).toBe(a.id)
      const snapshots = await engine.client.listSnapshots()
      expect(snapshots.filter((s) => s.name === a.name)).toHaveLength(1)
      const all = lines.flat().join('\n')
      expect(all.match(/template: running "sleep 3; echo built"/g), all).toHaveLength(1)
      expect(all).toMatch(/template: waiting for sandbox sbx_\w+, which another run builds it in/)
      expect(await engine.client.listSandboxes()).toEqual([])
    } finally {
      await engine.close()
      fs.rmSync(root, { recursive: true, force: true })
    }
  })
})

describe('dependencies installed by the package manager inside the template', () => {
  /** The host gets its own copy (the host Vitest needs one), then a marker the sandbox must not see. */
  async function hostInstall(pm: 'npm' | 'pnpm', env: Record<string, string>): Promise<string> {
    const fixture = path.join(REPO, 'fixtures', `install-${pm}`)
    if (!fs.existsSync(path.join(fixture, 'node_modules/vitest'))) {
      // npm on the host for both: only the template reads pnpm-lock.yaml.
      const args = pm === 'npm' ? ['ci'] : ['install', '--no-package-lock', '--no-save']
      await exec('npm', [...args, '--no-audit', '--no-fund', '--prefix', fixture], { env: { ...process.env, ...env } })
    }
    fs.writeFileSync(path.join(fixture, 'node_modules/is-odd/TAMPERED'), 'the host copy, which sandboxes must not get')
    return fixture
  }

  for (const pm of ['npm', 'pnpm'] as const) {
    it(`${pm}: a frozen install from the lockfile, with credentials for that step only`, { timeout: 300_000 }, async () => {
      const token = `vps-token-${randomBytes(8).toString('hex')}`
      const env = { VPS_TEMPLATE_NONCE: nonce(), VPS_REGISTRY_TOKEN: token }
      const fixture = await hostInstall(pm, env)
      const run = await runFixture(`install-${pm}`, { vitest: path.join(fixture, 'node_modules/vitest/vitest.mjs'), env: { ...env, DEBUG: REQUESTS } })
      expect(statuses(run), run.output).toEqual(pm === 'npm' ? ['passed', 'passed'] : ['passed'])
      const install = pm === 'npm' ? '"npm ci"' : `"npm exec --yes --package='pnpm@9.15.9' -- pnpm install --frozen-lockfile"`
      expect(requests(run.output).builderStarts.some((l) => l.includes(`["-c",${install}]`)), run.output).toBe(true)
      expect(run.output).toMatch(new RegExp(`sandbox: template: installing with ${pm} ${pm === 'npm' ? 'bundled' : '9\\.15\\.9'}`))
      expect(requests(run.output).dependencyUploads).toEqual([])

      // The token reached the install (npm fails on a missing variable) but no file of the template.
      const ls = await cli(['template', 'ls'], fixture, env)
      const id = /(snap_\w+) .*\(this project's\)/.exec(ls.out)?.[1]
      expect(id, ls.out).toBeDefined()
      const layer = path.join(defaultStateDir(), 'layers', id!)
      expect(fs.existsSync(path.join(layer, fixture, 'node_modules/is-odd/package.json'))).toBe(true)
      const grep = await exec('grep', ['-rl', token, layer]).catch((e: { code: number; stdout: string }) => e)
      expect(grep.stdout.trim(), 'files of the template that hold the token').toBe('')
      await cli(['template', 'prune', '--all'], fixture, env)
    })
  }
})

// Bounded sandboxes (issue 21): limits read as users write them, enforced by the host's cgroups
// and a filesystem per sandbox, refused where they cannot be, and bombs that end inside their
// sandbox while the rest of the run goes on.
import { spawnSync } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { Engine } from '../src/engine/engine.js'
import { parseSize, resolveLimits } from '../src/engine/limits.js'
import type { LocalSandbox } from '../src/engine/sandbox.js'
import { hostProcessesMatching, tempDir } from './support/engine.js'
import { REPO, runFixture, testsOf } from './support/vitest-run.js'

const root = process.getuid?.() === 0
const MiB = 1024 ** 2

describe('limits as users write them', () => {
  it('reads sizes in the units users know', () => {
    expect(parseSize('512m', 'memory')).toBe(512 * MiB)
    expect(parseSize('2G', 'memory')).toBe(2048 * MiB)
    expect(parseSize('1.5g', 'disk')).toBe(1536 * MiB)
    expect(parseSize('2GiB', 'disk')).toBe(2048 * MiB)
    expect(parseSize(4096, 'disk')).toBe(4096)
  })

  it('names the option, the value and what it takes', () => {
    expect(() => parseSize('two gigs', 'memory')).toThrow(`limits.memory: "two gigs" is not a size: a byte count or a number with k, m, g or t (e.g. '512m', '2g')`)
    expect(() => resolveLimits({ cpus: -1 })).toThrow('limits.cpus: -1 is not a positive number')
    expect(() => resolveLimits({ processes: 1.5 })).toThrow('limits.processes: 1.5 is not a positive whole number')
    expect(() => resolveLimits({ memory: '1m' })).toThrow('limits.memory: "1m" is not enough to start Node (at least 64 MiB)')
    expect(() => resolveLimits({ ram: '1g' } as never)).toThrow('limits.ram: "1g" is not a known limit (use memory, disk, cpus, processes, openFiles)')
  })

  it('sizes the defaults from the machine, and says which limits were given', () => {
    const { limits, explicit } = resolveLimits({ disk: '2g' })
    expect(limits.memory).toBeGreaterThanOrEqual(1024 * MiB)
    expect(limits.memory).toBeLessThanOrEqual(Math.max(1024 * MiB, os.totalmem()))
    expect(limits.cpus).toBe(os.availableParallelism())
    expect(limits.disk).toBe(2048 * MiB)
    expect(explicit).toEqual({ disk: true })
  })
})

/** The sandbox's group in a cgroup v1 hierarchy, from its host process. */
function groupOf(sandbox: LocalSandbox, controller: string): string {
  const line = fs.readFileSync(`/proc/${sandbox.hostPid}/cgroup`, 'utf8').split('\n').find((l) => l.split(':')[1]?.split(',').includes(controller))
  return path.join('/sys/fs/cgroup', controller, line!.split(':')[2])
}

const v1 = fs.existsSync('/sys/fs/cgroup/memory/memory.limit_in_bytes')

describe.runIf(root && v1)('limits enforced by the host (cgroup v1, as root)', () => {
  let engine: Engine
  let state: string
  beforeAll(async () => {
    state = tempDir('limits')
    engine = await Engine.start({ stateDir: state, limits: { memory: '300m', disk: '200m', cpus: 0.5, processes: 50 } })
  })
  afterAll(async () => {
    await engine?.close()
    fs.rmSync(state, { recursive: true, force: true })
  })

  async function sh(sandbox: LocalSandbox, script: string): Promise<{ code: number; out: string }> {
    const p = await sandbox.spawn({ cmd: '/bin/sh', args: ['-c', script] })
    const exit = await new Promise<{ exitCode: number }>((r) => (p.exit ? r(p.exit) : p.once('exit', r)))
    return { code: exit.exitCode, out: p.eventsSince(0).map((e) => e.data.toString()).join('') }
  }

  it('puts every process of a sandbox in its own groups, with its limits', async () => {
    const s = await engine.createSandbox({})
    const memory = groupOf(s, 'memory')
    expect(Number(fs.readFileSync(path.join(memory, 'memory.limit_in_bytes'), 'utf8'))).toBe(300 * MiB)
    expect(Number(fs.readFileSync(path.join(groupOf(s, 'pids'), 'pids.max'), 'utf8'))).toBe(50)
    expect(Number(fs.readFileSync(path.join(groupOf(s, 'cpu'), 'cpu.cfs_quota_us'), 'utf8'))).toBe(50_000)
    // A process started later inside is in the same group (seen from the host: inside, the
    // sandbox's cgroup namespace shows it as the root).
    const marker = `3${Date.now() % 100000}.25`
    await sh(s, `sleep ${marker} >/dev/null 2>&1 & echo`)
    const [pid] = hostProcessesMatching(`sleep ${marker}`)
    expect(fs.readFileSync(`/proc/${pid}/cgroup`, 'utf8')).toContain(`:memory:${memory.slice('/sys/fs/cgroup/memory'.length)}\n`)
    // The engine's group holds all of them, capped below the host's memory.
    const all = Number(fs.readFileSync(path.join(path.dirname(memory), 'memory.limit_in_bytes'), 'utf8'))
    expect(all).toBeLessThan(os.totalmem())
    await engine.kill(s.id)
    expect(fs.existsSync(memory)).toBe(false)
  })

  it('throttles a sandbox that spins past its cores', async () => {
    const s = await engine.createSandbox({})
    await sh(s, 'timeout 1 sh -c "while :; do :; done" & timeout 1 sh -c "while :; do :; done"; wait')
    const stat = fs.readFileSync(path.join(groupOf(s, 'cpu'), 'cpu.stat'), 'utf8')
    expect(Number(/nr_throttled (\d+)/.exec(stat)![1])).toBeGreaterThan(0)
    await engine.kill(s.id)
  })

  it('gives the writable layer a filesystem of its limit: writes past it get ENOSPC', async () => {
    const s = await engine.createSandbox({})
    const { out } = await sh(s, 'dd if=/dev/zero of=/tmp/fill bs=1M count=400 2>&1; df -k / | tail -1')
    expect(out).toContain('No space left on device')
    const size = Number(out.trim().split('\n').pop()!.split(/\s+/)[1]) * 1024
    expect(size).toBeLessThanOrEqual(200 * MiB)
    await engine.kill(s.id)
  })

  it('kills what goes over the memory limit inside the sandbox, and says so', async () => {
    const s = await engine.createSandbox({})
    const { code } = await sh(s, `exec node -e 'const a = []; for (let i = 0; i < 64; i++) a.push(Buffer.alloc(32 * 1024 * 1024, 1))'`)
    expect(code).toBe(-9)
    expect(s.outOfMemory()).toBe('the sandbox ran out of memory while this ran (limit 300 MiB; raise `local({ limits: { memory } })`)')
    expect(s.outOfMemory()).toBeUndefined() // once per kill
    expect((await sh(s, 'echo alive')).out).toBe('alive\n')
    await engine.kill(s.id)
  })

  it('refuses a process past the sandbox process limit', async () => {
    const s = await engine.createSandbox({})
    const { out } = await sh(s, 'for i in $(seq 80); do sleep 2 & done 2>&1; wait')
    expect(out).toMatch(/Cannot fork|Resource temporarily unavailable/)
    await engine.kill(s.id)
  })

  it('lets a request ask for less than the engine gives, never more', async () => {
    await expect(engine.createSandbox({ limits: { memory: '1g' } })).rejects.toThrow("limits.memory: 1 GiB is over this engine's limit of 300 MiB; ask for less, or raise the engine's limit")
    await expect(engine.createSandbox({ limits: { disk: 'lots' } })).rejects.toMatchObject({ code: 'invalid_argument' })
    const s = await engine.createSandbox({ limits: { memory: '100m' } })
    expect(Number(fs.readFileSync(path.join(groupOf(s, 'memory'), 'memory.limit_in_bytes'), 'utf8'))).toBe(100 * MiB)
    await engine.kill(s.id)
  })
})

describe('a limit the host cannot enforce', () => {
  // As root, the engine runs as `nobody` for this: no cgroup is writable and nothing mounts.
  const asUser = (script: string) => {
    const state = tempDir('unenforced')
    if (root) fs.chownSync(state, 65534, 65534)
    const args = ['--input-type=module', '-e', script, path.join(REPO, 'dist/engine/engine.js'), state]
    const r = root
      ? spawnSync('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, ...args], { encoding: 'utf8', env: { PATH: process.env.PATH, HOME: state } })
      : spawnSync(process.execPath, args, { encoding: 'utf8' })
    fs.rmSync(state, { recursive: true, force: true })
    return r
  }
  const start = (limits: string) =>
    `const { Engine } = await import(process.argv[1]); try { const e = await Engine.start({ stateDir: process.argv[2], limits: ${limits} }); console.log(JSON.stringify(e.limitsReport().unenforced)); await e.close() } catch (err) { console.log('REFUSED ' + err.message) }`

  it.runIf(root)('stops the engine when the limit was given, naming it and the fix', () => {
    const r = asUser(start(`{ memory: '1g' }`))
    expect(r.stdout).toContain('REFUSED limits.memory cannot be enforced on this host: the memory cgroup')
    expect(r.stdout).toContain('fix: run as root, or under a cgroup delegated to this user')
    expect(asUser(start(`{ disk: '1g' }`)).stdout).toContain('REFUSED limits.disk cannot be enforced on this host: a size-limited filesystem per sandbox needs root to mount')
  })

  it.runIf(root)('reports default limits it cannot enforce before any sandbox exists', () => {
    const r = asUser(start('{}'))
    const unenforced = JSON.parse(r.stdout) as Array<{ limit: string; fix: string }>
    expect(unenforced.map((u) => u.limit).sort()).toEqual(['cpus', 'disk', 'memory'])
    expect(unenforced.every((u) => u.fix.length > 10)).toBe(true)
  })
})

describe.runIf(root && v1)('bombs in a real run (local sandboxes, 3 at once)', () => {
  it('each bomb file ends inside its sandbox, every other file passes, and the host keeps its memory and disk', async () => {
    const floor = { memory: os.freemem() - 4 * 1024 * MiB, disk: fs.statfsSync(os.tmpdir()).bavail * fs.statfsSync(os.tmpdir()).bsize - 2 * 1024 * MiB }
    let lowest = { memory: Infinity, disk: Infinity }
    const sample = setInterval(() => {
      const s = fs.statfsSync(os.tmpdir())
      lowest = { memory: Math.min(lowest.memory, os.freemem()), disk: Math.min(lowest.disk, s.bavail * s.bsize) }
    }, 100)
    const run = await runFixture('bombs').finally(() => clearInterval(sample))
    const tests = testsOf(run.json)
    expect(tests['fixtures/bombs/test/memory.test.ts (file)']).toEqual({ status: 'failed', failures: ['the sandbox ran out of memory while this ran (limit 768 MiB; raise `local({ limits: { memory } })`)'] })
    for (const name of ['disk', 'fork', 'cpu', 'honest-1', 'honest-2', 'honest-3']) expect(tests[`fixtures/bombs/test/${name}.test.ts (file)`], name).toEqual({ status: 'passed', failures: [] })
    expect(run.output).toMatch(/cpu: \d\.\d\d cores/)
    expect(lowest.memory).toBeGreaterThan(floor.memory)
    expect(lowest.disk).toBeGreaterThan(floor.disk)
  })
})

describe('what the engine keeps of a sandbox on the host', () => {
  it("keeps at most 64 MiB of its processes' output together (host memory its cgroup does not count)", async () => {
    const state = tempDir('output-kept')
    const engine = await Engine.start({ stateDir: state })
    try {
      const s = await engine.createSandbox({})
      const procs = await Promise.all(Array.from({ length: 24 }, () => s.spawn({ cmd: '/bin/sh', args: ['-c', 'head -c 8000000 /dev/zero'] })))
      await Promise.all(procs.map((p) => new Promise((r) => (p.exit ? r(p.exit) : p.once('exit', r)))))
      const kept = [...s.processes.values()].reduce((n, p) => n + p.eventsSince(0).reduce((m, e) => m + e.data.length, 0), 0)
      expect(kept).toBeGreaterThan(0)
      expect(kept).toBeLessThanOrEqual(64 * MiB + 24 * 64 * 1024)
    } finally {
      await engine.close()
      fs.rmSync(state, { recursive: true, force: true })
    }
  })
})

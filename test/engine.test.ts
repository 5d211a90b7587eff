/**
 * The engine API under the server: templates shared without copying, many sandboxes at once,
 * and clear failures when the host lacks what the engine needs.
 */
import { execFileSync, spawnSync } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { Engine, HostSetupError } from '../src/engine/index.js'
import { buildSeccompFilter, deniedSyscalls } from '../src/engine/seccomp.js'
import type { LocalSandbox } from '../src/engine/sandbox.js'
import { tempDir } from './support/engine.js'

let engine: Engine
const stateDir = tempDir('engine')

beforeAll(async () => {
  engine = await Engine.start({ stateDir })
})
afterAll(async () => {
  await engine?.close()
  fs.rmSync(stateDir, { recursive: true, force: true })
})

async function run(s: LocalSandbox, script: string): Promise<{ code: number; out: string }> {
  const p = await s.spawn({ cmd: '/bin/sh', args: ['-c', script], env: {}, stdin: false })
  const exit = p.exit ?? (await new Promise<{ exitCode: number }>((r) => p.once('exit', r)))
  // The process's log holds everything it wrote, including output that came before any listener.
  return { code: exit.exitCode, out: p.eventsSince(0).map((e) => e.data.toString()).join('') }
}

function duBytes(dir: string): number {
  return Number(execFileSync('du', ['-sb', dir], { encoding: 'utf8' }).split('\t')[0])
}

describe('template layers', () => {
  it('starts sandboxes from a snapshot without copying it, and discards their writes on kill', async () => {
    const builder = await engine.createSandbox()
    expect((await run(builder, 'mkdir -p /deps && head -c 50000000 /dev/urandom > /deps/blob && echo ok')).out).toBe('ok\n')
    const snap = await engine.snapshot(builder.id, { name: 'big' })
    await engine.kill(builder.id)
    expect(snap.sizeBytes).toBeGreaterThan(50_000_000)

    const layer = engine.layers.layerDir(snap.id)
    const layerBefore = execFileSync('sha256sum', [path.join(layer, 'deps/blob')], { encoding: 'utf8' })
    const sandboxes = await Promise.all([1, 2, 3].map(() => engine.createSandbox({ template: snap.id })))
    for (const s of sandboxes) {
      // The 50 MB template is visible, but the sandbox's own layer holds nothing of it.
      expect((await run(s, 'wc -c < /deps/blob')).out.trim()).toBe('50000000')
      expect(duBytes(s.upperDir)).toBeLessThan(1_000_000)
    }
    // Writes go to the sandbox's own layer, never the template.
    await run(sandboxes[0], 'echo changed > /deps/blob && echo new > /deps/other')
    expect(duBytes(sandboxes[0].upperDir)).toBeLessThan(1_000_000)
    expect((await run(sandboxes[1], 'wc -c < /deps/blob')).out.trim()).toBe('50000000')
    expect(execFileSync('sha256sum', [path.join(layer, 'deps/blob')], { encoding: 'utf8' })).toBe(layerBefore)
    const upper = sandboxes[0].upperDir
    expect(fs.existsSync(path.join(upper, 'deps/other'))).toBe(true)
    await engine.kill(sandboxes[0].id)
    expect(fs.existsSync(upper)).toBe(false)
    for (const s of sandboxes.slice(1)) await engine.kill(s.id)
    expect(await engine.deleteSnapshot(snap.id)).toBe('deleted')
    expect(fs.existsSync(layer)).toBe(false)
  })

  it('refuses to delete a layer another snapshot stacks on', async () => {
    const a = await engine.createSandbox()
    await run(a, 'echo 1 > /one')
    const s1 = await engine.snapshot(a.id)
    const b = await engine.createSandbox({ template: s1.id })
    await run(b, 'echo 2 > /two')
    const s2 = await engine.snapshot(b.id)
    expect(s2.layers).toEqual([s2.id, s1.id])
    await engine.kill(a.id)
    await engine.kill(b.id)
    await engine.deleteSnapshot(s1.id)
    expect(fs.existsSync(engine.layers.layerDir(s1.id))).toBe(true) // still under s2
    const c = await engine.createSandbox({ template: s2.id })
    expect((await run(c, 'cat /one /two')).out).toBe('1\n2\n')
    await engine.kill(c.id)
  })
})

describe('host layers', () => {
  // As root, sandboxes run as an unprivileged uid, which cannot walk /root (mode 700).
  it.runIf(process.getuid?.() === 0)("layers a project's node_modules under a folder the sandbox's host uid cannot walk", async () => {
    const project = fs.mkdtempSync(path.join('/root', 'vps-host-layer-'))
    fs.chmodSync(project, 0o700)
    try {
      const nm = path.join(project, 'node_modules')
      fs.mkdirSync(path.join(nm, 'dep'), { recursive: true })
      fs.writeFileSync(path.join(nm, 'dep/index.js'), 'module.exports = "from under /root"\n')
      const own = await Engine.start({ stateDir: tempDir('rootlayer'), allowHostLayers: true })
      try {
        const s = await own.createSandbox({ hostLayers: [nm] })
        expect(await run(s, `node -e 'console.log(require("${nm}/dep"))'`)).toEqual({ code: 0, out: 'from under /root\n' })
        // The project's other files are still not there: only the layer was bound.
        expect((await run(s, `ls ${project}`)).out.trim()).toBe('node_modules')
      } finally {
        await own.close()
      }
    } finally {
      fs.rmSync(project, { recursive: true, force: true })
    }
  })
})

describe('many sandboxes', () => {
  it('runs 8 sandboxes at once, each with its own files, processes and loopback', async () => {
    const sandboxes = await Promise.all(Array.from({ length: 8 }, (_, i) => engine.createSandbox({ metadata: { n: String(i) } })))
    const results = await Promise.all(
      sandboxes.map((s, i) =>
        run(s, `echo ${i} > /tmp/who && node -e "require('net').createServer().listen(7000, '127.0.0.1', function(){ console.log(require('fs').readFileSync('/tmp/who','utf8').trim()); this.close() })"`),
      ),
    )
    expect(results.map((r) => r.out.trim())).toEqual(sandboxes.map((_, i) => String(i)))
    expect(engine.list({ n: '3' }).map((s) => s.id)).toEqual([sandboxes[3].id])
    await Promise.all(sandboxes.map((s) => engine.kill(s.id)))
    expect(engine.list()).toEqual([])
  })

  it('refuses one sandbox over the limit with a message that says how to raise it', async () => {
    const small = await Engine.start({ stateDir: tempDir('limit'), maxSandboxes: 1 })
    try {
      await small.createSandbox()
      await expect(small.createSandbox()).rejects.toThrow(/sandbox limit reached: 1 of 1 running \(raise maxSandboxes/)
    } finally {
      await small.close()
      fs.rmSync(small.layers.root, { recursive: true, force: true })
    }
  })
})

describe('host requirements', () => {
  it('fails with the install command when bubblewrap is missing', async () => {
    const saved = process.env.PATH
    const bin = tempDir('nobwrap')
    for (const tool of ['unshare', 'prlimit', 'setpriv']) fs.symlinkSync(execFileSync('which', [tool], { encoding: 'utf8' }).trim(), path.join(bin, tool))
    process.env.PATH = bin
    try {
      const err = await Engine.start({ stateDir: tempDir('nobwrap-state') }).catch((e) => e)
      expect(err).toBeInstanceOf(HostSetupError)
      expect(err.message).toMatch(/bubblewrap \(bwrap\) is not installed\n {2}fix: .*apt-get install -y bubblewrap/)
    } finally {
      process.env.PATH = saved
      fs.rmSync(bin, { recursive: true, force: true })
    }
  })

  it('builds a seccomp filter for x64 and arm64, and refuses unknown architectures', () => {
    for (const arch of ['x64', 'arm64']) {
      const bpf = buildSeccompFilter(arch)
      expect(bpf.length % 8).toBe(0)
      expect(bpf.length / 8).toBeLessThan(256)
    }
    expect(deniedSyscalls('x64')).toEqual(expect.arrayContaining(['ptrace', 'mount', 'unshare', 'bpf', 'keyctl', 'io_uring_setup']))
    expect(() => buildSeccompFilter('mips')).toThrow(/no syscall table for architecture 'mips'/)
  })

  it('removes the leftovers of an engine that died without cleaning up', async () => {
    const dir = tempDir('stale')
    const dead = spawnSync('true').pid! // a pid that has exited
    fs.mkdirSync(path.join(dir, 'sandboxes', `${dead}-deadbeef`, 'sbx_x', 'upper'), { recursive: true })
    // An engine that died and whose pid is some live process's by now (here, this one's): its
    // start is in the name, and it is not this process's (a dead engine's sandbox stayed for good).
    const reused = `${process.pid}-1.deadbeef`
    fs.mkdirSync(path.join(dir, 'sandboxes', reused, 'sbx_y', 'upper'), { recursive: true })
    const e = await Engine.start({ stateDir: dir })
    expect(fs.existsSync(path.join(dir, 'sandboxes', `${dead}-deadbeef`))).toBe(false)
    expect(fs.existsSync(path.join(dir, 'sandboxes', reused))).toBe(false)
    // Its own folder is kept, named by its pid and start.
    expect(fs.readdirSync(path.join(dir, 'sandboxes'))).toEqual([expect.stringMatching(new RegExp(`^${process.pid}-\\d+\\.[0-9a-f]+$`))])
    await e.close()
    fs.rmSync(dir, { recursive: true, force: true })
  })
})

/**
 * heyo() beyond the shared contract: the byte link through a real PTY (every byte value, stderr
 * kept apart, control characters that a terminal would act on), resuming a cut shell, a session
 * that expires, a host that never comes back, uploads in parts under the cloud's body cap, the
 * key's reach, labels in names, and the image record. Against the fake Heyo (test/support).
 */
import { createHash, randomBytes } from 'node:crypto'
import fs from 'node:fs'
import WebSocket from 'ws'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import path from 'node:path'
import { heyo, labelsOfName, nameWithLabels } from '../src/providers/heyo.js'
import { ensureTemplate } from '../src/template/template.js'
import type { ProviderProcess, ProviderSandbox, ProviderSession } from '../src/providers/types.js'
import { tempDir, waitFor } from './support/engine.js'
import { startFakeHeyo, type FakeHeyo } from './support/fake-heyo.js'

function collect(proc: ProviderProcess) {
  const out: Buffer[] = []
  const err: Buffer[] = []
  proc.on('stdout', (b) => out.push(b))
  proc.on('stderr', (b) => err.push(b))
  return { stdout: () => Buffer.concat(out), stderr: () => Buffer.concat(err) }
}

const EVERY_BYTE = Buffer.from(Array.from({ length: 256 }, (_, i) => i))
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex')

/** Drives the fake's shell directly: each step types its bytes once the output so far matches its pattern. */
async function typeInShell(fake: FakeHeyo, id: string, steps: [RegExp, Buffer][], done: RegExp): Promise<string> {
  const ws = new WebSocket(`${fake.url.replace('http', 'ws')}/sandboxes/${id}/shell-stream`)
  let out = ''
  let step = 0
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no match in: ${JSON.stringify(out)}`)), 20_000)
    ws.on('open', () => ws.send(JSON.stringify({ type: 'init', cols: 80, rows: 24 })))
    ws.on('message', (data: Buffer, binary) => {
      if (!binary) return
      out += data.subarray(9).toString('latin1')
      while (step < steps.length && steps[step][0].test(out)) ws.send(Buffer.concat([Buffer.from([1]), steps[step++][1]]))
      if (step === steps.length && done.test(out)) {
        clearTimeout(timer)
        resolve()
      }
    })
    ws.on('error', reject)
  })
  ws.close()
  return out
}

/** A command run through the fake's exec call (past the shell stream). */
async function apiExec(fake: FakeHeyo, id: string, command: string): Promise<string> {
  const res = await fetch(`${fake.url}/sandbox/${id}/exec`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ command }) })
  return ((await res.json()) as { output: string }).output
}

describe('heyo() against the fake daemon', () => {
  let fake: FakeHeyo
  let session: ProviderSession
  let sbx: ProviderSandbox
  const stateDir = tempDir('heyo-test')
  beforeAll(async () => {
    fake = await startFakeHeyo({ mode: 'daemon', graceMs: 1500 })
    session = await heyo({ baseUrl: fake.url, stateDir }).connect()
    sbx = await session.createSandbox({ timeoutSec: 300, labels: { 'vitest-sandbox': 'pool' }, network: true })
  })
  afterAll(async () => {
    await session?.close()
    await fake?.close()
    fs.rmSync(stateDir, { recursive: true, force: true })
  })

  it('asks for the disk of its limits (whole GB), and names sizeClass for memory and CPU', async () => {
    const sized = await heyo({ baseUrl: fake.url, stateDir, limits: { disk: '2g' } }).connect()
    try {
      const s = await sized.createSandbox({ timeoutSec: 300, labels: {}, network: true })
      expect(fake.state.diskSizes.at(-1)).toBe(3) // 2 GiB is 2.1 GB
      await s.kill()
    } finally {
      await sized.close()
    }
    expect(() => heyo({ limits: { memory: '1g' } as never })).toThrow("heyo(): limits.memory cannot be set through heyo's API: Heyo sizes memory and CPU by class: heyo({ sizeClass: 'medium' })")
    expect(() => heyo({ limits: { disk: '300g' } })).toThrow('heyo(): limits.disk is 323 GB; Heyo takes 1 to 250')
  })

  it("the fake's shell is a real terminal: it echoes, writes \\r\\n, and bytes typed into it raw do not arrive as sent", async () => {
    const prompt = /bash-[\d.]+[$#] $/
    const out = await typeInShell(fake, sbx.id, [[prompt, Buffer.from("printf 'a\\nb' ; echo done-$((6*7))\n")]], /done-42/)
    expect(out).toContain("printf 'a\\nb'") // the echo of what was typed
    expect(out).toContain('a\r\nb') // \n became \r\n
    // Every byte value typed at a `cat`: the line discipline takes \r, ^C, ^D, ^U, ^W... for itself.
    await typeInShell(fake, sbx.id, [[prompt, Buffer.from('cat > /tmp/raw.bin\n')], [/cat > \/tmp\/raw\.bin\r\n/, EVERY_BYTE]], /cat > \/tmp\/raw\.bin\r\n/)
    await new Promise((r) => setTimeout(r, 1000))
    const arrived = Buffer.from(await apiExec(fake, sbx.id, 'base64 -w0 /tmp/raw.bin 2>/dev/null'), 'base64')
    expect(arrived.equals(EVERY_BYTE)).toBe(false)
  })

  it('carries every byte value both ways, stdout and stderr apart, through that terminal', async () => {
    // Each value, then the ones a terminal acts on (^C ^D ^Z ^Q ^S \r \n DEL), repeated.
    const control = Buffer.from([3, 4, 26, 17, 19, 13, 10, 127, 0, 255])
    const input = Buffer.concat([EVERY_BYTE, control, control, EVERY_BYTE.reverse()])
    const cat = await sbx.start({ cmd: 'cat', stdin: true })
    const io = collect(cat)
    await cat.write(input)
    await cat.closeStdin()
    expect((await cat.exited).exitCode).toBe(0)
    expect(io.stdout().equals(input)).toBe(true)

    const script = 'const b=Buffer.from(Array.from({length:256},(_,i)=>i));process.stdout.write(b);process.stderr.write(Buffer.from(b).reverse())'
    const both = await sbx.start({ cmd: 'node', args: ['-e', script] })
    const io2 = collect(both)
    expect((await both.exited).exitCode).toBe(0)
    expect(io2.stdout().equals(Buffer.from(Array.from({ length: 256 }, (_, i) => i)))).toBe(true)
    expect(io2.stderr().equals(Buffer.from(Array.from({ length: 256 }, (_, i) => 255 - i)))).toBe(true)
  })

  it('resumes a cut shell: no output lost or repeated, no input lost', async () => {
    const cat = await sbx.start({ cmd: 'cat', stdin: true })
    const io = collect(cat)
    const parts = Array.from({ length: 40 }, () => randomBytes(50_000))
    let cuts = 0
    for (const [i, part] of parts.entries()) {
      const written = cat.write(part)
      if (i % 8 === 3) cuts += fake.dropShells()
      await written
    }
    await cat.closeStdin()
    expect((await cat.exited).exitCode).toBe(0)
    expect(cuts).toBeGreaterThanOrEqual(4)
    expect(sha(io.stdout())).toBe(sha(Buffer.concat(parts)))
  })

  it('fails the process, naming it, when its session expired before the shell could be reopened', async () => {
    const proc = await sbx.start({ cmd: 'sleep', args: ['30'] })
    // Every reopen is refused for longer than the session's grace (1.5 s).
    fake.inject({ method: 'GET', path: /shell-stream$/, status: 503, times: 6 })
    fake.dropShells()
    await expect(proc.exited).rejects.toThrow(/heyo: the shell session of sandbox \S+ expired while disconnected: the process is lost/)
  })

  it('leaves nothing running when the host never comes back: the hung-up relay ends its process group', async () => {
    const proc = await sbx.start({ cmd: '/bin/sh', args: ['-c', 'sleep 311 & sleep 312'] })
    // The shell is cut and cannot be reopened (401 ends the retries): after the session's grace the terminal hangs up.
    fake.inject({ method: 'GET', path: /shell-stream$/, status: 401 })
    fake.dropShells()
    await expect(proc.exited).rejects.toThrow(/lost the shell/)
    const running = () => apiExec(fake, sbx.id, "cat /proc/[0-9]*/cmdline | tr '\\0' ' '")
    expect(await running()).toContain('sleep 312')
    await waitFor(async () => !(await running()).includes('sleep 31'), 10_000, 'the sleeps to end')
  })

  it('fails a process when code in the sandbox writes an endless line to the terminal, without buffering it', async () => {
    // The process opens the relay's terminal and writes 17 MiB to it with no newline (the relay is
    // non-dumpable, so its /proc/<pid>/fd is out of reach: the terminal is opened by name).
    const script = "const fs=require('fs');let fd;try{fd=fs.openSync('/dev/tty','w')}catch{fd=fs.openSync('/dev/pts/'+fs.readdirSync('/dev/pts').find(n=>/^\\d+$/.test(n)),'w')};const b=Buffer.alloc(1<<20,65);for(let i=0;i<17;i++)fs.writeSync(fd,b);setTimeout(()=>{},30000)"
    const proc = await sbx.start({ cmd: 'node', args: ['-e', script] })
    await expect(proc.exited).rejects.toThrow(/heyo: the shell of sandbox \S+ sent bad output: the terminal relay sent a line of over 16777216 bytes/)
  })

  it('starts a process with one write-file call (its spec) and no exec', async () => {
    const calls = () => fake.requests.filter((r) => r.path.startsWith(`/sandbox/${sbx.id}/`)).map((r) => r.path.split('/').pop())
    const before = calls().length
    const proc = await sbx.start({ cmd: 'true' })
    expect((await proc.exited).exitCode).toBe(0)
    expect(calls().slice(before)).toEqual(['write-file'])
  })

  it('keeps labels in the name, and lists only the sandboxes it named', async () => {
    const labels = { 'vitest-sandbox': 'pool', 'vitest-sandbox-run': 'r-1', role: 'template-builder', 'vitest-sandbox-template': 'vitest-sandbox-0123abcd' }
    expect(labelsOfName(nameWithLabels(labels))).toEqual(labels)
    expect(labelsOfName('my-own-sandbox')).toBeUndefined()
    const res = await fetch(`${fake.url}/sandbox-deploy`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name: 'someone-else', image: 'ubuntu:24.04' }) })
    expect(res.status).toBe(202)
    const { id } = (await res.json()) as { id: string }
    expect((await session.listSandboxes({})).map((s) => s.id)).not.toContain(id)
    expect((await session.listSandboxes({})).map((s) => s.id)).toContain(sbx.id)
  })

  it('forgets an image the daemon no longer has, so the next run builds it again', async () => {
    const name = `vitest-sandbox-heyo-${randomBytes(3).toString('hex')}`
    const image = await sbx.snapshot(name)
    expect(await session.findTemplate(name)).toBe(image)
    fake.images.delete(image) // removed on the daemon, behind this machine's back
    await expect(session.createSandbox({ template: image, timeoutSec: 60, labels: {}, network: true })).rejects.toThrow(/the template image \S+ is gone from the daemon .*; it is forgotten, and the next run builds it again/)
    expect(await session.findTemplate(name)).toBeUndefined()
  })
})

describe('heyo() against the fake cloud', () => {
  let fake: FakeHeyo
  let session: ProviderSession
  let sbx: ProviderSandbox
  beforeAll(async () => {
    fake = await startFakeHeyo({ mode: 'cloud' })
    session = await heyo({ baseUrl: fake.url, apiKey: fake.apiKey, mode: 'cloud' }).connect()
    sbx = await session.createSandbox({ timeoutSec: 300, labels: { 'vitest-sandbox': 'pool' }, network: true })
  })
  afterAll(async () => {
    await session?.close()
    await fake?.close()
  })

  it('uploads files over its 1 MB body cap in parts', async () => {
    const data = randomBytes(3 * 1024 * 1024 + 5)
    const before = fake.requests.filter((r) => r.path.endsWith('/write-file')).length
    await sbx.upload('/tmp/big/file.bin', data)
    expect(fake.requests.filter((r) => r.path.endsWith('/write-file')).length - before).toBe(7)
    expect((await exec(sbx, 'sha256sum /tmp/big/file.bin')).split(' ')[0]).toBe(sha(data))
    // A body over the cap is refused, as the cloud does: the parts are what makes it work.
    const res = await fetch(`${fake.url}/sandbox/${sbx.id}/write-file`, { method: 'POST', headers: { authorization: `Bearer ${fake.apiKey}`, 'content-type': 'application/json' }, body: JSON.stringify({ file_path: 'x', mount_path: '/workspace', content: data.toString('base64') }) })
    expect(res.status).toBe(413)
  })

  it('sends the key to the API and the shell stream only: nothing that enters the sandbox holds it', async () => {
    const out = await exec(sbx, 'env; cat /proc/*/environ 2>/dev/null | tr "\\0" "\\n"; ls -a /tmp/.vitest-sandbox')
    expect(out).not.toContain(fake.apiKey)
    // Every file written (its content decoded) and every command run.
    const bodies = fake.requests.filter((r) => r.body).map((r) => JSON.stringify(r.body) + (typeof r.body!.content === 'string' ? Buffer.from(r.body!.content, 'base64').toString('latin1') : ''))
    expect(bodies.length).toBeGreaterThan(3)
    expect(bodies.filter((b) => b.includes(fake.apiKey))).toEqual([])
    const shells = fake.requests.filter((r) => r.path.endsWith('/shell-stream'))
    expect(shells.length).toBeGreaterThan(0)
    expect(shells.every((r) => r.headers.authorization === `Bearer ${fake.apiKey}`)).toBe(true)
    await expect(heyo({ baseUrl: fake.url, apiKey: 'wrong', mode: 'cloud' }).connect().then((s) => s.listSandboxes({}))).rejects.toThrow(/Unauthorized/)
  })

  it('keeps no template on the cloud: each sandbox gets the build plan, but never registry credentials (installEnv, or written out in .npmrc)', async () => {
    const progress = () => ({ step: () => {}, output: () => {}, end: () => {} })
    const spec = { root: path.resolve('fixtures/install-npm'), setup: [], dependencies: 'install' as const, installEnv: ['VPS_REGISTRY_TOKEN'], files: [], timeoutSec: 600 }
    const deploys = () => fake.requests.filter((r) => r.path === '/sandbox-deploy').length
    const before = deploys()
    const unkept = await ensureTemplate(session, { ...spec, installEnv: [] }, 'heyo', progress, {})
    expect(unkept.id).toBeUndefined()
    expect(unkept.unkept?.packageManager?.name).toBe('npm')
    process.env.VPS_REGISTRY_TOKEN = 'secret'
    try {
      await expect(ensureTemplate(session, spec, 'heyo', progress, {})).rejects.toThrow(/heyo keeps no templates, so each test sandbox would install its own dependencies, and template\.installEnv \(VPS_REGISTRY_TOKEN\) would reach sandboxes that run tests/)
    } finally {
      delete process.env.VPS_REGISTRY_TOKEN
    }
    // Nor a credential written out in the workspace's .npmrc.
    const root = tempDir('heyo-npmrc')
    fs.writeFileSync(path.join(root, 'package.json'), '{"name":"x","version":"1.0.0"}')
    fs.writeFileSync(path.join(root, 'package-lock.json'), '{"name":"x","version":"1.0.0","lockfileVersion":3,"packages":{"":{"name":"x","version":"1.0.0"}}}')
    fs.writeFileSync(path.join(root, '.npmrc'), '//registry.example/:_authToken=npm_literal\n')
    await expect(ensureTemplate(session, { ...spec, root, installEnv: [] }, 'heyo', progress, {})).rejects.toThrow(/\.npmrc holds a registry credential in clear, which install scripts in sandboxes that run tests could read/)
    fs.writeFileSync(path.join(root, '.npmrc'), '//registry.example/:_authToken=${NPM_TOKEN}\n')
    expect((await ensureTemplate(session, { ...spec, root, installEnv: [] }, 'heyo', progress, {})).unkept).toBeDefined()
    fs.rmSync(root, { recursive: true, force: true })
    expect(deploys()).toBe(before)
  })

  it('says why no template can be made on the cloud, and makes no call for one', async () => {
    expect(session.noTemplates).toMatch(/Heyo's cloud cannot make an image from a sandbox/)
    await expect(sbx.snapshot('vitest-sandbox-x')).rejects.toThrow(/only a local Heyo daemon has snapshot-image[\s\S]*heyo\(\{ baseUrl: 'http:\/\/127\.0\.0\.1:34099' \}\)/)
    expect(await session.findTemplate('vitest-sandbox-x')).toBeUndefined()
    expect(fake.requests.filter((r) => r.path.includes('snapshot-image'))).toEqual([])
  })
})

/** A command's stdout and stderr, through a process. */
async function exec(sbx: ProviderSandbox, script: string): Promise<string> {
  const proc = await sbx.start({ cmd: '/bin/sh', args: ['-c', script] })
  const io = collect(proc)
  await proc.exited
  return io.stdout().toString() + io.stderr().toString()
}

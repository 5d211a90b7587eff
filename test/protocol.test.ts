/**
 * The process runtime protocol, end to end: a real engine behind the real server, driven by the
 * real client and, for malformed input, by a raw WebSocket and raw HTTP.
 */
import { randomBytes } from 'node:crypto'
import fs from 'node:fs'
import net from 'node:net'
import { gzipSync } from 'node:zlib'
import { Agent, request } from 'undici'
import WebSocket from 'ws'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { RuntimeClient, SandboxClient } from '../src/protocol/client.js'
import { hostProcessesMatching, startTestEngine, waitFor } from './support/engine.js'
import { startFaultProxy } from './support/fault-proxy.js'

let env: Awaited<ReturnType<typeof startTestEngine>>
let sbx: SandboxClient

beforeAll(async () => {
  env = await startTestEngine()
  sbx = await env.client.createSandbox({ metadata: { suite: 'protocol' } })
})
afterAll(() => env?.close())

/** A raw process socket, collecting every frame the server sends. */
function rawSocket(path: string, token = sbx.session.token) {
  const ws = new WebSocket(`${sbx.wsBase}${path}`, { headers: { authorization: `Bearer ${token}` } })
  const frames: Array<Record<string, any>> = []
  let closeCode = 0
  ws.on('message', (d) => frames.push(JSON.parse(d.toString())))
  const closed = new Promise<number>((r) => ws.on('close', (code) => r((closeCode = code))))
  const opened = new Promise<void>((resolve, reject) => {
    ws.on('open', () => resolve())
    ws.on('error', reject)
  })
  return { ws, frames, closed, opened, get closeCode() { return closeCode } }
}

describe('control plane', () => {
  it('creates, gets, lists by metadata, extends and kills sandboxes', async () => {
    const a = await env.client.createSandbox({ metadata: { run: 'r1', shard: '1' } })
    const b = await env.client.createSandbox({ metadata: { run: 'r1', shard: '2' } })
    expect(a.session.data_plane_url).toBe(env.handle.url)
    expect((await env.client.getSandbox(a.id)).metadata).toEqual({ run: 'r1', shard: '1' })
    expect((await env.client.listSandboxes({ run: 'r1' })).map((s) => s.id).sort()).toEqual([a.id, b.id].sort())
    expect((await env.client.listSandboxes({ run: 'r1', shard: '2' })).map((s) => s.id)).toEqual([b.id])
    const before = Date.parse((await env.client.getSandbox(a.id)).end_at!)
    await env.client.setTimeout(a.id, 3600)
    expect(Date.parse((await env.client.getSandbox(a.id)).end_at!)).toBeGreaterThan(before)
    expect(await env.client.killSandbox(a.id)).toBe(true)
    expect(await env.client.killSandbox(a.id)).toBe(false)
    await expect(env.client.getSandbox(a.id)).rejects.toMatchObject({ status: 404, code: 'sandbox_not_found' })
    expect((await env.client.listSandboxes({ run: 'r1' })).map((s) => s.id)).toEqual([b.id])
    await env.client.killSandbox(b.id)
  })

  it('rejects a missing or wrong control token with 401', async () => {
    const wrong = new RuntimeClient({ url: env.handle.url, token: 'not-the-token' })
    await expect(wrong.listSandboxes()).rejects.toMatchObject({ status: 401, code: 'unauthorized' })
    const res = await request(`${env.handle.url}/v1/sandboxes`)
    expect(res.statusCode).toBe(401)
    expect(await res.body.json()).toMatchObject({ error: 'unauthorized' })
    await wrong.close()
  })

  it('a session token reaches only its own sandbox, and no control route', async () => {
    const other = await env.client.createSandbox()
    await other.writeFile('/tmp/mine', 'other sandbox')
    // sbx's token used against the data plane reads sbx's /tmp, not the other sandbox's.
    await expect(sbx.readFile('/tmp/mine')).rejects.toMatchObject({ status: 404 })
    const res = await request(`${env.handle.url}/v1/sandboxes`, { headers: { authorization: `Bearer ${other.session.token}` } })
    expect(res.statusCode).toBe(401)
    await res.body.dump()
    await env.client.killSandbox(other.id)
    // A killed sandbox's token is dead.
    await expect(other.readFile('/tmp/mine')).rejects.toMatchObject({ status: 401 })
  })

  it('answers bad requests with the option, the value and a 4xx', async () => {
    const post = (body: string) =>
      request(`${env.handle.url}/v1/sandboxes`, { method: 'POST', body, headers: { authorization: `Bearer ${env.handle.token}`, 'content-type': 'application/json' } })
    const cases: Array<[string, number, RegExp]> = [
      ['{not json', 400, /not JSON/],
      ['[1,2]', 400, /JSON object/],
      ['{"timeout": "soon"}', 400, /timeout must be a number/],
      ['{"timeout": -5}', 400, /timeout must be between 1 and/],
      ['{"template": "no-such-template"}', 404, /template or snapshot 'no-such-template' not found/],
      ['{"metadata": "x"}', 400, /metadata must be an object/],
      [`{"pad": "${'x'.repeat(2 * 1024 * 1024)}"}`, 413, /request body over/],
    ]
    for (const [body, status, message] of cases) {
      const res = await post(body)
      const json = (await res.body.json()) as { message: string }
      expect(res.statusCode, body.slice(0, 40)).toBe(status)
      expect(json.message).toMatch(message)
    }
  })
})

describe('files', () => {
  it('round-trips a 10 MiB binary file, and stats, lists and removes', async () => {
    const data = randomBytes(10 * 1024 * 1024)
    const entry = await sbx.writeFile('/home/sandbox/data/blob.bin', data)
    expect(entry).toMatchObject({ name: 'blob.bin', type: 'file', bytes: data.length })
    expect((await sbx.readFile('/home/sandbox/data/blob.bin')).equals(data)).toBe(true)
    expect((await sbx.stat('/home/sandbox/data')).type).toBe('dir')
    expect((await sbx.list('/home/sandbox/data')).map((e) => e.name)).toEqual(['blob.bin'])
    await sbx.remove('/home/sandbox/data')
    await expect(sbx.stat('/home/sandbox/data')).rejects.toMatchObject({ status: 404, code: 'file_not_found' })
  })

  it('accepts gzip uploads (gzip=true) and resolves relative paths against the home', async () => {
    const res = await request(`${env.handle.url}/runtime/v1/files?path=rel/hello.txt&gzip=true`, {
      method: 'PUT',
      body: gzipSync('hello gzip'),
      headers: { authorization: `Bearer ${sbx.session.token}` },
    })
    expect(res.statusCode).toBe(200)
    expect(((await res.body.json()) as any).file.path).toBe('/home/sandbox/rel/hello.txt')
    expect((await sbx.readFile('/home/sandbox/rel/hello.txt')).toString()).toBe('hello gzip')
  })

  it('gives clear errors for directories, missing files and a missing path', async () => {
    await expect(sbx.readFile('/home/sandbox')).rejects.toMatchObject({ status: 400, message: expect.stringMatching(/is a directory/) })
    await expect(sbx.readFile('/nope/nothing')).rejects.toMatchObject({ status: 404, code: 'file_not_found' })
    const res = await request(`${env.handle.url}/runtime/v1/files`, { headers: { authorization: `Bearer ${sbx.session.token}` } })
    expect(res.statusCode).toBe(400)
    expect(((await res.body.json()) as any).message).toMatch(/"path" is required/)
  })

  it("reads a file at its reader's pace: a reader that stops holds the server to a few MiB, and one that leaves ends the read", async () => {
    // 100 GB, sparse: no disk, as much reading as the server lets happen.
    expect((await sbx.run('truncate', ['-s', '100G', '/tmp/huge.bin'])).exitCode).toBe(0)
    const url = new URL(`${env.handle.url}/runtime/v1/files?path=/tmp/huge.bin`)
    const socket = net.connect(Number(url.port), url.hostname)
    await new Promise((r) => socket.once('connect', r))
    socket.write(`GET ${url.pathname}${url.search} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer ${sbx.session.token}\r\n\r\n`)
    socket.pause()
    const before = process.memoryUsage().rss
    await new Promise((r) => setTimeout(r, 4000))
    expect((process.memoryUsage().rss - before) / 1024 ** 2).toBeLessThan(100)
    // Which host processes hold the file open (the sandbox's init reads it for the server).
    const reading = () =>
      hostProcessesMatching('sandbox-init').filter((pid) => {
        try {
          return fs.readdirSync(`/proc/${pid}/fd`).some((fd) => fs.readlinkSync(`/proc/${pid}/fd/${fd}`) === '/tmp/huge.bin')
        } catch {
          return false
        }
      }).length
    if (process.getuid?.() === 0) expect(reading()).toBe(1)
    socket.destroy()
    // Its read ended with the reader: the sandbox holds the file open no longer.
    await waitFor(() => reading() === 0, 5000, 'the read to end')
    await sbx.remove('/tmp/huge.bin')
  })

  it('streams an upload larger than any frame, in order', async () => {
    async function* chunks() {
      for (let i = 0; i < 40; i++) yield Buffer.alloc(1024 * 1024, i)
    }
    const entry = await sbx.writeFile('/tmp/big.bin', chunks)
    expect(entry.bytes).toBe(40 * 1024 * 1024)
    const r = await sbx.run('/bin/sh', ['-c', 'od -An -tu1 -j $((39*1048576)) -N1 /tmp/big.bin'])
    expect(r.stdout.trim()).toBe('39')
  })
})

describe('processes', () => {
  it('streams stdout and stderr separately and reports exit codes', async () => {
    const r = await sbx.run('/bin/sh', ['-c', 'echo out; echo err >&2; exit 7'])
    expect(r).toEqual({ exitCode: 7, stdout: 'out\n', stderr: 'err\n' })
  })

  it('passes stdin through with acks, and EOF with close_stdin', async () => {
    const r = await sbx.run('/bin/sh', ['-c', 'tr a-z A-Z'], { input: 'shout\n' })
    expect(r.stdout).toBe('SHOUT\n')
  })

  it('round-trips 1 MiB through stdin and stdout unchanged', async () => {
    const data = randomBytes(1024 * 1024)
    const proc = await sbx.start({ cmd: 'cat', stdin: true })
    const out: Buffer[] = []
    proc.on('stdout', (b) => out.push(b))
    for (let i = 0; i < data.length; i += 64 * 1024) await proc.write(data.subarray(i, i + 64 * 1024))
    await proc.closeStdin()
    expect((await proc.exited).exitCode).toBe(0)
    expect(Buffer.concat(out).equals(data)).toBe(true)
  })

  it('uses the environment, cwd and id it was given, on top of the sandbox envs', async () => {
    const s = await env.client.createSandbox({ envs: { FROM_SANDBOX: 'a', OVERRIDE: 'sandbox' } })
    await s.mkdir('/work/project')
    const proc = await s.start({ id: 'my-proc', cmd: '/bin/sh', args: ['-c', 'echo $FROM_SANDBOX $OVERRIDE $PWD'], cwd: '/work/project', env: { OVERRIDE: 'process' } })
    expect(proc.pid).toBe('my-proc')
    let out = ''
    proc.on('stdout', (b) => (out += b))
    await proc.exited
    expect(out).toBe('a process /work/project\n')
    expect((await s.processes()).map((p) => p.id)).toContain('my-proc')
    await env.client.killSandbox(s.id)
  })

  it('reports a command that cannot start as an error, not a hang', async () => {
    await expect(sbx.start({ cmd: '/no/such/binary' })).rejects.toMatchObject({ code: 'spawn_failed', message: expect.stringMatching(/ENOENT/) })
    await expect(sbx.start({ cmd: 'sh', cwd: '/no/such/dir' })).rejects.toMatchObject({ code: 'spawn_failed' })
  })

  it('kills a process group over HTTP and reports the signal', async () => {
    const proc = await sbx.start({ cmd: '/bin/sh', args: ['-c', 'sleep 100 & sleep 100'] })
    await sbx.kill(proc.pid!, 'SIGKILL')
    expect(await proc.exited).toMatchObject({ exitCode: -9, signal: 'SIGKILL', error: 'killed' })
    const r = await sbx.run('/bin/sh', ['-c', 'pgrep -c sleep || true'])
    expect(r.stdout.trim()).toBe('0')
  })

  it('enforces timeout_ms', async () => {
    const proc = await sbx.start({ cmd: 'sleep', args: ['100'], timeoutMs: 300 })
    expect(await proc.exited).toMatchObject({ error: 'timeout' })
  })

  it('replays output after a reconnect with since=, without loss or repeats', async () => {
    const proc = await sbx.start({ cmd: '/bin/sh', args: ['-c', 'for i in $(seq 1 200); do echo line$i; sleep 0.005; done'] })
    let out = ''
    let reconnects = 0
    proc.on('stdout', (b) => (out += b))
    proc.on('reconnect', () => reconnects++)
    await waitFor(() => out.includes('line20'), 5000, 'some output')
    // Drop the socket under the client's feet, twice.
    ;(proc as any).ws.terminate()
    await waitFor(() => out.includes('line80'), 5000, 'output after the first reconnect')
    ;(proc as any).ws.terminate()
    await proc.exited
    expect(reconnects).toBeGreaterThanOrEqual(2)
    expect(out).toBe(Array.from({ length: 200 }, (_, i) => `line${i + 1}\n`).join(''))
  })

  it('starts a process once when the socket is cut just as it starts', async () => {
    const proxy = await startFaultProxy(env.handle.url)
    const dispatcher = new Agent()
    try {
      const viaProxy = new SandboxClient(sbx.info, { data_plane_url: proxy.url, token: sbx.session.token }, 0, dispatcher)
      proxy.cutAtStarted(2)
      const proc = await viaProxy.start({ cmd: '/bin/sh', args: ['-c', 'echo once >> starts; cat starts; rm starts'] })
      let out = ''
      proc.on('stdout', (b) => (out += b))
      expect((await proc.exited).exitCode).toBe(0)
      expect(out).toBe('once\n')
      expect(proxy.seen.filter((r) => r.method === 'WS').map((r) => r.path.replace(/proc_\w+/, 'ID'))).toEqual([
        '/runtime/v1/process',
        '/runtime/v1/process/ID/connect',
        '/runtime/v1/process/ID/connect',
      ])
    } finally {
      await proxy.close()
      await dispatcher.close()
    }
  })

  it('serves output by cursor over HTTP after the process exited', async () => {
    const proc = await sbx.start({ cmd: '/bin/sh', args: ['-c', 'echo a; sleep 0.05; echo b >&2; sleep 0.05; echo c'] })
    await proc.exited
    const res = await request(`${env.handle.url}/runtime/v1/process/${proc.pid}/output?since=1`, { headers: { authorization: `Bearer ${sbx.session.token}` } })
    const body = (await res.body.json()) as any
    expect(body.status).toBe('succeeded')
    expect(body.events.map((e: any) => [e.cursor, e.type, Buffer.from(e.data, 'base64').toString()])).toEqual([
      [1, 'stderr', 'b\n'],
      [2, 'stdout', 'c\n'],
    ])
    expect(body.next_cursor).toBe(3)
    // A late attach gets started, the replay, then exit.
    const again = await sbx.attach(proc.pid!, 0)
    expect((await again.exited).exitCode).toBe(0)
  })

  it('keeps the process running when the client disconnects mid-stream', async () => {
    const proc = await sbx.start({ cmd: '/bin/sh', args: ['-c', 'i=0; while [ $i -lt 300 ]; do echo tick$i; i=$((i+1)); sleep 0.01; done'] })
    proc.on('stdout', () => {})
    await new Promise((r) => setTimeout(r, 100))
    proc.disconnect()
    const later = await sbx.attach(proc.pid!, 0)
    let out = ''
    later.on('stdout', (b) => (out += b))
    expect((await later.exited).exitCode).toBe(0)
    expect(out).toContain('tick299')
  })

  it('survives a process flooding stdout, throttling it to the reader, while other sandboxes stay responsive', async () => {
    const flood = await sbx.start({ cmd: '/bin/sh', args: ['-c', 'head -c 200000000 /dev/zero'] })
    let bytes = 0
    flood.on('stdout', (b) => (bytes += b.length))
    const other = await env.client.createSandbox()
    expect((await other.run('echo', ['alive'])).stdout).toBe('alive\n')
    expect((await flood.exited).exitCode).toBe(0)
    expect(bytes).toBe(200_000_000)
    await env.client.killSandbox(other.id)
  })
})

describe('malformed input', () => {
  it('answers a frame that is not JSON, binary, untyped or unknown with an error frame and a close', async () => {
    for (const bad of ['{nope', Buffer.from([1, 2, 3]), '{"no_type":1}', '{"type":"launch_missiles"}', '{"type":"start"}', '{"type":"start","cmd":"sh","args":"not-an-array"}']) {
      const s = rawSocket('/runtime/v1/process')
      await s.opened
      s.ws.send(bad)
      expect(await s.closed).toBe(1008)
      expect(s.frames.find((f) => f.type === 'error')).toMatchObject({ type: 'error', message: expect.any(String) })
    }
    // The server and the sandbox are fine afterwards.
    expect((await sbx.run('echo', ['still here'])).stdout).toBe('still here\n')
  })

  it('closes a socket that sends an oversized frame (1009) and carries on', async () => {
    const s = rawSocket('/runtime/v1/process')
    await s.opened
    s.ws.send(JSON.stringify({ type: 'start', cmd: 'x'.repeat(17 * 1024 * 1024) }))
    expect(await s.closed).toBe(1009)
    expect((await sbx.run('echo', ['ok'])).stdout).toBe('ok\n')
  })

  it('refuses the WebSocket upgrade without a valid session token, or for an unknown process', async () => {
    const noToken = rawSocket('/runtime/v1/process', 'bogus')
    await expect(noToken.opened).rejects.toThrow(/401/)
    const unknown = rawSocket('/runtime/v1/process/does-not-exist/connect?since=0')
    await expect(unknown.opened).rejects.toThrow(/404/)
  })

  it('sends stdin to a process started without stdin as an error, not a crash', async () => {
    const proc = await sbx.start({ cmd: 'sleep', args: ['1'] })
    await expect(proc.write('hello')).rejects.toThrow(/without stdin/)
    await proc.exited
  })
})

describe('snapshots (template layers)', () => {
  it('snapshots a sandbox, starts new sandboxes from it, and keeps each one’s writes to itself', async () => {
    const src = await env.client.createSandbox()
    await src.writeFile('/work/app/node_modules/dep/index.js', 'module.exports = "from template"')
    await src.writeFile('/work/app/remove-me.txt', 'gone later')
    const snap = await env.client.snapshot(src.id, { name: 'deps-v1' })
    expect(snap).toMatchObject({ name: 'deps-v1' })
    await env.client.killSandbox(src.id)

    const one = await env.client.createSandbox({ template: snap.id })
    const two = await env.client.createSandbox({ template: 'deps-v1' }) // by name too
    const read = (s: SandboxClient) => s.run('node', ['-e', 'console.log(require("/work/app/node_modules/dep"))'])
    expect((await read(one)).stdout).toBe('from template\n')
    await one.writeFile('/work/app/node_modules/dep/index.js', 'module.exports = "changed in one"')
    await one.remove('/work/app/remove-me.txt')
    expect((await read(one)).stdout).toBe('changed in one\n')
    expect((await read(two)).stdout).toBe('from template\n')
    expect((await two.readFile('/work/app/remove-me.txt')).toString()).toBe('gone later')

    // A snapshot of a snapshot keeps the deletion (overlayfs whiteouts survive the copy).
    const snap2 = await env.client.snapshot(one.id)
    const three = await env.client.createSandbox({ template: snap2.id })
    expect((await read(three)).stdout).toBe('changed in one\n')
    await expect(three.readFile('/work/app/remove-me.txt')).rejects.toMatchObject({ status: 404 })

    expect((await env.client.listSnapshots()).map((s) => s.id)).toEqual(expect.arrayContaining([snap.id, snap2.id]))
    for (const s of [one, two, three]) await env.client.killSandbox(s.id)
    expect(await env.client.deleteSnapshot(snap2.id)).toBe(true)
    expect(await env.client.deleteSnapshot(snap2.id)).toBe(false)
  })
})

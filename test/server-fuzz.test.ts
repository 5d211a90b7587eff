/**
 * `vitest-sandbox serve` under random and malformed requests (seeded, printed): raw HTTP over TCP
 * (targets `new URL` rejects, malformed percent-escapes, odd methods, headers and bodies),
 * WebSocket upgrades and frames, with and without tokens, from outside and from inside a sandbox
 * given the network. The server never exits, never answers 5xx, and a canary sandbox of another
 * tenant keeps its process running throughout.
 */
import net from 'node:net'
import { afterAll, beforeAll, expect, it } from 'vitest'
import WebSocket from 'ws'
import { startServe } from './support/serve.js'
import { seeded } from './support/seeded.js'

let serve: Awaited<ReturnType<typeof startServe>>
let base: string
let canary: { id: string; session: string; pid: string; ws: WebSocket }

async function api(path: string, init: { method?: string; body?: unknown; token?: string } = {}): Promise<{ status: number; body: any }> {
  const res = await fetch(`${base}${path}`, {
    method: init.method ?? 'GET',
    headers: { authorization: `Bearer ${init.token ?? serve.token}`, 'content-type': 'application/json' },
    body: init.body === undefined ? undefined : JSON.stringify(init.body),
  })
  const text = await res.text()
  return { status: res.status, body: text ? JSON.parse(text) : undefined }
}

/** Sends `request` as raw bytes; resolves with the status code of the answer (0: closed without one). */
function raw(request: string | Buffer, ms = 5000): Promise<number> {
  const { port } = new URL(base)
  return new Promise((resolve) => {
    const socket = net.connect(Number(port), '127.0.0.1')
    let got = ''
    const done = () => {
      socket.destroy()
      resolve(Number(/^HTTP\/1\.[01] (\d{3})/.exec(got)?.[1] ?? 0))
    }
    const timer = setTimeout(done, ms)
    socket.on('data', (d) => {
      got += d.toString('latin1')
      if (/^HTTP\/1\.[01] \d{3}/.test(got)) (clearTimeout(timer), done())
    })
    socket.on('error', () => (clearTimeout(timer), done()))
    socket.on('close', () => (clearTimeout(timer), done()))
    socket.write(request)
  })
}

/** Runs a command in a sandbox over its process socket; resolves with its exit code. */
function exec(session: string, cmd: string, args: string[]): Promise<number> {
  const ws = new WebSocket(`${base.replace(/^http/, 'ws')}/runtime/v1/process`, { headers: { authorization: `Bearer ${session}` } })
  return new Promise((resolve, reject) => {
    ws.on('message', (m) => {
      const frame = JSON.parse(String(m))
      if (frame.type === 'ready') ws.send(JSON.stringify({ type: 'start', cmd, args }))
      if (frame.type === 'exit') resolve(frame.exit_code)
      if (frame.type === 'error') reject(new Error(frame.message))
    })
    ws.on('error', reject)
  })
}

/** The token of the tenant whose sandbox is the canary: the fuzzer speaks as another tenant. */
const CANARY_TENANT = `canary-tenant-token-${Math.random().toString(36).slice(2)}`

beforeAll(async () => {
  serve = await startServe({ tenants: { canary: CANARY_TENANT } })
  base = serve.apiUrl.replace(/\/v1$/, '')
  const created = await api('/v1/sandboxes', { method: 'POST', body: { timeout: 300 }, token: CANARY_TENANT })
  expect(created.status).toBe(201)
  const session = created.body.session.token as string
  const ws = new WebSocket(`${base.replace(/^http/, 'ws')}/runtime/v1/process`, { headers: { authorization: `Bearer ${session}` } })
  const pid = await new Promise<string>((resolve, reject) => {
    ws.on('message', (m) => {
      const frame = JSON.parse(String(m))
      if (frame.type === 'ready') ws.send(JSON.stringify({ type: 'start', cmd: 'sleep', args: ['600'] }))
      if (frame.type === 'started') resolve(frame.pid)
      if (frame.type === 'error') reject(new Error(frame.message))
    })
    ws.on('error', reject)
  })
  canary = { id: created.body.sandbox.id, session, pid, ws }
}, 60_000)

afterAll(async () => {
  canary?.ws.terminate()
  await serve?.close()
})

/** Sends each request of /tmp/requests.json to the server on 127.0.0.1:<port>, one at a time; writes their statuses. */
const REPLAY = `const net = require('net'), fs = require('fs')
const port = Number(process.argv[2]), requests = JSON.parse(fs.readFileSync('/tmp/requests.json', 'utf8')), statuses = []
const send = (r) => new Promise((resolve) => {
  const s = net.connect(port, '127.0.0.1'); let got = ''
  const done = () => { s.destroy(); resolve(Number((/^HTTP\\/1\\.[01] (\\d{3})/.exec(got) || [])[1] || 0)) }
  const t = setTimeout(done, 5000)
  s.on('data', (d) => { got += d.toString('latin1'); if (/^HTTP\\/1\\.[01] \\d{3}/.test(got)) { clearTimeout(t); done() } })
  s.on('error', () => { clearTimeout(t); done() }); s.on('close', () => { clearTimeout(t); done() })
  s.write(r)
})
;(async () => { for (const r of requests) statuses.push(await send(r)); fs.writeFileSync('/tmp/statuses.json', JSON.stringify(statuses)) })()
`

it('keeps serving, never answers 5xx, and a canary sandbox of another tenant keeps running, under malformed requests from outside and from inside a sandbox', async () => {
  const seed = Number(process.env.VPS_FUZZ_SEED ?? 20261207)
  console.log(`server fuzz: seed ${seed} (replay: VPS_FUZZ_SEED=${seed})`)
  const rnd = seeded(seed)
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)]
  const junk = (n: number) => Array.from({ length: n }, () => String.fromCharCode(33 + Math.floor(rnd() * 94))).join('')
  const targets = [
    '/v1/%E0%A4%A', '//[', '/runtime/v1/%zz', '/v1/sandboxes/%', '/v1/sandboxes/%00', `/v1/sandboxes/${canary.id}`, `/v1/sandboxes/${canary.id}/timeout`, `/v1/sandboxes/${canary.id}/resume`,
    `/v1/sandboxes/${canary.id}/snapshots`, '/v1/sandbox_snapshots/%ff', '/v1/health', '/v1/sandboxes/x?limit=abc&next_token=-1', '/runtime/v1/files?path=' + 'a/'.repeat(3000), '/runtime/v1/files?path=%',
    '/runtime/v1/files?gzip=true&path=/tmp/x', '/runtime/v1/directories?path=/tmp', `/runtime/v1/process/${canary.pid}/output?since=-5&limit_bytes=x`, '/runtime/v1/process/nope/signal', '*', 'http://[', '/?%', '/' + junk(40),
  ]
  const bodies = ['', '{', 'null', '[]', '{"timeout":"abc"}', '{"timeout":-1}', '{"timeout":1e309}', '{"template":5}', '{"metadata":[1]}', '{"name":{}}', '{"signal":"SIGKILL","kill_group":true}', junk(200), '\u0000\u0001\u0002']
  // Never the canary's own DELETE: that is a request the server must honour.
  const methods = ['GET', 'POST', 'PUT', 'PATCH', 'OPTIONS', 'HEAD', 'BREW', 'G\u0000T']
  const statuses = new Map<number, number>()
  // As another tenant (the server's default one), the canary's session, a wrong token and none.
  const request_ = () => {
    const token = pick([serve.token, canary.session, 'wrong', undefined])
    const body = pick(bodies)
    const headers = [`Host: x`, ...(token ? [`Authorization: Bearer ${token}`] : []), ...(rnd() < 0.2 ? ['Content-Encoding: gzip'] : []), ...(rnd() < 0.2 ? ['Upgrade: websocket', 'Connection: Upgrade', 'Sec-WebSocket-Version: 13', 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=='] : []), ...(rnd() < 0.1 ? [`X-${junk(5)}: ${junk(20)}`] : [])]
    return `${pick(methods)} ${pick(targets)} HTTP/1.1\r\n${headers.join('\r\n')}\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`
  }
  for (let n = 0; n < 300; n++) {
    const request = request_()
    const status = await raw(request)
    statuses.set(status, (statuses.get(status) ?? 0) + 1)
    expect(status, `request ${n} (seed ${seed}):\n${request}`).toBeLessThan(500)
    expect(serve.child.exitCode, `request ${n} (seed ${seed}) ended the server:\n${request}`).toBeNull()
  }
  // From inside a sandbox given the network (another tenant's), to the server's own port.
  const inside = await api('/v1/sandboxes', { method: 'POST', body: { timeout: 300, allow_internet_access: true } })
  expect(inside.status).toBe(201)
  const insideSession = inside.body.session.token as string
  const put = (file: string, text: string) => fetch(`${base}/runtime/v1/files?path=${file}`, { method: 'PUT', body: text, headers: { authorization: `Bearer ${insideSession}` } })
  expect((await put('/tmp/requests.json', JSON.stringify(Array.from({ length: 150 }, request_)))).status).toBe(200)
  expect((await put('/tmp/fuzz.js', REPLAY)).status).toBe(200)
  expect(await exec(insideSession, 'node', ['/tmp/fuzz.js', new URL(base).port])).toBe(0)
  const fromInside = (await (await fetch(`${base}/runtime/v1/files?path=/tmp/statuses.json`, { headers: { authorization: `Bearer ${insideSession}` } })).json()) as number[]
  expect(fromInside.length).toBe(150)
  expect(fromInside.filter((s) => s >= 500), `seed ${seed}`).toEqual([])
  expect(fromInside.filter((s) => s > 0).length).toBeGreaterThan(100) // it did reach the server
  expect(serve.child.exitCode).toBeNull()
  // Frames on a process socket: a second start, 70 KiB of arguments, unknown types, binary frames, bad JSON close that socket only.
  for (const frame of ['{"type":"start","cmd":"true"}', '{"type":"start","cmd":"true"}{', 'not json', '{"type":5}', '{"type":"stdin","data":7}', '{"type":"signal","signal":"SIGNOPE"}', JSON.stringify({ type: 'start', cmd: 'true', args: ['x'.repeat(70_000)] }), Buffer.from([0, 1, 2])]) {
    const ws = new WebSocket(`${base.replace(/^http/, 'ws')}/runtime/v1/process`, { headers: { authorization: `Bearer ${canary.session}` } })
    await new Promise<void>((resolve) => {
      ws.on('message', (m) => {
        if (JSON.parse(String(m)).type === 'ready') {
          ws.send(frame)
          if (typeof frame === 'string' && frame.startsWith('{"type":"start"')) ws.send(frame)
        }
      })
      ws.on('close', () => resolve())
      ws.on('error', () => resolve())
      setTimeout(() => (ws.terminate(), resolve()), 3000)
    })
  }
  // Special files through the file API: refused at once, the sandbox's init keeps serving.
  await exec(canary.session, 'mkfifo', ['/tmp/fifo'])
  for (const file of ['/tmp/fifo', '/proc/self/fd/0', '/dev/zero', '/dev/stdin']) {
    const started = Date.now()
    const read = await fetch(`${base}/runtime/v1/files?path=${encodeURIComponent(file)}`, { headers: { authorization: `Bearer ${canary.session}` }, signal: AbortSignal.timeout(10_000) })
    expect(read.status, file).toBe(400)
    expect(Date.now() - started, file).toBeLessThan(5000)
    const write = await fetch(`${base}/runtime/v1/files?path=${encodeURIComponent(file)}`, { method: 'PUT', body: 'x', headers: { authorization: `Bearer ${canary.session}` }, signal: AbortSignal.timeout(10_000) })
    expect(write.status, file).toBeLessThan(500)
  }
  expect(serve.child.exitCode).toBeNull()
  const health = await api('/v1/health')
  expect(health.status).toBe(200)
  // The canary sandbox and its process lived through it all.
  const processes = await api('/runtime/v1/process', { token: canary.session })
  expect(processes.status).toBe(200)
  expect(processes.body.processes.find((p: { pid: string }) => p.pid === canary.pid)?.status).toBe('running')
  // Most requests were refused as bad input or unauthorized, not answered as if nothing was wrong.
  expect([...statuses.entries()].filter(([s]) => s >= 400).reduce((n, [, c]) => n + c, 0)).toBeGreaterThan(200)
  // And it still shuts down cleanly: nothing the requests left behind throws on the way out.
  canary.ws.terminate()
  const exited = new Promise<[number | null, string | null]>((resolve) => serve.child.once('exit', (code, signal) => resolve([code, signal])))
  serve.child.kill('SIGTERM')
  expect(await exited).toEqual([0, null])
}, 300_000)

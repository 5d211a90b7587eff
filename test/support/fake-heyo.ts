/**
 * A fake Heyo for tests: the HTTP API and the shell-stream WebSocket on one loopback port, as
 * Heyo's cloud (bearer key required, `/deployed-sandboxes/{id}/shell-stream`, no images) or as its
 * local daemon (no key, `/sandboxes/{id}/shell-stream`, `snapshot-image`). Routes, fields,
 * statuses and frames follow docs/heyo-protocol.md (from Heyo's Swift and Rust SDKs; its
 * TypeScript SDK cannot be installed). Sandboxes are real local-engine sandboxes; they are
 * `provisioning` for a moment, then `running`. The shell is a real `bash` on a real PTY (util-linux
 * `script` inside the sandbox), so echo, `\r\n`, the prompt and control characters are the
 * kernel's own.
 *
 * Faults: `inject()` answers matching requests with a status (429, 5xx; shell upgrades too);
 * `dropShells()` cuts every shell socket without a close (clients resume with their session id
 * within `graceMs`; after it the shell is hung up, as a terminal whose client is gone).
 */
import { randomBytes, randomUUID } from 'node:crypto'
import fs from 'node:fs'
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import { WebSocketServer, type WebSocket } from 'ws'
import { Engine } from '../../src/engine/engine.js'
import type { SandboxProcess } from '../../src/engine/process.js'
import type { LocalSandbox } from '../../src/engine/sandbox.js'
import { tempDir } from './engine.js'
import { readJsonBody, sendJson as send } from './fake-http.js'

/** Images every fake has (the pool's default first). */
const BASE_IMAGES = ['node:22', 'ubuntu:24.04']
/** The cloud's cap on a JSON body (413 past it). */
const MAX_BODY = 1_000_000
const EXEC_TIMEOUT_MS = 120_000

export interface Fault {
  method?: string
  path: RegExp
  status: number
  times: number
}

export interface RecordedRequest {
  method: string
  path: string
  headers: http.IncomingHttpHeaders
  /** The JSON body, where there was one. */
  body?: Record<string, unknown>
}

interface Shell {
  sessionId: string
  sandboxId: string
  proc: SandboxProcess
  /** Output frames not yet acknowledged, for a resume. */
  unacked: { seq: number; frame: Buffer }[]
  seq: number
  ws?: WebSocket
  exit?: number
  expiry?: NodeJS.Timeout
}

interface FakeSandbox {
  id: string
  name: string
  image: string
  local: LocalSandbox
  status: 'provisioning' | 'running'
  createdAt: Date
  ttlSeconds: number
}

class ApiError extends Error {
  constructor(readonly status: number, message: string) {
    super(message)
  }
}



function outputFrame(seq: number, data: Buffer): Buffer {
  const head = Buffer.alloc(9)
  head[0] = 0x02
  head.writeBigUInt64BE(BigInt(seq), 1)
  return Buffer.concat([head, data])
}

export interface FakeHeyoOptions {
  mode?: 'cloud' | 'daemon'
  /** How long a created sandbox stays `provisioning`. @default 150 */
  provisionMs?: number
  /** How long a shell session waits for its client to resume. @default 60000 */
  graceMs?: number
}

export type FakeHeyo = Awaited<ReturnType<typeof startFakeHeyo>>

export async function startFakeHeyo(options: FakeHeyoOptions = {}) {
  const mode = options.mode ?? 'daemon'
  const apiKey = `heyo_api_${randomBytes(12).toString('hex')}`
  const stateDir = tempDir('fake-heyo')
  const engine = await Engine.start({ stateDir })
  const sandboxes = new Map<string, FakeSandbox>()
  /** Images made from sandboxes (daemon): name → engine snapshot id. */
  const images = new Map<string, string>()
  const shells = new Map<string, Shell>()
  const faults: Fault[] = []
  const requests: RecordedRequest[] = []
  /** The disk_size_gb of each create, as given. */
  const state = { diskSizes: [] as Array<number | undefined> }
  const graceMs = options.graceMs ?? 60_000

  function takeFault(method: string, path: string): Fault | undefined {
    const f = faults.find((x) => x.times > 0 && (!x.method || x.method === method) && x.path.test(path))
    if (f) f.times--
    return f
  }

  const keys = new Set([apiKey])
  function authorized(headers: http.IncomingHttpHeaders): boolean {
    return mode === 'daemon' || [...keys].some((k) => headers.authorization === `Bearer ${k}`)
  }

  function sandboxOr404(id: string): FakeSandbox {
    const s = sandboxes.get(id)
    if (!s || !s.local.running) throw new ApiError(404, `Sandbox ${id} not found`)
    return s
  }

  function running(id: string): FakeSandbox {
    const s = sandboxOr404(id)
    if (s.status !== 'running') throw new ApiError(409, `Sandbox ${id} is ${s.status}`)
    return s
  }

  function listed(s: FakeSandbox) {
    return {
      id: s.id,
      name: s.name,
      status: s.status,
      image: s.image,
      region: 'US',
      size_class: 'small',
      working_directory: '/workspace',
      uptime_secs: Math.floor((Date.now() - s.createdAt.getTime()) / 1000),
      ttl_seconds: s.ttlSeconds,
      is_deployed: true,
      error_message: null,
      status_changed_at: s.createdAt.toISOString(),
      // Only daemons give it.
      ...(mode === 'daemon' ? { created_at: s.createdAt.toISOString() } : {}),
      metadata: {},
    }
  }

  async function remove(s: FakeSandbox): Promise<void> {
    sandboxes.delete(s.id)
    for (const sh of shells.values()) {
      if (sh.sandboxId === s.id) {
        sh.ws?.terminate()
        shells.delete(sh.sessionId)
      }
    }
    await engine.kill(s.local.id).catch(() => false)
  }

  async function create(body: Record<string, any>): Promise<FakeSandbox> {
    if (typeof body.name !== 'string' || !body.name) throw new ApiError(422, 'name is required')
    const image = body.image ?? 'ubuntu:24.04'
    if (typeof image !== 'string') throw new ApiError(422, 'image must be a string')
    if (!BASE_IMAGES.includes(image) && !images.has(image)) throw new ApiError(404, `image ${image} not found`)
    const ttl = body.ttl_seconds ?? 0
    if (!Number.isInteger(ttl) || ttl < 0) throw new ApiError(422, 'ttl_seconds must be a non-negative integer')
    // Heyo's VMs have the network: it has no egress control.
    const disk = body.disk_size_gb
    if (disk !== undefined && (!Number.isInteger(disk) || disk < 1 || disk > 250)) throw new ApiError(422, 'disk_size_gb must be an integer from 1 to 250')
    state.diskSizes.push(disk)
    const local = await engine.createSandbox({ template: images.get(image), timeoutSec: ttl || 24 * 3600, network: 'host', ...(disk ? { limits: { disk: disk * 1e9 } } : {}) })
    const s: FakeSandbox = { id: randomUUID(), name: body.name, image, local, status: 'provisioning', createdAt: new Date(), ttlSeconds: ttl }
    sandboxes.set(s.id, s)
    local.once('exit', () => void remove(s))
    setTimeout(() => (s.status = 'running'), options.provisionMs ?? 150).unref()
    return s
  }

  async function exec(s: FakeSandbox, body: Record<string, any>) {
    if (typeof body.command !== 'string') throw new ApiError(422, 'command is required')
    const proc = await s.local.spawn({ cmd: '/bin/sh', args: ['-c', body.command], cwd: body.cwd, env: body.env ?? {}, stdin: false })
    const out: Buffer[] = []
    const err: Buffer[] = []
    const all: Buffer[] = []
    for (const e of proc.eventsSince(0)) (e.type === 'stdout' ? out : err).push(e.data), all.push(e.data)
    proc.on('output', (e) => ((e.type === 'stdout' ? out : err).push(e.data), all.push(e.data)))
    const timer = setTimeout(() => proc.kill('SIGKILL', true), EXEC_TIMEOUT_MS)
    const exit = await new Promise<{ exitCode: number }>((r) => (proc.exit ? r(proc.exit) : proc.once('exit', r)))
    clearTimeout(timer)
    return { stdout: Buffer.concat(out).toString(), stderr: Buffer.concat(err).toString(), output: Buffer.concat(all).toString(), exit_code: exit.exitCode }
  }

  /** A write-file or read-file path: relative, inside its mount. */
  function fileIn(body: Record<string, any>): string {
    const file = body.file_path
    const mount = body.mount_path ?? '/workspace'
    if (typeof file !== 'string' || !file || file.startsWith('/') || file.split('/').includes('..')) throw new ApiError(400, `file_path must be a relative path inside the mount (got ${JSON.stringify(file)})`)
    if (typeof mount !== 'string' || !mount.startsWith('/')) throw new ApiError(400, 'mount_path must be absolute')
    return `${mount.replace(/\/+$/, '')}/${file}`
  }

  async function api(req: http.IncomingMessage, res: http.ServerResponse, url: URL): Promise<void> {
    const method = req.method!
    const parts = url.pathname.split('/').filter(Boolean).map(decodeURIComponent)
    const json = async () => {
      const body = await readJsonBody(req, { limit: mode === 'cloud' ? MAX_BODY : 64 * MAX_BODY, tooLarge: () => new ApiError(413, 'Payload Too Large'), invalid: () => new ApiError(400, 'invalid JSON body') })
      requests[requests.length - 1].body = body
      return body
    }
    if (!authorized(req.headers)) throw new ApiError(401, 'Unauthorized')

    if (method === 'POST' && url.pathname === '/sandbox-deploy') {
      const s = await create(await json())
      return send(res, 202, { id: s.id, status: s.status })
    }
    if (parts[0] === 'deployed-sandboxes') {
      if (parts.length === 1 && method === 'GET') {
        const name = url.searchParams.get('name')
        return send(res, 200, [...sandboxes.values()].filter((s) => s.local.running && (!name || s.name === name)).map(listed))
      }
      if (parts.length === 2 && method === 'GET') return send(res, 200, listed(sandboxOr404(parts[1])))
      if (parts.length === 2 && method === 'DELETE') {
        await remove(sandboxOr404(parts[1]))
        return send(res, 200, { message: 'Sandbox deleted' })
      }
      if (parts[2] === 'ttl' && method === 'POST') {
        const s = sandboxOr404(parts[1])
        const ttl = (await json()).ttl_seconds
        if (!Number.isInteger(ttl) || ttl < 0) throw new ApiError(422, 'ttl_seconds must be a non-negative integer')
        s.ttlSeconds = ttl
        s.local.setTimeout(ttl || 24 * 3600)
        return send(res, 200, listed(s))
      }
    }
    if (parts[0] === 'sandbox' && parts.length === 3 && method === 'POST') {
      const s = running(parts[1])
      if (parts[2] === 'exec') return send(res, 200, await exec(s, await json()))
      if (parts[2] === 'write-file') {
        const body = await json()
        if (typeof body.content !== 'string') throw new ApiError(422, 'content (base64) is required')
        await s.local.writeFile(fileIn(body), Buffer.from(body.content, 'base64'))
        return send(res, 201, { file_path: body.file_path })
      }
      if (parts[2] === 'read-file') {
        const body = await json()
        const chunks: Buffer[] = []
        try {
          await s.local.readFile(fileIn(body), () => {}, (c) => chunks.push(c))
        } catch (err) {
          throw new ApiError(404, `File not found: ${(err as Error).message}`)
        }
        return send(res, 200, { content: Buffer.concat(chunks).toString('base64'), file_path: body.file_path, content_type: 'application/octet-stream' })
      }
    }
    if (mode === 'daemon' && parts[0] === 'sandboxes' && parts[2] === 'snapshot-image' && method === 'POST') {
      const s = running(parts[1])
      const name = (await json()).name
      if (typeof name !== 'string' || !/^[\w.:-]+$/.test(name)) throw new ApiError(422, `invalid image name ${JSON.stringify(name)}`)
      const record = await engine.snapshot(s.local.id, {})
      const old = images.get(name)
      if (old) await engine.deleteSnapshot(old).catch(() => {})
      images.set(name, record.id)
      return send(res, 200, { name, path: `/var/lib/heyvm/images/${name}`, size_bytes: 0, backend_type: 'fake' })
    }
    throw new ApiError(404, `Not found: ${method} ${url.pathname}`)
  }

  const server = http.createServer((req, res) => {
    const url = new URL(req.url!, 'http://fake-heyo')
    requests.push({ method: req.method!, path: url.pathname, headers: req.headers })
    const fault = takeFault(req.method!, url.pathname)
    if (fault) {
      return send(res, fault.status, { message: `injected ${fault.status}` }, fault.status === 429 ? { 'retry-after': '0' } : {})
    }
    api(req, res, url).catch((err: Error) => {
      if (res.headersSent) return void res.destroy()
      send(res, err instanceof ApiError ? err.status : 500, { message: err.message })
    })
  })

  // ---- the shell stream ---------------------------------------------------------------------

  const wss = new WebSocketServer({ noServer: true })
  const shellPath = mode === 'daemon' ? /^\/sandboxes\/([^/]+)\/shell-stream$/ : /^\/deployed-sandboxes\/([^/]+)\/shell-stream$/
  server.on('upgrade', (req, socket, head) => {
    const url = new URL(req.url!, 'http://fake-heyo')
    requests.push({ method: 'GET', path: url.pathname, headers: req.headers })
    const m = shellPath.exec(url.pathname)
    const refuse = (status: number, text: string) => socket.end(`HTTP/1.1 ${status} ${http.STATUS_CODES[status]}\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n${JSON.stringify({ message: text })}`)
    const fault = takeFault('GET', url.pathname)
    if (fault) return refuse(fault.status, `injected ${fault.status}`)
    if (!authorized(req.headers)) return refuse(401, 'Unauthorized')
    const s = m && sandboxes.get(decodeURIComponent(m[1]))
    if (!s || !s.local.running) return refuse(404, 'Sandbox not found')
    wss.handleUpgrade(req, socket, head, (ws) => serveShell(s, ws))
  })

  /** End a session as a terminal server does: its PTY closes, and the kernel hangs up the shell's session. */
  function hangUp(sh: Shell): void {
    // Killing `script` closes the PTY's master side.
    if (sh.proc.running) sh.proc.kill('SIGKILL', false)
  }

  function attach(sh: Shell, ws: WebSocket): void {
    clearTimeout(sh.expiry)
    sh.ws?.terminate()
    sh.ws = ws
    ws.send(JSON.stringify({ type: 'ready', sessionId: sh.sessionId, lastSeq: sh.seq }))
    for (const u of sh.unacked) ws.send(u.frame)
    if (sh.exit !== undefined) endSession(sh)
  }

  function endSession(sh: Shell): void {
    sh.ws?.send(JSON.stringify({ type: 'exit', code: sh.exit }))
    sh.ws?.close()
    shells.delete(sh.sessionId)
  }

  function serveShell(s: FakeSandbox, ws: WebSocket): void {
    let sh: Shell | undefined
    ws.on('message', (data: Buffer, binary) => {
      if (binary) {
        if (sh && data[0] === 0x01 && sh.proc.running) void sh.proc.write(data.subarray(1)).catch(() => {})
        return
      }
      let msg: Record<string, any>
      try {
        msg = JSON.parse(data.toString())
      } catch {
        return ws.send(JSON.stringify({ type: 'error', message: 'invalid message' }))
      }
      if (msg.type === 'init') {
        if (msg.sessionId) {
          const found = shells.get(msg.sessionId)
          if (!found) return ws.send(JSON.stringify({ type: 'error', code: 'session_expired', message: 'Session expired' }))
          sh = found
          return attach(sh, ws)
        }
        if (!Number.isInteger(msg.cols) || !Number.isInteger(msg.rows)) return ws.send(JSON.stringify({ type: 'error', message: 'init needs cols and rows' }))
        void startShell(s, msg).then(
          (started) => {
            sh = started
            attach(sh, ws)
          },
          (err: Error) => ws.send(JSON.stringify({ type: 'error', message: `cannot start the shell: ${err.message}` })),
        )
      } else if (msg.type === 'ack' && sh) {
        sh.unacked = sh.unacked.filter((u) => u.seq > msg.seq)
      } else if (msg.type === 'close' && sh) {
        hangUp(sh)
      }
    })
    ws.on('close', () => {
      if (!sh || sh.ws !== ws) return
      sh.ws = undefined
      const session = sh
      session.expiry = setTimeout(() => {
        shells.delete(session.sessionId)
        hangUp(session)
      }, graceMs)
      session.expiry.unref()
    })
  }

  async function startShell(s: FakeSandbox, init: Record<string, any>): Promise<Shell> {
    // A real PTY: `script` gives bash a terminal and relays it over plain pipes.
    const proc = await s.local.spawn({
      cmd: 'script',
      args: ['-qfec', `stty cols ${init.cols} rows ${init.rows}; exec bash -i`, '/dev/null'],
      cwd: init.cwd ?? '/',
      env: { TERM: 'xterm-256color', SHELL: '/bin/sh', ...(init.env ?? {}) },
      stdin: true,
    })
    const sh: Shell = { sessionId: randomUUID(), sandboxId: s.id, proc, unacked: [], seq: 0 }
    shells.set(sh.sessionId, sh)
    const onOutput = (e: { data: Buffer }) => {
      const frame = outputFrame(++sh.seq, e.data)
      sh.unacked.push({ seq: sh.seq, frame })
      sh.ws?.send(frame)
    }
    for (const e of proc.eventsSince(0)) onOutput(e)
    proc.on('output', onOutput)
    proc.once('exit', (e) => {
      sh.exit = e.exitCode
      if (sh.ws) endSession(sh)
    })
    return sh
  }

  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()))
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`

  return {
    url,
    apiKey,
    mode,
    engine,
    sandboxes,
    images,
    requests,
    state,
    /** Take `key` too (a key a test chose). */
    acceptKey(key: string): void {
      keys.add(key)
    },
    /** Answer the next `times` matching requests with `status`. */
    inject(fault: Omit<Fault, 'times'> & { times?: number }): void {
      faults.push({ times: 1, ...fault })
    },
    /** Cut every shell socket without a close; returns how many. */
    dropShells(): number {
      let n = 0
      for (const sh of shells.values()) {
        if (sh.ws) {
          sh.ws.terminate()
          n++
        }
      }
      return n
    },
    async close(): Promise<void> {
      for (const s of [...sandboxes.values()]) await remove(s)
      for (const ws of wss.clients) ws.terminate()
      server.closeAllConnections()
      await new Promise((r) => server.close(r))
      await engine.close()
      fs.rmSync(stateDir, { recursive: true, force: true })
    },
  }
}

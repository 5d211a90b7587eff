/**
 * A fake OpenSandbox for tests: the lifecycle server and, per sandbox, an execd on its own port,
 * as real HTTP and WebSocket servers on loopback. Routes, bodies, status codes, error shapes, the
 * metadata filter, the server proxy and execd's PTY pipe protocol follow OpenSandbox's published
 * specs (specs/sandbox-lifecycle.yml, specs/execd-api.yaml) and execd's PTY code; the official SDK
 * drives it in opensandbox.test.ts so it cannot drift. Sandboxes are real local-engine sandboxes:
 * the image is recorded, not pulled (they see the host's read-only root, like every local sandbox).
 *
 * Faults: `inject()` answers matching requests with a status (429 with Retry-After, 5xx),
 * `dropSockets()` cuts every PTY WebSocket, `dropTailOnExit` reproduces execd's race where the
 * exit notice overtakes the last output, `cutBeforeConnected` cuts the next sockets just before
 * `connected`, `snapshotsSupported: false` a runtime without snapshots.
 */
import { randomUUID } from 'node:crypto'
import fs from 'node:fs'
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import type { Duplex } from 'node:stream'
import busboy from 'busboy'
import WebSocket, { WebSocketServer } from 'ws'
import { Engine } from '../../src/engine/engine.js'
import type { LimitsInput } from '../../src/engine/limits.js'
import type { SandboxProcess } from '../../src/engine/process.js'
import type { LocalSandbox } from '../../src/engine/sandbox.js'
import { tempDir } from './engine.js'
import { readJsonBody, sendJson } from './fake-http.js'

const EXECD_PORT = 44772
const REPLAY_LIMIT = 1024 * 1024
const LABEL = /^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$/

export interface Fault {
  where: 'lifecycle' | 'execd'
  method?: string
  path: RegExp
  status: number
  times: number
}

export interface RecordedRequest {
  where: 'lifecycle' | 'execd' | 'proxy'
  method: string
  path: string
  headers: http.IncomingHttpHeaders
}

interface FakeSandbox {
  id: string
  local: LocalSandbox
  image?: { uri: string }
  snapshotId?: string
  entrypoint: string[]
  metadata: Record<string, string>
  createdAt: Date
  expiresAt?: Date
  execd: http.Server
  execdPort: number
  ready: boolean
  sessions: Map<string, PtySession>
}

interface FakeSnapshot {
  id: string
  sandboxId: string
  name?: string
  state: 'Creating' | 'Ready' | 'Failed'
  reason: string
  engineId?: string
  createdAt: Date
}

interface PtySession {
  id: string
  cwd?: string
  command?: string
  proc?: SandboxProcess
  /** The combined stdout+stderr stream: the newest REPLAY_LIMIT bytes, and how many came before. */
  buffer: Buffer
  total: number
  client?: WebSocket
}

class FakeError extends Error {
  constructor(readonly status: number, readonly code: string, message: string) {
    super(message)
  }
}

function send(res: http.ServerResponse, status: number, body?: unknown, headers: Record<string, string> = {}): void {
  sendJson(res, status, body, { 'x-request-id': randomUUID().replace(/-/g, ''), ...headers })
}

const readJson = (req: http.IncomingMessage) => readJsonBody(req, { invalid: () => new FakeError(400, 'INVALID_REQUEST_BODY', 'invalid JSON body') })

/** FastAPI's request-validation answer. */
function invalid(field: string, msg: string): FakeError & { detail: unknown } {
  return Object.assign(new FakeError(422, '', msg), { detail: [{ type: 'value_error', loc: ['body', field], msg, input: null }] })
}

export interface FakeOpenSandboxOptions {
  apiKey?: string
  /** The server's minimum `timeout` (the real one validates `ge=60`). @default 60 */
  minTimeoutSec?: number
  /** Milliseconds a new sandbox's execd refuses connections before it is up. @default 300 */
  execdStartMs?: number
}

export type FakeOpenSandbox = Awaited<ReturnType<typeof startFakeOpenSandbox>>

export async function startFakeOpenSandbox(options: FakeOpenSandboxOptions = {}) {
  const apiKey = options.apiKey ?? `fake-os-key-${randomUUID()}`
  const minTimeout = options.minTimeoutSec ?? 60
  const stateDir = tempDir('fake-os')
  const engine = await Engine.start({ stateDir })
  const sandboxes = new Map<string, FakeSandbox>()
  const snapshots = new Map<string, FakeSnapshot>()
  const faults: Fault[] = []
  const requests: RecordedRequest[] = []
  const state = { dropTailOnExit: false, cutBeforeConnected: 0, created: 0, snapshotsSupported: true, resourceLimits: [] as Array<Record<string, string>> }

  function takeFault(where: Fault['where'], method: string, path: string): Fault | undefined {
    const f = faults.find((x) => x.where === where && x.times > 0 && (!x.method || x.method === method) && x.path.test(path))
    if (f) f.times--
    return f
  }

  function sandboxJson(s: FakeSandbox) {
    return {
      id: s.id,
      ...(s.image ? { image: s.image } : { snapshotId: s.snapshotId }),
      status: { state: 'Running', reason: 'CONTAINER_RUNNING', message: 'Sandbox container is running.' },
      metadata: s.metadata,
      entrypoint: s.entrypoint,
      ...(s.expiresAt ? { expiresAt: s.expiresAt.toISOString() } : {}),
      createdAt: s.createdAt.toISOString(),
    }
  }

  function snapshotJson(s: FakeSnapshot) {
    return { id: s.id, sandboxId: s.sandboxId, ...(s.name ? { name: s.name } : {}), status: { state: s.state, reason: s.reason }, createdAt: s.createdAt.toISOString() }
  }

  function sandboxOr404(id: string): FakeSandbox {
    const s = sandboxes.get(id)
    if (!s || !s.local.running) throw new FakeError(404, 'DOCKER::SANDBOX_NOT_FOUND', `Sandbox ${id} not found.`)
    return s
  }

  async function remove(s: FakeSandbox): Promise<void> {
    sandboxes.delete(s.id)
    for (const p of s.sessions.values()) p.client?.terminate()
    s.execd.closeAllConnections()
    s.execd.close()
    await engine.kill(s.id).catch(() => false)
  }

  function paginate<T>(items: T[], url: URL) {
    const page = Number(url.searchParams.get('page') ?? 1)
    const pageSize = Number(url.searchParams.get('pageSize') ?? 20)
    if (!Number.isInteger(page) || page < 1 || !Number.isInteger(pageSize) || pageSize < 1 || pageSize > 200) throw new FakeError(422, '', 'page >= 1 and 1 <= pageSize <= 200')
    const totalPages = Math.max(1, Math.ceil(items.length / pageSize))
    return { items: items.slice((page - 1) * pageSize, page * pageSize), pagination: { page, pageSize, totalItems: items.length, totalPages, hasNextPage: page < totalPages } }
  }

  // ---- lifecycle ----------------------------------------------------------------------------

  async function lifecycle(req: http.IncomingMessage, res: http.ServerResponse, url: URL): Promise<void> {
    const path = url.pathname.replace(/^\/v1(?=\/)/, '')
    const method = req.method!
    if (path === '/health') return send(res, 200, { status: 'healthy' })
    const key = req.headers['open-sandbox-api-key']
    if (!key) throw new FakeError(401, 'MISSING_API_KEY', 'Authentication credentials are missing. Provide API key via OPEN-SANDBOX-API-KEY header.')
    if (key !== apiKey) throw new FakeError(401, 'INVALID_API_KEY', 'Authentication credentials are invalid. Check your API key and try again.')
    const fault = takeFault('lifecycle', method, path)
    if (fault) return send(res, fault.status, { code: 'FAKE::INJECTED', message: `injected ${fault.status}` }, fault.status === 429 ? { 'retry-after': '0' } : {})
    const parts = path.split('/').filter(Boolean)

    if (path === '/metrics/events' && method === 'POST') return void (await readJson(req), send(res, 204))
    if (parts[0] === 'sandboxes' && parts.length === 1 && method === 'POST') return send(res, 202, await create(await readJson(req)))
    if (parts[0] === 'sandboxes' && parts.length === 1 && method === 'GET') {
      const filter: Record<string, string> = {}
      const raw = url.searchParams.get('metadata')
      if (raw) {
        for (const seg of raw.split('&')) {
          const eq = seg.indexOf('=')
          if (eq <= 0) throw new FakeError(400, 'INVALID_METADATA_FORMAT', `Invalid metadata format: bad query field: '${seg}'`)
          filter[decodeURIComponent(seg.slice(0, eq).replace(/\+/g, ' '))] = decodeURIComponent(seg.slice(eq + 1).replace(/\+/g, ' '))
        }
      }
      const states = url.searchParams.getAll('state').map((s) => s.toLowerCase())
      const items = [...sandboxes.values()]
        .filter((s) => s.local.running && (!states.length || states.includes('running')) && Object.entries(filter).every(([k, v]) => s.metadata[k] === v))
        .sort((a, b) => b.createdAt.getTime() - a.createdAt.getTime())
        .map(sandboxJson)
      return send(res, 200, paginate(items, url))
    }
    if (parts[0] === 'sandboxes' && parts.length === 2 && method === 'GET') return send(res, 200, sandboxJson(sandboxOr404(parts[1])))
    if (parts[0] === 'sandboxes' && parts.length === 2 && method === 'DELETE') {
      await remove(sandboxOr404(parts[1]))
      return send(res, 204)
    }
    if (parts[0] === 'sandboxes' && parts[2] === 'renew-expiration' && method === 'POST') {
      const s = sandboxOr404(parts[1])
      const at = Date.parse(String((await readJson(req)).expiresAt))
      if (!Number.isFinite(at)) throw invalid('expiresAt', 'Input should be a valid datetime')
      if (at <= Date.now()) throw new FakeError(400, 'DOCKER::INVALID_EXPIRATION', 'New expiration time must be in the future.')
      s.expiresAt = new Date(at)
      s.local.setTimeout(Math.ceil((at - Date.now()) / 1000))
      return send(res, 200, { expiresAt: s.expiresAt.toISOString() })
    }
    if (parts[0] === 'sandboxes' && parts[2] === 'endpoints' && method === 'GET') {
      const s = sandboxOr404(parts[1])
      const port = Number(parts[3])
      if (!Number.isInteger(port) || port < 1 || port > 65535) throw invalid('port', 'Input should be a valid integer')
      if (url.searchParams.get('use_server_proxy') === 'true') return send(res, 200, { endpoint: `${req.headers.host}/sandboxes/${s.id}/proxy/${port}` })
      // As Docker's bridge mode: execd's own port, other ports through execd's proxy.
      return send(res, 200, { endpoint: port === EXECD_PORT ? `127.0.0.1:${s.execdPort}` : `127.0.0.1:${s.execdPort}/proxy/${port}` })
    }
    if (parts[0] === 'sandboxes' && parts[2] === 'snapshots' && method === 'POST') {
      const s = sandboxOr404(parts[1])
      if (!state.snapshotsSupported) throw new FakeError(501, 'SNAPSHOT::NOT_IMPLEMENTED', 'Snapshots are not supported by this runtime.')
      const body = await readJson(req)
      if (body.name !== undefined && (typeof body.name !== 'string' || !body.name.length)) throw invalid('name', 'String should have at least 1 character')
      const snap: FakeSnapshot = { id: randomUUID(), sandboxId: s.id, name: body.name, state: 'Creating', reason: 'snapshot_accepted', createdAt: new Date() }
      snapshots.set(snap.id, snap)
      engine.snapshot(s.id, { name: body.name }).then(
        (r) => Object.assign(snap, { state: 'Ready', reason: 'snapshot_runtime_ready', engineId: r.id }),
        (err: Error) => Object.assign(snap, { state: 'Failed', reason: err.message }),
      )
      return send(res, 202, snapshotJson(snap), { location: `/v1/snapshots/${snap.id}` })
    }
    if (parts[0] === 'snapshots' && parts.length === 1 && method === 'GET') {
      const sandboxId = url.searchParams.get('sandboxId')
      const name = url.searchParams.get('name')
      const states = url.searchParams.getAll('state').map((s) => s.toLowerCase())
      const items = [...snapshots.values()].filter((s) => (!sandboxId || s.sandboxId === sandboxId) && (!name || s.name === name) && (!states.length || states.includes(s.state.toLowerCase()))).map(snapshotJson)
      return send(res, 200, paginate(items, url))
    }
    if (parts[0] === 'snapshots' && parts.length === 2) {
      const snap = snapshots.get(parts[1])
      if (!snap) throw new FakeError(404, 'SNAPSHOT::NOT_FOUND', `Snapshot ${parts[1]} not found.`)
      if (method === 'GET') return send(res, 200, snapshotJson(snap))
      if (method === 'DELETE') {
        if (snap.state === 'Creating') throw new FakeError(409, 'SNAPSHOT::INVALID_STATE', 'Snapshot is still being created.')
        snapshots.delete(snap.id)
        if (snap.engineId) await engine.deleteSnapshot(snap.engineId)
        return send(res, 204)
      }
    }
    res.writeHead(404, { 'content-type': 'application/json' }).end(JSON.stringify({ detail: 'Not Found' }))
  }

  /** resourceLimits as the cluster enforces them: Kubernetes quantities, as the engine's limits. */
  function enforced(limits: Record<string, string>): LimitsInput {
    const units: Record<string, number> = { '': 1, Ki: 1024, Mi: 1024 ** 2, Gi: 1024 ** 3, Ti: 1024 ** 4 }
    const bytes = (q: unknown) => {
      const m = typeof q === 'string' ? /^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti)?$/.exec(q) : null
      if (q !== undefined && !m) throw invalid('resourceLimits', `${JSON.stringify(q)} is not a quantity`)
      return m ? Math.floor(Number(m[1]) * units[m[2] ?? '']) : undefined
    }
    const cores = (q: unknown) => {
      const m = typeof q === 'string' ? /^(\d+(?:\.\d+)?)(m)?$/.exec(q) : null
      if (q !== undefined && !m) throw invalid('resourceLimits', `${JSON.stringify(q)} is not a CPU quantity`)
      return m ? Number(m[1]) / (m[2] ? 1000 : 1) : undefined
    }
    const out: LimitsInput = { memory: bytes(limits.memory), disk: bytes(limits['ephemeral-storage']), cpus: cores(limits.cpu) }
    return Object.fromEntries(Object.entries(out).filter(([, v]) => v !== undefined))
  }

  async function create(body: Record<string, any>) {
    if (!!body.image === !!body.snapshotId) throw invalid('image', 'Exactly one of image or snapshotId must be provided')
    if (body.image && (typeof body.image.uri !== 'string' || !Array.isArray(body.entrypoint) || !body.entrypoint.length)) throw invalid('entrypoint', 'entrypoint is required with image')
    if (!body.resourceLimits || typeof body.resourceLimits !== 'object') throw invalid('resourceLimits', 'Field required')
    if (body.timeout !== undefined && body.timeout !== null && (!Number.isInteger(body.timeout) || body.timeout < minTimeout)) throw invalid('timeout', `Input should be greater than or equal to ${minTimeout}`)
    const metadata = (body.metadata ?? {}) as Record<string, string>
    for (const [k, v] of Object.entries(metadata)) {
      if (!LABEL.test(k.split('/').pop()!) || typeof v !== 'string' || v.length > 63 || (v !== '' && !LABEL.test(v))) {
        throw new FakeError(400, 'SANDBOX::INVALID_METADATA_LABEL', `metadata ${k}=${v} is not a valid Kubernetes label`)
      }
    }
    let template: string | undefined
    if (body.snapshotId) {
      const snap = snapshots.get(body.snapshotId)
      if (!snap) throw new FakeError(404, 'SNAPSHOT::NOT_FOUND', `Snapshot ${body.snapshotId} not found.`)
      if (snap.state !== 'Ready') throw new FakeError(409, 'SNAPSHOT::NOT_READY', `Snapshot ${snap.id} is ${snap.state}.`)
      template = snap.engineId
    }
    const deny = body.networkPolicy?.defaultAction === 'deny' && !(body.networkPolicy.egress ?? []).length
    const timeout = body.timeout ?? undefined
    state.resourceLimits.push(body.resourceLimits)
    const local = await engine.createSandbox({ template, timeoutSec: timeout ?? 86400, metadata, envs: body.env ?? {}, network: deny ? 'none' : 'host', limits: enforced(body.resourceLimits) })
    const id = local.id
    const s: FakeSandbox = {
      id,
      local,
      image: body.image ? { uri: body.image.uri } : undefined,
      snapshotId: body.snapshotId,
      entrypoint: body.entrypoint ?? ['tail', '-f', '/dev/null'],
      metadata,
      createdAt: new Date(),
      expiresAt: timeout ? new Date(Date.now() + timeout * 1000) : undefined,
      execd: http.createServer(),
      execdPort: 0,
      ready: false,
      sessions: new Map(),
    }
    await startExecd(s)
    sandboxes.set(id, s)
    state.created++
    // The TTL (or anything else) ending the sandbox removes it, as the server's expiry does.
    local.once('exit', () => void remove(s))
    setTimeout(() => (s.ready = true), options.execdStartMs ?? 300).unref()
    const { image: _image, snapshotId: _snap, ...response } = sandboxJson(s)
    return response
  }

  // ---- execd --------------------------------------------------------------------------------

  async function startExecd(s: FakeSandbox): Promise<void> {
    const wss = new WebSocketServer({ noServer: true, maxPayload: 0 })
    s.execd.on('request', (req, res) => {
      if (!s.ready) return void req.socket.destroy() // not up yet: as a refused connection
      const url = new URL(req.url!, 'http://execd')
      requests.push({ where: 'execd', method: req.method!, path: url.pathname, headers: req.headers })
      const fault = takeFault('execd', req.method!, url.pathname)
      if (fault) return send(res, fault.status, { code: 'FAKE::INJECTED', message: `injected ${fault.status}` })
      execd(s, req, res, url).catch((err) => fail(res, err))
    })
    s.execd.on('upgrade', (req, socket, head) => {
      if (!s.ready) return void socket.destroy()
      const url = new URL(req.url!, 'http://execd')
      requests.push({ where: 'execd', method: 'WS', path: url.pathname, headers: req.headers })
      ptyUpgrade(s, wss, req, socket, head, url)
    })
    await new Promise<void>((r) => s.execd.listen(0, '127.0.0.1', () => r()))
    s.execdPort = (s.execd.address() as AddressInfo).port
  }

  async function execd(s: FakeSandbox, req: http.IncomingMessage, res: http.ServerResponse, url: URL): Promise<void> {
    const method = req.method!
    const parts = url.pathname.split('/').filter(Boolean)
    if (url.pathname === '/ping' && method === 'GET') return send(res, 200)
    if (url.pathname === '/files/upload' && method === 'POST') return upload(s, req, res)
    if (url.pathname === '/files/download' && method === 'GET') {
      const file = url.searchParams.get('path')
      if (!file) throw new FakeError(400, 'MISSING_QUERY', 'missing query parameter: path')
      const chunks: Buffer[] = []
      try {
        await s.local.readFile(file, () => {}, (c) => chunks.push(c))
      } catch {
        throw new FakeError(404, 'FILE_NOT_FOUND', `file not found. ${file}`)
      }
      const body = Buffer.concat(chunks)
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': body.length, 'content-disposition': `attachment; filename="${file.split('/').pop()}"` })
      return void res.end(body)
    }
    if (url.pathname === '/command' && method === 'POST') return command(s, await readJson(req), res)
    if (parts[0] === 'pty' && parts.length === 1 && method === 'POST') {
      const body = await readJson(req)
      if (body.cwd) await run(s, ['mkdir', '-p', String(body.cwd)])
      const id = randomUUID()
      s.sessions.set(id, { id, cwd: body.cwd, command: body.command, buffer: Buffer.alloc(0), total: 0 })
      return send(res, 201, { session_id: id })
    }
    if (parts[0] === 'pty' && parts.length === 2) {
      const p = s.sessions.get(parts[1])
      if (!p) throw new FakeError(404, 'CONTEXT_NOT_FOUND', `pty session ${parts[1]} not found`)
      if (method === 'GET') return send(res, 200, { session_id: p.id, running: !!p.proc?.running, output_offset: p.total })
      if (method === 'DELETE') {
        p.proc?.kill('SIGKILL', true)
        s.sessions.delete(p.id)
        return send(res, 200)
      }
    }
    throw new FakeError(404, 'UNKNOWN', `no route ${method} ${url.pathname}`)
  }

  async function run(s: FakeSandbox, argv: string[]): Promise<void> {
    const p = await s.local.spawn({ cmd: argv[0], args: argv.slice(1), env: {}, stdin: false })
    await new Promise((r) => (p.exit ? r(p.exit) : p.once('exit', r)))
  }

  function upload(s: FakeSandbox, req: http.IncomingMessage, res: http.ServerResponse): void {
    let bb: busboy.Busboy
    try {
      bb = busboy({ headers: req.headers })
    } catch {
      throw new FakeError(400, 'INVALID_FILE', 'multipart form is empty')
    }
    // Parts pair up by index; a file part may start before its metadata part has been read.
    const metas: Array<Promise<{ path: string; mode?: number } | undefined>> = []
    const writes: Promise<unknown>[] = []
    let files = 0
    let error: FakeError | undefined
    bb.on('file', (name, stream) => {
      if (name === 'metadata') {
        const chunks: Buffer[] = []
        stream.on('data', (c: Buffer) => chunks.push(c))
        metas.push(
          new Promise((resolve) =>
            stream.on('end', () => {
              try {
                const m = JSON.parse(Buffer.concat(chunks).toString())
                if (typeof m.path !== 'string' || !m.path) throw new Error('empty path')
                resolve(m)
              } catch (err) {
                error ??= new FakeError(400, 'INVALID_FILE_METADATA', `invalid metadata: ${(err as Error).message}`)
                resolve(undefined)
              }
            }),
          ),
        )
      } else if (name === 'file') {
        const meta = metas[files++]
        if (!meta) {
          error ??= new FakeError(400, 'INVALID_FILE_METADATA', 'metadata file is missing')
          return void stream.resume()
        }
        stream.pause()
        writes.push(
          meta.then((m) => {
            if (!m) return void stream.resume()
            return s.local.writeFile(m.path, stream, m.mode ? parseInt(String(m.mode), 8) : undefined).catch((err: Error) => (error ??= new FakeError(500, 'RUNTIME_ERROR', err.message)))
          }),
        )
      } else {
        stream.resume()
      }
    })
    bb.on('close', async () => {
      await Promise.all(writes)
      if (!error && !files) error = new FakeError(400, metas.length ? 'INVALID_FILE_CONTENT' : 'INVALID_FILE', metas.length ? 'file is missing' : 'multipart form is empty')
      if (!error && files !== metas.length) error = new FakeError(400, 'INVALID_FILE', 'metadata and file counts differ')
      if (error) fail(res, error)
      else send(res, 200)
    })
    bb.on('error', (err: Error) => fail(res, new FakeError(400, 'INVALID_FILE', err.message)))
    req.pipe(bb)
  }

  async function command(s: FakeSandbox, body: Record<string, any>, res: http.ServerResponse): Promise<void> {
    if (typeof body.command !== 'string' || !body.command) throw new FakeError(400, 'INVALID_REQUEST_BODY', 'invalid request, validation error: command is required')
    const proc = await s.local.spawn({ cmd: 'bash', args: ['-c', body.command], cwd: body.cwd, env: body.envs ?? {}, stdin: false })
    const id = randomUUID().replace(/-/g, '')
    const started = Date.now()
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive', 'x-accel-buffering': 'no' })
    const event = (e: Record<string, unknown>) => res.write(`${JSON.stringify({ ...e, timestamp: Date.now() })}\n\n`)
    event({ type: 'init', text: id })
    event({ type: 'ping', text: 'pong' })
    const partial = { stdout: '', stderr: '' }
    const lines = (type: 'stdout' | 'stderr', text: string, flush: boolean) => {
      const all = partial[type] + text
      const pieces = all.split(/\r\n|\n|\r/)
      partial[type] = flush ? '' : pieces.pop()!
      for (const line of flush ? pieces.filter((l, i) => l || i < pieces.length - 1) : pieces) event({ type, text: line === '' ? '\n' : line })
    }
    const timer = body.timeout ? setTimeout(() => proc.kill('SIGKILL', true), body.timeout) : undefined
    const onOutput = (e: { type: 'stdout' | 'stderr'; data: Buffer }) => lines(e.type, e.data.toString(), false)
    for (const e of proc.eventsSince(0)) onOutput(e)
    proc.on('output', onOutput)
    const exit = await new Promise<{ exitCode: number; signal: string | null }>((r) => (proc.exit ? r(proc.exit) : proc.once('exit', r)))
    clearTimeout(timer)
    lines('stdout', '', true)
    lines('stderr', '', true)
    if (exit.signal || exit.exitCode !== 0) {
      const code = exit.signal ? -1 : exit.exitCode
      event({ type: 'error', error: { ename: 'CommandExecError', evalue: String(code), traceback: [`exit status ${code}`] } })
    } else {
      event({ type: 'execution_complete', execution_time: Date.now() - started })
    }
    res.end()
  }

  // ---- execd PTY (pipe mode) ----------------------------------------------------------------

  function ptyUpgrade(s: FakeSandbox, wss: WebSocketServer, req: http.IncomingMessage, socket: Duplex, head: Buffer, url: URL): void {
    const m = /^\/pty\/([^/]+)\/ws$/.exec(url.pathname)
    const refuse = (status: number, code: string, message: string) => {
      socket.end(`HTTP/1.1 ${status} ${http.STATUS_CODES[status]}\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n${JSON.stringify({ code, message })}`)
    }
    if (!m) return refuse(404, 'UNKNOWN', 'no such route')
    const p = s.sessions.get(m[1])
    if (!p) return refuse(404, 'CONTEXT_NOT_FOUND', `pty session ${m[1]} not found`)
    const takeover = url.searchParams.get('takeover') === '1'
    if (p.client && p.client.readyState === WebSocket.OPEN && !takeover) return refuse(409, 'ALREADY_CONNECTED', `another client is already connected to pty session ${p.id}`)
    wss.handleUpgrade(req, socket, head, (ws) => void attach(s, p, ws, Number(url.searchParams.get('since') ?? 0) || 0))
  }

  async function attach(s: FakeSandbox, p: PtySession, ws: WebSocket, since: number): Promise<void> {
    if (p.client && p.client !== ws) p.client.close(4001, 'TAKEN_OVER')
    p.client = ws
    // Input that arrives while the shell starts waits for it.
    const early: Buffer[] = []
    const write = (b: Buffer) => (p.proc?.running ? p.proc.write(b).catch(() => {}) : early.push(b))
    const start = Math.max(0, since, p.total - p.buffer.length)
    if (start < p.total) {
      const head = Buffer.alloc(9)
      head[0] = 0x03
      head.writeBigInt64BE(BigInt(start), 1)
      ws.send(Buffer.concat([head, p.buffer.subarray(p.buffer.length - (p.total - start))]))
    }
    ws.on('message', (data: Buffer, binary) => {
      if (binary) {
        if (data[0] === 0x00 && data.length > 1) write(Buffer.from(data.subarray(1)))
        return
      }
      let msg: { type?: string; data?: string; signal?: string }
      try {
        msg = JSON.parse(data.toString())
      } catch {
        return
      }
      if (msg.type === 'stdin') write(Buffer.from(String(msg.data ?? '')))
      else if (msg.type === 'signal') {
        if (['SIGINT', 'SIGTERM', 'SIGKILL', 'SIGQUIT', 'SIGHUP'].includes(String(msg.signal))) p.proc?.kill(msg.signal, true)
      } else if (msg.type === 'ping') ws.send(JSON.stringify({ type: 'pong' }))
      else if (msg.type !== 'resize') ws.send(JSON.stringify({ type: 'error', code: 'INVALID_FRAME', error: `unknown frame type "${msg.type}"` }))
    })
    ws.on('close', () => {
      if (p.client === ws) p.client = undefined
    })
    if (!p.proc?.running && !(await startShell(s, p, ws))) return
    for (const b of early.splice(0)) await p.proc!.write(b).catch(() => {})
    // A network cut between the upgrade and `connected` (the shell has started).
    if (state.cutBeforeConnected > 0) {
      state.cutBeforeConnected--
      return void ws.terminate()
    }
    ws.send(JSON.stringify({ type: 'connected', session_id: p.id, mode: 'pipe' }))
  }

  /** Not running (never started, or ended): a new shell, as execd does. */
  async function startShell(s: FakeSandbox, p: PtySession, ws: WebSocket): Promise<boolean> {
    let proc: SandboxProcess
    try {
      proc = await s.local.spawn({ cmd: 'bash', args: ['--norc', '--noprofile', ...(p.command ? ['-c', p.command] : [])], cwd: p.cwd, env: {}, stdin: true })
    } catch (err) {
      ws.send(JSON.stringify({ type: 'error', code: 'START_FAILED', error: (err as Error).message }))
      ws.close()
      return false
    }
    p.proc = proc
    let held: Buffer[] = []
    const onOutput = (e: { type: 'stdout' | 'stderr'; data: Buffer }) => {
      p.buffer = Buffer.concat([p.buffer, e.data]).subarray(-REPLAY_LIMIT)
      p.total += e.data.length
      for (let off = 0; off < e.data.length; off += 32 * 1024) {
        const frame = Buffer.concat([Buffer.from([e.type === 'stdout' ? 0x01 : 0x02]), e.data.subarray(off, off + 32 * 1024)])
        if (state.dropTailOnExit) held.push(frame)
        else if (p.client?.readyState === WebSocket.OPEN) p.client.send(frame)
      }
      // With dropTailOnExit, only the newest frame is held back (it is lost from the live stream).
      if (state.dropTailOnExit && held.length > 1) for (const f of held.splice(0, held.length - 1)) if (p.client?.readyState === WebSocket.OPEN) p.client.send(f)
    }
    for (const e of proc.eventsSince(0)) onOutput(e)
    proc.on('output', onOutput)
    proc.once('exit', (exit) => {
      held = []
      const client = p.client
      if (client?.readyState === WebSocket.OPEN) {
        client.send(JSON.stringify({ type: 'exit', exit_code: exit.signal ? -1 : exit.exitCode }))
        client.close(1000, 'process exited')
      }
    })
    return true
  }

  function fail(res: http.ServerResponse, err: unknown): void {
    if (res.headersSent) return void res.destroy()
    if (err instanceof FakeError) {
      const detail = (err as FakeError & { detail?: unknown }).detail
      return send(res, err.status, detail ? { detail } : { code: err.code, message: err.message })
    }
    send(res, 500, { code: 'GENERAL::UNKNOWN_ERROR', message: (err as Error).message })
  }

  // ---- the lifecycle server, with the server proxy ------------------------------------------

  const PROXY = /^(?:\/v1)?\/sandboxes\/([^/]+)\/proxy\/(\d+)(\/.*)?$/
  const proxyWss = new WebSocketServer({ noServer: true, maxPayload: 0 })
  const server = http.createServer((req, res) => {
    const url = new URL(req.url!, 'http://server')
    requests.push({ where: PROXY.test(url.pathname) ? 'proxy' : 'lifecycle', method: req.method!, path: url.pathname, headers: req.headers })
    const proxied = PROXY.exec(url.pathname)
    if (proxied) return proxyHttp(req, res, proxied, url)
    lifecycle(req, res, url).catch((err) => fail(res, err))
  })
  server.on('upgrade', (req, socket, head) => {
    const url = new URL(req.url!, 'http://server')
    requests.push({ where: 'proxy', method: 'WS', path: url.pathname, headers: req.headers })
    const m = PROXY.exec(url.pathname)
    proxyWss.handleUpgrade(req, socket, head, (client) => {
      const s = m && sandboxes.get(m[1])
      if (!m || !s) return client.close(1011, 'sandbox not found')
      const headers = { ...req.headers }
      for (const h of ['host', 'open-sandbox-api-key', 'authorization', 'cookie', 'connection', 'upgrade', 'sec-websocket-key', 'sec-websocket-version', 'sec-websocket-extensions']) delete headers[h]
      const backend = new WebSocket(`ws://127.0.0.1:${s.execdPort}${m[3] ?? '/'}${url.search}`, { headers: headers as Record<string, string>, maxPayload: 0 })
      const pending: Array<[Buffer, boolean]> = []
      client.on('message', (d: Buffer, binary) => (backend.readyState === WebSocket.OPEN ? backend.send(d, { binary }) : pending.push([d, binary])))
      backend.on('open', () => {
        for (const [d, binary] of pending.splice(0)) backend.send(d, { binary })
      })
      backend.on('message', (d: Buffer, binary) => client.readyState === WebSocket.OPEN && client.send(d, { binary }))
      backend.on('unexpected-response', () => client.close(1008, 'backend refused the connection'))
      backend.on('error', () => client.readyState === WebSocket.OPEN && client.close(1011, 'backend error'))
      backend.on('close', (code, reason) => client.readyState === WebSocket.OPEN && client.close(code === 1005 || code === 1006 ? 1011 : code, reason))
      client.on('close', () => backend.terminate())
    })
  })

  function proxyHttp(req: http.IncomingMessage, res: http.ServerResponse, m: RegExpExecArray, url: URL): void {
    const s = sandboxes.get(m[1])
    if (!s) return send(res, 404, { code: 'DOCKER::SANDBOX_NOT_FOUND', message: `Sandbox ${m[1]} not found.` })
    if (Number(m[2]) !== EXECD_PORT) return send(res, 502, { code: 'GENERAL::UNKNOWN_ERROR', message: `nothing listens on port ${m[2]} in the fake` })
    const headers = { ...req.headers }
    for (const h of ['host', 'open-sandbox-api-key', 'authorization', 'cookie', 'connection']) delete headers[h]
    const backend = http.request({ host: '127.0.0.1', port: s.execdPort, method: req.method, path: `${m[3] ?? '/'}${url.search}`, headers }, (b) => {
      res.writeHead(b.statusCode!, b.headers)
      b.pipe(res)
    })
    backend.on('error', () => send(res, 502, { code: 'GENERAL::UNKNOWN_ERROR', message: 'sandbox backend unreachable' }))
    req.pipe(backend)
  }

  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()))
  const port = (server.address() as AddressInfo).port

  return {
    domain: `127.0.0.1:${port}`,
    apiKey,
    engine,
    sandboxes,
    snapshots,
    requests,
    state,
    /** Answer the next `times` matching requests with `status`. */
    inject(fault: Omit<Fault, 'times'> & { times?: number }): void {
      faults.push({ times: 1, ...fault })
    },
    /** Cut every PTY WebSocket (and the proxy's) without a close frame; returns how many. */
    dropSockets(): number {
      let n = 0
      for (const s of sandboxes.values()) {
        for (const p of s.sessions.values()) {
          if (p.client && p.client.readyState === WebSocket.OPEN) {
            p.client.terminate()
            n++
          }
        }
      }
      return n
    },
    async close(): Promise<void> {
      for (const s of [...sandboxes.values()]) await remove(s)
      server.closeAllConnections()
      await new Promise((r) => server.close(r))
      await engine.close()
      fs.rmSync(stateDir, { recursive: true, force: true })
    },
  }
}

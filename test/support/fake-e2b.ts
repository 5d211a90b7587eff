/**
 * A fake E2B for tests: the API and every sandbox's envd on one loopback port (envd requests are
 * routed by their `E2b-Sandbox-Id` header, as E2B's shared sandbox host does). Routes, bodies,
 * status codes and error shapes follow E2B's OpenAPI spec and envd's specs; the process service
 * speaks the Connect protocol with the JSON codec (enveloped server streams, unary JSON calls),
 * with envd's end events (`exitCode` omitted when 0, `exited` omitted when false, -1 for a signal)
 * and envd's 32 KiB output reads. A process outlives its dropped stream, and `Connect` reattaches
 * to its live output only (what it wrote meanwhile is gone), as envd's fan-out does. The official
 * `e2b` SDK drives it in e2b.test.ts so it cannot drift. Sandboxes are real local-engine
 * sandboxes; the template id is recorded, not pulled.
 *
 * Faults: `inject()` answers matching requests with a status (429 with Retry-After, 5xx);
 * `dropStreams()` cuts every process stream (Start or Connect) without its end;
 * `state.endBeforeStart` ends the next process streams with an error before their start event,
 * `state.oversizedEnvelope` sends an envelope header claiming 1 GiB, `state.forgedFrame` a relay
 * frame header claiming 4 GiB.
 */
import { randomBytes, randomUUID } from 'node:crypto'
import fs from 'node:fs'
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import { Readable } from 'node:stream'
import zlib from 'node:zlib'
import busboy from 'busboy'
import { Engine } from '../../src/engine/engine.js'
import type { SandboxProcess } from '../../src/engine/process.js'
import type { LocalSandbox } from '../../src/engine/sandbox.js'
import { tempDir } from './engine.js'
import { readBody, readJsonBody, sendJson as send } from './fake-http.js'

const ENVD_VERSION = '0.6.13'
const TEAM = 'fake-team'
const READ_SIZE = 32 * 1024
/** Go's names of the signals a process may end by (`signal: killed`). */
const GO_SIGNAL: Record<string, string> = { SIGKILL: 'killed', SIGTERM: 'terminated', SIGINT: 'interrupt', SIGABRT: 'aborted', SIGSEGV: 'segmentation fault', SIGHUP: 'hangup', SIGPIPE: 'broken pipe' }

export interface Fault {
  where: 'api' | 'envd'
  method?: string
  path: RegExp
  status: number
  times: number
}

export interface RecordedRequest {
  where: 'api' | 'envd'
  method: string
  path: string
  headers: http.IncomingHttpHeaders
}

interface FakeProcess {
  pid: number
  proc: SandboxProcess
  config: { cmd: string; args: string[]; envs: Record<string, string>; cwd?: string }
  stream?: http.ServerResponse
}

interface FakeSandbox {
  id: string
  local: LocalSandbox
  token: string
  templateID: string
  metadata: Record<string, string>
  startedAt: Date
  endAt: Date
  processes: Map<number, FakeProcess>
  nextPid: number
}

interface FakeSnapshot {
  snapshotID: string
  names: string[]
  sandboxID: string
  engineId: string
}

/** An API error: E2B's `{code, message}` with the status as the code. */
class ApiError extends Error {
  constructor(readonly status: number, message: string) {
    super(message)
  }
}

/** A Connect error: `{code, message}` with Connect's code name, at the matching HTTP status. */
class ConnectError extends Error {
  static readonly STATUS: Record<string, number> = { invalid_argument: 400, unauthenticated: 401, permission_denied: 403, not_found: 404, unimplemented: 404, internal: 500, unavailable: 503 }
  constructor(readonly code: string, message: string) {
    super(message)
  }
}




const readJson = (req: http.IncomingMessage) => readJsonBody(req, { invalid: () => new ApiError(400, 'Error when parsing request: invalid JSON body') })

function envelope(message: unknown, flags = 0): Buffer {
  const body = Buffer.from(JSON.stringify(message))
  const head = Buffer.alloc(5)
  head[0] = flags
  head.writeUInt32BE(body.length, 1)
  return Buffer.concat([head, body])
}

/** `name`, `team/name`, `name:tag`, `team/name:tag` or the id itself. */
function matches(snap: FakeSnapshot, ref: string): boolean {
  if (ref === snap.snapshotID) return true
  return snap.names.some((full) => {
    const [, team, name, tag] = /^(?:([^/]+)\/)?([^:]+)(?::(.+))?$/.exec(full)!
    const m = /^(?:([^/]+)\/)?([^:]+)(?::(.+))?$/.exec(ref)
    return !!m && m[2] === name && (!m[1] || m[1] === team) && (!m[3] || m[3] === tag)
  })
}

export interface FakeE2BOptions {
  apiKey?: string
}

export type FakeE2B = Awaited<ReturnType<typeof startFakeE2B>>

export async function startFakeE2B(options: FakeE2BOptions = {}) {
  const apiKey = options.apiKey ?? `e2b_fake_${randomBytes(12).toString('hex')}`
  const stateDir = tempDir('fake-e2b')
  const engine = await Engine.start({ stateDir })
  const sandboxes = new Map<string, FakeSandbox>()
  const snapshots = new Map<string, FakeSnapshot>()
  const faults: Fault[] = []
  const requests: RecordedRequest[] = []
  /**
   * endBeforeStart: the next process streams end (with envd's error) before their start event.
   * oversizedEnvelope: the next stream's first output claims 1 GiB, as a replaced envd could.
   * forgedFrame: the next stream's first output is a relay frame header claiming 4 GiB, as code
   * in the sandbox that opened the relay's stdout pipe (`/proc/<pid>/fd/1`) could write.
   */
  const state = { endBeforeStart: 0, oversizedEnvelope: 0, forgedFrame: 0 }

  function takeFault(where: Fault['where'], method: string, path: string): Fault | undefined {
    const f = faults.find((x) => x.where === where && x.times > 0 && (!x.method || x.method === method) && x.path.test(path))
    if (f) f.times--
    return f
  }

  function sandboxOr404(id: string): FakeSandbox {
    const s = sandboxes.get(id)
    if (!s || !s.local.running) throw new ApiError(404, `sandbox "${id}" doesn't exist or you don't have access to it`)
    return s
  }

  function created(s: FakeSandbox) {
    return { sandboxID: s.id, templateID: s.templateID, clientID: 'fake-client', envdVersion: ENVD_VERSION, envdAccessToken: s.token, trafficAccessToken: null, domain: null }
  }

  function listed(s: FakeSandbox) {
    return {
      sandboxID: s.id,
      templateID: s.templateID,
      clientID: 'fake-client',
      startedAt: s.startedAt.toISOString(),
      endAt: s.endAt.toISOString(),
      cpuCount: 2,
      memoryMB: 512,
      diskSizeMB: 4096,
      envdVersion: ENVD_VERSION,
      metadata: s.metadata,
      state: 'running',
    }
  }

  async function remove(s: FakeSandbox): Promise<void> {
    sandboxes.delete(s.id)
    for (const p of s.processes.values()) p.stream?.destroy()
    await engine.kill(s.id).catch(() => false)
  }

  /** A page of `items` from `nextToken` (an offset), with `x-next-token` when more follow. */
  function page<T>(res: http.ServerResponse, items: T[], url: URL): void {
    const limit = Number(url.searchParams.get('limit') ?? 100)
    const from = Number(url.searchParams.get('nextToken') ?? 0)
    if (!Number.isInteger(limit) || limit < 1 || limit > 100) throw new ApiError(400, 'limit must be between 1 and 100')
    const next = from + limit < items.length ? { 'x-next-token': String(from + limit) } : {}
    send(res, 200, items.slice(from, from + limit), next)
  }

  // ---- the API ------------------------------------------------------------------------------

  async function api(req: http.IncomingMessage, res: http.ServerResponse, url: URL): Promise<void> {
    const method = req.method!
    const path = url.pathname
    if (req.headers['x-api-key'] !== apiKey) throw new ApiError(401, 'Invalid API key, it must start with e2b_ prefix and be valid')
    const parts = path.split('/').filter(Boolean)
    if (parts[0] === 'v2') parts.shift()

    if (parts[0] === 'sandboxes' && parts.length === 1 && method === 'POST') return send(res, 201, await create(await readJson(req)))
    if (parts[0] === 'sandboxes' && parts.length === 1 && method === 'GET') {
      const filter: [string, string][] = []
      const raw = url.searchParams.get('metadata')
      if (raw) for (const [k, v] of new URLSearchParams(raw)) filter.push([decodeURIComponent(k), decodeURIComponent(v)])
      const states = (url.searchParams.get('state') ?? 'running,paused').split(',')
      const items = [...sandboxes.values()]
        .filter((s) => s.local.running && states.includes('running') && filter.every(([k, v]) => s.metadata[k] === v))
        .sort((a, b) => a.startedAt.getTime() - b.startedAt.getTime())
        .map(listed)
      return page(res, items, url)
    }
    if (parts[0] === 'sandboxes' && parts.length === 2 && method === 'GET') return send(res, 200, { ...listed(sandboxOr404(parts[1])), envdAccessToken: sandboxOr404(parts[1]).token, domain: null })
    if (parts[0] === 'sandboxes' && parts.length === 2 && method === 'DELETE') {
      await remove(sandboxOr404(parts[1]))
      return send(res, 204)
    }
    if (parts[0] === 'sandboxes' && parts[2] === 'timeout' && method === 'POST') {
      const s = sandboxOr404(parts[1])
      const timeout = (await readJson(req)).timeout
      if (!Number.isInteger(timeout) || timeout < 0) throw new ApiError(400, 'Error when parsing request: timeout must be a non-negative integer')
      s.local.setTimeout(timeout)
      s.endAt = new Date(Date.now() + timeout * 1000)
      return send(res, 204)
    }
    if (parts[0] === 'sandboxes' && parts[2] === 'connect' && method === 'POST') {
      const s = sandboxOr404(parts[1])
      const timeout = (await readJson(req)).timeout
      if (Number.isInteger(timeout)) s.local.setTimeout(timeout)
      return send(res, 200, created(s))
    }
    if (parts[0] === 'sandboxes' && parts[2] === 'snapshots' && method === 'POST') {
      const s = sandboxOr404(parts[1])
      const name = (await readJson(req)).name
      if (name !== undefined && (typeof name !== 'string' || !/^[a-z0-9][a-z0-9._-]*$/.test(name))) throw new ApiError(400, `invalid snapshot name ${JSON.stringify(name)}`)
      const record = await engine.snapshot(s.id, {})
      const snap: FakeSnapshot = name
        ? { snapshotID: `${TEAM}/${name}:default`, names: [`${TEAM}/${name}:default`], sandboxID: s.id, engineId: record.id }
        : { snapshotID: `${randomBytes(10).toString('hex')}:default`, names: [], sandboxID: s.id, engineId: record.id }
      // The same name again is a new build of that name: it replaces the old one.
      const old = snapshots.get(snap.snapshotID)
      if (old) await engine.deleteSnapshot(old.engineId).catch(() => {})
      snapshots.set(snap.snapshotID, snap)
      return send(res, 201, { snapshotID: snap.snapshotID, names: snap.names })
    }
    if (parts[0] === 'snapshots' && parts.length === 1 && method === 'GET') {
      const sandboxID = url.searchParams.get('sandboxID')
      const name = url.searchParams.get('name')
      const items = [...snapshots.values()].filter((s) => (!sandboxID || s.sandboxID === sandboxID) && (!name || matches(s, name))).map((s) => ({ snapshotID: s.snapshotID, names: s.names }))
      return page(res, items, url)
    }
    if (parts[0] === 'templates' && parts.length === 2 && method === 'DELETE') {
      const ref = decodeURIComponent(parts[1])
      const snap = [...snapshots.values()].find((s) => matches(s, ref))
      if (!snap) throw new ApiError(404, `template '${ref}' not found`)
      snapshots.delete(snap.snapshotID)
      await engine.deleteSnapshot(snap.engineId)
      return send(res, 204)
    }
    throw new ApiError(404, `no route ${method} ${path}`)
  }

  async function create(body: Record<string, any>) {
    const templateID = body.templateID
    if (typeof templateID !== 'string' || !templateID) throw new ApiError(400, 'Error when parsing request: templateID is required')
    let template: string | undefined
    if (templateID !== 'base') {
      const snap = [...snapshots.values()].find((s) => matches(s, templateID))
      if (!snap) throw new ApiError(404, `template '${templateID}' not found`)
      template = snap.engineId
    }
    const timeout = body.timeout ?? 15
    if (!Number.isInteger(timeout) || timeout < 0) throw new ApiError(400, 'Error when parsing request: timeout must be a non-negative integer')
    const metadata = (body.metadata ?? {}) as Record<string, string>
    if (Object.values(metadata).some((v) => typeof v !== 'string')) throw new ApiError(400, 'Error when parsing request: metadata values must be strings')
    const local = await engine.createSandbox({ template, timeoutSec: timeout, metadata, envs: body.envVars ?? {}, network: body.allow_internet_access === false ? 'none' : 'host' })
    const s: FakeSandbox = {
      id: local.id,
      local,
      token: randomUUID(),
      templateID,
      metadata,
      startedAt: new Date(),
      endAt: new Date(Date.now() + timeout * 1000),
      processes: new Map(),
      nextPid: 1000,
    }
    sandboxes.set(s.id, s)
    // The timeout (or anything else) ending the sandbox removes it.
    local.once('exit', () => void remove(s))
    return created(s)
  }

  // ---- envd ---------------------------------------------------------------------------------

  async function envd(s: FakeSandbox, req: http.IncomingMessage, res: http.ServerResponse, url: URL): Promise<void> {
    const path = url.pathname
    if (path === '/health' && req.method === 'GET') return send(res, 204)
    if (req.headers['x-access-token'] !== s.token) return send(res, 401, { code: 401, message: 'unauthorized access, please provide a valid access token or method signing if supported' })
    if (path === '/files' && req.method === 'POST') return upload(s, req, res, url)
    if (path === '/files' && req.method === 'GET') return download(s, res, url)
    const m = /^\/(process\.Process|filesystem\.Filesystem)\/(\w+)$/.exec(path)
    if (!m || req.method !== 'POST') throw new ConnectError('unimplemented', `${req.method} ${path} is not implemented`)
    if (m[1] === 'process.Process' && m[2] === 'Start') return start(s, req, res)
    if (m[1] === 'process.Process' && m[2] === 'Connect') return connect(s, req, res)
    if (!String(req.headers['content-type']).startsWith('application/json')) throw new ConnectError('invalid_argument', `unary calls take application/json, not ${req.headers['content-type']}`)
    const msg = JSON.parse((await readBody(req)).toString() || '{}')
    send(res, 200, await unary(s, `${m[1]}/${m[2]}`, msg))
  }

  function processOf(s: FakeSandbox, msg: Record<string, any>): FakeProcess {
    const pid = msg.process?.pid
    const p = s.processes.get(pid)
    if (!p || !p.proc.running) throw new ConnectError('not_found', `process with pid ${pid} not found`)
    return p
  }

  async function unary(s: FakeSandbox, method: string, msg: Record<string, any>): Promise<unknown> {
    switch (method) {
      case 'process.Process/SendInput': {
        const p = processOf(s, msg)
        const data = msg.input?.stdin ?? msg.input?.pty
        if (typeof data !== 'string') throw new ConnectError('invalid_argument', 'input is required')
        await p.proc.write(Buffer.from(data, 'base64'))
        return {}
      }
      case 'process.Process/CloseStdin':
        processOf(s, msg).proc.closeStdin()
        return {}
      case 'process.Process/SendSignal': {
        const p = processOf(s, msg)
        const signal = { SIGNAL_SIGKILL: 'SIGKILL', SIGNAL_SIGTERM: 'SIGTERM', 9: 'SIGKILL', 15: 'SIGTERM' }[msg.signal as string]
        if (!signal) throw new ConnectError('invalid_argument', `invalid signal ${msg.signal}`)
        p.proc.kill(signal, true)
        return {}
      }
      case 'process.Process/List':
        return { processes: [...s.processes.values()].filter((p) => p.proc.running).map((p) => ({ config: p.config, pid: p.pid })) }
      case 'filesystem.Filesystem/MakeDir': {
        if (typeof msg.path !== 'string') throw new ConnectError('invalid_argument', 'path is required')
        await s.local.fs('mkdir', msg.path)
        return { entry: { name: msg.path.split('/').pop(), type: 'FILE_TYPE_DIRECTORY', path: msg.path } }
      }
    }
    throw new ConnectError('unimplemented', `${method} is not implemented`)
  }

  /** A server stream's request: one envelope of JSON. */
  async function streamRequest(req: http.IncomingMessage): Promise<Record<string, any>> {
    if (!String(req.headers['content-type']).startsWith('application/connect+json')) throw new ConnectError('invalid_argument', `a stream takes application/connect+json, not ${req.headers['content-type']}`)
    const raw = await readBody(req)
    if (raw.length < 5 || raw.readUInt32BE(1) !== raw.length - 5) throw new ConnectError('invalid_argument', 'the request is not one envelope')
    return JSON.parse(raw.subarray(5).toString())
  }

  /** `Start`: a server stream of the process's events, ended by an end-of-stream envelope. */
  async function start(s: FakeSandbox, req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const msg = await streamRequest(req)
    const config = { cmd: msg.process?.cmd, args: msg.process?.args ?? [], envs: msg.process?.envs ?? {}, ...(msg.process?.cwd ? { cwd: msg.process.cwd } : {}) }
    if (typeof config.cmd !== 'string' || !config.cmd) throw new ConnectError('invalid_argument', 'process.cmd is required')
    if (state.endBeforeStart > 0) {
      state.endBeforeStart--
      res.writeHead(200, { 'content-type': 'application/connect+json' })
      return void res.end(envelope({ error: { code: 'resource_exhausted', message: 'too many processes' } }, 0x02))
    }
    let proc: SandboxProcess
    try {
      proc = await s.local.spawn({ cmd: config.cmd, args: config.args, cwd: config.cwd, env: config.envs, stdin: msg.stdin !== false })
    } catch (err) {
      throw new ConnectError('internal', `error starting process: ${(err as Error).message}`)
    }
    const p: FakeProcess = { pid: s.nextPid++, proc, config }
    s.processes.set(p.pid, p)
    // envd subscribes a Start stream before the process runs: it sees all of its output.
    await follow(p, req, res, proc.eventsSince(0))
  }

  /**
   * `Connect`: the events of a running process from now on (envd forks its live output: what the
   * process wrote while no stream listened is gone). For a process that has exited, its start
   * and retained end. Errors come in the end-of-stream envelope, as connect-go sends them.
   */
  async function connect(s: FakeSandbox, req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const msg = await streamRequest(req)
    const p = s.processes.get(msg.process?.pid)
    res.writeHead(200, { 'content-type': 'application/connect+json' })
    if (!p) return void res.end(envelope({ error: { code: 'not_found', message: `process with pid ${msg.process?.pid} not found` } }, 0x02))
    await follow(p, req, res, [])
  }

  /** Streams a process's events to `res` (after `earlier`) until its end; `dropStreams()` cuts it. */
  async function follow(p: FakeProcess, req: http.IncomingMessage, res: http.ServerResponse, earlier: Iterable<{ type: 'stdout' | 'stderr'; data: Buffer }>): Promise<void> {
    const { proc } = p
    p.stream = res
    if (!res.headersSent) res.writeHead(200, { 'content-type': 'application/connect+json' })
    const event = (e: unknown) => res.writableEnded || res.destroyed || res.write(envelope({ event: e }))
    event({ start: { pid: p.pid } })
    let oversized = state.oversizedEnvelope > 0 && state.oversizedEnvelope-- > 0
    let forged = state.forgedFrame > 0 && state.forgedFrame-- > 0
    const onOutput = (e: { type: 'stdout' | 'stderr'; data: Buffer }) => {
      if (forged) {
        forged = false
        const head = Buffer.alloc(11)
        head[0] = 79
        head.writeUInt32BE(0xffffffff, 7)
        return void event({ data: { stdout: head.toString('base64') } })
      }
      if (oversized) {
        oversized = false
        const head = Buffer.alloc(5)
        head.writeUInt32BE(1 << 30, 1)
        return void res.write(Buffer.concat([head, e.data]))
      }
      for (let off = 0; off < e.data.length; off += READ_SIZE) event({ data: { [e.type]: e.data.subarray(off, off + READ_SIZE).toString('base64') } })
    }
    for (const e of earlier) onOutput(e)
    proc.on('output', onOutput)
    res.once('close', () => proc.off('output', onOutput))
    const interval = Number(req.headers['keepalive-ping-interval'] ?? 90)
    const keepalive = setInterval(() => event({ keepalive: {} }), interval * 1000)
    const deadline = Number(req.headers['connect-timeout-ms'] ?? 0)
    const timer = deadline > 0 ? setTimeout(() => proc.kill('SIGKILL', true), deadline) : undefined
    const exit = await new Promise<{ exitCode: number; signal: string | null }>((r) => (proc.exit ? r(proc.exit) : proc.once('exit', r)))
    clearInterval(keepalive)
    clearTimeout(timer)
    proc.off('output', onOutput)
    const status = exit.signal ? `signal: ${GO_SIGNAL[exit.signal] ?? exit.signal}` : `exit status ${exit.exitCode}`
    event({ end: { ...(exit.signal ? { exitCode: -1 } : exit.exitCode ? { exitCode: exit.exitCode } : {}), ...(exit.signal ? {} : { exited: true }), status, ...(exit.signal || exit.exitCode ? { error: status } : {}) } })
    if (!res.writableEnded && !res.destroyed) res.end(envelope({}, 0x02))
  }

  async function upload(s: FakeSandbox, req: http.IncomingMessage, res: http.ServerResponse, url: URL): Promise<void> {
    const query = url.searchParams.get('path')
    const type = String(req.headers['content-type'] ?? '')
    if (type.startsWith('application/octet-stream')) {
      if (!query) return send(res, 400, { code: 400, message: 'path is required for an octet-stream upload' })
      const body = req.headers['content-encoding'] === 'gzip' ? req.pipe(zlib.createGunzip()) : req
      await s.local.writeFile(query, body as Readable)
      return send(res, 200, [{ path: query, name: query.split('/').pop(), type: 'file' }])
    }
    if (!type.startsWith('multipart/form-data')) return send(res, 400, { code: 400, message: `unsupported content type ${type}` })
    const written: { path: string; name: string; type: 'file' }[] = []
    const writes: Promise<unknown>[] = []
    const bb = busboy({ headers: req.headers })
    bb.on('file', (field, stream, info) => {
      const target = query ?? info.filename
      if (field !== 'file' || !target) return void stream.resume()
      written.push({ path: target, name: target.split('/').pop()!, type: 'file' })
      writes.push(s.local.writeFile(target, stream))
    })
    await new Promise<void>((resolve, reject) => {
      bb.on('close', resolve)
      bb.on('error', reject)
      req.pipe(bb)
    })
    await Promise.all(writes)
    if (!written.length) return send(res, 400, { code: 400, message: 'no file in the form' })
    send(res, 200, written)
  }

  async function download(s: FakeSandbox, res: http.ServerResponse, url: URL): Promise<void> {
    const file = url.searchParams.get('path')
    if (!file) return send(res, 400, { code: 400, message: 'path is required' })
    try {
      await s.local.readFile(
        file,
        () => res.writeHead(200, { 'content-type': 'application/octet-stream' }),
        (chunk) => res.write(chunk),
      )
      res.end()
    } catch (err) {
      if (!res.headersSent) send(res, 404, { code: 404, message: `path '${file}' does not exist: ${(err as Error).message}` })
      else res.destroy()
    }
  }

  const server = http.createServer((req, res) => {
    const url = new URL(req.url!, 'http://fake-e2b')
    const sandboxId = req.headers['e2b-sandbox-id']
    const where = typeof sandboxId === 'string' ? 'envd' : 'api'
    requests.push({ where, method: req.method!, path: url.pathname, headers: req.headers })
    const fault = takeFault(where, req.method!, url.pathname)
    if (fault) return send(res, fault.status, { code: fault.status, message: `injected ${fault.status}` }, fault.status === 429 ? { 'retry-after': '0' } : {})
    const handled =
      where === 'api'
        ? api(req, res, url)
        : (async () => {
            const s = sandboxes.get(sandboxId as string)
            // As E2B's proxy answers for a sandbox that is gone.
            if (!s || !s.local.running) return send(res, 502, { sandboxId, message: 'The sandbox was not found', code: 502 })
            await envd(s, req, res, url)
          })()
    handled.catch((err: Error) => {
      if (res.headersSent) return void res.destroy()
      if (err instanceof ConnectError) return send(res, ConnectError.STATUS[err.code] ?? 500, { code: err.code, message: err.message })
      if (err instanceof ApiError) return send(res, err.status, { code: err.status, message: err.message })
      send(res, 500, { code: 500, message: err.message })
    })
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()))
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`

  return {
    /** Both the API's and envd's URL (`apiUrl` and `sandboxUrl`). */
    url,
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
    /** Forget the faults not yet used. */
    clearFaults(): void {
      faults.length = 0
    },
    /** Cut every process stream without its end; returns how many. */
    dropStreams(): number {
      let n = 0
      for (const s of sandboxes.values()) {
        for (const p of s.processes.values()) {
          if (p.stream && !p.stream.writableEnded && !p.stream.destroyed) {
            p.stream.destroy()
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

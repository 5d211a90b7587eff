/**
 * The process runtime protocol server for the local engine: Watasu's control plane
 * (`/v1/sandboxes...`) and runtime v1 data plane (`/runtime/v1/...`) on one HTTP origin.
 *
 * - Control routes take the server's bearer token (the "API key").
 * - Data-plane routes take a sandbox's session token, which also selects the sandbox: Watasu's data
 *   plane URLs carry no sandbox id, so the token is the only way to know which sandbox is meant,
 *   and one sandbox's token can never reach another sandbox.
 *
 * Deviations from Watasu's wire format are listed in docs/protocol.md.
 */
import { randomBytes } from 'node:crypto'
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import os from 'node:os'
import type { Duplex } from 'node:stream'
import { createGunzip } from 'node:zlib'
import { WebSocketServer, type WebSocket } from 'ws'
import type { Engine } from './engine.js'
import { Tenants, type Tenant } from './tenants.js'
import type { LimitsInput } from './limits.js'
import type { SnapshotRecord } from './layers.js'
import type { SandboxProcess } from './process.js'
import type { LocalSandbox } from './sandbox.js'
import { debug } from '../debug.js'
import { type ClientFrame, MAX_WS_FRAME, type ServerFrame } from '../protocol/frames.js'

const log = debug('server')
/** One line per request and per process started: what a test reads to see what a run asked for. */
const requestLog = debug('requests')

/** Answers a process socket may leave unread before the server stops reading it: bytes, and frames. */
const MAX_UNREAD = 16 * 1024 * 1024
const MAX_UNREAD_FRAMES = 4096
/** Process sockets one sandbox may have open. */
const MAX_SOCKETS_PER_SANDBOX = 64
/** Bytes of output one `GET …/output` answers (base64 in JSON: a third more). */
const MAX_OUTPUT_PAGE = 1024 * 1024

export interface ServerOptions {
  /** @default '127.0.0.1' */
  host?: string
  /** 0 picks a free port. @default 0 */
  port?: number
  /** Bearer token for the control plane (the default tenant's). @default a random 32-byte token */
  token?: string
  /** A JSON file of more tenants, `{ "<name>": "<token>" }`: each its own sandboxes and snapshots (tenants.ts). */
  tenantsFile?: string
  /** Honour `allow_internet_access: true` by giving such sandboxes the host's network. @default false */
  allowNetwork?: boolean
  /** Largest file a PUT may upload, in bytes. @default 4 GiB */
  maxUploadBytes?: number
  /** Seconds between WebSocket pings; a peer that misses two is dropped. @default 30 */
  keepaliveSec?: number
  /** Connections open at once; past it a new one is closed at once. @default 1024 */
  maxConnections?: number
}

export interface RunningServer {
  url: string
  token: string
  server: http.Server
  close(): Promise<void>
}

class HttpError extends Error {
  constructor(readonly status: number, readonly code: string, message: string) {
    super(message)
  }
}

/** Map an engine or in-sandbox error to the status and code Watasu's SDKs understand. */
function toHttpError(err: unknown): HttpError {
  if (err instanceof HttpError) return err
  const code = (err as { code?: string }).code ?? ''
  const message = (err as Error).message ?? String(err)
  const table: Record<string, [number, string]> = {
    ENOENT: [404, 'file_not_found'],
    ENOTDIR: [400, 'invalid_argument'],
    EISDIR: [400, 'invalid_argument'],
    EINVAL: [400, 'invalid_argument'],
    EACCES: [403, 'permission_denied'],
    EPERM: [403, 'permission_denied'],
    EROFS: [403, 'read_only_path'],
    ENAMETOOLONG: [400, 'invalid_argument'],
    ELOOP: [400, 'invalid_argument'],
    ENXIO: [400, 'invalid_argument'],
    Z_DATA_ERROR: [400, 'invalid_gzip'],
    Z_BUF_ERROR: [400, 'invalid_gzip'],
    ENOSPC: [507, 'not_enough_space'],
    EDQUOT: [507, 'not_enough_space'],
    sandbox_not_found: [404, 'sandbox_not_found'],
    sandbox_not_running: [404, 'sandbox_not_found'],
    template_not_found: [404, 'template_not_found'],
    sandbox_limit: [429, 'sandbox_limit'],
    snapshot_budget: [409, 'snapshot_budget'],
    disk_full: [409, 'disk_full'],
    snapshot_in_use: [409, 'snapshot_in_use'],
    invalid_argument: [400, 'invalid_argument'],
    sandbox_start_failed: [500, 'sandbox_start_failed'],
    engine_closed: [503, 'sandbox_overloaded'],
    spawn_failed: [400, 'spawn_failed'],
    process_exists: [409, 'process_exists'],
  }
  const [status, mapped] = table[code] ?? [500, 'internal_error']
  return new HttpError(status, mapped, message)
}

function bearer(req: http.IncomingMessage): string | undefined {
  const h = req.headers.authorization
  return h?.startsWith('Bearer ') ? h.slice(7).trim() : undefined
}

function sendJson(res: http.ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body)
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) })
  res.end(text)
}

async function readJson(req: http.IncomingMessage, limit = 1024 * 1024): Promise<Record<string, unknown>> {
  const chunks: Buffer[] = []
  let size = 0
  // Read to the end even when over the limit, so the connection stays usable for the 413.
  for await (const chunk of req) {
    size += chunk.length
    if (size <= limit) chunks.push(chunk)
  }
  if (size > limit) throw new HttpError(413, 'payload_too_large', `request body over ${limit} bytes`)
  if (!size) return {}
  let body: unknown
  try {
    body = JSON.parse(Buffer.concat(chunks).toString('utf8'))
  } catch (err) {
    throw new HttpError(400, 'invalid_json', `request body is not JSON: ${(err as Error).message}`)
  }
  if (!body || typeof body !== 'object' || Array.isArray(body)) throw new HttpError(400, 'invalid_json', 'request body must be a JSON object')
  return body as Record<string, unknown>
}

/** A `timeout` field: a positive, finite number of seconds. */
function positiveSeconds(value: unknown, max: number): number {
  const timeout = typeof value === 'number' ? value : typeof value === 'string' && value.trim() ? Number(value) : NaN
  if (!Number.isFinite(timeout) || timeout <= 0 || timeout > max) throw new HttpError(400, 'invalid_argument', `timeout must be a number of seconds from 1 to ${max} (got ${JSON.stringify(value)?.slice(0, 100)})`)
  return timeout
}

function stringRecord(value: unknown, field: string): Record<string, string> {
  if (value === undefined || value === null) return {}
  if (typeof value !== 'object' || Array.isArray(value)) throw new HttpError(400, 'invalid_argument', `${field} must be an object of strings`)
  return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, String(v)]))
}

function pathList(value: unknown, field: string): string[] | undefined {
  if (value === undefined || value === null) return undefined
  if (!Array.isArray(value) || value.some((d) => typeof d !== 'string')) throw new HttpError(400, 'invalid_argument', `${field} must be an array of absolute paths`)
  return value as string[]
}

/** A `limits` field: { memory?, disk?, cpus?, processes?, open_files? }; the engine checks each value. */
function limitsField(value: unknown): LimitsInput | undefined {
  if (value === undefined || value === null) return undefined
  if (typeof value !== 'object' || Array.isArray(value)) throw new HttpError(400, 'invalid_argument', 'limits must be an object such as { "memory": "1g", "disk": "2g", "cpus": 1 }')
  const { open_files: openFiles, ...rest } = value as Record<string, unknown>
  return { ...rest, ...(openFiles === undefined ? {} : { openFiles }) } as LimitsInput
}

interface Target {
  url: URL
  /** The path's segments, percent-decoded. */
  parts: string[]
}

/** A request's target, or a 400 naming what is wrong with it (a malformed escape or URL). */
function parseTarget(raw: string | undefined): Target {
  let url: URL
  try {
    url = new URL(raw ?? '/', 'http://localhost')
  } catch {
    throw new HttpError(400, 'invalid_request', `the request target ${JSON.stringify(String(raw).slice(0, 200))} is not a URL path`)
  }
  const parts = url.pathname.split('/').filter(Boolean)
  try {
    return { url, parts: parts.map(decodeURIComponent) }
  } catch {
    throw new HttpError(400, 'invalid_request', `the path ${JSON.stringify(url.pathname.slice(0, 200))} has a malformed percent-escape`)
  }
}

function requirePath(url: URL): string {
  const p = url.searchParams.get('path')
  if (!p) throw new HttpError(400, 'invalid_argument', 'query parameter "path" is required')
  return p
}

export async function startServer(engine: Engine, opts: ServerOptions = {}): Promise<RunningServer> {
  const token = opts.token ?? randomBytes(32).toString('base64url')
  const tenants = Tenants.from(token, opts.tenantsFile)
  /** Each tenant's creates under way. */
  const creating = new Map<Tenant, number>()
  const maxUpload = opts.maxUploadBytes ?? 4 * 1024 ** 3
  const sessions = new Map<string, string>() // session token -> sandbox id
  const sessionOf = new Map<string, string>() // sandbox id -> session token
  let baseUrl = ''

  const sessionFor = (s: LocalSandbox) => {
    let t = sessionOf.get(s.id)
    if (!t) {
      t = randomBytes(32).toString('base64url')
      sessionOf.set(s.id, t)
      sessions.set(t, s.id)
      s.once('exit', () => {
        sessions.delete(t!)
        sessionOf.delete(s.id)
      })
    }
    return { data_plane_url: baseUrl, token: t, envd_access_token: t }
  }

  const sandboxJson = (s: LocalSandbox) => ({
    id: s.id,
    sandbox_id: s.id,
    template_id: s.template,
    state: 'ready',
    metadata: tenants.shown(s.metadata),
    started_at: s.createdAt.toISOString(),
    end_at: s.expiresAt.toISOString(),
    allow_internet_access: s.network === 'host',
    cpu_count: os.availableParallelism(),
    memory_mb: Math.round(os.totalmem() / 1024 / 1024),
  })

  const snapshotJson = (tenant: Tenant, r: SnapshotRecord, sandboxId?: string) => {
    const name = r.name === undefined ? undefined : tenants.shownName(tenant, r.name)
    return {
      id: r.id,
      snapshot_id: r.id,
      sandbox_id: sandboxId ?? r.metadata.sandbox_id,
      name: name ?? null,
      names: name ? [name] : [],
      status: 'ready',
      size_bytes: r.sizeBytes,
      created_at: r.createdAt,
      last_used_at: r.lastUsedAt ?? null,
      metadata: tenants.shown(r.metadata),
    }
  }

  /** A sandbox of this tenant; another tenant's is as missing as one that never was. */
  const sandboxOr404 = (id: string, tenant?: Tenant) => {
    const s = engine.get(id)
    if (!s || (tenant && !tenants.owns(tenant, s.metadata))) throw new HttpError(404, 'sandbox_not_found', `sandbox ${id} not found`)
    return s
  }

  /**
   * A snapshot of this tenant, by id or by the name it gave. Both are looked up every time, so
   * another tenant's id costs what a missing one does.
   */
  const snapshotOf = async (tenant: Tenant, idOrName: string): Promise<SnapshotRecord | undefined> => {
    const [byId, byName] = await Promise.all([engine.layers.snapshotById(idOrName), idOrName.includes('/') ? undefined : engine.layers.getSnapshot(tenants.snapshotName(tenant, idOrName))])
    const own = (r: SnapshotRecord | undefined) => (r && tenants.owns(tenant, r.metadata) && (r === byId || r.name === tenants.snapshotName(tenant, idOrName)) ? r : undefined)
    return own(byId) ?? own(byName)
  }

  async function control(req: http.IncomingMessage, res: http.ServerResponse, url: URL, parts: string[]): Promise<void> {
    const tenant = tenants.who(bearer(req))
    if (!tenant) throw new HttpError(401, 'unauthorized', 'missing or wrong bearer token for the control plane')
    const [, resource, id, action] = parts // parts[0] === 'v1'
    const method = req.method
    const owned = (s: LocalSandbox) => tenants.owns(tenant, s.metadata)
    if (resource === 'health' && method === 'GET') {
      return sendJson(res, 200, { ok: true, engine: 'local', bwrap: engine.host.bwrapVersion, sandboxes: engine.list().filter(owned).length })
    }
    if (resource === 'sandboxes' && !id && method === 'POST') {
      const body = await readJson(req)
      const timeout = body.timeout === undefined ? 300 : Number(body.timeout)
      if (!Number.isFinite(timeout)) throw new HttpError(400, 'invalid_argument', `timeout must be a number of seconds (got ${JSON.stringify(body.timeout)})`)
      if (body.template !== undefined && typeof body.template !== 'string') throw new HttpError(400, 'invalid_argument', 'template must be a string')
      // Each tenant its share of the server's sandboxes: none can take them all, nor learn by a
      // refusal how many the others run.
      const share = tenants.share(engine.maxSandboxes)
      // Counted with the tenant's creates still under way: a burst cannot pass the check together.
      const making = creating.get(tenant) ?? 0
      if (share !== undefined && engine.list().filter(owned).length + making >= share) {
        throw new HttpError(429, 'sandbox_limit', `this tenant's sandbox limit is reached: ${share} running (kill some, or raise --max-sandboxes)`)
      }
      const asked = body.template as string | undefined
      creating.set(tenant, making + 1)
      const s = await (async () => {
        const template = asked === undefined || asked === 'base' ? 'base' : (await snapshotOf(tenant, asked))?.id
        if (template === undefined) throw new HttpError(404, 'template_not_found', `template or snapshot '${asked}' not found`)
        return engine.createSandbox({
          template,
          timeoutSec: timeout,
          metadata: tenants.stamp(tenant, stringRecord(body.metadata, 'metadata')),
          envs: stringRecord(body.envs, 'envs'),
          network: body.allow_internet_access === true && opts.allowNetwork ? 'host' : 'none',
          hostLayers: pathList(body.host_layers, 'host_layers'),
          limits: limitsField(body.limits),
          readOnly: pathList(body.read_only, 'read_only'),
        })
      })().finally(() => creating.set(tenant, (creating.get(tenant) ?? 1) - 1))
      return sendJson(res, 201, { sandbox: sandboxJson(s), session: sessionFor(s) })
    }
    if (resource === 'sandboxes' && !id && method === 'GET') {
      const filter: Record<string, string> = {}
      for (const [k, v] of url.searchParams) {
        const m = /^query\[metadata\]\[(.+)\]$/.exec(k)
        if (m) filter[m[1]] = v
      }
      const all = engine.list(filter).filter(owned)
      const limit = Math.max(1, Math.min(1000, Number(url.searchParams.get('limit')) || 1000))
      const start = Number(url.searchParams.get('next_token')) || 0
      const page = all.slice(start, start + limit)
      return sendJson(res, 200, { sandboxes: page.map(sandboxJson), next_token: start + limit < all.length ? String(start + limit) : null })
    }
    if (resource === 'sandboxes' && id && !action && method === 'GET') return sendJson(res, 200, { sandbox: sandboxJson(sandboxOr404(id, tenant)) })
    if (resource === 'sandboxes' && id && !action && method === 'DELETE') {
      sandboxOr404(id, tenant)
      if (!(await engine.kill(id))) throw new HttpError(404, 'sandbox_not_found', `sandbox ${id} not found`)
      return sendJson(res, 200, { deleted: true })
    }
    if (resource === 'sandboxes' && id && action === 'timeout' && method === 'POST') {
      const s = sandboxOr404(id, tenant)
      const body = await readJson(req)
      s.setTimeout(positiveSeconds(body.timeout, engine.maxTimeoutSec))
      return sendJson(res, 200, { sandbox: sandboxJson(s) })
    }
    if (resource === 'sandboxes' && id && action === 'resume' && method === 'POST') {
      const s = sandboxOr404(id, tenant)
      const body = await readJson(req)
      if (body.timeout !== undefined) s.setTimeout(positiveSeconds(body.timeout, engine.maxTimeoutSec))
      return sendJson(res, 200, { sandbox: sandboxJson(s), session: sessionFor(s) })
    }
    if (resource === 'sandboxes' && id && action === 'snapshots' && method === 'POST') {
      sandboxOr404(id, tenant)
      const body = await readJson(req)
      if (body.name !== undefined && typeof body.name !== 'string') throw new HttpError(400, 'invalid_argument', 'name must be a string')
      const name = body.name === undefined ? undefined : tenants.snapshotName(tenant, body.name)
      // The snapshot budget is kept per tenant: one tenant's snapshots never push out another's.
      const record = await engine.snapshot(id, { name, metadata: tenants.stamp(tenant, { ...stringRecord(body.metadata, 'metadata'), sandbox_id: id }), among: (r) => tenants.owns(tenant, r.metadata) })
      return sendJson(res, 201, { sandbox_checkpoint: snapshotJson(tenant, record, id) })
    }
    if (resource === 'sandbox_snapshots' && !id && method === 'GET') {
      const sandboxId = url.searchParams.get('sandbox_id')
      const all = (await engine.listSnapshots()).filter((r) => tenants.owns(tenant, r.metadata) && (!sandboxId || r.metadata.sandbox_id === sandboxId))
      return sendJson(res, 200, { snapshots: all.map((r) => snapshotJson(tenant, r)), next_token: null })
    }
    if (resource === 'sandbox_snapshots' && id && !action && method === 'DELETE') {
      const result = (await snapshotOf(tenant, id))?.id === id ? await engine.deleteSnapshot(id) : 'not_found'
      if (result === 'not_found') throw new HttpError(404, 'snapshot_not_found', `snapshot ${id} not found`)
      if (result === 'in_use') throw new HttpError(409, 'snapshot_in_use', `snapshot ${id} is in use by a running sandbox`)
      return sendJson(res, 200, { deleted: true })
    }
    throw new HttpError(404, 'not_found', `no route ${method} ${url.pathname}`)
  }

  function sandboxForSession(req: http.IncomingMessage): LocalSandbox {
    const t = bearer(req)
    const id = t ? sessions.get(t) : undefined
    if (!id) throw new HttpError(401, 'unauthorized', 'missing or unknown session token for the data plane')
    return sandboxOr404(id)
  }

  function processStatus(p: SandboxProcess) {
    const status = p.running ? 'running' : p.exit!.error === 'timeout' ? 'timed_out' : p.exit!.signal ? 'killed' : p.exit!.exitCode === 0 ? 'succeeded' : 'failed'
    return {
      pid: p.id,
      id: p.id,
      os_pid: p.pid,
      cmd: p.spec.cmd,
      command: p.spec.cmd,
      args: p.spec.args,
      cwd: p.spec.cwd ?? null,
      tag: p.spec.tag ?? null,
      user: 'sandbox',
      pty: false,
      status,
      started_at: new Date(p.startedAt).toISOString(),
      exit_code: p.exit?.exitCode ?? null,
      error: p.exit?.error ?? null,
    }
  }

  const processOr404 = (s: LocalSandbox, pid: string) => {
    const p = s.processes.get(pid)
    if (!p) throw new HttpError(404, 'process_not_found', `process ${pid} not found in sandbox ${s.id}`)
    return p
  }

  async function data(req: http.IncomingMessage, res: http.ServerResponse, url: URL, parts: string[]): Promise<void> {
    const s = sandboxForSession(req)
    const [, , resource, sub, action] = parts // runtime, v1, ...
    const method = req.method
    if (resource === 'files' && !sub) {
      const file = requirePath(url)
      if (method === 'GET') {
        let started = false
        // The client's pace sets the sandbox's: what it has not taken is held here, a chunk or two.
        const left = new AbortController()
        res.once('close', () => left.abort())
        try {
          await s.readFile(
            file,
            ({ size }) => {
              started = true
              res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': size })
            },
            (chunk) => (res.write(chunk) ? undefined : new Promise<void>((r) => { res.once('drain', r); res.once('close', r) })),
            left.signal,
          )
          if (left.signal.aborted) return
        } catch (err) {
          if (started) return void res.destroy(err as Error) // mid-body: the client sees a short read
          throw err
        }
        return void res.end()
      }
      if (method === 'PUT' || method === 'POST') {
        const declared = Number(req.headers['content-length'] ?? 0)
        if (declared > maxUpload) throw new HttpError(413, 'payload_too_large', `upload of ${declared} bytes is over the server's limit of ${maxUpload} bytes`)
        // Python's SDK sends gzip=true without content-encoding; TS sends both. Gunzip once.
        const gz = url.searchParams.get('gzip') === 'true' || req.headers['content-encoding'] === 'gzip'
        const source = gz ? req.pipe(createGunzip()) : req
        let seen = 0
        const limited = (async function* () {
          for await (const chunk of source) {
            seen += chunk.length
            if (seen > maxUpload) throw new HttpError(413, 'payload_too_large', `upload is over the server's limit of ${maxUpload} bytes`)
            yield chunk as Buffer
          }
        })()
        const entry = await s.writeFile(file, limited as unknown as import('node:stream').Readable)
        return sendJson(res, 200, { file: entry })
      }
      if (method === 'DELETE') {
        await s.fs('remove', file)
        return sendJson(res, 200, {})
      }
    }
    if (resource === 'files' && sub === 'stat' && method === 'GET') return sendJson(res, 200, { file: (await s.fs('stat', requirePath(url))).entry })
    if (resource === 'directories' && method === 'GET') return sendJson(res, 200, { entries: (await s.fs('list', requirePath(url))).entries })
    if (resource === 'directories' && method === 'POST') {
      await readJson(req)
      return sendJson(res, 200, { file: (await s.fs('mkdir', requirePath(url))).entry })
    }
    if (resource === 'process' && !sub && method === 'GET') {
      return sendJson(res, 200, { processes: [...s.processes.values()].map(processStatus) })
    }
    if (resource === 'process' && sub) {
      const p = processOr404(s, sub)
      if (!action && method === 'GET') return sendJson(res, 200, processStatus(p))
      if (!action && method === 'DELETE') {
        const signal = normalizeSignal(url.searchParams.get('signal') ?? 'SIGTERM')
        const group = url.searchParams.get('kill_group') !== 'false'
        const grace = Number(url.searchParams.get('grace_ms') ?? 0)
        p.kill(signal, group)
        if (grace > 0 && signal !== 'SIGKILL') setTimeout(() => p.kill('SIGKILL', group), grace).unref()
        return sendJson(res, 200, processStatus(p))
      }
      if (action === 'signal' && method === 'POST') {
        const body = await readJson(req)
        p.kill(normalizeSignal(String(body.signal ?? 'SIGTERM')), body.kill_group !== false)
        return sendJson(res, 200, processStatus(p))
      }
      if (action === 'output' && method === 'GET') {
        const since = Math.max(0, Number(url.searchParams.get('since') ?? 0) || 0)
        // One page at most: a client that never reads holds the server to that (it pages with since).
        const limit = Math.min(Number(url.searchParams.get('limit_bytes') ?? 0) || MAX_OUTPUT_PAGE, MAX_OUTPUT_PAGE)
        const events = []
        let bytes = 0
        for (const e of p.eventsSince(since)) {
          if (bytes + e.data.length > limit && events.length) break
          bytes += e.data.length
          events.push({ cursor: e.cursor, type: e.type, data: e.data.toString('base64') })
        }
        return sendJson(res, 200, {
          pid: p.id,
          status: processStatus(p).status,
          exit_code: p.exit?.exitCode ?? null,
          next_cursor: events.length ? events[events.length - 1].cursor + 1 : Math.max(since, p.truncatedBefore),
          truncated_before_cursor: since < p.truncatedBefore,
          first_retained_cursor: p.truncatedBefore,
          events,
        })
      }
    }
    throw new HttpError(404, 'not_found', `no route ${method} ${url.pathname}`)
  }

  const server = http.createServer((req, res) => {
    let target: Target | undefined
    const work = (async () => {
      target = parseTarget(req.url)
      const { url, parts } = target
      const handler = parts[0] === 'v1' ? control : parts[0] === 'runtime' && parts[1] === 'v1' ? data : undefined
      if (!handler) throw new HttpError(404, 'not_found', `no route ${req.method} ${url.pathname}`)
      return handler(req, res, url, parts)
    })()
    const where = () => target?.url.pathname ?? JSON.stringify(String(req.url).slice(0, 200))
    res.once('finish', () => requestLog('%s %s%s %d', req.method, where(), target?.url.searchParams.has('path') ? ` path=${target.url.searchParams.get('path')}` : '', res.statusCode))
    work.catch((err) => {
      const e = toHttpError(err)
      if (e.status >= 500) log('%s %s failed: %s', req.method, where(), (err as Error).stack)
      if (res.headersSent) return void res.destroy()
      // Drain what the client is still sending so it reads the error instead of a reset.
      req.resume()
      sendJson(res, e.status, { error: e.code, message: e.message })
    })
  })

  const wss = new WebSocketServer({ noServer: true, maxPayload: MAX_WS_FRAME })
  const sockets = new WeakMap<LocalSandbox, number>()
  // Upgrade sockets are the server's own to end: closeAllConnections() does not reach them.
  const upgrading = new Set<Duplex>()
  server.on('upgrade', (req, socket, head) => {
    socket.on('error', () => {}) // a client gone mid-handshake is no fault of the server's
    upgrading.add(socket)
    socket.once('close', () => upgrading.delete(socket))
    const reject = (status: number, code: string, message: string) => {
      const text = JSON.stringify({ error: code, message })
      // Ended and then destroyed: a client that keeps its half open held the server's close.
      socket.end(`HTTP/1.1 ${status} ${http.STATUS_CODES[status]}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(text)}\r\nconnection: close\r\n\r\n${text}`, () => socket.destroy())
      setTimeout(() => socket.destroy(), 5000).unref()
    }
    let url: URL
    let parts: string[]
    let sandbox: LocalSandbox
    try {
      ;({ url, parts } = parseTarget(req.url))
      sandbox = sandboxForSession(req)
    } catch (err) {
      const e = toHttpError(err)
      return reject(e.status, e.code, e.message)
    }
    const isStart = parts.length === 3 && parts[0] === 'runtime' && parts[1] === 'v1' && parts[2] === 'process'
    const isConnect = parts.length === 5 && parts[0] === 'runtime' && parts[2] === 'process' && parts[4] === 'connect'
    if (!isStart && !isConnect) return reject(404, 'not_found', `no WebSocket route ${url.pathname}`)
    let existing: SandboxProcess | undefined
    if (isConnect) {
      existing = sandbox.processes.get(parts[3])
      if (!existing) return reject(404, 'process_not_found', `process ${parts[3]} not found in sandbox ${sandbox.id}`)
    }
    // A sandbox's pool uses one or two process sockets: a few dozen is a client gone wrong.
    const open = sockets.get(sandbox) ?? 0
    if (open >= MAX_SOCKETS_PER_SANDBOX) return reject(429, 'too_many_sockets', `sandbox ${sandbox.id} has ${open} process sockets open (at most ${MAX_SOCKETS_PER_SANDBOX})`)
    sockets.set(sandbox, open + 1)
    socket.once('close', () => sockets.set(sandbox, (sockets.get(sandbox) ?? 1) - 1))
    wss.handleUpgrade(req, socket, head, (ws) => {
      const session = new ProcessSession(ws, sandbox, opts.keepaliveSec ?? 30)
      if (existing) void session.attach(existing, Math.max(0, Number(url.searchParams.get('since') ?? 0) || 0))
    })
  })

  // A connection that never finishes its headers, or goes silent (a client that reads nothing of
  // its answer), is closed; at most so many at once, so descriptors stay for the sandboxes.
  server.headersTimeout = 15_000
  server.timeout = 120_000
  server.maxConnections = opts.maxConnections ?? 1024
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(opts.port ?? 0, opts.host ?? '127.0.0.1', () => resolve())
  })
  const addr = server.address() as AddressInfo
  const hostPart = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address
  baseUrl = `http://${hostPart}:${addr.port}`
  log('listening on %s', baseUrl)
  return {
    url: baseUrl,
    token,
    server,
    close: () =>
      new Promise<void>((resolve) => {
        for (const ws of wss.clients) ws.terminate()
        for (const socket of upgrading) socket.destroy()
        server.closeAllConnections()
        server.close(() => resolve())
      }),
  }
}

function normalizeSignal(sig: string): string {
  const upper = sig.toUpperCase()
  const name = upper.startsWith('SIG') ? upper : `SIG${upper}`
  if (!(name in os.constants.signals)) throw new HttpError(400, 'invalid_argument', `unknown signal ${JSON.stringify(sig)}`)
  return name
}

/**
 * One process WebSocket: either it starts a process (first frame `start`) or it attaches to one
 * (`/connect?since=`). Output is broadcast to every attached socket; closing a socket never
 * kills the process.
 */
class ProcessSession {
  private proc?: SandboxProcess
  /** A `start` is being spawned: a second one on this socket is refused. */
  private starting = false
  private alive = true
  private readonly ping: NodeJS.Timeout
  private paused = false
  private readonly onOutput = (e: { cursor: number; type: string; data: Buffer }) => this.send({ type: e.type as 'stdout', data: e.data.toString('base64'), cursor: e.cursor })
  private readonly onExit = () => this.sendExit()

  constructor(private readonly ws: WebSocket, private readonly sandbox: LocalSandbox, keepaliveSec: number) {
    this.send({ type: 'ready' })
    ws.on('pong', () => (this.alive = true))
    this.ping = setInterval(() => {
      if (!this.alive) return void ws.terminate()
      this.alive = false
      ws.ping()
    }, keepaliveSec * 1000)
    // One frame at a time: the socket is not read while a frame is handled (a stdin write waits
    // for the sandbox's pipe), so a client never has the server hold what the sandbox has not taken.
    // A client that reads none of its answers (pongs, acks) is not read either until it does:
    // nothing is dropped (a relay must lose no byte), and nothing piles up.
    ws.on('message', (data, isBinary) => {
      ws.pause()
      void this.onMessage(data as Buffer, isBinary)
        .then(() => this.unreadBelow(MAX_UNREAD, MAX_UNREAD_FRAMES))
        .finally(() => ws.resume())
    })
    ws.on('close', () => this.detach())
    ws.on('error', () => this.detach())
  }

  /** Until what the client left unread is under `bytes` and `frames` (each queued frame costs more than its bytes), or it is gone. */
  private async unreadBelow(bytes: number, frames = Infinity): Promise<void> {
    while (this.ws.readyState === this.ws.OPEN && (this.ws.bufferedAmount > bytes || this.unsent > frames)) await new Promise((r) => setTimeout(r, 20))
  }
  /** Frames handed to the socket and not yet written out. */
  private unsent = 0

  private send(frame: ServerFrame): void {
    if (this.ws.readyState !== this.ws.OPEN) return
    this.unsent++
    this.ws.send(JSON.stringify(frame), () => {
      this.unsent--
      // Resume once the socket has drained: a slow reader throttles the process, never the engine.
      if (this.paused && !this.replaying && this.ws.bufferedAmount < 256 * 1024) {
        this.paused = false
        this.proc?.resume(this)
      }
    })
    if (!this.paused && !this.replaying && this.ws.bufferedAmount > 1024 * 1024 && this.proc) {
      this.paused = true
      this.proc.pause(this)
    }
  }

  private fail(code: string, message: string): void {
    this.send({ type: 'error', code, message })
    this.ws.close(1008, code)
  }

  /**
   * Replays the output from `since` at the client's pace, then follows the process live. The
   * process is paused meanwhile: what it writes while the replay waits for the client would push
   * the oldest output out of what the server keeps, and the replay would miss it.
   */
  async attach(proc: SandboxProcess, since: number): Promise<void> {
    this.proc = proc
    this.send({ type: 'started', pid: proc.id })
    this.replaying = true
    proc.pause(this)
    for (let next = since; ; ) {
      const events = proc.eventsSince(next)
      if (!events.length) break
      for (const e of events) {
        this.onOutput(e)
        next = e.cursor + 1
        await this.unreadBelow(1024 * 1024)
        if (this.ws.readyState !== this.ws.OPEN) return // detach resumes it
      }
    }
    // Caught up, with nothing awaited since the last look: no event falls between.
    this.replaying = false
    this.paused = false
    if (proc.running) {
      proc.on('output', this.onOutput)
      proc.once('exit', this.onExit)
    }
    proc.resume(this)
    if (!proc.running) this.sendExit()
  }
  private replaying = false

  private sendExit(): void {
    const exit = this.proc!.exit!
    this.send({ type: 'exit', exit_code: exit.exitCode, error: exit.error ?? null, signal: exit.signal })
    this.ws.close(1000)
  }

  private detach(): void {
    clearInterval(this.ping)
    if (!this.proc) return
    this.proc.off('output', this.onOutput)
    this.proc.off('exit', this.onExit)
    this.proc.resume(this)
  }

  private async onMessage(data: Buffer, isBinary: boolean): Promise<void> {
    let frame: ClientFrame
    try {
      if (isBinary) throw new Error('binary frames are not part of the protocol; send JSON text frames')
      frame = JSON.parse(data.toString('utf8'))
      if (!frame || typeof frame !== 'object' || typeof frame.type !== 'string') throw new Error('a frame must be a JSON object with a string "type"')
    } catch (err) {
      return this.fail('invalid_frame', (err as Error).message)
    }
    try {
      switch (frame.type) {
        case 'start':
          return await this.start(frame)
        case 'stdin': {
          if (!this.proc) return this.fail('not_started', 'stdin before start')
          if (typeof frame.data !== 'string') return this.fail('invalid_frame', 'stdin frame needs base64 "data"')
          await this.proc.write(Buffer.from(frame.data, 'base64'))
          return this.send({ type: 'stdin_ack', pid: this.proc.id })
        }
        case 'close_stdin':
          if (!this.proc) return this.fail('not_started', 'close_stdin before start')
          this.proc.closeStdin()
          return this.send({ type: 'close_stdin_ack', pid: this.proc.id })
        case 'signal':
          if (!this.proc) return this.fail('not_started', 'signal before start')
          return this.proc.kill(normalizeSignal(String(frame.signal ?? 'SIGTERM')), frame.kill_group !== false)
        case 'resize':
          return // no PTYs in local sandboxes; accepted so PTY-capable clients do not fail
        case 'ping':
          return this.send({ type: 'pong' })
        default:
          return this.fail('unknown_type', `unknown frame type ${JSON.stringify((frame as { type: string }).type)}`)
      }
    } catch (err) {
      const e = toHttpError(err)
      this.send({ type: 'error', code: e.code, message: e.message })
    }
  }

  private async start(frame: Extract<ClientFrame, { type: 'start' }>): Promise<void> {
    if (this.proc || this.starting) return this.fail('already_started', 'this socket already has a process')
    this.starting = true
    if (typeof frame.cmd !== 'string' || !frame.cmd) return this.fail('invalid_frame', 'start needs a string "cmd"')
    if (frame.args !== undefined && (!Array.isArray(frame.args) || frame.args.some((a) => typeof a !== 'string'))) {
      return this.fail('invalid_frame', 'start "args" must be an array of strings')
    }
    if (frame.pty) return this.fail('unsupported', 'local sandboxes have no PTYs; start the process without "pty"')
    const env = stringRecordOrNull(frame.environment ?? frame.envs)
    if (env === null) return this.fail('invalid_frame', 'start "environment" must be an object of strings')
    let proc: SandboxProcess
    try {
      proc = await this.sandbox.spawn({
        id: typeof frame.id === 'string' && frame.id ? frame.id : undefined,
        cmd: frame.cmd,
        args: frame.args ?? [],
        cwd: typeof frame.cwd === 'string' ? frame.cwd : undefined,
        env,
        stdin: frame.stdin === true,
        tag: typeof frame.tag === 'string' ? frame.tag : undefined,
      })
    } catch (err) {
      const e = toHttpError(err)
      return this.fail(e.code, e.message)
    }
    const timeout = Number(frame.timeout_ms ?? 0)
    if (timeout > 0) {
      const timer = setTimeout(() => {
        if (proc.running) proc.markTimeout()
      }, timeout)
      timer.unref()
      proc.once('exit', () => clearTimeout(timer))
    }
    await this.attach(proc, 0)
  }
}

function stringRecordOrNull(value: unknown): Record<string, string> | null {
  if (value === undefined || value === null) return {}
  if (typeof value !== 'object' || Array.isArray(value)) return null
  return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, String(v)]))
}

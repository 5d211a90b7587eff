/**
 * `opensandbox()`: OpenSandbox (open source; self-hosted on Docker or Kubernetes). The lifecycle
 * API creates, lists, renews, snapshots and deletes sandboxes; each sandbox's execd takes file
 * uploads and runs processes over its `/pty` WebSocket in pipe mode, through the framed relay
 * (pipe mode has no stdin EOF and its replay mixes stdout with stderr). Credentials as OpenSandbox's
 * SDK reads them. Unlike that SDK, the API key is sent to the lifecycle server only, never to execd,
 * which runs inside the sandbox.
 */
import { randomBytes } from 'node:crypto'
import { Agent, type Dispatcher } from 'undici'
import { env, requireKey } from './credentials.js'
import { OpenSandboxProcess } from './opensandbox-process.js'
import type { ProviderSandbox, ProviderSession, SandboxProvider, SandboxSummary, TemplateSummary, Upload } from './types.js'
import { Http, HttpError } from '../net/http.js'
import { debug } from '../debug.js'
import { remoteLimits, type RemoteLimits } from '../sizes.js'

const log = debug('opensandbox')
const EXECD_PORT = 44772

export interface OpenSandboxOptions {
  /** Lifecycle server, `host[:port]` or a URL. @default process.env.OPEN_SANDBOX_DOMAIN ?? 'localhost:8080' */
  domain?: string
  /** API key, sent as `OPEN-SANDBOX-API-KEY`. @default process.env.OPEN_SANDBOX_API_KEY */
  apiKey?: string
  /** 'http' or 'https' when `domain` has no scheme. @default 'http' */
  protocol?: 'http' | 'https'
  /** Image sandboxes start from (before the template). @default `node:<host Node major>` */
  image?: string
  /**
   * Reach each sandbox's execd through the lifecycle server's proxy, for clusters whose sandboxes
   * are not reachable from where Vitest runs (e.g. outside Kubernetes). @default false
   */
  useServerProxy?: boolean
  /**
   * What each sandbox may use: `memory` and `disk` as sizes (`'2g'`), `cpus` in cores, set as its
   * Kubernetes `resourceLimits` (memory, cpu, ephemeral-storage). @default { memory: '2g', cpus: 1 }
   */
  limits?: RemoteLimits
  /** Kubernetes resource limits as OpenSandbox takes them, instead of `limits`. @default { cpu: '1', memory: '2Gi' } */
  resourceLimits?: Record<string, string>
  /** Seconds to wait for a new sandbox's execd to answer. @default 120 */
  readyTimeoutSec?: number
}

interface Endpoint {
  endpoint: string
  headers?: Record<string, string>
}

interface SandboxJson {
  id: string
  status?: { state?: string; reason?: string; message?: string }
  metadata?: Record<string, string>
  createdAt?: string
}

interface SnapshotJson {
  id: string
  name?: string
  status?: { state?: string; reason?: string; message?: string }
  createdAt?: string
}

/** OpenSandbox answers `{code, message}`, and FastAPI's validation `{detail: [...]}`. */
function parseError(body: unknown): { code?: string; message?: string } {
  const b = body as { code?: unknown; message?: unknown; detail?: unknown }
  if (Array.isArray(b.detail)) {
    const message = b.detail.map((d: { loc?: unknown[]; msg?: string }) => `${(d.loc ?? []).filter((l) => l !== 'body').join('.')}: ${d.msg}`).join('; ')
    return { code: 'VALIDATION_ERROR', message }
  }
  return { code: typeof b.code === 'string' ? b.code : undefined, message: typeof b.message === 'string' ? b.message : typeof b.detail === 'string' ? b.detail : undefined }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/** `limits` as Kubernetes quantities (the defaults for what is not given). */
function kubernetesLimits(options: OpenSandboxOptions): Record<string, string> {
  const limits = remoteLimits(options.limits, 'opensandbox', ['memory', 'disk', 'cpus'], '')
  if (options.resourceLimits && Object.keys(limits).length) throw Object.assign(new Error('opensandbox(): give limits or resourceLimits, not both'), { code: 'invalid_argument' })
  if (options.resourceLimits) return options.resourceLimits
  const mebibytes = (bytes: number) => `${Math.ceil(bytes / 1024 ** 2)}Mi`
  return {
    cpu: String(limits.cpus ?? 1),
    memory: limits.memory ? mebibytes(limits.memory) : '2Gi',
    ...(limits.disk ? { 'ephemeral-storage': mebibytes(limits.disk) } : {}),
  }
}

export function opensandbox(options: OpenSandboxOptions = {}): SandboxProvider {
  const resources = kubernetesLimits(options)
  return {
    name: 'opensandbox',
    async connect() {
      const apiKey = requireKey('opensandbox', options.apiKey)
      const domain = (options.domain ?? env('OPEN_SANDBOX_DOMAIN') ?? 'localhost:8080').replace(/\/+$/, '').replace(/\/v1$/, '')
      const origin = /^https?:\/\//.test(domain) ? domain : `${options.protocol ?? 'http'}://${domain}`
      const dispatcher = new Agent({ keepAliveTimeout: 10_000 })
      const lifecycle = new Http({ base: `${origin}/v1`, headers: { 'open-sandbox-api-key': apiKey }, dispatcher, parseError })
      return new OpenSandboxSession(lifecycle, dispatcher, origin.startsWith('https') ? 'https' : 'http', options, resources)
    },
  }
}

class OpenSandboxSession implements ProviderSession {
  private readonly image: string
  readonly sharesHost = false
  constructor(
    private readonly lifecycle: Http,
    private readonly dispatcher: Dispatcher,
    private readonly protocol: 'http' | 'https',
    private readonly options: OpenSandboxOptions,
    private readonly resources: Record<string, string>,
  ) {
    this.image = options.image ?? `node:${process.versions.node.split('.')[0]}`
  }

  get base(): string {
    return `opensandbox:${this.image}`
  }

  async createSandbox(opts: Parameters<ProviderSession['createSandbox']>[0]): Promise<ProviderSandbox> {
    const body: Record<string, unknown> = {
      ...(opts.template ? { snapshotId: opts.template } : { image: { uri: this.image } }),
      entrypoint: ['tail', '-f', '/dev/null'],
      timeout: opts.timeoutSec,
      resourceLimits: this.resources,
      env: {},
      metadata: opts.labels,
      ...(opts.network ? {} : { networkPolicy: { defaultAction: 'deny', egress: [] } }),
    }
    const created = await this.lifecycle.json<SandboxJson>('POST', '/sandboxes', body)
    try {
      const execd = await this.execd(created.id)
      await this.waitReady(created.id, execd)
      return new OpenSandbox(created.id, this, execd)
    } catch (err) {
      await this.killSandbox(created.id).catch(() => {})
      throw err
    }
  }

  /** The sandbox's execd: its base URL and the headers its endpoint needs (never the API key). */
  private async execd(id: string): Promise<Http> {
    const q = this.options.useServerProxy ? '?use_server_proxy=true' : ''
    const ep = await this.lifecycle.json<Endpoint>('GET', `/sandboxes/${encodeURIComponent(id)}/endpoints/${EXECD_PORT}${q}`)
    if (typeof ep.endpoint !== 'string') throw new Error(`opensandbox: the endpoint of sandbox ${id} has no address (${JSON.stringify(ep)})`)
    const base = /^https?:\/\//.test(ep.endpoint) ? ep.endpoint : `${this.protocol}://${ep.endpoint}`
    return new Http({ base: base.replace(/\/+$/, ''), headers: ep.headers ?? {}, dispatcher: this.dispatcher, parseError })
  }

  private async waitReady(id: string, execd: Http): Promise<void> {
    const deadline = Date.now() + (this.options.readyTimeoutSec ?? 120) * 1000
    let last = ''
    for (let i = 0; Date.now() < deadline; i++) {
      try {
        await execd.call('GET', '/ping', { retry: false }).then((r) => r.body.dump())
        return
      } catch (err) {
        last = (err as Error).message
      }
      // A sandbox that failed to start never answers: say why instead of waiting out the deadline.
      if (i % 10 === 9) {
        const info = await this.lifecycle.json<SandboxJson>('GET', `/sandboxes/${encodeURIComponent(id)}`)
        if (info.status?.state === 'Failed' || info.status?.state === 'Terminated') {
          throw new Error(`opensandbox: sandbox ${id} is ${info.status.state}: ${info.status.message ?? info.status.reason ?? 'no reason given'}`)
        }
      }
      await sleep(200)
    }
    throw new Error(`opensandbox: the execd of sandbox ${id} did not answer within ${this.options.readyTimeoutSec ?? 120}s (${last})${this.options.useServerProxy ? '' : '; if Vitest runs outside the cluster, try opensandbox({ useServerProxy: true })'}`)
  }

  renew(id: string, seconds: number): Promise<unknown> {
    return this.lifecycle.json('POST', `/sandboxes/${encodeURIComponent(id)}/renew-expiration`, { expiresAt: new Date(Date.now() + seconds * 1000).toISOString() })
  }

  async snapshot(id: string, name: string): Promise<string> {
    const snap = await this.lifecycle.json<SnapshotJson>('POST', `/sandboxes/${encodeURIComponent(id)}/snapshots`, { name }).catch((err: unknown) => {
      if (err instanceof HttpError && err.status === 501) {
        throw new Error(`opensandbox: this server cannot snapshot sandboxes (${err.message}); the cached template needs snapshots. On Kubernetes, give the opensandbox-controller chart its snapshot settings (controller.snapshot.registry and its push and pull secrets).`)
      }
      throw err
    })
    for (let delay = 250; ; delay = Math.min(delay * 2, 5000)) {
      const now = await this.lifecycle.json<SnapshotJson>('GET', `/snapshots/${encodeURIComponent(snap.id)}`)
      if (now.status?.state === 'Ready') return snap.id
      if (now.status?.state === 'Failed') throw new Error(`opensandbox: snapshot ${snap.id} of sandbox ${id} failed: ${now.status.message ?? now.status.reason ?? 'no reason given'}`)
      await sleep(delay)
    }
  }

  async findTemplate(name: string): Promise<string | undefined> {
    // Filtered here too: servers older than the `name` filter ignore it.
    return (await this.snapshots(`name=${encodeURIComponent(name)}&`)).find((s) => s.name === name)?.id
  }

  /** Ready snapshots, every page. */
  private async snapshots(filter = ''): Promise<SnapshotJson[]> {
    const out: SnapshotJson[] = []
    for (let page = 1; ; page++) {
      const res = await this.lifecycle.json<{ items: SnapshotJson[]; pagination?: { hasNextPage?: boolean } }>('GET', `/snapshots?${filter}state=Ready&page=${page}&pageSize=200`)
      out.push(...res.items.filter((s) => s.status?.state === 'Ready'))
      if (!res.pagination?.hasNextPage) return out
    }
  }

  async listTemplates(): Promise<TemplateSummary[]> {
    return (await this.snapshots()).filter((s) => s.name).map((s) => ({ id: s.id, name: s.name!, createdAt: s.createdAt }))
  }

  deleteTemplate(id: string): Promise<boolean> {
    return this.lifecycle.delete(`/snapshots/${encodeURIComponent(id)}`)
  }

  async listSandboxes(labels: Record<string, string>): Promise<SandboxSummary[]> {
    const filter = Object.entries(labels).map(([k, v]) => `${k}=${v}`).join('&')
    const out: SandboxSummary[] = []
    for (let page = 1; ; page++) {
      const q = new URLSearchParams({ metadata: filter, page: String(page), pageSize: '200' })
      for (const state of ['Pending', 'Running', 'Pausing', 'Paused', 'Resuming']) q.append('state', state)
      const res = await this.lifecycle.json<{ items: SandboxJson[]; pagination?: { hasNextPage?: boolean } }>('GET', `/sandboxes?${q}`)
      out.push(...res.items.map((s) => ({ id: s.id, labels: s.metadata ?? {}, createdAt: s.createdAt })))
      if (!res.pagination?.hasNextPage) return out
    }
  }

  killSandbox(id: string): Promise<boolean> {
    return this.lifecycle.delete(`/sandboxes/${encodeURIComponent(id)}`)
  }

  async close(): Promise<void> {
    await this.dispatcher.close()
  }
}

class OpenSandbox implements ProviderSandbox {
  constructor(readonly id: string, private readonly session: OpenSandboxSession, private readonly execd: Http) {}

  async upload(path: string, body: Upload): Promise<void> {
    const boundary = `vitest-sandbox-${randomBytes(12).toString('hex')}`
    const name = path.split('/').pop() || 'file'
    const head = Buffer.from(
      `--${boundary}\r\nContent-Disposition: form-data; name="metadata"; filename="metadata"\r\nContent-Type: application/json\r\n\r\n${JSON.stringify({ path })}\r\n` +
        `--${boundary}\r\nContent-Disposition: form-data; name="file"; filename="${name.replace(/["\r\n]/g, '_')}"\r\nContent-Type: application/octet-stream\r\n\r\n`,
    )
    const tail = Buffer.from(`\r\n--${boundary}--\r\n`)
    const multipart =
      body instanceof Uint8Array
        ? Buffer.concat([head, body, tail])
        : async function* () {
            yield head
            for await (const chunk of body()) yield chunk
            yield tail
          }
    const res = await this.execd.call('POST', '/files/upload', { body: multipart, headers: { 'content-type': `multipart/form-data; boundary=${boundary}` } })
    await res.body.dump()
  }

  start(spec: Parameters<ProviderSandbox['start']>[0]) {
    return OpenSandboxProcess.start(this.execd, this.id, spec)
  }

  async setTimeout(seconds: number): Promise<void> {
    await this.session.renew(this.id, seconds)
  }

  snapshot(name: string): Promise<string> {
    log('snapshotting %s as %s', this.id, name)
    return this.session.snapshot(this.id, name)
  }

  async kill(): Promise<void> {
    await this.session.killSandbox(this.id)
  }
}

/**
 * `e2b()`: E2B's cloud sandboxes (Firecracker microVMs). The API creates, lists, renews, snapshots
 * and kills sandboxes; each sandbox's envd takes file uploads and runs processes (e2b-process.ts).
 * Spoken directly rather than through the `e2b` SDK: the SDK hands process output over as UTF-8
 * strings (not byte-exact), retries only 429s, and would add 21 packages to an install; its
 * wire format is small, and the fake in test/ is checked against the SDK itself. Credentials as
 * the SDK reads them. The API key goes to the API only, never to envd, which runs inside the
 * sandbox: envd gets the sandbox's own access token.
 */
import { Agent, type Dispatcher } from 'undici'
import { env, requireKey } from './credentials.js'
import { E2BProcess } from './e2b-process.js'
import type { CreateOptions, ProviderSandbox, ProviderSession, SandboxProvider, SandboxSummary, TemplateSummary, Upload } from './types.js'
import { boundedText, Http } from '../net/http.js'
import { debug } from '../debug.js'
import { remoteLimits, type RemoteLimits } from '../sizes.js'

const log = debug('e2b')
const ENVD_PORT = '49983'
/** E2B's own domains route every sandbox's envd through one host, by header. */
const SHARED_HOST_DOMAINS = ['e2b.app', 'e2b.dev', 'e2b.pro', 'e2b-staging.dev']

export interface E2BOptions {
  /** API key, sent as `X-API-KEY` to the API only. @default process.env.E2B_API_KEY */
  apiKey?: string
  /** E2B's domain. @default process.env.E2B_DOMAIN ?? 'e2b.app' */
  domain?: string
  /** The API's URL. @default process.env.E2B_API_URL ?? `https://api.${domain}` */
  apiUrl?: string
  /**
   * One URL for every sandbox's envd, which routes by the `E2b-Sandbox-Id` header.
   * @default process.env.E2B_SANDBOX_URL; else `https://sandbox.${domain}` on E2B's own domains, else `https://49983-<id>.<domain>`
   */
  sandboxUrl?: string
  /** Template sandboxes start from before the pool's own template. It must have Node. @default 'base' */
  template?: string
  /** Not taken: E2B sizes CPU and memory per template (its `cpuCount` and `memoryMB`); given, it is refused with that fix. */
  limits?: RemoteLimits
}

interface SandboxJson {
  sandboxID: string
  templateID?: string
  envdAccessToken?: string
  domain?: string | null
  metadata?: Record<string, string>
  startedAt?: string
}

interface SnapshotJson {
  snapshotID: string
  names?: string[]
}

/** E2B answers `{code, message}`; the code is the HTTP status, so the message carries the reason. */
function parseError(body: unknown): { code?: string; message?: string } {
  const b = body as { code?: unknown; message?: unknown }
  return { code: b.code !== undefined ? String(b.code) : undefined, message: typeof b.message === 'string' ? b.message : undefined }
}

/** A snapshot's name without its team namespace and tag: `team/vitest-sandbox-x:default` → `vitest-sandbox-x`. */
function bareName(full: string): string {
  return full.replace(/^[^/]*\//, '').replace(/:[^:/]*$/, '')
}

const enc = encodeURIComponent

export function e2b(options: E2BOptions = {}): SandboxProvider {
  remoteLimits(options.limits, 'e2b', [], "E2B sizes CPU and memory per template: build the template of e2b({ template }) with the cpuCount and memoryMB you want")
  return {
    name: 'e2b',
    async connect() {
      const apiKey = requireKey('e2b', options.apiKey)
      const domain = options.domain ?? env('E2B_DOMAIN') ?? 'e2b.app'
      const apiUrl = (options.apiUrl ?? env('E2B_API_URL') ?? `https://api.${domain}`).replace(/\/+$/, '')
      const dispatcher = new Agent({ keepAliveTimeout: 10_000 })
      const api = new Http({ base: apiUrl, headers: { 'x-api-key': apiKey }, dispatcher, parseError })
      return new E2BSession(api, dispatcher, domain, options)
    },
  }
}

class E2BSession implements ProviderSession {
  readonly sharesHost = false
  private readonly template: string
  constructor(
    private readonly api: Http,
    private readonly dispatcher: Dispatcher,
    private readonly domain: string,
    private readonly options: E2BOptions,
  ) {
    this.template = options.template ?? 'base'
  }

  get base(): string {
    return `e2b:${this.template}`
  }

  async createSandbox(opts: CreateOptions): Promise<ProviderSandbox> {
    const created = await this.api.json<SandboxJson>('POST', '/v2/sandboxes', {
      templateID: opts.template ?? this.template,
      timeout: opts.timeoutSec,
      metadata: opts.labels,
      allow_internet_access: opts.network,
    })
    log('created %s from %s', created.sandboxID, opts.template ?? this.template)
    return new E2BSandbox(created.sandboxID, this, this.envd(created))
  }

  /** The sandbox's envd: its URL and headers (its own access token, never the API key). */
  private envd(s: SandboxJson): Http {
    const domain = s.domain || this.domain
    const base = this.options.sandboxUrl ?? env('E2B_SANDBOX_URL') ?? (SHARED_HOST_DOMAINS.includes(domain) ? `https://sandbox.${domain}` : `https://${ENVD_PORT}-${s.sandboxID}.${domain}`)
    const headers: Record<string, string> = { 'e2b-sandbox-id': s.sandboxID, 'e2b-sandbox-port': ENVD_PORT }
    if (s.envdAccessToken) headers['x-access-token'] = s.envdAccessToken
    return new Http({ base: base.replace(/\/+$/, ''), headers, dispatcher: this.dispatcher, parseError })
  }

  async setTimeout(id: string, seconds: number): Promise<void> {
    await this.api.call('POST', `/sandboxes/${enc(id)}/timeout`, { json: { timeout: seconds } }).then((r) => r.body.dump())
  }

  async snapshot(id: string, name: string): Promise<string> {
    return (await this.api.json<SnapshotJson>('POST', `/sandboxes/${enc(id)}/snapshots`, { name })).snapshotID
  }

  async findTemplate(name: string): Promise<string | undefined> {
    return (await this.snapshots(`name=${enc(name)}&`)).find((s) => s.names?.some((n) => bareName(n) === name))?.snapshotID
  }

  /** Every page of the team's snapshots (the `x-next-token` header says there is another). */
  private async snapshots(filter = ''): Promise<SnapshotJson[]> {
    return this.pages<SnapshotJson>((token) => `/snapshots?${filter}limit=100${token ? `&nextToken=${enc(token)}` : ''}`)
  }

  private async pages<T>(path: (token?: string) => string): Promise<T[]> {
    const out: T[] = []
    for (let token: string | undefined; ; ) {
      const res = await this.api.call('GET', path(token))
      const text = await boundedText(res.body, 64 * 1024 * 1024, 'e2b: a page of the listing')
      out.push(...((text ? JSON.parse(text) : []) as T[]))
      token = res.headers['x-next-token'] as string | undefined
      if (!token) return out
    }
  }

  async listTemplates(): Promise<TemplateSummary[]> {
    return (await this.snapshots()).filter((s) => s.names?.length).map((s) => ({ id: s.snapshotID, name: bareName(s.names![0]) }))
  }

  deleteTemplate(id: string): Promise<boolean> {
    return this.api.delete(`/templates/${enc(id)}`)
  }

  async listSandboxes(labels: Record<string, string>): Promise<SandboxSummary[]> {
    // As the SDK encodes it: each key and value, then the pairs, then the whole as one parameter.
    const metadata = new URLSearchParams(Object.entries(labels).map(([k, v]): [string, string] => [enc(k), enc(v)])).toString()
    const sandboxes = await this.pages<SandboxJson>((token) => `/v2/sandboxes?metadata=${enc(metadata)}&state=running,paused&limit=100${token ? `&nextToken=${enc(token)}` : ''}`)
    return sandboxes.map((s) => ({ id: s.sandboxID, labels: s.metadata ?? {}, createdAt: s.startedAt }))
  }

  killSandbox(id: string): Promise<boolean> {
    return this.api.delete(`/sandboxes/${enc(id)}`)
  }

  async close(): Promise<void> {
    await this.dispatcher.close()
  }
}

class E2BSandbox implements ProviderSandbox {
  constructor(readonly id: string, private readonly session: E2BSession, private readonly envd: Http) {}

  async upload(path: string, body: Upload): Promise<void> {
    // A raw body (envd 0.5.7 and later), as root, who owns every path the pool writes.
    const res = await this.envd.call('POST', `/files?path=${enc(path)}&username=root`, { body, headers: { 'content-type': 'application/octet-stream' } })
    await res.body.dump()
  }

  start(spec: Parameters<ProviderSandbox['start']>[0]) {
    return E2BProcess.start(this.envd, `sandbox ${this.id}`, spec)
  }

  setTimeout(seconds: number): Promise<void> {
    return this.session.setTimeout(this.id, seconds)
  }

  snapshot(name: string): Promise<string> {
    log('snapshotting %s as %s', this.id, name)
    return this.session.snapshot(this.id, name)
  }

  async kill(): Promise<void> {
    await this.session.killSandbox(this.id)
  }
}

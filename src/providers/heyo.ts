/**
 * `heyo()` (experimental): Heyo's VMs, on its cloud or on a local Heyo daemon (heyvmd), through
 * its HTTP API (docs/heyo-protocol.md; Heyo's TypeScript SDK is not installable, so the wire is
 * spoken directly from its Swift and Rust SDKs). Sandboxes are created, then polled until
 * running. Processes run over the shell stream through the line relay (heyo-process.ts). Files go
 * in as `write-file` calls, several joined by one `exec` where a file is large or outside the
 * staging folder. Heyo has no labels, so a sandbox's labels are encoded in its name, and no egress
 * control (`alwaysOnline`: the pool refuses a run that keeps the network off). Templates are
 * images made from a sandbox (`snapshot-image`), which only the daemon has, and which no call
 * lists: this machine keeps the record of the ones it made.
 */
import { randomBytes } from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { buffer } from 'node:stream/consumers'
import pLimit from 'p-limit'
import { Agent } from 'undici'
import { env } from './credentials.js'
import { singleQuoted as q } from './exec.js'
import { HeyoProcess } from './heyo-process.js'
import { LINE_RELAY, relaySpec } from './line-relay.js'
import type { CreateOptions, ProcessSpec, ProviderSandbox, ProviderSession, SandboxProvider, SandboxSummary, TemplateSummary, Upload } from './types.js'
import { defaultStateDir } from '../engine/engine.js'
import { Http, HttpError } from '../net/http.js'
import { debug } from '../debug.js'
import { remoteLimits, type RemoteLimits } from '../sizes.js'

const log = debug('heyo')
const CLOUD_URL = 'https://server.heyo.computer'
/** Content bytes per `write-file` call: the cloud takes JSON bodies up to 1 MB, and base64 adds a third. */
const FILE_PART = 512 * 1024
/** The mount write-file paths are relative to; its staging folder holds the relay, process specs and upload parts. */
const MOUNT = '/workspace'
const STAGE = `${MOUNT}/.vitest-sandbox`
const NAME_PREFIX = 'vitest-sandbox.'
/** How long a new sandbox may take to be running. */
const READY_TIMEOUT_MS = 5 * 60_000

export interface HeyoOptions {
  /** API key, sent as a bearer token to the API only; the daemon needs none. @default process.env.HEYO_API_KEY */
  apiKey?: string
  /** The API's URL: Heyo's cloud, or a daemon's. @default process.env.HEYO_BASE_URL ?? 'https://server.heyo.computer' */
  baseUrl?: string
  /**
   * What `baseUrl` is (the shell stream's path differs, and only a daemon makes images).
   * @default from process.env.HEYO_ENV ('local': 'daemon', another value: 'cloud'), else 'daemon' for a loopback URL and 'cloud' for any other
   */
  mode?: 'cloud' | 'daemon'
  /** Image sandboxes start from before the pool's own template. It must have Node 20 or later. @default 'node:22' */
  image?: string
  /** Cloud region. @default 'US' */
  region?: 'US' | 'EU'
  /**
   * What each sandbox may use, where Heyo's API takes it: `disk` as a size (`'20g'`, whole GB from
   * 1 to 250). Memory and CPU come with `sizeClass`.
   */
  limits?: Pick<RemoteLimits, 'disk'>
  /** VM size (micro 0.25 vCPU/0.5 GB … large 4 vCPU/8 GB). @default 'small' */
  sizeClass?: 'micro' | 'mini' | 'small' | 'medium' | 'large' | 'xlarge'
  /** Where this machine keeps its record of the images it made. @default the local engine's cache folder */
  stateDir?: string
}

interface SandboxJson {
  id: string
  name?: string
  status?: string
  error_message?: string | null
  created_at?: string
}

/** Heyo answers `{message}` or `{error}`. */
function parseError(body: unknown): { code?: string; message?: string } {
  const b = body as { message?: unknown; error?: unknown }
  const message = typeof b.message === 'string' ? b.message : typeof b.error === 'string' ? b.error : undefined
  return { message }
}

/** A name carrying the labels (Heyo has no other place for them), unique per sandbox. */
export function nameWithLabels(labels: Record<string, string>): string {
  return `${NAME_PREFIX}${randomBytes(4).toString('hex')}.${Buffer.from(JSON.stringify(labels)).toString('base64url')}`
}

/** The labels of a sandbox this pool named, else undefined. */
export function labelsOfName(name: string | undefined): Record<string, string> | undefined {
  const m = name && /^vitest-sandbox\.[0-9a-f]{8}\.([\w-]+)$/.exec(name)
  if (!m) return undefined
  try {
    return JSON.parse(Buffer.from(m[1], 'base64url').toString())
  } catch {
    return undefined
  }
}

function isLoopback(url: string): boolean {
  return ['127.0.0.1', 'localhost', '[::1]'].includes(new URL(url).hostname)
}

const enc = encodeURIComponent


export function heyo(options: HeyoOptions = {}): SandboxProvider {
  const { disk } = remoteLimits(options.limits, 'heyo', ['disk'], "Heyo sizes memory and CPU by class: heyo({ sizeClass: 'medium' })")
  const diskGb = disk === undefined ? undefined : Math.ceil(disk / 1e9)
  if (diskGb !== undefined && diskGb > 250) throw Object.assign(new Error(`heyo(): limits.disk is ${diskGb} GB; Heyo takes 1 to 250`), { code: 'invalid_argument' })
  return {
    name: 'heyo',
    async connect() {
      const baseUrl = (options.baseUrl ?? env('HEYO_BASE_URL') ?? CLOUD_URL).replace(/\/+$/, '')
      const named = env('HEYO_ENV')
      const mode = options.mode ?? (named ? (named === 'local' ? 'daemon' : 'cloud') : isLoopback(baseUrl) ? 'daemon' : 'cloud')
      if (mode !== 'cloud' && mode !== 'daemon') throw new Error(`heyo(): mode must be 'cloud' or 'daemon' (got ${JSON.stringify(mode)})`)
      const apiKey = options.apiKey ?? env('HEYO_API_KEY')
      if (!apiKey && mode === 'cloud') throw new Error(`heyo(): no API key for Heyo's cloud at ${baseUrl}. Set HEYO_API_KEY in the environment (it never enters a sandbox), or pass heyo({ apiKey }); a local daemon needs none (heyo({ baseUrl: 'http://127.0.0.1:34099' })).`)
      const headers: Record<string, string> = apiKey ? { authorization: `Bearer ${apiKey}` } : {}
      const dispatcher = new Agent({ keepAliveTimeout: 10_000 })
      const api = new Http({ base: baseUrl, headers, dispatcher, parseError })
      const stateDir = options.stateDir ?? path.join(defaultStateDir(), 'heyo')
      return new HeyoSession(api, dispatcher, mode, new ImageRecord(path.join(stateDir, `images-${Buffer.from(baseUrl).toString('base64url')}.json`)), { ...options, diskGb })
    },
  }
}

/**
 * The images this machine made on one daemon, by name. No call lists a daemon's images, so this
 * record is how a later run finds a template; an image removed behind its back is dropped from
 * it when a sandbox cannot start from it.
 */
class ImageRecord {
  constructor(private readonly file: string) {}

  read(): TemplateSummary[] {
    try {
      return JSON.parse(fs.readFileSync(this.file, 'utf8'))
    } catch {
      return []
    }
  }

  private write(images: TemplateSummary[]): void {
    fs.mkdirSync(path.dirname(this.file), { recursive: true })
    const tmp = `${this.file}.${process.pid}.tmp`
    fs.writeFileSync(tmp, JSON.stringify(images, null, 2))
    fs.renameSync(tmp, this.file)
  }

  add(image: TemplateSummary): void {
    this.write([...this.read().filter((i) => i.id !== image.id), image])
  }

  remove(id: string): boolean {
    const images = this.read()
    const left = images.filter((i) => i.id !== id)
    this.write(left)
    return left.length < images.length
  }
}

class HeyoSession implements ProviderSession {
  readonly sharesHost = false
  readonly alwaysOnline = true
  readonly noTemplates?: string
  private readonly image: string

  constructor(
    readonly api: Http,
    private readonly dispatcher: Agent,
    readonly mode: 'cloud' | 'daemon',
    private readonly images: ImageRecord,
    private readonly options: HeyoOptions & { diskGb?: number },
  ) {
    this.image = options.image ?? 'node:22'
    if (mode === 'cloud') this.noTemplates = NO_CLOUD_IMAGES
  }

  get base(): string {
    return `heyo:${this.image}`
  }

  async createSandbox(opts: CreateOptions): Promise<ProviderSandbox> {
    const name = nameWithLabels(opts.labels)
    const image = opts.template ?? this.image
    let created: SandboxJson
    try {
      created = await this.api.json<SandboxJson>('POST', '/sandbox-deploy', {
        name,
        image,
        region: this.options.region ?? 'US',
        size_class: this.options.sizeClass ?? 'small',
        ...(this.options.diskGb ? { disk_size_gb: this.options.diskGb } : {}),
        ttl_seconds: opts.timeoutSec,
        working_directory: MOUNT,
        open_ports: [],
      })
    } catch (err) {
      // A template image removed on the daemon: forget it, so the next run builds it again.
      if (opts.template && err instanceof HttpError && (err.status === 404 || err.status === 400) && this.images.remove(opts.template)) {
        throw new Error(`heyo: the template image ${opts.template} is gone from the daemon (${err.message}); it is forgotten, and the next run builds it again`)
      }
      throw err
    }
    log('created %s from %s', created.id, image)
    const sandbox = new HeyoSandbox(created.id, this)
    try {
      await this.untilRunning(created.id, name)
    } catch (err) {
      await this.killSandbox(created.id).catch(() => {})
      throw err
    }
    return sandbox
  }

  /** Poll the sandbox (by its unique name: the cloud may not serve one sandbox by id) until it runs. */
  private async untilRunning(id: string, name: string): Promise<void> {
    const deadline = Date.now() + READY_TIMEOUT_MS
    for (let wait = 100; ; wait = Math.min(2000, wait * 2)) {
      const found = (await this.api.json<SandboxJson[]>('GET', `/deployed-sandboxes?name=${enc(name)}`)).find((s) => s.id === id)
      const status = found?.status?.toLowerCase()
      if (status === 'running' || status === 'ready') return
      if (status === 'failed') throw new Error(`heyo: sandbox ${id} failed to start: ${found?.error_message ?? 'no reason given'}`)
      if (status && status !== 'provisioning') throw new Error(`heyo: sandbox ${id} is ${status} instead of running`)
      if (Date.now() > deadline) throw new Error(`heyo: sandbox ${id} was not running after ${READY_TIMEOUT_MS / 1000}s (${found ? `status ${found.status}` : 'not listed'})`)
      await new Promise((r) => setTimeout(r, wait))
    }
  }

  /** The shell stream of a sandbox: its URL (the daemon's path differs) and the credentials. */
  shell(id: string): { url: string; headers: Record<string, string> } {
    const prefix = this.mode === 'daemon' ? '/sandboxes' : '/deployed-sandboxes'
    return { url: `${this.api.base.replace(/^http/, 'ws')}${prefix}/${enc(id)}/shell-stream`, headers: this.api.headers }
  }

  async findTemplate(name: string): Promise<string | undefined> {
    return !this.noTemplates ? this.images.read().find((i) => i.name === name)?.id : undefined
  }

  async listTemplates(): Promise<TemplateSummary[]> {
    return !this.noTemplates ? this.images.read() : []
  }

  async deleteTemplate(id: string): Promise<boolean> {
    // Heyo's API has no call that deletes an image: only this machine's record of it goes.
    return this.images.remove(id)
  }

  async snapshot(id: string, name: string): Promise<string> {
    if (this.noTemplates) throw new Error(this.noTemplates)
    const made = await this.api.json<{ name: string; size_bytes?: number }>('POST', `/sandboxes/${enc(id)}/snapshot-image`, { name }, { retry: false })
    this.images.add({ id: made.name, name, sizeBytes: made.size_bytes, createdAt: new Date().toISOString() })
    return made.name
  }

  async listSandboxes(labels: Record<string, string>): Promise<SandboxSummary[]> {
    const all = await this.api.json<SandboxJson[]>('GET', '/deployed-sandboxes')
    return all.flatMap((s) => {
      const own = labelsOfName(s.name)
      const live = !['failed', 'stopped', 'cold-stored'].includes(s.status?.toLowerCase() ?? '')
      return own && live && Object.entries(labels).every(([k, v]) => own[k] === v) ? [{ id: s.id, labels: own, createdAt: s.created_at }] : []
    })
  }

  killSandbox(id: string): Promise<boolean> {
    return this.api.delete(`/deployed-sandboxes/${enc(id)}`)
  }

  async close(): Promise<void> {
    await this.dispatcher.close()
  }
}

const NO_CLOUD_IMAGES =
  "heyo: Heyo's cloud cannot make an image from a sandbox (only a local Heyo daemon has snapshot-image), so no template can be kept there. Run against a daemon: heyo({ baseUrl: 'http://127.0.0.1:34099' })."


class HeyoSandbox implements ProviderSandbox {
  /** The relay's upload, once per sandbox. */
  private relay?: Promise<void>

  constructor(readonly id: string, private readonly session: HeyoSession) {}

  private exec(command: string): Promise<{ exit_code: number; output?: string; stderr?: string }> {
    // Not retried: a command may not be safe to run twice.
    return this.session.api.json('POST', `/sandbox/${enc(this.id)}/exec`, { command }, { retry: false })
  }

  /** One write-file call: `data` (at most FILE_PART bytes) at `file`, a path inside the mount. */
  private async put(file: string, data: Buffer): Promise<void> {
    const json = { file_path: path.posix.relative(MOUNT, file), mount_path: MOUNT, content: data.toString('base64') }
    await this.session.api.call('POST', `/sandbox/${enc(this.id)}/write-file`, { json }).then((r) => r.body.dump())
  }

  /** A file that fits one call and belongs in the staging folder goes straight there; others go in parts one `exec` joins. */
  async upload(target: string, body: Upload): Promise<void> {
    const data = typeof body === 'function' ? await buffer(body()) : Buffer.from(body)
    if (target.startsWith(`${STAGE}/`) && data.length <= FILE_PART) return this.put(target, data)
    const parts = `${STAGE}/parts-${randomBytes(6).toString('hex')}`
    const count = Math.max(1, Math.ceil(data.length / FILE_PART))
    const limit = pLimit(4)
    await Promise.all(Array.from({ length: count }, (_, i) => limit(() => this.put(`${parts}/${String(i).padStart(6, '0')}`, data.subarray(i * FILE_PART, (i + 1) * FILE_PART)))))
    const r = await this.exec(`mkdir -p ${q(path.posix.dirname(target))} && cat ${parts}/* > ${q(target)} && rm -rf ${parts}`)
    if (r.exit_code !== 0) throw new Error(`heyo: writing ${target} in sandbox ${this.id} failed (exit ${r.exit_code}): ${(r.stderr || r.output || '').trim()}`)
  }

  async start(spec: ProcessSpec): Promise<HeyoProcess> {
    const relayFile = `${STAGE}/relay.cjs`
    if (!this.relay) {
      this.relay = this.upload(relayFile, Buffer.from(LINE_RELAY))
      this.relay.catch(() => (this.relay = undefined)) // the next start tries again
    }
    await this.relay
    const relay = relaySpec(spec)
    const specFile = `${STAGE}/process-${randomBytes(6).toString('hex')}.json`
    await this.upload(specFile, Buffer.from(JSON.stringify(relay)))
    return HeyoProcess.start({ ...this.session.shell(this.id), where: `sandbox ${this.id}` }, relay, relayFile, specFile)
  }

  async setTimeout(seconds: number): Promise<void> {
    await this.session.api.call('POST', `/deployed-sandboxes/${enc(this.id)}/ttl`, { json: { ttl_seconds: seconds } }).then((r) => r.body.dump())
  }

  snapshot(name: string): Promise<string> {
    log('snapshotting %s as %s', this.id, name)
    return this.session.snapshot(this.id, name)
  }

  async kill(): Promise<void> {
    await this.session.killSandbox(this.id)
  }
}

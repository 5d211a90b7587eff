/**
 * `microsandbox()`: microVMs on this machine (libkrun; KVM on Linux), through the `microsandbox`
 * SDK, an optional peer loaded only when this provider connects. Processes run with a stdin pipe
 * (`execStreamWith`, no TTY); templates are snapshots of stopped sandboxes, booted with
 * `fromSnapshot`. Without hardware virtualization no VM can boot, so that is checked first and
 * named, before any sandbox is attempted.
 */
import { randomBytes } from 'node:crypto'
import { EventEmitter } from 'node:events'
import fs from 'node:fs'
import path from 'node:path'
import type { CreateOptions, ProcessExit, ProcessSpec, ProviderProcess, ProviderSandbox, ProviderSession, SandboxProvider, SandboxSummary, TemplateSummary, Upload } from './types.js'
import { debug } from '../debug.js'
import { remoteLimits, type RemoteLimits } from '../sizes.js'

const log = debug('microsandbox')

export interface MicrosandboxOptions {
  /** OCI image, host directory (a root filesystem) or disk image sandboxes boot from; it needs `node`. @default `node:<host Node major>` */
  image?: string
  /**
   * What each microVM may use: `memory` as a size (`'2g'`), `cpus` in virtual CPUs (rounded up);
   * its disk is its image's. @default { memory: '1g', cpus: 1 }
   */
  limits?: Omit<RemoteLimits, 'disk'>
  /** Virtual CPUs per sandbox, instead of `limits.cpus`. @default 1 */
  cpus?: number
  /** Memory per sandbox, in MiB, instead of `limits.memory`. @default 1024 */
  memoryMib?: number
}

// ---- the part of the SDK this provider uses ------------------------------------------------

interface SdkExecOptions {
  args(args: string[]): this
  cwd(cwd: string): this
  envs(vars: Record<string, string>): this
  stdinPipe(): this
  stdinNull(): this
  tty(enabled: boolean): this
}
type SdkExecEvent = { kind: 'started'; pid: number } | { kind: 'stdout' | 'stderr'; data: Uint8Array } | { kind: 'exited'; code: number }
interface SdkSink {
  write(data: Uint8Array): Promise<void>
  close(): Promise<void>
}
interface SdkExecHandle extends AsyncIterable<SdkExecEvent> {
  takeStdin(): Promise<SdkSink | null>
  kill(): Promise<void>
}
interface SdkSandbox {
  readonly name: string
  execStreamWith(cmd: string, configure: (b: SdkExecOptions) => SdkExecOptions): Promise<SdkExecHandle>
  fs(): { write(path: string, data: Uint8Array): Promise<void>; writeStream(path: string): Promise<SdkSink>; mkdir(path: string): Promise<void> }
  stop(): Promise<void>
  kill(): Promise<void>
}
interface SdkBuilder {
  image(source: string): this
  fromSnapshot(name: string): this
  cpus(n: number): this
  memory(mib: number): this
  labels(labels: Record<string, string>): this
  maxDuration(secs: number): this
  disableNetwork(): this
  create(): Promise<SdkSandbox>
}
interface SdkHandle {
  readonly name: string
  readonly status: string
  readonly createdAt: Date | null
  readonly configJson: string
  kill(): Promise<void>
  remove(): Promise<void>
  start(): Promise<SdkSandbox>
}
interface SdkListBuilder {
  labels(labels: Record<string, string>): this
  cursor(cursor: string): this
}
/**
 * What microsandbox() needs of the SDK. test/microsandbox.test.ts checks that the SDK's own types
 * (from npm) satisfy it, so a call the SDK does not have fails there.
 */
export interface MicrosandboxSdk {
  Sandbox: {
    builder(name: string): SdkBuilder
    get(name: string): Promise<SdkHandle>
    listWith(configure: (list: SdkListBuilder) => SdkListBuilder): Promise<{ sandboxes: SdkHandle[]; nextCursor?: string }>
  }
  Snapshot: {
    builder(name: string): { fromSandbox(name: string): { create(): Promise<unknown> } }
    list(): Promise<{ readonly name: string | null; readonly digest: string; readonly sizeBytes: bigint | null; readonly createdAt: Date }[]>
    remove(pathOrName: string, opts?: { force?: boolean }): Promise<void>
  }
}
// ---- hardware virtualization ---------------------------------------------------------------

/** What keeps this machine from booting microVMs, with the fix; undefined when nothing seems to. */
export function virtualizationProblem(probe: { platform?: string; cpuinfo?: () => string; kvmAccess?: () => void } = {}): string | undefined {
  const platform = probe.platform ?? process.platform
  if (platform === 'darwin') return undefined // Hypervisor.framework on Apple silicon
  if (platform !== 'linux') return `microsandbox runs microVMs on Linux (KVM) and macOS only, not on ${platform}; use a remote provider`
  try {
    ;(probe.kvmAccess ?? (() => fs.accessSync('/dev/kvm', fs.constants.R_OK | fs.constants.W_OK)))()
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    return code === 'ENOENT'
      ? 'this machine has no /dev/kvm (KVM is not loaded, or this is a VM without nested virtualization). Fix: load the kvm_intel or kvm_amd module, or enable nested virtualization on the VM; or use local() or a remote provider'
      : `this user cannot open /dev/kvm (${code}). Fix: add the user to the kvm group (sudo usermod -aG kvm $USER, then log in again), or use local() or a remote provider`
  }
  let cpuinfo = ''
  try {
    cpuinfo = (probe.cpuinfo ?? (() => fs.readFileSync('/proc/cpuinfo', 'utf8')))()
  } catch {
    return undefined // cannot tell: let the SDK try
  }
  if (!/^flags\s*:.*\b(vmx|svm)\b/m.test(cpuinfo)) {
    return "this machine's CPU reports no hardware virtualization (no vmx or svm flag in /proc/cpuinfo), so a microVM cannot boot even though /dev/kvm exists. Fix: enable VT-x or AMD-V in the firmware, or nested virtualization on the VM this runs in; or use local() or a remote provider"
  }
  return undefined
}

/** The package name, not a literal import: it is an optional peer, absent from this package's own install. */
const SDK = 'microsandbox'

async function loadSdk(): Promise<MicrosandboxSdk> {
  try {
    return (await import(SDK)) as MicrosandboxSdk
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ERR_MODULE_NOT_FOUND') {
      throw new Error('microsandbox(): the microsandbox package is not installed. Fix: npm install --save-dev microsandbox@^0.6 (it needs Node 22 or newer)')
    }
    throw err
  }
}

// ---- the provider ----------------------------------------------------------------------------

/** `load` stands in for the SDK (tests); `probe` for this machine's virtualization check. */
export function microsandbox(options: MicrosandboxOptions = {}, internals: { load?: () => Promise<MicrosandboxSdk>; probe?: Parameters<typeof virtualizationProblem>[0] } = {}): SandboxProvider {
  const limits = remoteLimits(options.limits, 'microsandbox', ['memory', 'cpus'], "a microVM's disk is its image's (a larger image, or a volume)")
  if ((limits.memory && options.memoryMib !== undefined) || (limits.cpus && options.cpus !== undefined)) {
    throw Object.assign(new Error('microsandbox(): give limits or cpus/memoryMib, not both'), { code: 'invalid_argument' })
  }
  options = { ...options, cpus: options.cpus ?? (limits.cpus && Math.ceil(limits.cpus)), memoryMib: options.memoryMib ?? (limits.memory && Math.ceil(limits.memory / 1024 ** 2)) }
  return {
    name: 'microsandbox',
    async connect() {
      const problem = virtualizationProblem(internals.probe)
      if (problem) throw new Error(`microsandbox(): ${problem}`)
      return new MicrosandboxSession(await (internals.load ?? loadSdk)(), options)
    },
  }
}

/**
 * The SDK's lifetime of a sandbox, fixed when it is made: a backstop only. The TTL itself is kept
 * here (renewable, as the pool needs), and the fleet kills its sandboxes when the run ends.
 */
const MAX_DURATION_SEC = 24 * 3600

/** Sandboxes still alive (listing also returns stopped and crashed ones). */
const ALIVE = new Set(['created', 'starting', 'running', 'draining', 'paused'])

class MicrosandboxSession implements ProviderSession {
  readonly sharesHost = false
  private readonly image: string
  constructor(private readonly sdk: MicrosandboxSdk, private readonly options: MicrosandboxOptions) {
    this.image = options.image ?? `node:${process.versions.node.split('.')[0]}`
  }

  get base(): string {
    return `microsandbox:${this.image}`
  }

  async createSandbox(opts: CreateOptions): Promise<ProviderSandbox> {
    const name = `vps-${randomBytes(8).toString('hex')}`
    const b = this.sdk.Sandbox.builder(name)
    ;(opts.template ? b.fromSnapshot(opts.template) : b.image(this.image)).cpus(this.options.cpus ?? 1).memory(this.options.memoryMib ?? 1024).labels(opts.labels).maxDuration(MAX_DURATION_SEC)
    if (!opts.network) b.disableNetwork()
    const sbx = new MicrosandboxSandbox(await b.create(), this.sdk)
    log('created %s from %s', name, opts.template ?? this.image)
    await sbx.setTimeout(opts.timeoutSec)
    return sbx
  }

  async findTemplate(name: string): Promise<string | undefined> {
    return (await this.sdk.Snapshot.list()).find((s) => s.name === name)?.name ?? undefined
  }

  async listTemplates(): Promise<TemplateSummary[]> {
    return (await this.sdk.Snapshot.list()).filter((s) => s.name).map((s) => ({ id: s.name!, name: s.name!, sizeBytes: s.sizeBytes === null ? undefined : Number(s.sizeBytes), createdAt: s.createdAt.toISOString() }))
  }

  async deleteTemplate(id: string): Promise<boolean> {
    if (!(await this.sdk.Snapshot.list()).some((s) => s.name === id || s.digest === id)) return false
    await this.sdk.Snapshot.remove(id)
    return true
  }

  async listSandboxes(labels: Record<string, string>): Promise<SandboxSummary[]> {
    const out: SandboxSummary[] = []
    for (let cursor: string | undefined; ; ) {
      const page = await this.sdk.Sandbox.listWith((l) => (cursor ? l.labels(labels).cursor(cursor) : l.labels(labels)))
      for (const h of page.sandboxes.filter((s) => ALIVE.has(s.status))) {
        let own: Record<string, string> = {}
        try {
          own = (JSON.parse(h.configJson) as { labels?: Record<string, string> }).labels ?? {}
        } catch {}
        // Filtered here too: the listing's label filter is the SDK's, and must not widen a kill.
        if (Object.entries(labels).every(([k, v]) => own[k] === v)) out.push({ id: h.name, labels: own, createdAt: h.createdAt?.toISOString() })
      }
      cursor = page.nextCursor
      if (!cursor) return out
    }
  }

  async killSandbox(id: string): Promise<boolean> {
    let h: SdkHandle
    try {
      h = await this.sdk.Sandbox.get(id)
    } catch {
      return false
    }
    if (!ALIVE.has(h.status)) return false
    await h.kill()
    await h.remove().catch(() => {})
    return true
  }

  async close(): Promise<void> {}
}

class MicrosandboxSandbox implements ProviderSandbox {
  private ttl?: NodeJS.Timeout
  readonly id: string
  constructor(private sbx: SdkSandbox, private readonly sdk: MicrosandboxSdk) {
    this.id = sbx.name
  }

  async upload(file: string, body: Upload): Promise<void> {
    const guest = this.sbx.fs()
    await this.mkdirs(path.posix.dirname(file))
    if (body instanceof Uint8Array) return guest.write(file, body)
    const sink = await guest.writeStream(file)
    try {
      for await (const chunk of body()) await sink.write(chunk)
    } finally {
      await sink.close()
    }
  }

  private async mkdirs(dir: string): Promise<void> {
    const proc = await this.start({ cmd: 'mkdir', args: ['-p', dir] })
    const exit = await proc.exited
    if (exit.exitCode !== 0) throw new Error(`microsandbox: mkdir -p ${dir} in ${this.id} exited ${exit.exitCode}`)
  }

  start(spec: ProcessSpec): Promise<ProviderProcess> {
    return MicrosandboxProcess.start(this.sbx, spec)
  }

  async setTimeout(seconds: number): Promise<void> {
    clearTimeout(this.ttl)
    this.ttl = setTimeout(() => void this.kill(), seconds * 1000)
    this.ttl.unref()
  }

  async snapshot(name: string): Promise<string> {
    // Snapshots are of stopped sandboxes (their disk), which then boot with fromSnapshot(name).
    // The sandbox is started again afterwards, as on every other provider a snapshot leaves it running.
    await this.sbx.stop()
    await this.sdk.Snapshot.builder(name).fromSandbox(this.id).create()
    this.sbx = await (await this.sdk.Sandbox.get(this.id)).start()
    return name
  }

  async kill(): Promise<void> {
    clearTimeout(this.ttl)
    await this.sbx.kill().catch(() => {})
    await this.sdk.Sandbox.get(this.id).then((h) => h.remove(), () => {})
  }
}

class MicrosandboxProcess implements ProviderProcess {
  private readonly events = new EventEmitter<{ stdout: [Buffer]; stderr: [Buffer] }>()
  readonly exited: Promise<ProcessExit>
  private killed = false

  private constructor(private readonly handle: SdkExecHandle, private readonly stdin: SdkSink | null) {
    this.exited = this.pump()
    this.exited.catch(() => {})
  }

  static async start(sbx: SdkSandbox, spec: ProcessSpec): Promise<MicrosandboxProcess> {
    const handle = await sbx.execStreamWith(spec.cmd, (b) => {
      b.args(spec.args ?? []).envs(spec.env ?? {}).tty(false)
      if (spec.cwd) b.cwd(spec.cwd)
      return spec.stdin ? b.stdinPipe() : b.stdinNull()
    })
    return new MicrosandboxProcess(handle, spec.stdin ? await handle.takeStdin() : null)
  }

  /** Events in order, after the caller of start() has had a turn to add its listeners. */
  private async pump(): Promise<ProcessExit> {
    await new Promise((r) => setImmediate(r))
    for await (const e of this.handle) {
      if (e.kind === 'stdout' || e.kind === 'stderr') this.events.emit(e.kind, Buffer.from(e.data))
      else if (e.kind === 'exited') {
        // A signal shows as 128 + its number, as in a shell.
        const signal = e.code > 128 && e.code < 160 ? (e.code === 137 ? 'SIGKILL' : e.code === 143 ? 'SIGTERM' : null) : null
        return { exitCode: e.code, signal, error: this.killed ? 'killed' : null }
      }
    }
    throw new Error('microsandbox: the process stream ended without an exit')
  }

  on(event: 'stdout' | 'stderr', listener: (chunk: Buffer) => void): this {
    this.events.on(event, listener)
    return this
  }

  async write(data: Uint8Array): Promise<void> {
    if (!this.stdin) throw new Error('microsandbox: this process was started without stdin')
    await this.stdin.write(data)
  }

  async closeStdin(): Promise<void> {
    await this.stdin?.close()
  }

  kill(): void {
    this.killed = true
    void this.handle.kill().catch(() => {})
  }
}

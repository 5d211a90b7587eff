/**
 * The local sandbox engine: many bubblewrap sandboxes on this machine, created from immutable
 * template layers, listed by metadata, killed on demand, on expiry, and when the engine exits.
 * Its HTTP server (`server.ts`) exposes it; nothing else here knows about HTTP.
 */
import fs from 'node:fs'
import fsp from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { detectHost, type HostInfo } from './host.js'
import { LayerStore, newId, type SnapshotRecord } from './layers.js'
import { LocalSandbox, SandboxError, type SandboxLimits } from './sandbox.js'
import { debug } from '../debug.js'

const log = debug('engine')

export interface EngineOptions {
  /**
   * Folder for template layers and sandbox upper directories. Layers persist across runs, so the
   * same folder gives later runs the same templates.
   * @default `$XDG_CACHE_HOME/vitest-pool-sandbox` (`/var/cache/vitest-pool-sandbox` as root)
   */
  stateDir?: string
  /** Sandboxes alive at once; creating one more fails with `sandbox_limit`. @default 64 */
  maxSandboxes?: number
  /** Per-sandbox limits. @default { processes: 1024, openFiles: 4096 } */
  limits?: Partial<SandboxLimits>
  /** Longest lifetime a sandbox may ask for, in seconds. @default 86400 */
  maxTimeoutSec?: number
}

export interface CreateSandboxOptions {
  /** Snapshot id or name to start from; omitted or 'base' for an empty sandbox. */
  template?: string
  /** Seconds the sandbox may live before it is killed. @default 300 */
  timeoutSec?: number
  metadata?: Record<string, string>
  /** Environment every process in the sandbox starts with (process-level values win). */
  envs?: Record<string, string>
  /** 'none' (private loopback only, the default) or 'host' (the host's network). */
  network?: 'none' | 'host'
}

export function defaultStateDir(): string {
  if (process.getuid?.() === 0) return '/var/cache/vitest-pool-sandbox'
  return path.join(process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache'), 'vitest-pool-sandbox')
}

export class Engine {
  readonly host: HostInfo
  readonly layers: LayerStore
  private readonly sandboxes = new Map<string, LocalSandbox>()
  private readonly maxSandboxes: number
  private readonly limits: SandboxLimits
  private readonly maxTimeoutSec: number
  private closed = false
  private readonly onExit = () => this.killAllSync()

  private constructor(host: HostInfo, layers: LayerStore, opts: EngineOptions) {
    this.host = host
    this.layers = layers
    this.maxSandboxes = opts.maxSandboxes ?? 64
    this.limits = { processes: opts.limits?.processes ?? 1024, openFiles: opts.limits?.openFiles ?? 4096 }
    this.maxTimeoutSec = opts.maxTimeoutSec ?? 86400
    // Sandboxes die with the engine: bubblewrap's --die-with-parent covers a crash or SIGKILL,
    // this covers a normal exit.
    process.once('exit', this.onExit)
  }

  /** Check the host (bubblewrap, util-linux) and prepare the state folder. */
  static async start(opts: EngineOptions = {}): Promise<Engine> {
    const host = detectHost()
    const layers = new LayerStore(path.resolve(opts.stateDir ?? defaultStateDir()), host)
    await layers.init()
    log('engine ready: bwrap %s, state %s, sandbox uid %d', host.bwrapVersion, layers.root, host.uid)
    return new Engine(host, layers, opts)
  }

  async createSandbox(opts: CreateSandboxOptions = {}): Promise<LocalSandbox> {
    if (this.closed) throw new SandboxError('the engine is shutting down', 'engine_closed')
    const live = [...this.sandboxes.values()].filter((s) => s.running).length
    if (live >= this.maxSandboxes) {
      throw new SandboxError(`sandbox limit reached: ${live} of ${this.maxSandboxes} running (raise maxSandboxes / --max-sandboxes, or kill some)`, 'sandbox_limit')
    }
    const timeoutSec = opts.timeoutSec ?? 300
    if (!Number.isFinite(timeoutSec) || timeoutSec <= 0 || timeoutSec > this.maxTimeoutSec) {
      throw new SandboxError(`timeout must be between 1 and ${this.maxTimeoutSec} seconds (got ${opts.timeoutSec})`, 'invalid_argument')
    }
    let snapshot: SnapshotRecord | undefined
    const template = opts.template ?? 'base'
    if (template !== 'base') {
      snapshot = await this.layers.getSnapshot(template)
      if (!snapshot) throw new SandboxError(`template or snapshot '${template}' not found`, 'template_not_found')
    }
    const id = newId('sbx')
    const sandbox = new LocalSandbox({
      id,
      host: this.host,
      lowerDirs: [...(snapshot?.layers ?? []).map((l) => this.layers.layerDir(l)), this.layers.baseDir],
      layers: snapshot?.layers ?? [],
      stateDir: this.layers.sandboxDir(id),
      limits: this.limits,
      network: opts.network ?? 'none',
      metadata: opts.metadata ?? {},
      envs: opts.envs ?? {},
      template: snapshot?.id ?? 'base',
      timeoutSec,
    })
    this.sandboxes.set(id, sandbox)
    sandbox.once('exit', (reason) => {
      log('sandbox %s ended: %s', id, reason)
      // Its files go with it, whatever ended it (kill, expiry, a crash of the init).
      void sandbox.kill(reason).finally(() => this.sandboxes.delete(id))
    })
    try {
      await sandbox.start()
    } catch (err) {
      await sandbox.kill('failed to start')
      this.sandboxes.delete(id)
      throw err
    }
    log('sandbox %s created from %s', id, sandbox.template)
    return sandbox
  }

  get(id: string): LocalSandbox | undefined {
    const s = this.sandboxes.get(id)
    return s?.running ? s : undefined
  }

  /** Running sandboxes whose metadata has every given key/value. */
  list(filter: Record<string, string> = {}): LocalSandbox[] {
    return [...this.sandboxes.values()].filter((s) => s.running && Object.entries(filter).every(([k, v]) => s.metadata[k] === v))
  }

  async kill(id: string): Promise<boolean> {
    const s = this.get(id)
    if (!s) return false
    await s.kill()
    this.sandboxes.delete(id)
    return true
  }

  /** Copy a sandbox's files into a new read-only template layer (see LayerStore.snapshot). */
  async snapshot(id: string, opts: { name?: string; metadata?: Record<string, string> } = {}): Promise<SnapshotRecord> {
    const s = this.get(id)
    if (!s) throw new SandboxError(`sandbox ${id} not found`, 'sandbox_not_found')
    return this.layers.snapshot(s.upperDir, s.layers, opts)
  }

  listSnapshots(): Promise<SnapshotRecord[]> {
    return this.layers.listSnapshots()
  }

  deleteSnapshot(id: string): Promise<boolean> {
    const inUse = new Set([...this.sandboxes.values()].filter((s) => s.running).flatMap((s) => s.layers))
    return this.layers.deleteSnapshot(id, inUse)
  }

  /** Kill every sandbox and stop accepting new ones. */
  async close(): Promise<void> {
    this.closed = true
    process.off('exit', this.onExit)
    await Promise.all([...this.sandboxes.values()].map((s) => s.kill('engine closed')))
    this.sandboxes.clear()
    await fsp.rm(this.layers.sandboxesDir, { recursive: true, force: true })
  }

  /** Last resort on process exit: no awaiting possible, so signal the sandboxes and remove what we can. */
  private killAllSync(): void {
    for (const s of this.sandboxes.values()) s.killSync()
    try {
      fs.rmSync(this.layers.sandboxesDir, { recursive: true, force: true })
    } catch {
      // Left for the next engine start to clean.
    }
  }
}

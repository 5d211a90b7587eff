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
import { execOnlyCopy } from './exec-only.js'
import { LayerStore, newId, type SnapshotRecord } from './layers.js'
import type { SandboxLimits } from './policy.js'
import { LocalSandbox, SandboxError } from './sandbox.js'
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
  /**
   * Let sandboxes layer host `node_modules` folders copy-on-write at their own paths (the
   * zero-copy dependency layer). Only for an engine whose callers are this machine's own Vitest
   * runs: `vitest-sandbox serve` leaves it off, so its clients cannot read the server's files.
   * @default false
   */
  allowHostLayers?: boolean
  /**
   * Give every sandbox a direct channel to this process (`channel.ts`): a Unix socket its
   * processes connect to, past the init. Only for the embedded engine; `serve` leaves it off (its
   * clients are elsewhere).
   * @default false
   */
  allowChannels?: boolean
  /**
   * Bytes the snapshots in `stateDir` may take; past it, the least recently used ones that no
   * live sandbox runs on are deleted after each new snapshot.
   * @default 5 GiB
   */
  maxSnapshotBytes?: number
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
  /**
   * Host `node_modules` folders (absolute paths) the sandbox sees at the same paths, read-only
   * below its own writable layer: nothing is copied, and nothing it writes reaches the host. A
   * snapshot keeps the sandbox's changes to them. Needs `allowHostLayers`.
   */
  hostLayers?: string[]
}

export const DEFAULT_SNAPSHOT_BUDGET = 5 * 1024 ** 3

export function defaultStateDir(): string {
  if (process.getuid?.() === 0) return '/var/cache/vitest-pool-sandbox'
  return path.join(process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache'), 'vitest-pool-sandbox')
}

function isDir(p: string): boolean {
  try {
    return fs.statSync(p).isDirectory()
  } catch {
    return false
  }
}

export class Engine {
  readonly host: HostInfo
  readonly layers: LayerStore
  private readonly sandboxes = new Map<string, LocalSandbox>()
  private readonly maxSandboxes: number
  private readonly limits: SandboxLimits
  private readonly maxTimeoutSec: number
  private readonly allowHostLayers: boolean
  private readonly allowChannels: boolean
  private readonly maxSnapshotBytes: number
  private closed = false
  private readonly onExit = () => this.killAllSync()

  private constructor(host: HostInfo, layers: LayerStore, opts: EngineOptions) {
    this.host = host
    this.layers = layers
    this.maxSandboxes = opts.maxSandboxes ?? 64
    this.limits = { processes: opts.limits?.processes ?? 1024, openFiles: opts.limits?.openFiles ?? 4096 }
    this.maxTimeoutSec = opts.maxTimeoutSec ?? 86400
    this.allowHostLayers = opts.allowHostLayers ?? false
    this.allowChannels = opts.allowChannels ?? false
    this.maxSnapshotBytes = opts.maxSnapshotBytes ?? DEFAULT_SNAPSHOT_BUDGET
    // Sandboxes die with the engine: bubblewrap's --die-with-parent covers a crash or SIGKILL,
    // this covers a normal exit.
    process.once('exit', this.onExit)
  }

  /** Check the host (bubblewrap, util-linux) and prepare the state folder. */
  static async start(opts: EngineOptions = {}): Promise<Engine> {
    const detected = detectHost()
    const layers = new LayerStore(path.resolve(opts.stateDir ?? defaultStateDir()), detected)
    await layers.init()
    const host = { ...detected, sandboxNode: await execOnlyCopy(path.join(layers.root, 'node'), process.execPath) }
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
      await this.layers.touch(snapshot)
    }
    const hostLayers = this.checkHostLayers(opts.hostLayers ?? [])
    const layerDirs = (snapshot?.layers ?? []).map((l) => this.layers.layerDir(l))
    const id = newId('sbx')
    const sandbox = new LocalSandbox({
      id,
      host: this.host,
      lowerDirs: [...layerDirs, this.layers.baseDir],
      // Changes a template made to a host folder live at that folder's path in its layers.
      hostLayers: hostLayers.map((target) => ({ target, lowerDirs: [...layerDirs.map((d) => path.join(d, target)).filter(isDir), target] })),
      layers: snapshot?.layers ?? [],
      stateDir: this.layers.sandboxDir(id),
      limits: this.limits,
      network: opts.network ?? 'none',
      channel: this.allowChannels,
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
    log('sandbox %s created from %s%s', id, sandbox.template, hostLayers.length ? ` over ${hostLayers.length} host layer(s)` : '')
    return sandbox
  }

  /** Host layers must be real node_modules folders, and only where the engine allows them. */
  private checkHostLayers(dirs: string[]): string[] {
    if (dirs.length && !this.allowHostLayers) throw new SandboxError('this engine does not layer host folders into sandboxes (vitest-sandbox serve never does); upload the dependencies instead', 'invalid_argument')
    return dirs.map((dir) => {
      const bad = (why: string) => new SandboxError(`host layer ${JSON.stringify(dir)} ${why}`, 'invalid_argument')
      if (typeof dir !== 'string' || !path.isAbsolute(dir) || path.normalize(dir) !== dir) throw bad('must be a normalized absolute path')
      if (path.basename(dir) !== 'node_modules') throw bad('is not a node_modules folder')
      if (/[,:\\\n]/.test(dir)) throw bad("contains ',', ':' or '\\', which overlayfs mount options cannot express")
      let real: string
      try {
        real = fs.realpathSync(dir)
      } catch {
        throw bad('does not exist')
      }
      if (real !== dir || !fs.statSync(dir).isDirectory()) throw bad('is not a folder (or is reached through a symbolic link)')
      if (dir.startsWith(this.layers.root + path.sep) || this.layers.root.startsWith(dir + path.sep)) throw bad("overlaps the engine's state folder")
      return dir
    })
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

  /**
   * Copy a sandbox's files into a new read-only template layer (see LayerStore.snapshot), then
   * keep the state folder within its budget.
   */
  async snapshot(id: string, opts: { name?: string; metadata?: Record<string, string> } = {}): Promise<SnapshotRecord> {
    const s = this.get(id)
    if (!s) throw new SandboxError(`sandbox ${id} not found`, 'sandbox_not_found')
    const record = await this.layers.snapshot(s.upperDir, s.layers, { ...opts, hostUppers: s.hostUppers })
    const pruned = await this.layers.prune(this.maxSnapshotBytes, [record.id])
    for (const p of pruned) log('snapshot %s (%s, %d bytes) pruned: over the %d-byte budget', p.id, p.name ?? 'unnamed', p.sizeBytes, this.maxSnapshotBytes)
    return record
  }

  listSnapshots(): Promise<SnapshotRecord[]> {
    return this.layers.listSnapshots()
  }

  /** Delete a snapshot unless a live sandbox (of any engine on this state folder) runs on it. */
  deleteSnapshot(id: string): Promise<'deleted' | 'not_found' | 'in_use'> {
    return this.layers.deleteSnapshot(id)
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

/**
 * The local sandbox engine: many bubblewrap sandboxes on this machine, created from immutable
 * template layers, listed by metadata, killed on demand, on expiry, and when the engine exits.
 * Its HTTP server (`server.ts`) exposes it; nothing else here knows about HTTP.
 */
import fs from 'node:fs'
import fsp from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { Cgroups, type CgroupLimit } from './cgroups.js'
import { DiskLimits } from './disk.js'
import { detectHost, HostSetupError, type HostInfo } from './host.js'
import { execOnlyCopy } from './exec-only.js'
import { LayerStore, newId, type SnapshotRecord } from './layers.js'
import { formatSize, resolveLimits, type Explicit, type LimitsInput, type SandboxLimits } from './limits.js'
import { LocalSandbox, SandboxError, type SandboxResources } from './sandbox.js'
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
  /**
   * What each sandbox may use (see `LimitsInput` for the defaults). A limit given here that the
   * host cannot enforce stops the engine with the reason and the fix; a default one is reported
   * in `unenforced`. A create request may ask for less, never more. `false`: no memory, disk or
   * CPU limits at all (trusted code only), and nothing reported of them.
   */
  limits?: LimitsInput | false
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
  /** Lower limits for this sandbox than the engine's (never higher). */
  limits?: LimitsInput
  /**
   * Folders (absolute) its processes may read but not write, except the cache folders in them
   * (`.cache`, `.vite`, `.vite-temp`, `.vitest`): a run's dependencies, so that no test file can
   * change the code another file's worker loads after it.
   */
  readOnly?: string[]
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

/** A limit this host does not enforce, why, and how to make it. */
export interface UnenforcedLimit {
  limit: keyof SandboxLimits
  reason: string
  fix: string
}

/** What enforces each limit, and the limits themselves. */
export interface LimitsReport {
  limits: SandboxLimits
  enforced: Array<{ limit: keyof SandboxLimits; by: string }>
  unenforced: UnenforcedLimit[]
}

export class Engine {
  readonly host: HostInfo
  readonly layers: LayerStore
  private readonly sandboxes = new Map<string, LocalSandbox>()
  readonly maxSandboxes: number
  readonly limits: SandboxLimits
  readonly maxTimeoutSec: number
  private readonly allowHostLayers: boolean
  private readonly allowChannels: boolean
  private readonly maxSnapshotBytes: number
  private closed = false
  private readonly onExit = () => this.killAllSync()

  private constructor(
    host: HostInfo,
    layers: LayerStore,
    opts: EngineOptions,
    limits: SandboxLimits,
    /** The limits the engine was given by name (a disk limit given is never shrunk to fit). */
    private readonly explicit: Explicit,
    private readonly cgroups: Cgroups,
    private readonly disks: DiskLimits,
  ) {
    this.host = host
    this.layers = layers
    this.maxSandboxes = opts.maxSandboxes ?? 64
    this.limits = limits
    this.maxTimeoutSec = opts.maxTimeoutSec ?? 86400
    this.allowHostLayers = opts.allowHostLayers ?? false
    this.allowChannels = opts.allowChannels ?? false
    this.maxSnapshotBytes = opts.maxSnapshotBytes ?? DEFAULT_SNAPSHOT_BUDGET
    // Sandboxes die with the engine: bubblewrap's --die-with-parent covers a crash or SIGKILL,
    // this covers a normal exit.
    process.once('exit', this.onExit)
  }

  /**
   * Check the host (bubblewrap, util-linux, what enforces each limit) and prepare the state
   * folder. A limit given in `opts.limits` that the host cannot enforce is an error.
   */
  static async start(opts: EngineOptions = {}): Promise<Engine> {
    const off = opts.limits === false
    const { limits, explicit } = resolveLimits(opts.limits === false ? {} : opts.limits)
    const detected = detectHost()
    const layers = new LayerStore(path.resolve(opts.stateDir ?? defaultStateDir()), detected)
    await stateFolderWrite(layers.root, () => layers.init())
    const cgroups = off ? Cgroups.off() : await Cgroups.setup()
    const disks = DiskLimits.detect(layers.root, detected, off)
    const refused = unenforced(cgroups, disks).find((u) => explicit[u.limit])
    if (refused) {
      await cgroups.close()
      throw new HostSetupError(`limits.${refused.limit} cannot be enforced on this host: ${refused.reason}`, refused.fix)
    }
    const host = { ...detected, sandboxNode: await stateFolderWrite(layers.root, () => execOnlyCopy(path.join(layers.root, 'node'), process.execPath)) }
    log('engine ready: bwrap %s, state %s, sandbox uid %d, limits %o', host.bwrapVersion, layers.root, host.uid, limits)
    return new Engine(host, layers, opts, limits, explicit, cgroups, disks)
  }

  /** Each limit, and what enforces it on this host or why nothing does. */
  limitsReport(): LimitsReport {
    const cg = `cgroup v${this.cgroups.version}`
    const by: Record<keyof SandboxLimits, string | undefined> = {
      memory: this.cgroups.enforces('memory') ? `${cg} memory controller (swap counted)` : undefined,
      cpus: this.cgroups.enforces('cpus') ? `${cg} cpu controller` : undefined,
      processes: this.cgroups.enforces('processes') ? `${cg} pids controller` : 'RLIMIT_NPROC (prlimit; counted per user, so across all sandboxes of this engine)',
      disk: this.disks.enforced ? 'an ext4 filesystem of its own per sandbox (loop device)' : undefined,
      openFiles: 'RLIMIT_NOFILE (prlimit)',
    }
    const enforced = (Object.keys(by) as Array<keyof SandboxLimits>).flatMap((limit) => (by[limit] ? [{ limit, by: by[limit]! }] : []))
    return { limits: this.limits, enforced, unenforced: unenforced(this.cgroups, this.disks) }
  }

  async createSandbox(opts: CreateSandboxOptions = {}): Promise<LocalSandbox> {
    if (this.closed) throw new SandboxError('the engine is shutting down', 'engine_closed')
    // Counted with those still being made: a burst of creates cannot pass the check together.
    const live = [...this.sandboxes.values()].filter((s) => s.running).length + this.creating
    if (live >= this.maxSandboxes) {
      throw new SandboxError(`sandbox limit reached: ${live} of ${this.maxSandboxes} running (raise maxSandboxes / --max-sandboxes, or kill some)`, 'sandbox_limit')
    }
    this.creating++
    try {
      return await this.make(opts)
    } finally {
      this.creating--
    }
  }

  /** Sandboxes being made (their slot is taken before the first await). */
  private creating = 0

  private async make(opts: CreateSandboxOptions): Promise<LocalSandbox> {
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
    const { limits, explicit } = this.sandboxLimits(opts.limits)
    const readOnly = (opts.readOnly ?? []).map((dir) => {
      if (typeof dir !== 'string' || !path.isAbsolute(dir) || path.normalize(dir) !== dir || dir === '/') throw new SandboxError(`read-only folder ${JSON.stringify(dir)} must be a normalized absolute path below /`, 'invalid_argument')
      return dir
    })
    const layerDirs = (snapshot?.layers ?? []).map((l) => this.layers.layerDir(l))
    const id = newId('sbx')
    const stateDir = this.layers.sandboxDir(id)
    const sandbox = new LocalSandbox({
      id,
      host: this.host,
      lowerDirs: [...layerDirs, this.layers.baseDir],
      // Changes a template made to a host folder live at that folder's path in its layers.
      hostLayers: hostLayers.map((target) => ({ target, lowerDirs: [...layerDirs.map((d) => path.join(d, target)).filter(isDir), target] })),
      layers: snapshot?.layers ?? [],
      stateDir,
      limits,
      readOnly,
      resources: await this.resources(id, stateDir, limits, explicit),
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

  /** A request's limits: each at most the engine's, the rest the engine's. */
  private sandboxLimits(input: LimitsInput | undefined): { limits: SandboxLimits; explicit: Explicit } {
    if (input === undefined) return { limits: this.limits, explicit: {} }
    let asked: ReturnType<typeof resolveLimits>
    try {
      asked = resolveLimits(input)
    } catch (err) {
      throw new SandboxError((err as Error).message, 'invalid_argument')
    }
    const limits = { ...this.limits }
    for (const key of Object.keys(asked.explicit) as Array<keyof SandboxLimits>) {
      if (asked.limits[key] > this.limits[key]) {
        const show = (n: number) => (key === 'memory' || key === 'disk' ? formatSize(n) : String(n))
        throw new SandboxError(`limits.${key}: ${show(asked.limits[key])} is over this engine's limit of ${show(this.limits[key])}; ask for less, or raise the engine's limit`, 'invalid_argument')
      }
      limits[key] = asked.limits[key]
    }
    return { limits, explicit: asked.explicit }
  }

  /** The sandbox's cgroups now, and its filesystem when it starts; both go when it ends. */
  private async resources(id: string, stateDir: string, limits: SandboxLimits, explicit: Explicit): Promise<SandboxResources> {
    const group = await this.cgroups.forSandbox(id, limits)
    let disk: Awaited<ReturnType<DiskLimits['forSandbox']>>
    return {
      group,
      prepare: async () => {
        disk = await this.disks.forSandbox(stateDir, limits.disk, explicit.disk === true || this.explicit.disk === true)
      },
      release: async () => {
        // Its processes first (the group's removal kills any left): they hold its disk.
        await group.remove()
        if (disk) await this.disks.release(disk)
      },
      releaseSync: () => disk?.removeSync(),
    }
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

  /** See LocalSandbox.outOfMemory; also for a sandbox that just ended of it. */
  outOfMemory(id: string): string | undefined {
    return this.sandboxes.get(id)?.outOfMemory()
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
  async snapshot(id: string, opts: { name?: string; metadata?: Record<string, string>; among?: (record: SnapshotRecord) => boolean } = {}): Promise<SnapshotRecord> {
    const s = this.get(id)
    if (!s) throw new SandboxError(`sandbox ${id} not found`, 'sandbox_not_found')
    const record = await this.layers.snapshot(s.upperDir, s.layers, { ...opts, hostUppers: s.hostUppers })
    const pruned = await this.layers.prune(this.maxSnapshotBytes, [record.id], opts.among)
    for (const p of pruned) log('snapshot %s (%s, %d bytes) pruned: over the %d-byte budget', p.id, p.name ?? 'unnamed', p.sizeBytes, this.maxSnapshotBytes)
    // The newest may be over the budget alone (a large template), but not on top of what pruning
    // could not free: snapshots live sandboxes run on, and the layers a chain of them holds.
    const others = (await this.layers.listSnapshots()).filter((r) => r.id !== record.id && (opts.among ?? (() => true))(r))
    const held = await this.layers.bytesOf(others)
    if (held > this.maxSnapshotBytes) {
      await this.layers.deleteSnapshot(record.id)
      throw new SandboxError(`snapshot budget reached: the snapshots kept (${formatSize(held)}, in use by live sandboxes or layers of others) are over the budget of ${formatSize(this.maxSnapshotBytes)}; kill the sandboxes that run on old snapshots, or raise the budget`, 'snapshot_budget')
    }
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
    await this.cgroups.close()
  }

  /** Last resort on process exit: no awaiting possible, so signal the sandboxes and remove what we can. */
  private killAllSync(): void {
    for (const s of this.sandboxes.values()) s.killSync()
    this.cgroups.closeSync()
    try {
      fs.rmSync(this.layers.sandboxesDir, { recursive: true, force: true })
    } catch {
      // Left for the next engine start to clean.
    }
  }
}

/** A write the engine makes in its state folder at start: a full disk there is named, with the fix. */
async function stateFolderWrite<T>(root: string, write: () => Promise<T>): Promise<T> {
  try {
    return await write()
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOSPC') throw err
    const free = fs.statfsSync(root, { bigint: false })
    throw new HostSetupError(
      `the state folder ${root} is full (${formatSize(free.bavail * free.bsize)} free): ${(err as Error).message}`,
      `free space on its disk, or give local({ stateDir }) a folder on a disk with room (the engine keeps a copy of node there, ${formatSize(fs.statSync(process.execPath).size)}, and each sandbox's writes)`,
    )
  }
}

function unenforced(cgroups: Cgroups, disks: DiskLimits): UnenforcedLimit[] {
  // Without a pids cgroup, RLIMIT_NPROC still bounds processes (per user rather than per sandbox).
  const fromCgroups = cgroups.missing.filter((m) => m.limit !== 'processes').map((m): UnenforcedLimit => ({ limit: m.limit satisfies CgroupLimit, reason: m.reason, fix: m.fix }))
  return disks.support.missing ? [...fromCgroups, { limit: 'disk', ...disks.support.missing }] : fromCgroups
}

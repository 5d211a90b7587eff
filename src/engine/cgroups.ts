/**
 * Memory, CPU and process limits of local sandboxes, through cgroups: one group per engine (all
 * its sandboxes together stay below the host's memory, less a reserve for the host) and one per
 * sandbox under it. The sandbox's first host process joins its group before it starts anything
 * (see `joinCommand`), so nothing in the sandbox ever runs outside it.
 *
 * v1 (one hierarchy per controller; older kernels and hybrid hosts) and v2 (one unified
 * hierarchy): the engine's own group must be writable, as root or where it was delegated to the
 * user (`systemd-run --user --scope -p Delegate=yes`). Where it is not, `missing` says which
 * limits cannot be enforced and why, before any sandbox exists.
 */
import { randomBytes } from 'node:crypto'
import fs from 'node:fs'
import fsp from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { markAlive, OWN_MARK } from './layers.js'
import { formatSize, type SandboxLimits } from './limits.js'
import { debug } from '../debug.js'

const log = debug('engine')

/** The cgroup-enforced limits (disk is `disk.ts`, open files an rlimit). */
export type CgroupLimit = 'memory' | 'cpus' | 'processes'
const CONTROLLER: Record<CgroupLimit, string> = { memory: 'memory', cpus: 'cpu', processes: 'pids' }
const ENGINE_PREFIX = 'vitest-sandbox-'
const CPU_PERIOD_US = 100_000
/** A sandbox's CPU weight beside a host process (v1 shares of 1024, v2 weight of 100): half. */
const SHARES = 512
const WEIGHT = 50

export interface Unenforced {
  limit: CgroupLimit
  reason: string
  fix: string
}

interface Mount {
  /** Mount point of the hierarchy. */
  dir: string
  /** Path inside the hierarchy its mount shows as its root. */
  root: string
  version: 1 | 2
  controllers: string[]
}

function readLines(file: string): string[] {
  try {
    return fs.readFileSync(file, 'utf8').split('\n').filter(Boolean)
  } catch {
    return []
  }
}

function cgroupMounts(): Mount[] {
  return readLines('/proc/self/mountinfo').flatMap((line): Mount[] => {
    const [pre, post] = line.split(' - ')
    const fields = pre.split(' ')
    const [type, , options] = (post ?? '').split(' ')
    const dir = fields[4]?.replace(/\\040/g, ' ')
    if (type === 'cgroup2') return [{ dir, root: fields[3], version: 2, controllers: [] }]
    if (type === 'cgroup') return [{ dir, root: fields[3], version: 1, controllers: options.split(',') }]
    return []
  })
}

/** This process's group in a hierarchy, as a folder under the mount. */
function ownDir(mount: Mount, ownPath: string): string {
  const rel = path.posix.relative(mount.root, ownPath)
  return rel.startsWith('..') ? path.join(mount.dir, ownPath) : path.join(mount.dir, rel)
}

/**
 * Kill every process still in a group. A sandbox's processes can outlive its bubblewrap: its pid 1
 * (bubblewrap's own init) is writable by them, and one that cleared its parent-death signal kept
 * its whole sandbox running after the run.
 */
function killMembers(dir: string): void {
  for (const pid of readLines(path.join(dir, 'cgroup.procs')).map(Number)) {
    if (!Number.isInteger(pid) || pid <= 1 || pid === process.pid) continue
    try {
      process.kill(pid, 'SIGKILL')
    } catch {
      // Gone meanwhile.
    }
  }
}

/** rmdir a group and the groups under it (their processes killed), deepest first. */
async function removeGroup(dir: string): Promise<boolean> {
  let entries: fs.Dirent[] = []
  try {
    entries = await fsp.readdir(dir, { withFileTypes: true })
  } catch {
    return true
  }
  for (const e of entries) if (e.isDirectory()) await removeGroup(path.join(dir, e.name))
  // A killed process leaves its group a moment later: try for up to a second.
  for (let i = 0; i < 20; i++) {
    killMembers(dir)
    try {
      await fsp.rmdir(dir)
      return true
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return true
      await new Promise((r) => setTimeout(r, 50))
    }
  }
  return false
}

function write(file: string, value: string | number): void {
  fs.writeFileSync(file, String(value))
}

/** One sandbox's groups: the `cgroup.procs` files its first process joins, and its OOM count. */
export class SandboxGroup {
  constructor(
    /** One folder per hierarchy (v1: per controller; v2: one). */
    readonly dirs: string[],
    private readonly version: 1 | 2,
    private readonly memoryDir?: string,
  ) {}

  get procsFiles(): string[] {
    return this.dirs.map((d) => path.join(d, 'cgroup.procs'))
  }

  /** Processes the kernel killed because the sandbox reached its memory limit, so far. */
  oomKills(): number {
    if (!this.memoryDir) return 0
    const file = path.join(this.memoryDir, this.version === 1 ? 'memory.oom_control' : 'memory.events')
    const line = readLines(file).find((l) => l.startsWith('oom_kill '))
    return line ? Number(line.split(' ')[1]) || 0 : 0
  }

  async remove(): Promise<void> {
    for (const d of this.dirs) if (!(await removeGroup(d))) log('cgroup %s not removed (still busy); the next engine start removes it', d)
  }
}

export class Cgroups {
  private constructor(
    readonly version: 1 | 2 | undefined,
    /** The engine's group per controller (v2: the same folder for each). */
    private readonly engineDirs: Partial<Record<CgroupLimit, string>>,
    readonly missing: Unenforced[],
  ) {}

  /** No cgroup limits (`limits: false`): nothing made, nothing reported missing. */
  static off(): Cgroups {
    return new Cgroups(undefined, {}, [])
  }

  /** Whether the host enforces this limit for the engine's sandboxes. */
  enforces(limit: CgroupLimit): boolean {
    return this.engineDirs[limit] !== undefined
  }

  /**
   * Find this process's groups, clear those of engines that died (SIGKILL leaves them), and make
   * this engine's, its memory capped at the host's less a reserve for the host itself.
   */
  static async setup(): Promise<Cgroups> {
    const mounts = cgroupMounts()
    const own = readLines('/proc/self/cgroup').map((l) => {
      const [, list, p] = /^\d+:([^:]*):(.*)$/.exec(l) ?? []
      return { controllers: (list ?? '').split(',').filter(Boolean), path: p ?? '/' }
    })
    const v1 = (controller: string) => mounts.find((m) => m.version === 1 && m.controllers.includes(controller))
    const unified = mounts.find((m) => m.version === 2)
    const dirs: Partial<Record<CgroupLimit, string>> = {}
    const missing: Unenforced[] = []
    const root = process.getuid?.() === 0
    const instance = randomBytes(4).toString('hex')
    let version: 1 | 2 | undefined
    const v2Controllers = unified ? readLines(path.join(ownDir(unified, own.find((o) => !o.controllers.length)?.path ?? '/'), 'cgroup.controllers')).join(' ').split(' ') : []
    for (const limit of Object.keys(CONTROLLER) as CgroupLimit[]) {
      const controller = CONTROLLER[limit]
      const m1 = v1(controller)
      const base = m1
        ? ownDir(m1, own.find((o) => o.controllers.includes(controller))?.path ?? '/')
        : unified && v2Controllers.includes(controller)
          ? ownDir(unified, own.find((o) => !o.controllers.length)?.path ?? '/')
          : undefined
      const fix = root ? 'mount the cgroup hierarchy read-write (a container needs --cgroupns=private or a writable /sys/fs/cgroup)' : 'run as root, or under a cgroup delegated to this user: `systemd-run --user --scope -p Delegate=yes <your command>`'
      if (!base) {
        missing.push({ limit, reason: `this host has no ${controller} cgroup controller`, fix: 'use a kernel with cgroups (v2, or v1 with the controller mounted)' })
        continue
      }
      try {
        await clearDead(base)
        const dir = path.join(base, `${ENGINE_PREFIX}${OWN_MARK}${instance}`)
        if (!m1) enableControllers(base, unified!)
        await fsp.mkdir(dir, { recursive: true })
        if (!m1) write(path.join(dir, 'cgroup.subtree_control'), '+memory +cpu +pids'.split(' ').filter((c) => v2Controllers.includes(c.slice(1))).join(' '))
        dirs[limit] = dir
        version ??= m1 ? 1 : 2
      } catch (err) {
        missing.push({ limit, reason: `the ${controller} cgroup ${base} is not writable by this process (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`, fix })
      }
    }
    const groups = new Cgroups(version, dirs, missing)
    groups.capEngineMemory()
    return groups
  }

  /** All sandboxes together: the host's memory less a reserve (10%, at least 512 MiB). */
  private capEngineMemory(): void {
    const dir = this.engineDirs.memory
    if (!dir) return
    const total = os.totalmem()
    const cap = total - Math.max(512 * 1024 ** 2, Math.floor(total / 10))
    writeMemory(dir, cap, this.version!)
    log('cgroups v%d: all sandboxes together may use %s of memory', this.version, formatSize(cap))
  }

  /** Make a sandbox's group(s) with its limits. */
  async forSandbox(id: string, limits: SandboxLimits): Promise<SandboxGroup> {
    const dirs = new Map<string, CgroupLimit[]>()
    for (const [limit, engineDir] of Object.entries(this.engineDirs) as Array<[CgroupLimit, string]>) {
      const dir = path.join(engineDir, id)
      dirs.set(dir, [...(dirs.get(dir) ?? []), limit])
    }
    const made: string[] = []
    try {
      for (const [dir, kinds] of dirs) {
        await fsp.mkdir(dir)
        made.push(dir)
        for (const kind of kinds) applyLimit(dir, kind, limits, this.version!)
      }
    } catch (err) {
      await new SandboxGroup(made, this.version!).remove()
      throw err
    }
    const memoryDir = this.engineDirs.memory && path.join(this.engineDirs.memory, id)
    return new SandboxGroup(made, this.version!, memoryDir)
  }

  /** Remove the engine's groups (their sandboxes gone). */
  async close(): Promise<void> {
    for (const dir of new Set(Object.values(this.engineDirs))) await removeGroup(dir)
  }

  /** The same at process exit, waiting synchronously (at most 2 s) for killed sandboxes to leave. */
  closeSync(): void {
    const until = Date.now() + 2000
    for (const dir of new Set(Object.values(this.engineDirs))) removeGroupSync(dir, until)
  }
}

const PAUSE = new Int32Array(new SharedArrayBuffer(4))

/** removeGroup, synchronously (the event loop no longer runs at exit); what is still busy at `until` stays for the next engine start. */
function removeGroupSync(dir: string, until: number): boolean {
  let entries: fs.Dirent[] = []
  try {
    entries = fs.readdirSync(dir, { withFileTypes: true })
  } catch {
    return true
  }
  for (const e of entries) if (e.isDirectory()) removeGroupSync(path.join(dir, e.name), until)
  for (;;) {
    killMembers(dir)
    try {
      fs.rmdirSync(dir)
      return true
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return true
      if (Date.now() >= until) return false
      Atomics.wait(PAUSE, 0, 0, 20)
    }
  }
}

/** Groups of engines whose process is gone. */
async function clearDead(base: string): Promise<void> {
  let names: string[] = []
  try {
    names = await fsp.readdir(base)
  } catch {
    return
  }
  for (const name of names) {
    const mark = name.slice(ENGINE_PREFIX.length)
    if (name.startsWith(ENGINE_PREFIX) && /^\d+-/.test(mark) && !mark.startsWith(OWN_MARK) && !markAlive(mark)) await removeGroup(path.join(base, name))
  }
}

/**
 * v2 lets a group hand controllers to its children only while it holds no processes itself: when
 * this process's own group (delegated, or a container's root) has some, they move to a leaf.
 */
function enableControllers(base: string, unified: Mount): void {
  const want = ['memory', 'cpu', 'pids'].filter((c) => readLines(path.join(base, 'cgroup.controllers')).join(' ').split(' ').includes(c))
  const control = path.join(base, 'cgroup.subtree_control')
  const enabled = readLines(control).join(' ').split(' ')
  const needed = want.filter((c) => !enabled.includes(c))
  if (!needed.length) return
  try {
    write(control, needed.map((c) => `+${c}`).join(' '))
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EBUSY' || base === unified.dir) throw err
    const leaf = path.join(base, `${ENGINE_PREFIX}host`)
    fs.mkdirSync(leaf, { recursive: true })
    for (const pid of readLines(path.join(base, 'cgroup.procs'))) {
      try {
        write(path.join(leaf, 'cgroup.procs'), pid)
      } catch {
        // Exited meanwhile.
      }
    }
    log('cgroups v2: moved the processes of %s into %s to hand its controllers down', base, leaf)
    write(control, needed.map((c) => `+${c}`).join(' '))
  }
}

function writeMemory(dir: string, bytes: number, version: 1 | 2): void {
  if (version === 1) {
    write(path.join(dir, 'memory.limit_in_bytes'), bytes)
    // Swap counts: memory plus swap under the same bound, where swap is accounted.
    if (fs.existsSync(path.join(dir, 'memory.memsw.limit_in_bytes'))) write(path.join(dir, 'memory.memsw.limit_in_bytes'), bytes)
    // v1 charges TCP buffers to a group only once it has a TCP limit (v2 always does).
    if (fs.existsSync(path.join(dir, 'memory.kmem.tcp.limit_in_bytes'))) write(path.join(dir, 'memory.kmem.tcp.limit_in_bytes'), bytes)
  } else {
    write(path.join(dir, 'memory.max'), bytes)
    if (fs.existsSync(path.join(dir, 'memory.swap.max'))) write(path.join(dir, 'memory.swap.max'), 0)
  }
}

function applyLimit(dir: string, kind: CgroupLimit, limits: SandboxLimits, version: 1 | 2): void {
  switch (kind) {
    case 'memory':
      return writeMemory(dir, limits.memory, version)
    case 'processes':
      return write(path.join(dir, 'pids.max'), limits.processes)
    case 'cpus': {
      const quota = limits.cpus >= os.availableParallelism() ? undefined : Math.max(1000, Math.round(limits.cpus * CPU_PERIOD_US))
      if (version === 1) {
        write(path.join(dir, 'cpu.shares'), SHARES)
        write(path.join(dir, 'cpu.cfs_period_us'), CPU_PERIOD_US)
        write(path.join(dir, 'cpu.cfs_quota_us'), quota ?? -1)
      } else {
        write(path.join(dir, 'cpu.weight'), WEIGHT)
        write(path.join(dir, 'cpu.max'), `${quota ?? 'max'} ${CPU_PERIOD_US}`)
      }
    }
  }
}

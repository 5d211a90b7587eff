/**
 * The disk limit of local sandboxes: each sandbox's writable layer (its upper and work folders,
 * `/tmp` included) lives on a filesystem of its own, an ext4 image of the limit's size, sparse,
 * mounted from a loop device. A test that fills it gets ENOSPC inside; the host's disk holds at
 * most the limit. Mounting one needs root; without it the limit is not enforced (`missing`).
 *
 * Space is promised before it is used: a sandbox starts only if the state folder's disk has room
 * for its whole limit on top of what the live ones may still write, with a floor left for the host.
 */
import { execFile, execFileSync } from 'node:child_process'
import fs from 'node:fs'
import fsp from 'node:fs/promises'
import path from 'node:path'
import { promisify } from 'node:util'
import { which } from './host.js'
import { DEFAULT_DISK, formatSize, MIN_DISK } from './limits.js'

const run = promisify(execFile)
/** Disk left free for the host whatever the sandboxes write. */
const HOST_FLOOR = 1024 ** 3
const IMAGE = 'disk.img'

export interface DiskSupport {
  /** Why the disk limit is not enforced here, and the fix; absent when it is. */
  missing?: { reason: string; fix: string }
  /** Not asked for (`limits: false`). */
  off?: true
}

/** A sandbox's own filesystem, mounted at `dir`. */
export class SandboxDisk {
  constructor(readonly dir: string, readonly limit: number) {}

  /** Bytes it may still write. */
  unused(): number {
    try {
      const s = fs.statfsSync(this.dir)
      return s.bavail * s.bsize
    } catch {
      return 0
    }
  }

  async remove(): Promise<void> {
    await run('umount', ['--lazy', this.dir]).catch(() => {})
    await fsp.rm(path.join(path.dirname(this.dir), IMAGE), { force: true })
  }

  removeSync(): void {
    try {
      execFileSync('umount', ['--lazy', this.dir], { stdio: 'ignore' })
    } catch {
      // Left for the next engine start (unmountUnder).
    }
  }
}

export class DiskLimits {
  private readonly live = new Set<SandboxDisk>()
  private constructor(private readonly stateRoot: string, readonly support: DiskSupport, private readonly owner: { uid: number; gid: number }) {}

  /** @param off no disk limit asked for (`limits: false`): a plain folder, nothing reported. */
  static detect(stateRoot: string, owner: { uid: number; gid: number }, off = false): DiskLimits {
    const tools = ['mkfs.ext4', 'mount', 'umount'].filter((t) => !which(t))
    const support: DiskSupport = off
      ? { off: true }
      : process.getuid?.() !== 0
        ? { missing: { reason: 'a size-limited filesystem per sandbox needs root to mount', fix: 'run as root (in CI, `sudo`), or accept that a sandbox may fill the disk of its state folder' } }
        : tools.length
          ? { missing: { reason: `${tools.join(', ')} not found`, fix: 'install e2fsprogs and mount (util-linux)' } }
          : !fs.existsSync('/dev/loop-control')
            ? { missing: { reason: 'this host has no loop devices (/dev/loop-control)', fix: 'load the loop module (`modprobe loop`), or in a container pass the loop devices through' } }
            : {}
    return new DiskLimits(stateRoot, support, owner)
  }

  get enforced(): boolean {
    return !this.support.missing && !this.support.off
  }

  /**
   * The size a new sandbox gets: its limit if the disk has room for it beside the live ones'
   * promises; the default shrinks to what fits; a limit the user gave does not.
   */
  private size(limit: number, explicit: boolean): number {
    const s = fs.statfsSync(this.stateRoot)
    const promised = [...this.live].reduce((sum, d) => sum + d.unused(), 0)
    const room = s.bavail * s.bsize - promised - HOST_FLOOR
    if (limit <= room) return limit
    if (!explicit && limit === DEFAULT_DISK && room >= MIN_DISK) return room
    throw Object.assign(
      new Error(
        `not enough free disk for another sandbox: its disk limit is ${formatSize(limit)}, but ${this.stateRoot} has ${formatSize(Math.max(0, room))} to give ` +
          `(after ${formatSize(promised)} the live sandboxes may still write and ${formatSize(HOST_FLOOR)} kept for the host). ` +
          'Free disk space there, lower `local({ limits: { disk } })`, or run fewer sandboxes',
      ),
      { code: 'disk_full' },
    )
  }

  /** Make and mount a sandbox's filesystem at `<stateDir>/rw` (a plain folder when not enforced). */
  async forSandbox(stateDir: string, limit: number, explicit: boolean): Promise<SandboxDisk | undefined> {
    const dir = path.join(stateDir, 'rw')
    await fsp.mkdir(dir, { recursive: true, mode: 0o755 })
    if (!this.enforced) return undefined
    const size = this.size(limit, explicit)
    const image = path.join(stateDir, IMAGE)
    const handle = await fsp.open(image, 'wx', 0o600)
    await handle.truncate(size)
    await handle.close()
    // No journal and lazy inode tables: made in milliseconds, and nothing written until used.
    await run('mkfs.ext4', ['-q', '-F', '-m', '0', '-O', '^has_journal', '-i', '8192', '-I', '128',
      '-E', `lazy_itable_init=1,lazy_journal_init=1,root_owner=${this.owner.uid}:${this.owner.gid}`, image])
    await run('mount', ['-o', 'loop,nosuid,nodev', image, dir])
    const disk = new SandboxDisk(dir, size)
    this.live.add(disk)
    return disk
  }

  release(disk: SandboxDisk): Promise<void> {
    this.live.delete(disk)
    return disk.remove()
  }
}

/** Unmount what an engine that died left mounted under `dir` (deepest first), before removing it. */
export async function unmountUnder(dir: string): Promise<void> {
  const points = fs
    .readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[4]?.replace(/\\040/g, ' '))
    .filter((p): p is string => !!p && p.startsWith(dir + path.sep))
    .sort((a, b) => b.length - a.length)
  for (const p of points) await run('umount', ['--lazy', p]).catch(() => {})
}

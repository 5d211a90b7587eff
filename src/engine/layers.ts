/**
 * Filesystem layers on the host. A sandbox's root is an overlayfs: its own writable upper
 * directory over read-only lower layers (the template's layers, then the base skeleton). Layers are
 * immutable once written, because overlayfs forbids changing a lower directory while it is
 * mounted; a snapshot therefore always makes a new layer and never touches an old one.
 *
 *   <root>/base/<hash>/      the skeleton: mount points, /etc basics, the /bin -> usr/bin links
 *   <root>/layers/<id>/      one snapshot's files (a copy of a sandbox's upper directory; a host
 *      layer's changes sit at that layer's own path inside it)
 *   <root>/snapshots/<id>.json  { id, name, layers: [newest first], metadata, createdAt, lastUsedAt }
 *   <root>/sandboxes/<pid>-<engine>/<id>/{upper,work,merged,host-N,layers.json}   per sandbox,
 *      deleted on kill; a SIGKILLed engine's leftovers are deleted by the next engine that starts.
 *      `layers.json` names the layers it runs on, so no engine deletes a layer another one uses.
 */
import { execFile } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import fs from 'node:fs'
import fsp from 'node:fs/promises'
import path from 'node:path'
import { promisify } from 'node:util'
import { unmountUnder } from './disk.js'

const run = promisify(execFile)

/** Sandbox user inside every sandbox. */
export const SANDBOX_UID = 1000
export const SANDBOX_HOME = '/home/sandbox'

/**
 * Top-level mount points whose contents are never the sandbox's own files. (/tmp is kept: a
 * workspace may live under it, and its node_modules then belong in the template.)
 */
const EPHEMERAL = new Set(['proc', 'dev', 'sys'])

/** In a sandbox's state folder: the layer ids it runs on, for every engine sharing the folder. */
export const IN_USE_FILE = 'layers.json'

export interface SnapshotRecord {
  id: string
  name?: string
  /** Layer ids, newest first (overlayfs lowerdir order). */
  layers: string[]
  metadata: Record<string, string>
  sizeBytes: number
  createdAt: string
  /** When a sandbox last started from it (the least recently used go first when over budget). */
  lastUsedAt?: string
}

/** A host directory a sandbox's upper layer captured changes of (see LocalSandbox hostLayers). */
export interface HostLayerUpper {
  /** Where the directory is, on the host and in the sandbox. */
  target: string
  /** The sandbox's own copy-on-write layer over it. */
  upper: string
}

/** Whether a process of this pid runs (one of another user's counts). */
/** A process's start, in clock ticks after boot (`/proc/<pid>/stat`): with its pid, it names one process for good. */
export function startTicks(pid: number): string | undefined {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19]
  } catch {
    return undefined
  }
}

/**
 * This engine's mark in the names of what it leaves (state folders, cgroups): `<pid>-<start>.`.
 * A later engine takes them for a dead engine's when no process with that pid and start lives:
 * the pid alone may be another process's by then (a dead engine's sandbox stayed for good).
 */
export const OWN_MARK = `${process.pid}-${startTicks(process.pid) ?? '0'}.`

/** Is the engine that made a name of this mark (`<pid>-<start>.…`, or an older `<pid>-…`) alive? */
export function markAlive(name: string): boolean {
  const m = /^(\d+)-(?:(\d+)\.)?/.exec(name)
  if (!m) return false
  if (m[2] === undefined) return isAlive(Number(m[1]))
  // Where another user's processes are hidden (/proc with hidepid), a live pid is taken as the engine.
  const ticks = startTicks(Number(m[1]))
  return ticks === undefined ? isAlive(Number(m[1])) : ticks === m[2]
}

export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM'
  }
}

export function newId(prefix: string): string {
  return `${prefix}_${randomBytes(9).toString('base64url').replace(/[-_]/g, 'x')}`
}

/** Overlayfs mount options are comma and colon separated: such paths cannot be layers. */
export function assertMountablePath(p: string): void {
  if (/[,:\\\n]/.test(p)) throw new Error(`engine state directory path ${JSON.stringify(p)} contains ',', ':' or '\\', which overlayfs mount options cannot express; set stateDir to another folder`)
}

function skeletonSpec(): { links: Record<string, string>; dirs: string[]; files: Record<string, string> } {
  const links: Record<string, string> = {}
  for (const name of ['bin', 'sbin', 'lib', 'lib32', 'lib64', 'libx32']) {
    try {
      links[name] = fs.readlinkSync(`/${name}`)
    } catch {
      // A real directory (bound read-only instead) or absent.
    }
  }
  const dirs = ['usr', 'bin', 'sbin', 'lib', 'lib64', 'etc', 'proc', 'dev', 'tmp', 'run', 'home', SANDBOX_HOME.slice(1), '.vitest-sandbox']
    .filter((d) => !(d in links))
  const files: Record<string, string> = {
    'etc/passwd': `root:x:0:0:root:/root:/bin/sh\nsandbox:x:${SANDBOX_UID}:${SANDBOX_UID}:sandbox:${SANDBOX_HOME}:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n`,
    'etc/group': `root:x:0:\nsandbox:x:${SANDBOX_UID}:\nnogroup:x:65534:\n`,
    'etc/hosts': '127.0.0.1\tlocalhost sandbox\n::1\tlocalhost ip6-localhost ip6-loopback\n',
    'etc/hostname': 'sandbox\n',
    // DNS for sandboxes on the host's network (their resolv.conf is the host's); others have none.
    'etc/nsswitch.conf': 'passwd: files\ngroup: files\nhosts: files dns\n',
    'etc/resolv.conf': '',
  }
  return { links, dirs, files }
}

export class LayerStore {
  readonly baseDir: string
  /** This engine's folder of sandbox upper directories. */
  readonly sandboxesDir: string
  constructor(readonly root: string, private readonly owner: { uid: number; gid: number }) {
    assertMountablePath(root)
    this.sandboxesDir = path.join(root, 'sandboxes', `${OWN_MARK}${randomBytes(4).toString('hex')}`)
    this.baseDir = path.join(root, 'base', createHash('sha256').update(JSON.stringify(skeletonSpec())).digest('hex').slice(0, 16))
  }

  /** Create the directory tree and the skeleton layer (once per host layout; atomic). */
  async init(): Promise<void> {
    for (const d of ['base', 'layers', 'snapshots', 'sandboxes']) await fsp.mkdir(path.join(this.root, d), { recursive: true, mode: 0o755 })
    // The sandbox's host uid must be able to reach the layers to mount them.
    await fsp.chmod(this.root, 0o755)
    await this.removeStaleSandboxes()
    await fsp.mkdir(this.sandboxesDir, { mode: 0o755 })
    if (fs.existsSync(this.baseDir)) return
    const tmp = `${this.baseDir}.tmp-${process.pid}`
    await fsp.rm(tmp, { recursive: true, force: true })
    const spec = skeletonSpec()
    for (const d of spec.dirs) await fsp.mkdir(path.join(tmp, d), { recursive: true, mode: 0o755 })
    for (const [name, target] of Object.entries(spec.links)) await fsp.symlink(target, path.join(tmp, name))
    for (const [name, text] of Object.entries(spec.files)) await fsp.writeFile(path.join(tmp, name), text, { mode: 0o644 })
    await this.chownTree(tmp)
    try {
      await fsp.rename(tmp, this.baseDir)
    } catch (err) {
      // Another engine created it first: theirs is identical.
      await fsp.rm(tmp, { recursive: true, force: true })
      if (!fs.existsSync(this.baseDir)) throw err
    }
  }

  /** Upper directories left by engines that died without cleaning up (their pid is gone). */
  private async removeStaleSandboxes(): Promise<void> {
    const dir = path.join(this.root, 'sandboxes')
    for (const name of await fsp.readdir(dir)) {
      if (!Number.parseInt(name, 10) || markAlive(name)) continue
      await unmountUnder(path.join(dir, name))
      await fsp.rm(path.join(dir, name), { recursive: true, force: true }).catch(() => {})
    }
  }

  async chownTree(dir: string): Promise<void> {
    if (process.getuid?.() !== 0) return
    await run('chown', ['-R', '-h', `${this.owner.uid}:${this.owner.gid}`, dir])
  }

  layerDir(id: string): string {
    return path.join(this.root, 'layers', id)
  }

  sandboxDir(id: string): string {
    return path.join(this.sandboxesDir, id)
  }

  async getSnapshot(idOrName: string): Promise<SnapshotRecord | undefined> {
    return (await this.snapshotById(idOrName)) ?? (await this.listSnapshots()).find((s) => s.name === idOrName)
  }

  /** The snapshot with this id, by its id alone. */
  async snapshotById(id: string): Promise<SnapshotRecord | undefined> {
    if (!/^[\w.-]+$/.test(id)) return undefined
    try {
      return JSON.parse(await fsp.readFile(path.join(this.root, 'snapshots', `${id}.json`), 'utf8'))
    } catch {
      return undefined
    }
  }

  async listSnapshots(): Promise<SnapshotRecord[]> {
    const dir = path.join(this.root, 'snapshots')
    const out: SnapshotRecord[] = []
    for (const f of await fsp.readdir(dir).catch(() => [])) {
      if (!f.endsWith('.json')) continue
      try {
        out.push(JSON.parse(await fsp.readFile(path.join(dir, f), 'utf8')))
      } catch {
        // A record being written by another engine.
      }
    }
    return out.sort((a, b) => a.createdAt.localeCompare(b.createdAt))
  }

  /**
   * Turn a sandbox's upper directory into a new immutable layer, stacked on the layers the
   * sandbox started from. The copy (reflinked where the filesystem can) keeps overlayfs whiteouts
   * and opaque markers, so deletions inside the sandbox stay deleted in the template.
   */
  async snapshot(upper: string, parentLayers: string[], opts: { name?: string; metadata?: Record<string, string>; hostUppers?: HostLayerUpper[] }): Promise<SnapshotRecord> {
    const id = newId('snap')
    const layer = this.layerDir(id)
    const tmp = `${layer}.tmp`
    await fsp.mkdir(tmp, { mode: 0o755 })
    try {
      const entries = (await fsp.readdir(upper)).filter((e) => !EPHEMERAL.has(e))
      if (entries.length) await run('cp', ['-a', '--reflink=auto', ...entries.map((e) => path.join(upper, e)), `${tmp}/`])
      for (const h of opts.hostUppers ?? []) {
        if (!(await fsp.readdir(h.upper)).length) continue
        const at = path.join(tmp, h.target)
        await fsp.mkdir(at, { recursive: true, mode: 0o755 })
        await run('cp', ['-a', '--reflink=auto', `${h.upper}/.`, `${at}/`])
      }
      await this.chownTree(tmp)
      await fsp.rename(tmp, layer)
    } catch (err) {
      await fsp.rm(tmp, { recursive: true, force: true })
      throw err
    }
    const { stdout } = await run('du', ['-sb', layer])
    const record: SnapshotRecord = {
      id,
      name: opts.name,
      layers: [id, ...parentLayers],
      metadata: opts.metadata ?? {},
      sizeBytes: Number.parseInt(stdout, 10) || 0,
      createdAt: new Date().toISOString(),
    }
    await this.writeRecord(record)
    return record
  }

  /**
   * Hold `<root>/locks/<name>.lock` until the returned function is called, waiting while another
   * live process holds it (`onWait` is told once; a dead holder's lock is taken over).
   */
  async lock(name: string, onWait?: () => void): Promise<() => Promise<void>> {
    const dir = path.join(this.root, 'locks')
    await fsp.mkdir(dir, { recursive: true, mode: 0o755 })
    const file = path.join(dir, `${name.replace(/[^\w.-]/g, '_')}.lock`)
    for (;;) {
      try {
        await fsp.writeFile(file, String(process.pid), { flag: 'wx' })
        return () => fsp.rm(file, { force: true })
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err
      }
      const holder = await fsp.readFile(file, 'utf8').catch(() => '')
      const pid = Number.parseInt(holder, 10)
      // Empty: being written right now. Re-read before taking a dead holder's lock over, so a
      // lock someone else just took over is left alone.
      if (pid && !isAlive(pid) && (await fsp.readFile(file, 'utf8').catch(() => '')) === holder) {
        await fsp.rm(file, { force: true })
        continue
      }
      onWait?.()
      onWait = undefined
      await new Promise((r) => setTimeout(r, 200))
    }
  }

  /** Record that a sandbox starts from this snapshot now. */
  async touch(record: SnapshotRecord): Promise<void> {
    record.lastUsedAt = new Date().toISOString()
    await this.writeRecord(record).catch(() => {}) // deleted meanwhile: nothing to record
  }

  private async writeRecord(record: SnapshotRecord): Promise<void> {
    const file = path.join(this.root, 'snapshots', `${record.id}.json`)
    const tmp = `${file}.tmp-${process.pid}-${randomBytes(3).toString('hex')}`
    await fsp.writeFile(tmp, JSON.stringify(record, null, 2))
    await fsp.rename(tmp, file)
  }

  /** Layers under a live sandbox of any engine sharing this folder. */
  async layersInUse(): Promise<Set<string>> {
    const used = new Set<string>()
    const dir = path.join(this.root, 'sandboxes')
    for (const engineDir of await fsp.readdir(dir).catch(() => [])) {
      if (!markAlive(engineDir)) continue
      for (const sbx of await fsp.readdir(path.join(dir, engineDir)).catch(() => [])) {
        try {
          for (const l of JSON.parse(await fsp.readFile(path.join(dir, engineDir, sbx, IN_USE_FILE), 'utf8'))) used.add(l)
        } catch {
          // Starting or ending right now.
        }
      }
    }
    return used
  }

  /**
   * Delete a snapshot record; its layer goes too unless another snapshot stacks on it. A snapshot
   * a live sandbox (of any engine on this folder) runs on is kept: `in_use`.
   */
  async deleteSnapshot(id: string): Promise<'deleted' | 'not_found' | 'in_use'> {
    const record = await this.getSnapshot(id)
    if (!record || record.id !== id) return 'not_found'
    const inUse = await this.layersInUse()
    if (inUse.has(id)) return 'in_use'
    await fsp.rm(path.join(this.root, 'snapshots', `${id}.json`), { force: true })
    const stillUsed = new Set(inUse)
    for (const s of await this.listSnapshots()) for (const l of s.layers) stillUsed.add(l)
    if (!stillUsed.has(id)) await fsp.rm(this.layerDir(id), { recursive: true, force: true })
    return 'deleted'
  }

  /** Bytes on disk of the distinct layers these snapshots stand on (layers never change: each measured once). */
  async bytesOf(records: SnapshotRecord[]): Promise<number> {
    let total = 0
    for (const id of new Set(records.flatMap((r) => r.layers))) {
      let size = this.layerSizes.get(id)
      if (size === undefined) {
        size = Number.parseInt((await run('du', ['-sb', this.layerDir(id)]).catch(() => ({ stdout: '0' }))).stdout, 10) || 0
        this.layerSizes.set(id, size)
      }
      total += size
    }
    return total
  }
  private readonly layerSizes = new Map<string, number>()

  /**
   * Keep the snapshots within `budget` bytes: delete the least recently used ones (never one a
   * live sandbox runs on, never `keep`) until the rest fit. Returns what was deleted.
   */
  async prune(budget: number, keep: string[] = [], among: (record: SnapshotRecord) => boolean = () => true): Promise<SnapshotRecord[]> {
    const all = (await this.listSnapshots()).filter(among)
    let total = all.reduce((n, s) => n + s.sizeBytes, 0)
    const removed: SnapshotRecord[] = []
    const lru = [...all].sort((a, b) => (a.lastUsedAt ?? a.createdAt).localeCompare(b.lastUsedAt ?? b.createdAt))
    for (const s of lru) {
      if (total <= budget) break
      if (keep.includes(s.id) || (await this.deleteSnapshot(s.id)) !== 'deleted') continue
      total -= s.sizeBytes
      removed.push(s)
    }
    return removed
  }
}

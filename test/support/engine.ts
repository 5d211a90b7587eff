import { spawnSync } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { defaultStateDir, startLocalEngine, type EngineOptions, type LocalEngineHandle } from '../../src/engine/index.js'
import { RuntimeClient } from '../../src/protocol/client.js'

export function tempDir(prefix: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `vps-${prefix}-`))
  fs.chmodSync(dir, 0o755)
  return dir
}

/** A real engine and protocol server on loopback, with its own state folder, and a client. */
export async function startTestEngine(opts: EngineOptions & { allowNetwork?: boolean } = {}): Promise<{ handle: LocalEngineHandle; client: RuntimeClient; stateDir: string; close: () => Promise<void> }> {
  const stateDir = opts.stateDir ?? tempDir('state')
  const handle = await startLocalEngine({ ...opts, stateDir })
  const client = new RuntimeClient({ url: handle.url, token: handle.token })
  return {
    handle,
    client,
    stateDir,
    close: async () => {
      await client.close()
      await handle.close()
      fs.rmSync(stateDir, { recursive: true, force: true })
    },
  }
}

/** Host processes whose command line contains `marker` (to prove a sandbox left nothing behind). */
export function hostProcessesMatching(marker: string): number[] {
  const pids: number[] = []
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name) || Number(name) === process.pid) continue
    try {
      const cmd = fs.readFileSync(`/proc/${name}/cmdline`, 'utf8').replace(/\0/g, ' ')
      if (cmd.includes(marker)) pids.push(Number(name))
    } catch {
      // Exited while we looked.
    }
  }
  return pids
}

export async function waitFor(cond: () => boolean | Promise<boolean>, timeoutMs = 10_000, what = 'condition'): Promise<void> {
  const end = Date.now() + timeoutMs
  while (Date.now() < end) {
    if (await cond()) return
    await new Promise((r) => setTimeout(r, 50))
  }
  throw new Error(`timed out after ${timeoutMs}ms waiting for ${what}`)
}

/** Host pids of every process below `root` (to count what a sandbox is running). */
export function descendants(root: number): number[] {
  const children = new Map<number, number[]>()
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue
    try {
      const stat = fs.readFileSync(`/proc/${name}/stat`, 'utf8')
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1])
      children.set(ppid, [...(children.get(ppid) ?? []), Number(name)])
    } catch {
      // Exited while we looked.
    }
  }
  const out: number[] = []
  const queue = [root]
  while (queue.length) for (const c of children.get(queue.shift()!) ?? []) out.push(c), queue.push(c)
  return out
}

/**
 * What the engine of host process `pid` left on the host: its sandboxes' folders in the state
 * folder, filesystems still mounted there, loop devices backing them, and its cgroups.
 */
export function leftoversOf(pid: number, stateDir = defaultStateDir()): string[] {
  const prefix = path.join(stateDir, 'sandboxes', `${pid}-`)
  const folders = fs.existsSync(path.dirname(prefix)) ? fs.readdirSync(path.dirname(prefix)).filter((n) => n.startsWith(`${pid}-`)).map((n) => `folder ${n}`) : []
  const mounts = fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').map((l) => l.split(' ')[4]).filter((p) => p?.startsWith(prefix)).map((p) => `mount ${p}`)
  const loops = fs.readdirSync('/sys/block').filter((d) => d.startsWith('loop')).flatMap((d) => {
    try {
      const backing = fs.readFileSync(`/sys/block/${d}/loop/backing_file`, 'utf8').trim()
      return backing.startsWith(prefix) ? [`loop ${d} ${backing}`] : []
    } catch {
      return [] // not attached
    }
  })
  const groups = spawnSync('find', ['/sys/fs/cgroup', '-maxdepth', '4', '-type', 'd', '-name', `vitest-sandbox-${pid}-*`], { encoding: 'utf8' }).stdout.split('\n').filter(Boolean).map((g) => `cgroup ${g}`)
  return [...folders, ...mounts, ...loops, ...groups]
}

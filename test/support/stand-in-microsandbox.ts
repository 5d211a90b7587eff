/**
 * A stand-in for the `microsandbox` SDK where no microVM can boot (no hardware virtualization, as
 * on this project's machines): the part of the SDK microsandbox() uses (`MicrosandboxSdk`, which
 * microsandbox.test.ts checks the SDK's own types against), carried out by the local
 * engine, with the SDK's semantics the adapter relies on: names as ids, labels in `configJson`, a
 * paged listing that includes stopped sandboxes, snapshots only of stopped sandboxes, exec events
 * `started`/`stdout`/`stderr`/`exited` with 128 + n for a signal.
 */
import fs from 'node:fs'
import { PassThrough } from 'node:stream'
import { Engine } from '../../src/engine/engine.js'
import type { LocalSandbox } from '../../src/engine/sandbox.js'
import type { MicrosandboxSdk } from '../../src/providers/microsandbox.js'
import { tempDir } from './engine.js'

type Sdk = MicrosandboxSdk
type SdkSandbox = Awaited<ReturnType<ReturnType<Sdk['Sandbox']['builder']>['create']>>
type SdkHandle = Awaited<ReturnType<Sdk['Sandbox']['get']>>

const SIGNALS: Record<string, number> = { SIGKILL: 9, SIGTERM: 15, SIGINT: 2 }

interface Box {
  name: string
  local: LocalSandbox
  labels: Record<string, string>
  status: 'running' | 'stopped'
  createdAt: Date
  build: { snapshot?: string; network: boolean; timeoutSec: number; cpus: number; memoryMib: number }
}

export async function startStandInMicrosandbox() {
  const stateDir = tempDir('stand-in-msb')
  const engine = await Engine.start({ stateDir })
  const boxes = new Map<string, Box>()
  const snapshots = new Map<string, { engineId: string; createdAt: Date }>()
  const calls: string[] = []

  async function boot(box: Omit<Box, 'local' | 'status'>): Promise<Box> {
    const snap = box.build.snapshot ? snapshots.get(box.build.snapshot) : undefined
    if (box.build.snapshot && !snap) throw new Error(`snapshot not found: ${box.build.snapshot}`)
    // A microVM has the vCPUs and memory it was built with.
    const limits = { cpus: box.build.cpus, memory: box.build.memoryMib * 1024 ** 2 }
    const local = await engine.createSandbox({ template: snap?.engineId, timeoutSec: box.build.timeoutSec, metadata: box.labels, network: box.build.network ? 'host' : 'none', limits })
    const b: Box = { ...box, local, status: 'running' }
    boxes.set(b.name, b)
    local.once('exit', () => (b.status = 'stopped'))
    return b
  }

  function sandboxOf(box: Box): SdkSandbox {
    const running = () => {
      if (box.status !== 'running') throw new Error(`sandbox ${box.name} is ${box.status}`)
    }
    return {
      name: box.name,
      async execStreamWith(cmd, configure) {
        running()
        const o = { args: [] as string[], cwd: undefined as string | undefined, env: {} as Record<string, string>, stdin: false, tty: true }
        const builder = {
          args: (a: string[]) => ((o.args = a), builder),
          cwd: (c: string) => ((o.cwd = c), builder),
          envs: (e: Record<string, string>) => ((o.env = { ...o.env, ...e }), builder),
          stdinPipe: () => ((o.stdin = true), builder),
          stdinNull: () => ((o.stdin = false), builder),
          tty: (t: boolean) => ((o.tty = t), builder),
        }
        configure(builder)
        if (o.tty) throw new Error('the stand-in runs processes without a TTY only')
        calls.push(`exec ${cmd}`)
        const proc = await box.local.spawn({ cmd, args: o.args, cwd: o.cwd, env: o.env, stdin: o.stdin })
        type Event = { kind: 'started'; pid: number } | { kind: 'stdout' | 'stderr'; data: Uint8Array } | { kind: 'exited'; code: number }
        const queue: Event[] = [{ kind: 'started', pid: 1 }]
        let wake: (() => void) | undefined
        const push = (e: Event) => {
          queue.push(e)
          wake?.()
        }
        for (const e of proc.eventsSince(0)) push({ kind: e.type, data: e.data })
        proc.on('output', (e) => push({ kind: e.type, data: e.data }))
        const onExit = (x: { exitCode: number; signal: string | null }) => push({ kind: 'exited', code: x.signal ? 128 + (SIGNALS[x.signal] ?? 1) : x.exitCode })
        if (proc.exit) onExit(proc.exit)
        else proc.once('exit', onExit)
        let stdinTaken = false
        return {
          async *[Symbol.asyncIterator]() {
            for (;;) {
              while (queue.length) {
                const e = queue.shift()!
                yield e
                if (e.kind === 'exited') return
              }
              await new Promise<void>((r) => (wake = r))
              wake = undefined
            }
          },
          async takeStdin() {
            if (!o.stdin || stdinTaken) return null
            stdinTaken = true
            return { write: (d: Uint8Array) => proc.write(Buffer.from(d)), close: async () => proc.closeStdin() }
          },
          async kill() {
            proc.kill('SIGKILL', true)
          },
        }
      },
      fs() {
        return {
          async write(path: string, data: Uint8Array) {
            running()
            await box.local.writeFile(path, data)
          },
          async writeStream(path: string) {
            running()
            const stream = new PassThrough()
            const done = box.local.writeFile(path, stream)
            return {
              write: (d: Uint8Array) => new Promise<void>((r) => (stream.write(d) ? r() : stream.once('drain', () => r()))),
              close: async () => {
                stream.end()
                await done
              },
            }
          },
          async mkdir(path: string) {
            await box.local.fs('mkdir', path)
          },
        }
      },
      async stop() {
        calls.push(`stop ${box.name}`)
        box.status = 'stopped'
      },
      async kill() {
        box.status = 'stopped'
        await engine.kill(box.local.id).catch(() => false)
      },
    }
  }

  function handleOf(box: Box): SdkHandle {
    return {
      name: box.name,
      status: box.status,
      createdAt: box.createdAt,
      configJson: JSON.stringify({ name: box.name, labels: box.labels }),
      async kill() {
        box.status = 'stopped'
        await engine.kill(box.local.id).catch(() => false)
      },
      async remove() {
        if (box.status === 'running') throw new Error(`sandbox ${box.name} is running; stop it first`)
        boxes.delete(box.name)
      },
      async start() {
        calls.push(`start ${box.name}`)
        if (box.status === 'running') return sandboxOf(box)
        // A stopped sandbox boots again with its disk: here, from a snapshot of its upper layer.
        const disk = await engine.snapshot(box.local.id, {})
        await engine.kill(box.local.id).catch(() => false)
        const key = `restart-${box.name}-${Date.now()}`
        snapshots.set(key, { engineId: disk.id, createdAt: new Date() })
        return sandboxOf(await boot({ ...box, build: { ...box.build, snapshot: key } }))
      },
    }
  }

  const sdk: Sdk = {
    Sandbox: {
      builder(name) {
        const build = { snapshot: undefined as string | undefined, network: true, timeoutSec: 300, labels: {} as Record<string, string>, image: undefined as string | undefined, cpus: 1, memoryMib: 512 }
        const b = {
          image: (s: string) => ((build.image = s), b),
          fromSnapshot: (s: string) => ((build.snapshot = s), b),
          cpus: (n: number) => ((build.cpus = n), b),
          memory: (mib: number) => ((build.memoryMib = mib), b),
          labels: (l: Record<string, string>) => ((build.labels = { ...l }), b),
          maxDuration: (s: number) => ((build.timeoutSec = s), b),
          disableNetwork: () => ((build.network = false), b),
          async create() {
            if (boxes.has(name)) throw new Error(`sandbox ${name} already exists`)
            if (!build.image && !build.snapshot) throw new Error('an image or a snapshot is required')
            calls.push(`create ${name} ${build.snapshot ? `snapshot=${build.snapshot}` : `image=${build.image}`}${build.network ? '' : ' no-network'}`)
            return sandboxOf(await boot({ name, labels: build.labels, createdAt: new Date(), build }))
          },
        }
        return b
      },
      async get(name) {
        const box = boxes.get(name)
        if (!box) throw new Error(`sandbox not found: ${name}`)
        return handleOf(box)
      },
      async listWith(configure) {
        const q = { labels: {} as Record<string, string>, cursor: 0 }
        const l = {
          labels: (x: Record<string, string>) => ((q.labels = x), l),
          cursor: (c: string) => ((q.cursor = Number(c)), l),
        }
        configure(l)
        const all = [...boxes.values()].filter((b) => Object.entries(q.labels).every(([k, v]) => b.labels[k] === v))
        // Pages of two, so the adapter's paging is exercised.
        const page = all.slice(q.cursor, q.cursor + 2)
        return { sandboxes: page.map(handleOf), nextCursor: q.cursor + 2 < all.length ? String(q.cursor + 2) : undefined }
      },
    },
    Snapshot: {
      builder(name) {
        return {
          fromSandbox: (from: string) => ({
            async create() {
              const box = boxes.get(from)
              if (!box) throw new Error(`sandbox not found: ${from}`)
              if (box.status !== 'stopped') throw new Error(`sandbox ${from} must be stopped to be snapshotted`)
              const record = await engine.snapshot(box.local.id, {})
              snapshots.set(name, { engineId: record.id, createdAt: new Date() })
              calls.push(`snapshot ${from} as ${name}`)
              return {}
            },
          }),
        }
      },
      async list() {
        return [...snapshots.entries()].filter(([n]) => !n.startsWith('restart-')).map(([name, s]) => ({ name, digest: `sha256:${name}`, sizeBytes: null, createdAt: s.createdAt }))
      },
      async remove(name) {
        const s = snapshots.get(name)
        if (!s) throw new Error(`snapshot not found: ${name}`)
        snapshots.delete(name)
        await engine.deleteSnapshot(s.engineId).catch(() => {})
      },
    },
  }

  return {
    sdk,
    calls,
    boxes,
    async close() {
      for (const b of boxes.values()) await engine.kill(b.local.id).catch(() => false)
      await engine.close()
      fs.rmSync(stateDir, { recursive: true, force: true })
    },
  }
}

/**
 * The agent: one per sandbox, started by the pool through the provider's process API. It forks a
 * Vitest worker per test file, relays each worker's private channel and stdio as frames on its
 * own stdin/stdout, reports exits, and answers pings (the host's heartbeat). It never looks inside
 * the worker's messages, except to answer module fetches from its cache when the host asks for it
 * (`module-cache.ts`); it joins a debugger the host relays to a worker's inspector (`tunnels.ts`).
 * When its stdin ends (the host is gone) it kills every worker and exits.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { readFileSync } from 'node:fs'
import net from 'node:net'
import path from 'node:path'
import { loadCodec, type Codec, type CodecName } from './codec.js'
import { ModuleCache } from './module-cache.js'
import { createTunnels } from './tunnels.js'
import { createChunkReader, createDeframer, frame, jsonFrame, Kind, type ForkSpec } from './wire.js'

// A listener of its own keeps SIGUSR1 from opening Node's debugger in the agent, where a test
// could rewrite what every later worker runs (local sandboxes refuse the signal outright).
process.on('SIGUSR1', () => {})
const out = new net.Socket({ fd: 1, readable: false, writable: true })
const input = new net.Socket({ fd: 0, readable: true, writable: false })
const workers = new Map<number, { child: ChildProcess; toWorker: (bytes: Buffer) => void }>()
const modules = new ModuleCache()
// Both codecs before any frame is read, so a fork never waits on an import (its input would).
// Without devalue (staged by the pool), its workers are relayed uncached.
const codecs: Partial<Record<CodecName, Codec>> = { v8: await loadCodec('v8'), devalue: await loadCodec('devalue').catch(() => undefined) }

/**
 * The sandbox's basics every worker gets under Vitest's own variables: its HOME, USER, LANG and
 * TMPDIR, and a PATH that starts with the workspace's node_modules/.bin (as under `npm test`) and
 * has this Node on it. The agent runs in the workspace root.
 */
const baseEnv: Record<string, string> = {}
for (const key of ['HOME', 'USER', 'LANG', 'TMPDIR']) if (process.env[key]) baseEnv[key] = process.env[key]!
baseEnv.PATH = [`${process.cwd()}/node_modules/.bin`, path.dirname(process.execPath), process.env.PATH ?? '/usr/bin:/bin'].join(':')

// A worker another process stopped (SIGSTOP) would hang the run: nothing of Vitest's times it
// out while it cannot run. Once a second, a stopped worker is continued.
setInterval(() => {
  for (const { child } of workers.values()) {
    try {
      const stat = readFileSync(`/proc/${child.pid}/stat`, 'utf8')
      if (/^[Tt]$/.test(stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3))) child.kill('SIGCONT')
    } catch {
      // Gone meanwhile.
    }
  }
}, 1000).unref()

function send(buf: Buffer): void {
  out.write(buf)
}

const tunnel = createTunnels(send)

function fork(id: number, spec: ForkSpec): void {
  let child: ChildProcess
  try {
    child = spawn(process.execPath, [...spec.execArgv, spec.entry, ...spec.args], {
      cwd: spec.cwd,
      env: { ...baseEnv, ...spec.env },
      // fd 3 is the worker's private channel: user code writes to stdout/stderr, never to it.
      stdio: ['ignore', 'pipe', 'pipe', 'pipe'],
    })
  } catch (err) {
    return send(jsonFrame(id, Kind.FAILED, { message: (err as Error).message }))
  }
  const channel = child.stdio[3] as net.Socket
  const relay = { fromWorker: (d: Buffer) => send(frame(id, Kind.FROM_WORKER, d)), fromHost: (d: Buffer) => void channel.write(d) }
  const codec = spec.moduleCache && spec.codec ? codecs[spec.codec] : undefined
  const route = codec ? modules.tap(codec, relay.fromWorker, relay.fromHost, spec.cacheScope) : relay
  workers.set(id, { child, toWorker: route.fromHost })
  child.once('error', (err) => {
    if (!child.pid) {
      workers.delete(id)
      send(jsonFrame(id, Kind.FAILED, { message: err.message }))
    }
  })
  child.once('spawn', () => send(jsonFrame(id, Kind.SPAWNED, { pid: child.pid })))
  child.stdout!.on('data', (d: Buffer) => send(frame(id, Kind.STDOUT, d)))
  child.stderr!.on('data', (d: Buffer) => send(frame(id, Kind.STDERR, d)))
  channel.on('data', route.fromWorker)
  channel.on('error', () => {})
  // 'close' comes after stdout/stderr and the channel have drained: output precedes the exit.
  child.once('close', (code, signal) => {
    workers.delete(id)
    send(jsonFrame(id, Kind.EXIT, { code, signal }))
  })
}

function onFrame(id: number, kind: number, payload: Buffer): void {
  switch (kind) {
    case Kind.FORK:
      return fork(id, JSON.parse(payload.toString()))
    case Kind.TO_WORKER:
      return workers.get(id)?.toWorker(Buffer.from(payload))
    case Kind.CLEAR_MODULES:
      return modules.clear()
    case Kind.KILL: {
      const w = workers.get(id)
      if (w) w.child.kill(JSON.parse(payload.toString()).signal ?? 'SIGKILL')
      return
    }
    case Kind.PING:
      return send(frame(0, Kind.PONG, payload))
    case Kind.INSPECTOR_OPEN:
    case Kind.INSPECTOR_IN:
    case Kind.INSPECTOR_CLOSE:
      return tunnel(id, kind, payload)
  }
}

function shutdown(): never {
  for (const { child } of workers.values()) child.kill('SIGKILL')
  process.exit(0)
}

input.on('data', createChunkReader(createDeframer(onFrame)))
input.on('end', shutdown)
input.on('error', shutdown)
out.on('error', shutdown)
send(jsonFrame(0, Kind.HELLO, { node: process.versions.node, v8: process.versions.v8, pid: process.pid }))

/**
 * Entry of one Vitest worker inside a sandbox: `node [execArgv] worker.js <vitest/worker path> <codec>`.
 * It talks to the host over fd 3 only ([u32 length][encoded message], see codec.ts), so user code that
 * writes to stdout/stderr can never corrupt the channel; or, where the sandbox has a direct channel
 * to the host (VITEST_POOL_SANDBOX_CHANNEL=<socket>#<token>), over that socket after the token, in
 * the same framing. Like Vitest's forks worker it adds no console output, no globals and no
 * environment variables; it leaves a non-enumerable symbol on `process` that the host-snapshot
 * environment uses, and one SIGUSR1 listener (see below).
 */
import fs from 'node:fs'
import net from 'node:net'
import { pathToFileURL } from 'node:url'
import { loadCodec, type CodecName } from './codec.js'
import { fromConfig, withFiles } from './host-reads.js'
import { answered, sent } from './own-modules.js'
import { createMessageSplitter, DIRECT_ENV, lengthPrefixed, type RpcFrame } from './wire.js'

export const HOST_CALL = Symbol.for('vitest-pool-sandbox.host-call')

const exit = process.exit.bind(process) // Vitest stubs process.exit while tests run
// SIGUSR1 from another process of the sandbox would open Node's debugger in this worker, and
// with it its file's results; a listener keeps it closed (local sandboxes refuse the signal too).
process.on('SIGUSR1', () => {})
const channel = await connect()
const vitestWorker = process.argv[2]
const codec = await loadCodec((process.argv[3] ?? 'v8') as CodecName)
const { init, runBaseTests, setupEnvironment } = await import(pathToFileURL(vitestWorker).href)

/** The direct socket, claimed with the token, or fd 3 (relayed by the agent). */
async function connect(): Promise<net.Socket> {
  const direct = process.env[DIRECT_ENV]
  delete process.env[DIRECT_ENV]
  if (!direct) return new net.Socket({ fd: 3, readable: true, writable: true })
  // The relay is not used: closed, so nothing can be slipped into it.
  fs.closeSync(3)
  const hash = direct.lastIndexOf('#')
  const socket = net.connect(direct.slice(0, hash))
  socket.write(`${direct.slice(hash + 1)}\n`)
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve)
    socket.once('error', (err) => reject(new Error(`cannot reach the host's channel at ${direct.slice(0, hash)}: ${err.message}`)))
  })
  return socket
}

const listeners = new Set<(msg: unknown) => void>()
const pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>()
let nextCall = 0

function post(msg: unknown): void {
  withFiles(msg)
  sent(msg as RpcFrame)
  channel.write(lengthPrefixed(codec.encode(msg)))
}

channel.on(
  'data',
  createMessageSplitter((payload) => {
    const msg = codec.decode(payload) as { __sandbox_pool__?: true; id: number; result?: unknown; error?: string }
    if (msg && msg.__sandbox_pool__) {
      const call = pending.get(msg.id)
      pending.delete(msg.id)
      if (msg.error !== undefined) call?.reject(new Error(msg.error))
      else call?.resolve(msg.result)
      return
    }
    fromConfig(msg)
    // A fetch of a module the host does not have is asked again with this sandbox's file, if it has one.
    const delivered = answered(msg as RpcFrame, post)
    if (delivered === undefined) return
    // Deliver asynchronously: Vitest 4.1's init registers its listener before declaring the state
    // it reads, so a synchronous first delivery would hit a temporal dead zone.
    queueMicrotask(() => {
      for (const l of [...listeners]) l(delivered)
    })
  }),
)
// The host is gone: nothing left to report to.
channel.on('error', () => exit(1))
channel.on('close', () => exit(0))

Object.defineProperty(process, HOST_CALL, {
  enumerable: false,
  value: (op: string, ...args: unknown[]) =>
    new Promise((resolve, reject) => {
      const id = ++nextCall
      pending.set(id, { resolve, reject })
      post({ __sandbox_pool__: true, id, op, args })
    }),
})

init({
  post,
  on: (fn: (msg: unknown) => void) => void listeners.add(fn),
  off: (fn: (msg: unknown) => void) => void listeners.delete(fn),
  teardown: () => listeners.clear(),
  runTests: (state: unknown, traces: unknown) => run('run', state, traces),
  collectTests: (state: unknown, traces: unknown) => run('collect', state, traces),
  setup: setupEnvironment,
})

async function run(method: 'run' | 'collect', state: unknown, traces: unknown): Promise<void> {
  try {
    await runBaseTests(method, state, traces)
  } finally {
    process.exit = exit
  }
}

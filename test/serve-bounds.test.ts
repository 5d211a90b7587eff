/**
 * What `vitest-sandbox serve` (a process of its own here, its memory read from /proc) holds for a
 * client that sends more than its sandbox takes, or reads nothing of what it asked for: at most a
 * bounded amount, whatever the client does. And the host-side readers of what a sandbox (or a
 * service standing in for one of its endpoints) sends: bounded and linear.
 */
import fs from 'node:fs'
import net from 'node:net'
import { PassThrough } from 'node:stream'
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest'
import WebSocket from 'ws'
import { boundedText } from '../src/net/http.js'
import { envelopeSplitter } from '../src/providers/e2b-process.js'
import { RelayReader } from '../src/providers/replay-relay.js'
import { startServe } from './support/serve.js'
import { startTestEngine, waitFor } from './support/engine.js'

const MiB = 1024 ** 2

describe('serve, under clients that do not read or send too much', () => {
  let serve: Awaited<ReturnType<typeof startServe>>
  let base: string
  const rss = () => Number(/VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${serve.child.pid}/status`, 'utf8'))![1]) * 1024
  beforeAll(async () => {
    serve = await startServe()
    base = serve.apiUrl.replace(/\/v1$/, '')
  })
  afterAll(() => serve?.close())

  async function sandbox(): Promise<{ id: string; session: string }> {
    const res = await fetch(`${serve.apiUrl}/sandboxes`, { method: 'POST', headers: { authorization: `Bearer ${serve.token}`, 'content-type': 'application/json' }, body: JSON.stringify({ timeout: 300 }) })
    const body = (await res.json()) as any
    return { id: body.sandbox.id, session: body.session.token }
  }

  /** A process socket that runs `cmd` and resolves when it has started. */
  function start(session: string, cmd: string, args: string[], extra: Record<string, unknown> = {}): Promise<WebSocket> {
    const ws = new WebSocket(`${base.replace(/^http/, 'ws')}/runtime/v1/process`, { headers: { authorization: `Bearer ${session}` } })
    return new Promise((resolve, reject) => {
      ws.on('message', (m) => {
        const f = JSON.parse(String(m))
        if (f.type === 'ready') ws.send(JSON.stringify({ type: 'start', cmd, args, ...extra }))
        if (f.type === 'started') resolve(ws)
        if (f.type === 'error') reject(new Error(f.message))
      })
      ws.on('error', reject)
    })
  }

  /** Raw connections that send `request` and never read. */
  async function unread(count: number, request: (i: number) => string): Promise<net.Socket[]> {
    const { port } = new URL(base)
    return Promise.all(
      Array.from({ length: count }, (_, i) => new Promise<net.Socket>((resolve) => {
        const s = net.connect(Number(port), '127.0.0.1', () => {
          s.write(request(i))
          s.pause()
          resolve(s)
        })
        s.on('error', () => {})
      })),
    )
  }

  it("holds a client's stdin no faster than its sandbox takes it (the sandbox's init stopped from inside)", async () => {
    const { session } = await sandbox()
    const ws = await start(session, '/bin/sh', ['-c', 'sleep 0.3; kill -STOP 2 || kill -STOP 1; exec sleep 1000'], { stdin: true, id: 'stopped' })
    await new Promise((r) => setTimeout(r, 800))
    const before = rss()
    const chunk = JSON.stringify({ type: 'stdin', data: Buffer.alloc(8 * MiB, 7).toString('base64') })
    for (let i = 0; i < 40; i++) ws.send(chunk) // 320 MiB, buffered by this client, not by the server
    await new Promise((r) => setTimeout(r, 3000))
    expect((rss() - before) / MiB).toBeLessThan(150)
    ws.terminate()
  })

  it('answers output pages and replays at the pace of clients that read nothing', async () => {
    const { session } = await sandbox()
    const ws = await start(session, '/bin/sh', ['-c', 'head -c 8000000 /dev/zero; sleep 60'], { id: 'loud' })
    await new Promise((r) => setTimeout(r, 1000))
    const before = rss()
    const auth = `authorization: Bearer ${session}\r\n`
    const pages = await unread(60, () => `GET /runtime/v1/process/loud/output HTTP/1.1\r\nhost: x\r\n${auth}\r\n`)
    const key = 'dGhlIHNhbXBsZSBub25jZQ=='
    const replays = await unread(60, () => `GET /runtime/v1/process/loud/connect?since=0 HTTP/1.1\r\nhost: x\r\n${auth}upgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-version: 13\r\nsec-websocket-key: ${key}\r\n\r\n`)
    await new Promise((r) => setTimeout(r, 3000))
    // Before: about 10 MB an answer and 8 MB a replay, 1.1 GB in all.
    expect((rss() - before) / MiB).toBeLessThan(400)
    for (const s of [...pages, ...replays]) s.destroy()
    ws.terminate()
  })

  it('stops reading a process socket that reads none of its answers, and holds a bounded amount for it', async () => {
    const { session } = await sandbox()
    const { port } = new URL(base)
    const socket = net.connect(Number(port), '127.0.0.1')
    socket.on('error', () => {})
    await new Promise((r) => socket.once('connect', r))
    socket.write(`GET /runtime/v1/process HTTP/1.1\r\nhost: x\r\nauthorization: Bearer ${session}\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n`)
    socket.pause()
    // Masked text frames `{"type":"ping"}`, each answered with a pong the client never reads.
    const payload = Buffer.from('{"type":"ping"}')
    const mask = Buffer.from([1, 2, 3, 4])
    const frame = Buffer.concat([Buffer.from([0x81, 0x80 | payload.length]), mask, Buffer.from(payload.map((b, i) => b ^ mask[i % 4]))])
    const batch = Buffer.concat(Array.from({ length: 65536 }, () => frame))
    const before = rss()
    let stopped = false
    for (let i = 0; i < 80 && !stopped; i++) {
      if (socket.write(batch)) continue
      stopped = !(await Promise.race([new Promise((r) => socket.once('drain', () => r(true))), new Promise((r) => setTimeout(() => r(false), 3000))]))
    }
    expect(stopped).toBe(true) // before: read on, 18 bytes of pongs kept for each byte sent
    expect((rss() - before) / MiB).toBeLessThan(200)
    socket.destroy()
  })

  it('gives each tenant its share however many creates arrive at once, and caps a timeout as on create', async () => {
    const small = await startServe({ tenants: { alice: 'alice-token-0123456789abcdef' }, args: ['--max-sandboxes', '4'] })
    try {
      const create = (token: string) => fetch(`${small.apiUrl}/sandboxes`, { method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body: '{"timeout":60}' }).then((r) => r.status)
      const statuses = await Promise.all(Array.from({ length: 10 }, () => create('alice-token-0123456789abcdef')))
      expect(statuses.filter((s) => s === 201).length).toBe(2) // two tenants: 2 of 4 each
      expect(statuses.filter((s) => s === 429).length).toBe(8)
      const res = await fetch(`${small.apiUrl}/sandboxes`, { method: 'POST', headers: { authorization: `Bearer ${small.token}`, 'content-type': 'application/json' }, body: '{"timeout":60}' })
      const id = ((await res.json()) as any).sandbox.id
      const longer = await fetch(`${small.apiUrl}/sandboxes/${id}/timeout`, { method: 'POST', headers: { authorization: `Bearer ${small.token}`, 'content-type': 'application/json' }, body: '{"timeout":10000000}' })
      expect(longer.status).toBe(400)
      expect(((await longer.json()) as any).message).toMatch(/timeout must be a number of seconds from 1 to 86400/)
    } finally {
      await small.close()
    }
  })
})

describe('snapshots', () => {
  it('are refused past the budget when the ones kept (live sandboxes run on them) hold more, a chain of layers included', async () => {
    const env = await startTestEngine({ maxSnapshotBytes: 3 * MiB })
    try {
      let template: string | undefined
      const made: string[] = []
      for (let round = 0; round < 5; round++) {
        const sbx = await env.client.createSandbox({ template })
        expect((await sbx.run('/bin/sh', ['-c', `head -c ${1.5 * MiB} /dev/urandom > /home/sandbox/fill${round}`])).exitCode).toBe(0)
        const snap = await env.client.snapshot(sbx.info.id, { name: `chain-${round}` }).catch((e: Error) => e)
        if (snap instanceof Error) {
          expect(snap.message).toMatch(/snapshot budget reached: the snapshots kept \(.*\) are over the budget of 3 MiB/)
          break
        }
        made.push(snap.id)
        template = snap.id // the next sandbox runs on it, and keeps it
      }
      expect(made.length).toBeGreaterThanOrEqual(2)
      expect(made.length).toBeLessThan(5)
    } finally {
      await env.close()
    }
  })
})

describe('what the host reads of a sandbox or a service', () => {
  it('reads an endless error body no further than its bound', async () => {
    const body = new PassThrough()
    const feeding = setInterval(() => body.write(Buffer.alloc(64 * 1024, 120)), 1)
    try {
      const text = await boundedText(body, 256 * 1024)
      expect(text.length).toBeLessThan(300 * 1024)
      expect(text).toMatch(/… \(cut at 262144 bytes\)$/)
    } finally {
      clearInterval(feeding)
    }
  })

  it('joins a frame sent in small chunks once, not at every chunk', () => {
    const concat = vi.spyOn(Buffer, 'concat')
    try {
      // A relay frame of 4 MiB, then a Connect envelope of 4 MiB, each in 4 KiB chunks.
      const relayed: Buffer[] = []
      const reader = new RelayReader((_, data) => relayed.push(data))
      const head = Buffer.alloc(11)
      head[0] = 79
      head.writeUIntBE(0, 1, 6)
      head.writeUInt32BE(4 * MiB, 7)
      const frame = Buffer.concat([head, Buffer.alloc(4 * MiB, 1)])
      const envelopes: unknown[] = []
      const split = envelopeSplitter((_, m) => envelopes.push(m))
      const json = Buffer.from(JSON.stringify({ x: 'y'.repeat(4 * MiB) }))
      const envelope = Buffer.concat([Buffer.from([0, 0, 0, 0, 0]), json])
      envelope.writeUInt32BE(json.length, 1)
      concat.mockClear()
      for (let i = 0; i < frame.length; i += 4096) reader.push(frame.subarray(i, i + 4096))
      for (let i = 0; i < envelope.length; i += 4096) split(envelope.subarray(i, i + 4096))
      expect(relayed.map((d) => d.length)).toEqual([4 * MiB])
      expect(envelopes.length).toBe(1)
      expect(concat.mock.calls.length).toBeLessThan(10)
    } finally {
      concat.mockRestore()
    }
  })
})

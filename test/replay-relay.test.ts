/**
 * The replay relay run as e2b() runs it (`node -e RELAY <spec>`), driven frame by frame: what it
 * does with retried input, a resend after a reattach, an acknowledgement, and a host that never
 * comes back for the exit.
 */
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { describe, expect, it } from 'vitest'
import { KIND, RelayReader, relayArgs, relayFrame } from '../src/providers/replay-relay.js'

function runRelay(spec: { cmd: string; args?: string[]; stdin?: boolean }, lingerMs: number) {
  const child = spawn(process.execPath, relayArgs(spec, lingerMs), { stdio: ['pipe', 'pipe', 'inherit'] })
  const frames: { kind: number; data: string }[] = []
  const reader = new RelayReader((kind, data) => frames.push({ kind, data: data.toString() }))
  const raw: Buffer[] = []
  child.stdout.on('data', (b: Buffer) => {
    raw.push(b)
    reader.push(b)
  })
  const exit = once(child, 'exit') as Promise<[number | null, string | null]>
  const until = async (ok: () => boolean) => {
    while (!ok()) await new Promise((r) => setTimeout(r, 10))
  }
  return { frames, reader, raw, exit, until, send: (...f: Buffer[]) => child.stdin.write(Buffer.concat(f)) }
}

describe('the replay relay', () => {
  it('exits with its process\'s status when the host never takes the exit report', async () => {
    const failed = runRelay({ cmd: 'sh', args: ['-c', 'echo hi; exit 3'] }, 200)
    expect((await failed.exit)[0]).toBe(3)
    expect(failed.frames).toEqual([
      { kind: KIND.stdout, data: 'hi\n' },
      { kind: KIND.exit, data: JSON.stringify({ code: 3, signal: null }) },
    ])
    const signalled = runRelay({ cmd: 'sh', args: ['-c', 'kill -TERM $$'] }, 200)
    expect((await signalled.exit)[0]).toBe(143)
    expect(signalled.frames.at(-1)).toEqual({ kind: KIND.exit, data: JSON.stringify({ code: null, signal: 'SIGTERM' }) })
  })

  it('writes retried input once, resends from a position once per nonce, and leaves when the host has all', async () => {
    const r = runRelay({ cmd: 'cat', stdin: true }, 60_000)
    const abc = relayFrame(KIND.input, 0, Buffer.from('abc'))
    r.send(abc, abc, relayFrame(KIND.input, 1, Buffer.from('bcdef')), relayFrame(KIND.close, 6))
    await r.until(() => r.frames.some((f) => f.kind === KIND.exit))
    expect(r.frames.filter((f) => f.kind === KIND.stdout).map((f) => f.data).join('')).toBe('abcdef')
    expect(r.frames.at(-1)!.data).toBe(JSON.stringify({ code: 0, signal: null }))

    // After a reattach: the host asks for everything from the start; the same nonce again is ignored.
    const all = Buffer.concat(r.raw)
    const taken = r.frames.length
    const nonce = r.reader.resync()
    r.reader.position = 0
    r.send(relayFrame(KIND.resend, 0, nonce), relayFrame(KIND.resend, 0, nonce))
    await r.until(() => r.frames.length === 2 * taken)
    expect(r.frames.slice(taken)).toEqual(r.frames.slice(0, taken))
    await new Promise((res) => setTimeout(res, 200))
    expect(Buffer.concat(r.raw).length).toBe(2 * all.length + 6 + nonce.length)

    r.send(relayFrame(KIND.ack, r.reader.position))
    expect((await r.exit)[0]).toBe(0)
  })

  it('ends its process\'s whole group on a kill frame', async () => {
    const r = runRelay({ cmd: 'sh', args: ['-c', 'sleep 300 & echo $!; wait'] }, 200)
    await r.until(() => r.frames.length > 0)
    const pid = Number(r.frames[0].data)
    r.send(relayFrame(KIND.kill, 0))
    await r.until(() => r.frames.some((f) => f.kind === KIND.exit))
    expect(r.frames.at(-1)!.data).toBe(JSON.stringify({ code: null, signal: 'SIGKILL' }))
    // Reaped soon after (a zombie answers signal 0 for a moment); a survivor would sleep 300 s,
    // past the test's timeout.
    await r.until(() => {
      try {
        process.kill(pid, 0)
        return false
      } catch {
        return true
      }
    })
    expect((await r.exit)[0]).toBe(137)
  })
})

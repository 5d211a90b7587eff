/**
 * The agent's module cache, with both real codecs: a module's answer crosses the link once per
 * sandbox, every other byte passes through unchanged, and nothing stale or failed is reused.
 */
import { describe, expect, it } from 'vitest'
import { loadCodec, type CodecName } from '../src/sandbox-runtime/codec.js'
import { ModuleCache } from '../src/sandbox-runtime/module-cache.js'
import { createMessageSplitter, lengthPrefixed } from '../src/sandbox-runtime/wire.js'

describe.each<CodecName>(['v8', 'devalue'])('the module cache (%s)', (name) => {
  async function setup() {
    const codec = await loadCodec(name)
    const cache = new ModuleCache()
    const worker = (scope?: string) => {
      const toHost: unknown[] = []
      const toWorker: unknown[] = []
      const rawToHost: Buffer[] = []
      const tap = cache.tap(
        codec,
        (b) => {
          rawToHost.push(b)
          createMessageSplitter((p) => toHost.push(codec.decode(p)))(b)
        },
        (b) => createMessageSplitter((p) => toWorker.push(codec.decode(p)))(b),
        scope,
      )
      const send = (msg: unknown) => tap.fromWorker(lengthPrefixed(codec.encode(msg)))
      const answer = (msg: unknown) => tap.fromHost(lengthPrefixed(codec.encode(msg)))
      return { tap, toHost, toWorker, rawToHost, send, answer }
    }
    return { codec, cache, worker }
  }
  const fetch = (i: number, id: string, importer?: string, options = { cached: false }) => ({ t: 'q', i, m: 'fetch', a: [id, importer, 'ssr', options] })
  const result = { code: 'export const x = 1', file: '/w/src/x.ts', id: '/w/src/x.ts', url: '/src/x.ts', invalidate: false }

  it("answers a later worker's fetch of the same module from the cache, with that worker's id", async () => {
    const { worker } = await setup()
    const a = worker()
    a.send(fetch(1, '/src/x.ts', '/w/test/a.test.ts'))
    expect(a.toHost).toEqual([fetch(1, '/src/x.ts', '/w/test/a.test.ts')])
    a.answer({ t: 's', i: 1, r: result })
    expect(a.toWorker).toEqual([{ t: 's', i: 1, r: result }])
    const b = worker()
    b.send(fetch(7, '/src/x.ts', '/w/test/a.test.ts'))
    expect(b.toHost).toEqual([])
    expect(b.toWorker).toEqual([{ t: 's', i: 7, r: result }])
  })

  it("shares no answer between projects (each transforms a file its own way)", async () => {
    const { worker } = await setup()
    const a = worker('["/w","a"]')
    a.send(fetch(1, '/src/x.ts'))
    a.answer({ t: 's', i: 1, r: result })
    const b = worker('["/w","b"]')
    b.send(fetch(1, '/src/x.ts'))
    expect(b.toHost).toEqual([fetch(1, '/src/x.ts')])
    expect(b.toWorker).toEqual([])
    const again = worker('["/w","a"]')
    again.send(fetch(3, '/src/x.ts'))
    expect(again.toWorker).toEqual([{ t: 's', i: 3, r: result }])
  })

  it("keeps no answer under a fetch's id while another call of the worker has that id, whatever its method", async () => {
    const { worker } = await setup()
    const poison = { ...result, code: 'poisoned' }
    const artifact = (i: number) => ({ t: 'q', i, m: 'onTaskArtifactRecord', a: ['task', { type: 'x', ...poison }] })
    const a = worker()
    // Vitest answers an artifact with the artifact: sent before the fetch of the same id, answered first.
    a.send(artifact(1))
    a.send(fetch(1, '/test/victim.test.ts'))
    a.answer({ t: 's', i: 1, r: { type: 'x', ...poison } })
    a.answer({ t: 's', i: 1, r: result })
    // Its answer still on its way back when the fetch goes out (the host answered the artifact first).
    a.send(artifact(2))
    a.send(fetch(2, '/test/other.test.ts'))
    a.answer({ t: 's', i: 2, r: { type: 'x', ...poison } })
    // The other order: the fetch first.
    a.send(fetch(3, '/test/third.test.ts'))
    a.send(artifact(3))
    a.answer({ t: 's', i: 3, r: { type: 'x', ...poison } })
    const b = worker()
    for (const [i, id] of [[4, '/test/victim.test.ts'], [5, '/test/other.test.ts'], [6, '/test/third.test.ts']] as const) b.send(fetch(i, id))
    expect(b.toWorker).toEqual([])
    expect(b.toHost).toHaveLength(3)
    // An id answered in full is the worker's to use again: the fetch under it is kept.
    a.answer({ t: 's', i: 3, r: result })
    a.send(fetch(1, '/src/y.ts'))
    a.answer({ t: 's', i: 1, r: result })
    const c = worker()
    c.send(fetch(9, '/src/y.ts'))
    expect(c.toWorker).toEqual([{ t: 's', i: 9, r: result }])
  })

  it('keeps no answer to a message the host reads as another kind (a field a birpc call does not have)', async () => {
    const { worker } = await setup()
    const a = worker()
    // The host's gateway reads this as its file service's call (and ends the worker): whatever
    // comes back under the id, it is no answer to a fetch.
    a.send({ ...fetch(1, '/src/x.ts', '/w/test/a.test.ts'), __sandbox_pool__: true, id: 1, op: 'nope', args: [] })
    a.answer({ t: 's', i: 1, r: { ...result, code: 'poisoned' } })
    const b = worker()
    b.send(fetch(2, '/src/x.ts', '/w/test/a.test.ts'))
    expect(b.toHost).toEqual([fetch(2, '/src/x.ts', '/w/test/a.test.ts')])
    expect(b.toWorker).toEqual([])
  })

  it('keeps resolutions too, keyed on the whole request, apart from fetches', async () => {
    const { worker } = await setup()
    const resolve = (i: number, id: string, importer: string | null) => ({ t: 'q', i, m: 'resolve', a: [id, importer, 'ssr'] })
    const resolved = { id: '/w/dist/snapshot-environment.js', file: '/w/dist/snapshot-environment.js', url: '/@fs/w/dist/snapshot-environment.js' }
    const a = worker()
    a.send(resolve(1, '/w/dist/snapshot-environment.js', null))
    a.answer({ t: 's', i: 1, r: resolved })
    a.send(resolve(2, './x', '/w/src/a.ts'))
    a.answer({ t: 's', i: 2, r: null }) // not found is an answer too
    const b = worker()
    b.send(resolve(4, '/w/dist/snapshot-environment.js', null))
    b.send(resolve(5, './x', '/w/src/a.ts'))
    b.send(resolve(6, './x', '/w/src/b.ts')) // another importer
    b.send(fetch(7, '/w/dist/snapshot-environment.js')) // a fetch of the same id is another question
    expect(b.toWorker).toEqual([{ t: 's', i: 4, r: resolved }, { t: 's', i: 5, r: null }])
    expect(b.toHost.map((m: any) => m.i)).toEqual([6, 7])
  })

  it('keys on what shapes the answer, keeps no error, and forgets everything on clear', async () => {
    const { worker, cache } = await setup()
    const a = worker()
    a.send(fetch(1, '/src/x.ts', '/w/test/a.test.ts'))
    a.answer({ t: 's', i: 1, r: result })
    const b = worker()
    b.send(fetch(1, '/src/x.ts', '/w/test/b.test.ts')) // a resolved URL: the importer does not matter
    b.send(fetch(2, 'lodash', '/w/src/x.ts')) // a bare one is resolved against its importer
    b.answer({ t: 's', i: 2, r: { externalize: '/w/node_modules/lodash/index.js', type: 'commonjs' } })
    b.send(fetch(3, 'lodash', '/w/other/y.ts'))
    b.send(fetch(4, '/src/x.ts', '/w/test/a.test.ts', { cached: true })) // other options
    b.send(fetch(5, '/src/missing.ts'))
    expect(b.toHost.map((m: any) => m.i)).toEqual([2, 3, 4, 5])
    expect(b.toWorker).toEqual([{ t: 's', i: 1, r: result }, { t: 's', i: 2, r: { externalize: '/w/node_modules/lodash/index.js', type: 'commonjs' } }])
    b.answer({ t: 's', i: 5, e: new Error('Failed to load url /src/missing.ts') })
    b.answer({ t: 's', i: 2, e: new Error('Failed to load url /src/missing.ts') })
    const c = worker()
    c.send(fetch(1, '/src/missing.ts'))
    expect(c.toHost).toHaveLength(1) // the error was not kept
    // An answer to a request made before a clear is not kept either.
    c.send(fetch(2, '/src/y.ts'))
    cache.clear()
    c.answer({ t: 's', i: 2, r: result })
    const d = worker()
    d.send(fetch(1, '/src/x.ts', '/w/test/a.test.ts'))
    d.send(fetch(2, '/src/y.ts'))
    expect(d.toHost).toHaveLength(2)
  })

  it('passes every other message through byte for byte, however the stream is cut', async () => {
    const { worker, codec } = await setup()
    const a = worker()
    const messages = [{ t: 'q', i: 1, m: 'onTaskUpdate', a: [[['id', { state: 'pass' }]]] }, { __vitest_worker_response__: true, type: 'started' }, fetch(2, '/src/x.ts')]
    const bytes = Buffer.concat(messages.map((m) => lengthPrefixed(codec.encode(m))))
    for (let at = 0; at < bytes.length; at += 3) a.tap.fromWorker(bytes.subarray(at, at + 3))
    expect(Buffer.concat(a.rawToHost).equals(bytes)).toBe(true)
    expect(a.toHost).toEqual(messages)
  })

  it('holds no message over the frame limit: the host gets its header alone (and ends the worker), nothing after', async () => {
    const { worker, codec } = await setup()
    const a = worker()
    const head = Buffer.alloc(4)
    head.writeUInt32BE(3 * 1024 ** 3)
    a.tap.fromWorker(Buffer.concat([lengthPrefixed(codec.encode(fetch(1, '/src/x.ts'))), head, Buffer.alloc(1024, 1)]))
    a.tap.fromWorker(Buffer.alloc(1024 * 1024, 2))
    a.tap.fromWorker(lengthPrefixed(codec.encode(fetch(2, '/src/y.ts'))))
    const sent = Buffer.concat(a.rawToHost)
    expect(sent.equals(Buffer.concat([lengthPrefixed(codec.encode(fetch(1, '/src/x.ts'))), head]))).toBe(true)
  })
})

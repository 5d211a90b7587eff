/** Both codecs carry what Vitest sends: cycles, RegExp (for -t), Map/Set, undefined, BigInt, Errors. */
import { describe, expect, it } from 'vitest'
import { chooseCodec, loadCodec } from '../src/sandbox-runtime/codec.js'

describe.each(['v8', 'devalue'] as const)('%s codec', (name) => {
  it('round-trips a task-tree-like value', async () => {
    const codec = await loadCodec(name)
    const file: any = { name: 'a.test.ts', pattern: /adds \d+/gi, meta: new Map([['k', new Set([1, 2])]]), list: [1, undefined, 3], big: 10n, bytes: new Uint8Array([1, 2, 3]) }
    file.tasks = [{ name: 'child', file }] // back-reference, as Vitest's tasks have
    const back: any = codec.decode(codec.encode(file))
    expect(back.tasks[0].file).toBe(back)
    expect(back.pattern).toEqual(/adds \d+/gi)
    expect(back.meta.get('k')).toEqual(new Set([1, 2]))
    expect(back.list).toEqual([1, undefined, 3])
    expect(back.big).toBe(10n)
    expect([...back.bytes]).toEqual([1, 2, 3])
  })

  it('round-trips errors with their cause', async () => {
    const codec = await loadCodec(name)
    const err = new TypeError('outer', { cause: new Error('inner') })
    const back = codec.decode(codec.encode({ t: 's', i: 1, e: err })) as { e: Error }
    expect(back.e).toBeInstanceOf(Error)
    expect(back.e.message).toBe('outer')
    expect((back.e.cause as Error).message).toBe('inner')
  })
})

it('keeps custom properties of errors with devalue (Vitest reads err.code for module errors)', async () => {
  const codec = await loadCodec('devalue')
  const back = codec.decode(codec.encode(Object.assign(new Error('nope'), { code: 'ERR_LOAD_URL' }))) as Error & { code: string }
  expect(back.code).toBe('ERR_LOAD_URL')
})

it('chooses v8 for equal Node majors and devalue otherwise', () => {
  expect(chooseCodec('20.20.2', '20.1.0')).toBe('v8')
  expect(chooseCodec('20.20.2', '22.23.3')).toBe('devalue')
})

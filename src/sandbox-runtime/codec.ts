/**
 * How Vitest's messages are encoded between the host and a worker in a sandbox.
 *
 * - `v8`: Node's structured-clone serializer, what Vitest's forks pool uses. Used when both ends
 *   run the same Node major (V8's format is only promised to be readable by the same or newer).
 * - `devalue`: for differing majors. JSON cannot carry Vitest's messages (cycles, RegExp for `-t`,
 *   Map/Set, undefined, BigInt, typed arrays, Errors); devalue can, with a reducer for Errors.
 *
 * Runs on both sides; inside a sandbox, `devalue` is loaded from the pool's staging folder.
 */
import v8 from 'node:v8'

export type CodecName = 'v8' | 'devalue'

export interface Codec {
  name: CodecName
  encode(value: unknown): Buffer
  decode(bytes: Buffer): unknown
}

const v8Codec: Codec = { name: 'v8', encode: (v) => v8.serialize(v), decode: (b) => v8.deserialize(b) }

type ErrorParts = [name: string, message: string, stack: string | undefined, props: Record<string, unknown>]

export async function loadCodec(name: CodecName): Promise<Codec> {
  if (name === 'v8') return v8Codec
  const { stringify, parse } = await import('devalue')
  const reducers = {
    Error: (v: unknown): ErrorParts | false => {
      if (!(v instanceof Error)) return false
      const props: Record<string, unknown> = {}
      for (const key of Object.keys(v)) props[key] = (v as unknown as Record<string, unknown>)[key]
      if ('cause' in v) props.cause = v.cause
      return [v.name, v.message, v.stack, props]
    },
  }
  const revivers = {
    Error: ([name, message, stack, props]: ErrorParts) => {
      const error = new Error(message)
      error.name = name
      error.stack = stack
      return Object.assign(error, props)
    },
  }
  return {
    name,
    encode: (v) => Buffer.from(stringify(v, reducers)),
    decode: (b) => parse(b.toString('utf8'), revivers),
  }
}

/** The codec for a host and a sandbox running these Node versions. */
export function chooseCodec(hostNode: string, sandboxNode: string): CodecName {
  return hostNode.split('.')[0] === sandboxNode.split('.')[0] ? 'v8' : 'devalue'
}

/**
 * Provider factories before any network: where credentials and endpoints come from, and what a
 * host that cannot run a provider is told. Real endpoints are exercised in contract.test.ts and
 * remote.test.ts.
 */
import { afterEach, describe, expect, it, vi } from 'vitest'
import { createRelayParser } from '../src/providers/framed-stdio.js'
import { e2b } from '../src/providers/e2b.js'
import { local } from '../src/providers/local.js'
import { opensandbox } from '../src/providers/opensandbox.js'
import { watasu } from '../src/providers/watasu.js'

afterEach(() => {
  vi.unstubAllEnvs()
  vi.restoreAllMocks()
})

describe('credentials', () => {
  it('fail at connect, naming every variable, when no key is set', async () => {
    vi.stubEnv('WATASU_API_KEY', '')
    vi.stubEnv('WATASU_ACCESS_TOKEN', '')
    vi.stubEnv('OPEN_SANDBOX_API_KEY', '')
    await expect(watasu().connect()).rejects.toThrow('watasu(): no API key. Set WATASU_API_KEY or WATASU_ACCESS_TOKEN in the environment (it never enters a sandbox), or pass watasu({ apiKey }).')
    await expect(opensandbox().connect()).rejects.toThrow('opensandbox(): no API key. Set OPEN_SANDBOX_API_KEY in the environment (it never enters a sandbox), or pass opensandbox({ apiKey }).')
  })

  it("watasu() finds its endpoint as Watasu's SDK does: WATASU_API_URL, else api.<WATASU_DOMAIN>/v1", { timeout: 30_000 }, async () => {
    vi.stubEnv('WATASU_ACCESS_TOKEN', 'a-token')
    vi.stubEnv('WATASU_API_KEY', '')
    vi.stubEnv('WATASU_DOMAIN', 'watasu.invalid')
    vi.stubEnv('WATASU_API_URL', '')
    const viaDomain = await watasu().connect()
    await expect(viaDomain.listSandboxes({})).rejects.toThrow(/GET https:\/\/api\.watasu\.invalid\/v1\/sandboxes\? failed/)
    await viaDomain.close()
    vi.stubEnv('WATASU_API_URL', 'http://127.0.0.1:9/v1')
    const viaUrl = await watasu().connect()
    await expect(viaUrl.listSandboxes({})).rejects.toThrow(/GET http:\/\/127\.0\.0\.1:9\/v1\/sandboxes\? failed/)
    await viaUrl.close()
  })
})

describe('limits of remote providers', () => {
  it('are checked when the provider is made: the option, the value and what it takes; one the API cannot set is refused with the fix', () => {
    expect(() => watasu({ limits: { memory: 'lots' } })).toThrow(`limits.memory: "lots" is not a size: a byte count or a number with k, m, g or t (e.g. '512m', '2g')`)
    expect(() => watasu({ limits: { gpus: 1 } as never })).toThrow('limits.gpus: 1 is not a limit watasu() takes (memory, disk, cpus)')
    expect(() => watasu({ limits: { cpus: -1 } })).toThrow('limits.cpus: -1 is not a positive number')
    expect(() => e2b({ limits: { memory: '2g' } })).toThrow("e2b(): limits.memory cannot be set through e2b's API: E2B sizes CPU and memory per template: build the template of e2b({ template }) with the cpuCount and memoryMB you want")
    expect(() => watasu({ limits: { memory: '2g', disk: '10g', cpus: 2 } })).not.toThrow()
  })
})

describe('hosts', () => {
  it('local() on a host that is not Linux says what to use instead, before starting anything', async () => {
    vi.spyOn(process, 'platform', 'get').mockReturnValue('darwin')
    await expect(local().connect()).rejects.toThrow(/local\(\): the local sandbox engine needs Linux \(bubblewrap\); this host is darwin\. Use a remote provider \(watasu\(\), opensandbox\(\)\), or run `vitest-sandbox serve`/)
  })
})

describe('the stdio relay stream (what the host parses from a sandbox)', () => {
  // With a real execd the relay's stdout is a pipe that code in the sandbox can open through
  // /proc/<relay>/fd/1 and write forged frames to; the fake's is a socket, so this attacks the parser.
  it('refuses a forged frame claiming more than 16 MiB at its header, before any of its body', () => {
    const out: Buffer[] = []
    const parse = createRelayParser({ stdout: (b) => out.push(b), stderr: () => {}, ack: () => {}, exit: () => {} })
    parse(Buffer.from([1, 0, 0, 0, 2, 0x6f, 0x6b])) // a real frame: stdout "ok"
    expect(() => parse(Buffer.from([1, 0x40, 0, 0, 0]))).toThrow('the stdio relay sent a frame of 1073741824 bytes, over the limit of 16777216')
    expect(Buffer.concat(out).toString()).toBe('ok')
  })
})

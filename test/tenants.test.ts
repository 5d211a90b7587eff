// `serve` with several tenants (issue 21): each its own sandboxes, sessions and snapshots; a
// sandbox or snapshot of another tenant is as missing as one that never was, and no tenant can
// save a template under a name another tenant's pool looks up.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { RuntimeClient, type SandboxClient } from '../src/protocol/client.js'
import { startServe } from './support/serve.js'

const ALICE = 'alice-token-0123456789abcdef'
const BOB = 'bob-token-0123456789abcdef'
let serve: Awaited<ReturnType<typeof startServe>>
let alice: RuntimeClient
let bob: RuntimeClient
let owner: RuntimeClient // the default tenant (--token)

beforeAll(async () => {
  serve = await startServe({ tenants: { alice: ALICE, bob: BOB } })
  const url = serve.apiUrl.replace(/\/v1$/, '')
  alice = new RuntimeClient({ url, token: ALICE })
  bob = new RuntimeClient({ url, token: BOB })
  owner = new RuntimeClient({ url, token: serve.token })
})
afterAll(async () => {
  await Promise.all([alice, bob, owner].map((c) => c?.close()))
  await serve?.close()
})

/** A raw control-plane call, for routes the client has no method for. */
async function call(token: string, method: string, route: string, body?: unknown): Promise<{ status: number; json: any }> {
  const res = await fetch(`${serve.apiUrl}${route}`, { method, headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body: body === undefined ? undefined : JSON.stringify(body) })
  return { status: res.status, json: await res.json().catch(() => undefined) }
}

describe('tenants of one serve', () => {
  let canary: SandboxClient
  let template: string

  it("keep each other's sandboxes and snapshots unseen and untouched, with a canary of one running throughout", async () => {
    canary = await alice.createSandbox({ metadata: { role: 'canary' }, timeout: 120 })
    const proc = await canary.start({ cmd: '/bin/sh', args: ['-c', 'while :; do sleep 0.2; done'] })
    template = (await alice.snapshot(canary.info.id, { name: 'vitest-sandbox-shared-key' })).id
    const own = await bob.createSandbox({ metadata: { role: 'canary' } })

    // Listed, read, resumed, renewed, snapshotted, deleted: another tenant's sandbox is not found.
    expect((await bob.listSandboxes({ role: 'canary' })).map((s) => s.id)).toEqual([own.info.id])
    expect((await owner.listSandboxes()).map((s) => s.id)).toEqual([])
    await expect(bob.getSandbox(canary.info.id)).rejects.toMatchObject({ status: 404 })
    for (const [method, route, body] of [
      ['POST', `/sandboxes/${canary.info.id}/resume`, {}],
      ['POST', `/sandboxes/${canary.info.id}/timeout`, { timeout: 1 }],
      ['POST', `/sandboxes/${canary.info.id}/snapshots`, { name: 'stolen' }],
      ['DELETE', `/sandboxes/${canary.info.id}`, undefined],
      ['DELETE', `/sandbox_snapshots/${template}`, undefined],
    ] as const) {
      for (const token of [BOB, serve.token]) expect((await call(token, method, route, body)).status, `${method} ${route}`).toBe(404)
    }
    // Its templates: neither listed, nor started from by id or by name.
    expect((await bob.listSnapshots()).map((s) => s.id)).not.toContain(template)
    await expect(bob.createSandbox({ template })).rejects.toMatchObject({ status: 404 })
    await expect(bob.createSandbox({ template: 'vitest-sandbox-shared-key' })).rejects.toMatchObject({ status: 404 })
    // Bob's template of the same name is his own: Alice's pool still finds hers.
    const shadow = (await bob.snapshot(own.info.id, { name: 'vitest-sandbox-shared-key' })).id
    expect((await alice.listSnapshots()).filter((s) => s.name === 'vitest-sandbox-shared-key').map((s) => s.id)).toEqual([template])
    expect((await bob.listSnapshots()).filter((s) => s.name === 'vitest-sandbox-shared-key').map((s) => s.id)).toEqual([shadow])
    const fromHers = await alice.createSandbox({ template: 'vitest-sandbox-shared-key' })
    expect(fromHers.info.template_id).toBe(template)
    // The owner mark is the server's: a client can neither set nor see it.
    expect((await call(BOB, 'POST', '/sandboxes', { metadata: { vps_tenant: 'alice' } })).status).toBe(400)
    expect((await alice.getSandbox(canary.info.id)).metadata).toEqual({ role: 'canary' })
    expect((await call(ALICE, 'POST', `/sandboxes/${canary.info.id}/snapshots`, { name: 'bob/x' })).status).toBe(400)

    // The canary ran through all of it.
    expect((await canary.processes()).find((p) => p.id === proc.pid)?.status).toBe('running')
    expect((await canary.run('/bin/echo', ['alive'])).stdout).toBe('alive\n')
    await bob.killSandbox(own.info.id)
    await alice.killSandbox(fromHers.info.id)
    await alice.killSandbox(canary.info.id)
  })

  it("finds a tenant's own template by its name even when it looks like an id, or another tenant has one of that name", async () => {
    const own = await bob.createSandbox()
    const mine = (await bob.snapshot(own.info.id, { name: 'snap_nightly' })).id
    const other = await owner.createSandbox()
    await owner.snapshot(other.info.id, { name: 'snap_nightly' })
    const from = await bob.createSandbox({ template: 'snap_nightly' })
    expect(from.info.template_id).toBe(mine)
    for (const [client, s] of [[bob, own], [owner, other], [bob, from]] as const) await client.killSandbox(s.info.id)
  })

  it("keeps each tenant's templates out of another's snapshot budget", async () => {
    const { startLocalEngine } = await import('../src/engine/index.js')
    const fs = await import('node:fs')
    const os = await import('node:os')
    const path = await import('node:path')
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vps-tenant-budget-'))
    fs.chmodSync(dir, 0o755) // the sandboxes' uid walks it
    fs.writeFileSync(path.join(dir, 'tenants.json'), JSON.stringify({ alice: ALICE, bob: BOB }))
    // A budget every snapshot is over: each new one prunes all it may.
    const engine = await startLocalEngine({ stateDir: path.join(dir, 'state'), tenantsFile: path.join(dir, 'tenants.json'), maxSnapshotBytes: 1 })
    const as = (token: string) => new RuntimeClient({ url: engine.url, token })
    const [a, b] = [as(ALICE), as(BOB)]
    try {
      const sb = await b.createSandbox()
      const kept = (await b.snapshot(sb.info.id, { name: 'bob-template' })).id
      const sa = await a.createSandbox()
      await sa.run('/bin/sh', ['-c', 'head -c 1000000 /dev/urandom > /home/sandbox/big'])
      await a.snapshot(sa.info.id, { name: 'big1' })
      await a.snapshot(sa.info.id, { name: 'big2' })
      expect((await b.listSnapshots()).map((s) => s.id)).toEqual([kept])
      expect((await a.listSnapshots()).map((s) => s.name)).toEqual(['big2'])
    } finally {
      await Promise.all([a.close(), b.close()])
      await engine.close()
      fs.rmSync(dir, { recursive: true, force: true })
    }
  })

  it("gives each tenant its share of the server's sandboxes, and tells it nothing of the others'", async () => {
    const small = await startServe({ tenants: { alice: ALICE, bob: BOB }, args: ['--max-sandboxes', '6'] })
    const url = small.apiUrl.replace(/\/v1$/, '')
    const [a, b] = [new RuntimeClient({ url, token: ALICE }), new RuntimeClient({ url, token: BOB })]
    try {
      await b.createSandbox()
      await a.createSandbox()
      await a.createSandbox()
      const refused = await fetch(`${small.apiUrl}/sandboxes`, { method: 'POST', headers: { authorization: `Bearer ${ALICE}`, 'content-type': 'application/json' }, body: '{}' })
      expect(refused.status).toBe(429)
      expect((await refused.json()).message).toBe("this tenant's sandbox limit is reached: 2 running (kill some, or raise --max-sandboxes)")
      await b.createSandbox() // bob's share is his own
    } finally {
      await Promise.all([a.close(), b.close()])
      await small.close()
    }
  })

  it('refuses a tenants file that would mix them up, naming the entry', async () => {
    const { Tenants } = await import('../src/engine/tenants.js')
    const fs = await import('node:fs')
    const os = await import('node:os')
    const path = await import('node:path')
    const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'vps-tenants-')), 'tenants.json')
    const load = (text: string) => {
      fs.writeFileSync(file, text)
      return () => Tenants.from('default-token-0123456789', file)
    }
    expect(load('{"a": "short"}')).toThrow(`--tenants ${file}: the token of "a" must be a string of at least 16 characters`)
    expect(load('{"default": "0123456789abcdef0"}')).toThrow('tenant name "default" must be 1-64 of a-z')
    expect(load('{"a": "default-token-0123456789"}')).toThrow(`the token of "a" is another tenant's too`)
    expect(load('[1]')).toThrow('must be an object of tenant names to tokens')
    fs.rmSync(path.dirname(file), { recursive: true, force: true })
  })
})

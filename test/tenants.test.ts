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

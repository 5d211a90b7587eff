/**
 * A ProviderSession over the process runtime protocol (Watasu runtime v1): the local engine and
 * Watasu both speak it, so both providers are this adapter with a different way to connect.
 */
import type { RuntimeClient } from '../protocol/client.js'
import type { ProviderSandbox, ProviderSession } from './types.js'

export function runtimeProtocolSession(client: RuntimeClient, close: () => Promise<void>): ProviderSession {
  return {
    async createSandbox(opts) {
      const sbx = await client.createSandbox({ template: opts.template, timeout: opts.timeoutSec, metadata: opts.labels, allowInternetAccess: opts.network })
      const sandbox: ProviderSandbox = {
        id: sbx.id,
        upload: async (path, body) => void (await sbx.writeFile(path, body)),
        start: (o) => sbx.start(o),
        setTimeout: (seconds) => client.setTimeout(sbx.id, seconds),
        snapshot: async (name) => (await client.snapshot(sbx.id, { name })).id,
        kill: async () => void (await client.killSandbox(sbx.id)),
      }
      return sandbox
    },
    async findTemplate(name) {
      return (await client.listSnapshots()).find((s) => s.name === name)?.id
    },
    async close() {
      await client.close()
      await close()
    },
  }
}

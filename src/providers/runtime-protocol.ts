/**
 * A ProviderSession over the process runtime protocol (Watasu runtime v1): the local engine and
 * Watasu both speak it, so both providers are this adapter with a different way to connect.
 */
import type { ResolvedRemoteLimits } from '../sizes.js'
import type { RuntimeClient } from '../protocol/client.js'
import type { DirectChannel, ProcessSpec, ProviderProcess, ProviderSandbox, ProviderSession } from './types.js'

export interface RuntimeSessionOptions {
  /** The provider and its base image, for the template key. */
  base: string
  /** The embedded engine: sandboxes on this machine. @default false */
  sharesHost?: boolean
  /** See ProviderSession.runtimeDir. */
  runtimeDir?: string
  lockTemplate?: ProviderSession['lockTemplate']
  /** `timeout_ms` of every process (the server kills it after that); 0 for none. */
  processTimeoutMs: number
  /** Starts processes without the protocol's WebSocket (the embedded engine, in this process). */
  start?: (sandboxId: string, spec: ProcessSpec) => Promise<ProviderProcess>
  /** The sandbox's direct channel (the embedded engine, in this process). */
  channel?: (sandboxId: string) => DirectChannel | undefined
  /** Why processes of the sandbox were killed, when a limit did it (the embedded engine). */
  limitHit?: (sandboxId: string) => string | undefined
  /** What each sandbox may use, asked of the server (which checks it against its own limits). */
  limits?: ResolvedRemoteLimits
  /** Runs after the client closes (the embedded engine stops). */
  close?: () => Promise<void>
}

export function runtimeProtocolSession(client: RuntimeClient, opts: RuntimeSessionOptions): ProviderSession {
  return {
    base: opts.base,
    sharesHost: opts.sharesHost ?? false,
    runtimeDir: opts.runtimeDir,
    lockTemplate: opts.lockTemplate,
    async createSandbox(create) {
      const sbx = await client.createSandbox({ template: create.template, timeout: create.timeoutSec, metadata: create.labels, allowInternetAccess: create.network, hostLayers: create.hostLayers, readOnly: create.readOnly, limits: opts.limits })
      const sandbox: ProviderSandbox = {
        id: sbx.id,
        channel: opts.channel?.(sbx.id),
        upload: async (path, body) => void (await sbx.writeFile(path, body)),
        start: (spec) => (opts.start ? opts.start(sbx.id, spec) : sbx.start({ ...spec, timeoutMs: opts.processTimeoutMs })),
        setTimeout: (seconds) => client.setTimeout(sbx.id, seconds),
        snapshot: async (name) => (await client.snapshot(sbx.id, { name })).id,
        kill: async () => void (await client.killSandbox(sbx.id)),
        limitHit: opts.limitHit && (() => opts.limitHit!(sbx.id)),
      }
      return sandbox
    },
    async findTemplate(name) {
      return (await client.listSnapshots()).find((s) => s.name === name)?.id
    },
    async listTemplates() {
      return (await client.listSnapshots())
        .filter((s) => s.name)
        .map((s) => ({ id: s.id, name: s.name!, sizeBytes: s.size_bytes, createdAt: s.created_at, lastUsedAt: s.last_used_at ?? undefined }))
    },
    deleteTemplate: (id) => client.deleteSnapshot(id),
    async listSandboxes(labels) {
      return (await client.listSandboxes(labels)).map((s) => ({ id: s.id, labels: s.metadata, createdAt: s.started_at }))
    },
    killSandbox: (id) => client.killSandbox(id),
    async close() {
      await client.close()
      await opts.close?.()
    },
  }
}

/**
 * The local sandbox engine, embedded: `startLocalEngine()` starts the engine and its protocol
 * server in this process, on an ephemeral loopback port with a random token, and returns what a
 * `RuntimeClient` needs. Nothing to set up; closing it kills every sandbox it made.
 */
import { Engine, type EngineOptions } from './engine.js'
import { startServer, type ServerOptions } from './server.js'

export { Engine, defaultStateDir, type EngineOptions, type CreateSandboxOptions } from './engine.js'
export { HostSetupError, detectHost, type HostInfo } from './host.js'
export { RUNTIME_MOUNT } from './policy.js'
export { startServer, type ServerOptions, type RunningServer } from './server.js'

export interface LocalEngineHandle {
  /** Origin of both planes, e.g. `http://127.0.0.1:40123`. */
  url: string
  /** Bearer token of the control plane (random unless given). */
  token: string
  engine: Engine
  /** Kill all sandboxes and stop the server. */
  close(): Promise<void>
}

export async function startLocalEngine(opts: EngineOptions & Omit<ServerOptions, 'host'> & { host?: string } = {}): Promise<LocalEngineHandle> {
  const engine = await Engine.start(opts)
  try {
    const server = await startServer(engine, { allowNetwork: true, ...opts, host: opts.host ?? '127.0.0.1' })
    return {
      url: server.url,
      token: server.token,
      engine,
      close: async () => {
        // The sandboxes first: a client that holds its connection must not keep them alive.
        await Promise.all([engine.close(), server.close()])
      },
    }
  } catch (err) {
    await engine.close()
    throw err
  }
}

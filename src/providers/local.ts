/**
 * `local()`: the embedded sandbox engine (bubblewrap on Linux), started in-process on an
 * ephemeral loopback port with a random token. Nothing to sign up for; the default provider.
 */
import { RuntimeClient } from '../protocol/client.js'
import { runtimeProtocolSession } from './runtime-protocol.js'
import type { SandboxProvider } from './types.js'

export interface LocalProviderOptions {
  /**
   * Folder for template layers and sandbox state; templates persist there across runs.
   * @default `~/.cache/vitest-pool-sandbox` (`/var/cache/vitest-pool-sandbox` as root)
   */
  stateDir?: string
  /** Processes (and threads) one sandbox may have at once. @default 1024 */
  maxProcesses?: number
  /** Open files per process. @default 4096 */
  maxOpenFiles?: number
  /**
   * Bytes the templates in `stateDir` may take on disk; past it, the least recently used ones no
   * running sandbox needs are deleted after each new build.
   * @default 5 GiB
   */
  maxTemplateBytes?: number
}

export function local(options: LocalProviderOptions = {}): SandboxProvider {
  return {
    name: 'local',
    async connect() {
      if (process.platform !== 'linux') {
        throw new Error(
          `local(): the local sandbox engine needs Linux (bubblewrap); this host is ${process.platform}. ` +
            'Use a remote provider (watasu(), opensandbox()), or run `vitest-sandbox serve` on a Linux machine and point watasu({ apiUrl }) at it.',
        )
      }
      // Loaded here so that importing the package on macOS or Windows never touches the engine.
      const { startLocalEngine } = await import('../engine/index.js')
      const { startLocalProcess } = await import('./local-process.js')
      const engine = await startLocalEngine({
        stateDir: options.stateDir,
        limits: { processes: options.maxProcesses, openFiles: options.maxOpenFiles },
        // Its only caller is this process: sandboxes may layer this machine's node_modules and
        // reach this process through a direct channel.
        allowHostLayers: true,
        allowChannels: true,
        maxSnapshotBytes: options.maxTemplateBytes,
      })
      const client = new RuntimeClient({ url: engine.url, token: engine.token })
      return runtimeProtocolSession(client, {
        base: 'local',
        sharesHost: true,
        lockTemplate: (name, onWait) => engine.engine.layers.lock(name, onWait),
        processTimeoutMs: 0,
        start: (id, spec) => startLocalProcess(engine.engine, id, spec),
        channel: (id) => engine.engine.get(id)?.channel,
        close: engine.close,
      })
    },
  }
}

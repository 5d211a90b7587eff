/**
 * `local()`: the embedded sandbox engine (bubblewrap on Linux), started in-process on an
 * ephemeral loopback port with a random token. Nothing to sign up for; the default provider.
 */
import { RuntimeClient } from '../protocol/client.js'
import { runtimeProtocolSession } from './runtime-protocol.js'
import type { SandboxProvider } from './types.js'
import type { LimitsInput } from '../engine/limits.js'

export interface LocalProviderOptions {
  /**
   * Folder for template layers and sandbox state; templates persist there across runs.
   * @default `~/.cache/vitest-pool-sandbox` (`/var/cache/vitest-pool-sandbox` as root)
   */
  stateDir?: string
  /**
   * What each sandbox may use: `memory` and `disk` as sizes (`'2g'`, `'512m'`), `cpus` in cores,
   * `processes`, `openFiles`. On by default, sized from this machine (`vitest-sandbox doctor`
   * prints them and what enforces each). A limit set here that this host cannot enforce stops
   * the run with the reason and the fix; a default one is reported once. `false` turns memory,
   * disk and CPU limits off (trusted code only).
   */
  limits?: LimitsInput | false
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
      const { startLocalEngine, RUNTIME_MOUNT } = await import('../engine/index.js')
      const { startLocalProcess } = await import('./local-process.js')
      const engine = await startLocalEngine({
        stateDir: options.stateDir,
        limits: options.limits,
        // Its only caller is this process: sandboxes may layer this machine's node_modules and
        // reach this process through a direct channel.
        allowHostLayers: true,
        allowChannels: true,
        maxSnapshotBytes: options.maxTemplateBytes,
      })
      for (const u of engine.engine.limitsReport().unenforced) {
        console.warn(`sandbox: local sandboxes run without a ${u.limit} limit: ${u.reason} (fix: ${u.fix})`)
      }
      const client = new RuntimeClient({ url: engine.url, token: engine.token })
      return runtimeProtocolSession(client, {
        base: 'local',
        sharesHost: true,
        // This package's dist, bound read-only into every sandbox.
        runtimeDir: `${RUNTIME_MOUNT}/dist/sandbox-runtime`,
        lockTemplate: (name, onWait) => engine.engine.layers.lock(name, onWait),
        processTimeoutMs: 0,
        start: (id, spec) => startLocalProcess(engine.engine, id, spec),
        channel: (id) => engine.engine.get(id)?.channel,
        limitHit: (id) => engine.engine.outOfMemory(id),
        close: engine.close,
      })
    },
  }
}

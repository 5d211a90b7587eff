// OpenSandbox (self-hosted on Docker or Kubernetes): OPEN_SANDBOX_DOMAIN (host:port of the
// lifecycle server) and OPEN_SANDBOX_API_KEY from the environment. Outside the cluster, reach the
// sandboxes through the server's proxy. The key is sent to the lifecycle server only, never to a
// sandbox's execd.
import { defineConfig } from 'vitest/config'
import { opensandbox, sandbox } from 'vitest-pool-sandbox'

export default defineConfig({
  test: {
    pool: sandbox({
      provider: opensandbox({
        useServerProxy: process.env.CI === 'true',
        image: 'node:22', // default: node:<this host's Node major>
        resourceLimits: { cpu: '2', memory: '4Gi' },
      }),
      sandboxes: 64,
      concurrency: 2,
      timeout: 1800,
    }),
  },
})

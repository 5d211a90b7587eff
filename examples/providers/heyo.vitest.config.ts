// Heyo (experimental): a local Heyo daemon by default here, where the pool's template (the
// lockfile's install) is kept as one of the daemon's images. For Heyo's cloud, drop `baseUrl` and
// set HEYO_API_KEY: the cloud keeps no templates, so each sandbox installs its dependencies itself.
// Heyo sandboxes always reach the network, so the run must say `network: 'allow'`.
import { defineConfig } from 'vitest/config'
import { heyo, sandbox } from 'vitest-pool-sandbox'

export default defineConfig({
  test: {
    pool: sandbox({
      provider: heyo({ baseUrl: process.env.HEYO_BASE_URL ?? 'http://127.0.0.1:34099', image: 'node:22' }),
      network: 'allow',
      sandboxes: 4,
      timeout: 1800,
    }),
  },
})

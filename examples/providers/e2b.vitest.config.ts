// E2B: E2B_API_KEY from the environment (sent to E2B's API only; each sandbox's envd gets that
// sandbox's own access token). Sandboxes start from E2B's `base` template, or from one of yours
// that has Node; the pool's own template (the lockfile's install) is an E2B snapshot, found by
// name on the next run and on every CI machine.
import { defineConfig } from 'vitest/config'
import { e2b, sandbox } from 'vitest-pool-sandbox'

export default defineConfig({
  test: {
    pool: sandbox({
      provider: e2b({ template: 'base' }),
      sandboxes: 'auto',
      maxSandboxes: 20,
      timeout: 1800,
    }),
  },
})

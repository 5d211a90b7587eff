// Watasu: WATASU_API_KEY (or WATASU_ACCESS_TOKEN) from the environment; WATASU_API_URL / WATASU_DOMAIN
// override the endpoint. The key stays on this machine: it never enters a sandbox.
import { defineConfig } from 'vitest/config'
import { sandbox, watasu } from 'vitest-pool-sandbox'

export default defineConfig({
  test: {
    pool: sandbox({ provider: watasu(), sandboxes: 16, concurrency: 2 }),
  },
})

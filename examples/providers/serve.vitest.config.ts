// A self-hosted, Watasu-compatible backend: `vitest-sandbox serve` on a Linux machine
// (`vitest-sandbox serve --host 0.0.0.0 --port 8787 --token "$VITEST_SANDBOX_TOKEN"`, behind TLS
// across machines), used from any host, macOS and Windows included.
import { defineConfig } from 'vitest/config'
import { sandbox, watasu } from 'vitest-pool-sandbox'

export default defineConfig({
  test: {
    pool: sandbox({
      provider: watasu({ apiUrl: process.env.SANDBOX_SERVER_URL ?? 'http://sandbox-host:8787/v1', apiKey: process.env.VITEST_SANDBOX_TOKEN }),
      sandboxes: 8,
    }),
  },
})

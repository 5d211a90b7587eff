import { defineConfig } from 'vitest/config'
import { sandbox } from 'vitest-pool-sandbox'

// Every test file runs in a local bubblewrap sandbox: two sandboxes, two files at once in each.
export default defineConfig({
  test: {
    pool: sandbox({ sandboxes: 2, concurrency: 2 }),
  },
})

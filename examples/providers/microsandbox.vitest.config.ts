// microsandbox: microVMs on this machine (needs hardware virtualization: check it with
// `npx vitest-sandbox doctor --provider microsandbox`), through the microsandbox package
// (npm install --save-dev microsandbox; Node 22 or newer). No API key: the VMs are local.
import { defineConfig } from 'vitest/config'
import { microsandbox, sandbox } from 'vitest-pool-sandbox'

export default defineConfig({
  test: {
    pool: sandbox({
      provider: microsandbox({ image: 'node:22', cpus: 2, memoryMib: 2048 }),
      sandboxes: 4,
    }),
  },
})

import { defineConfig } from 'vitest/config'

// Files that mostly wait (a minute-long outage, a template build past Vitest's start timeout,
// heartbeats, registry installs, a debugger's polls) and share no fixture: run two at a time,
// first. Every other file runs alone afterwards: they time or sample their own runs, load both
// cores, or check what a killed engine left behind (which any engine that starts removes).
const PAIRED = ['test/remote.test.ts', 'test/given.test.ts', 'test/lost.test.ts', 'test/watch.test.ts', 'test/protocol.test.ts', 'test/serve-bounds.test.ts', 'test/contract.test.ts', 'test/template.test.ts', 'test/debugger.test.ts', 'test/cli.test.ts']

export default defineConfig({
  test: {
    pool: 'forks',
    testTimeout: 60_000,
    hookTimeout: 60_000,
    reporters: ['default', './test/support/summary-reporter.ts'],
    projects: [
      { extends: true, test: { name: 'paired', include: PAIRED, maxWorkers: 2, sequence: { groupOrder: 0 } } },
      { extends: true, test: { name: 'alone', include: ['test/**/*.test.ts'], exclude: PAIRED, maxWorkers: 1, sequence: { groupOrder: 1 } } },
    ],
  },
})

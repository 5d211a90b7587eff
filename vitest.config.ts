import { defineConfig } from 'vitest/config'

// Files that mostly wait (a minute-long outage, a template build past Vitest's start timeout,
// heartbeats, registry installs, a debugger's polls) and share no fixture: run three at a time,
// first. Every other file runs alone afterwards: they time or sample their own runs, load both
// cores, or check what a killed engine left behind (which any engine that starts removes).
const PAIRED = [
  ...['remote', 'given', 'lost', 'watch', 'protocol', 'serve-bounds', 'contract', 'template', 'debugger', 'cli'],
  ...['coverage', 'host-access', 'faults', 'generated', 'attachments', 'isolation'],
].map((name) => `test/${name}.test.ts`)

export default defineConfig({
  test: {
    pool: 'forks',
    testTimeout: 60_000,
    hookTimeout: 60_000,
    reporters: ['default', './test/support/summary-reporter.ts'],
    projects: [
      { extends: true, test: { name: 'paired', include: PAIRED, maxWorkers: 3, sequence: { groupOrder: 0 } } },
      { extends: true, test: { name: 'alone', include: ['test/**/*.test.ts'], exclude: PAIRED, maxWorkers: 1, sequence: { groupOrder: 1 } } },
    ],
  },
})

import type { Reporter, TestModule } from 'vitest/node'

/** Prints the plain closing line CI reads: `N passed, N failed, N skipped`. */
export default class SummaryReporter implements Reporter {
  onTestRunEnd(modules: ReadonlyArray<TestModule>): void {
    const counts = { passed: 0, failed: 0, skipped: 0, pending: 0 }
    for (const m of modules) for (const t of m.children.allTests()) counts[t.result().state]++
    const failedModules = modules.filter((m) => m.state() === 'failed' && [...m.children.allTests()].length === 0).length
    process.stdout.write(`\n${counts.passed} passed, ${counts.failed + failedModules} failed, ${counts.skipped} skipped\n`)
  }
}

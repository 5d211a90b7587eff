// Memory of idle local sandboxes: N sandboxes of local(), each with its agent started from the
// pool's bundle and nothing else running; the resident memory of their processes (bwrap, the
// engine's init, the agent) per sandbox, and of this host process (`npm run bench:memory`).
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { treeRss } from './proc.mjs'

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const { local } = await import(path.join(repo, 'dist/providers/local.js'))
const { Bundles, startAgent } = await import(path.join(repo, 'dist/pool/transfer.js'))
const COUNTS = (process.env.BENCH_SANDBOXES ?? '1,4,16').split(',').map(Number)

const session = await local().connect()
const bundles = new Bundles()
bundles.pack({ root: '/tmp', files: [] }, () => false)
const rows = []
try {
  for (const n of COUNTS) {
    const sandboxes = []
    for (let i = 0; i < n; i++) {
      const sbx = await session.createSandbox({ timeoutSec: 300, labels: {}, network: false })
      sandboxes.push(sbx)
      const agent = await startAgent(sbx, await bundles.current(), '/tmp')
      await new Promise((resolve) => agent.on('stdout', resolve)) // its hello
    }
    await new Promise((r) => setTimeout(r, 3000)) // settled
    const { total, byName } = treeRss(process.pid)
    rows.push({ n, perSandbox: total / 1024 ** 2 / n, byName, host: process.memoryUsage().rss / 1024 ** 2 })
    await Promise.all(sandboxes.map((s) => s.kill()))
  }
} finally {
  await session.close()
  await bundles.dispose()
}
console.log(`Idle local sandboxes (bwrap + the engine's init + the agent); ${os.cpus().length} CPUs, Node ${process.versions.node}, ${new Date().toISOString().slice(0, 10)}\n`)
console.log('| sandboxes | per sandbox | of which Node (init + agent) | host process |')
console.log('|---|---|---|---|')
for (const r of rows) console.log(`| ${r.n} | ${r.perSandbox.toFixed(1)} MB | ${((r.byName.node ?? 0) / 1024 ** 2 / r.n).toFixed(1)} MB | ${r.host.toFixed(0)} MB |`)
process.exit(0)

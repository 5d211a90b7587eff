// Memory of idle local sandboxes: N sandboxes of local(), each with its agent started from the
// pool's bundle and nothing else running; the memory of their processes (bwrap, the engine's init,
// the agent) per sandbox, and of this host process (`npm run bench:memory`). Resident memory counts
// the Node binary's shared code once per process; private memory is what one more sandbox costs.
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { treeRss } from './proc.mjs'

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const { local } = await import(path.join(repo, 'dist/providers/local.js'))
const { Bundles, startAgent } = await import(path.join(repo, 'dist/pool/transfer.js'))
const COUNTS = (process.env.BENCH_SANDBOXES ?? '1,16,64').split(',').map(Number)

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
    const mem = treeRss(process.pid)
    const mb = (bytes) => bytes / 1024 ** 2 / n
    rows.push({ n, rss: mb(mem.total), pss: mb(mem.pss), own: mb(mem.private), node: mb(mem.byName.node ?? 0), host: process.memoryUsage().rss / 1024 ** 2 })
    await Promise.all(sandboxes.map((s) => s.kill()))
  }
} finally {
  await session.close()
  await bundles.dispose()
}
console.log(`Idle local sandboxes (bwrap + the engine's init + the agent); ${os.cpus().length} CPUs, Node ${process.versions.node}, ${new Date().toISOString().slice(0, 10)}\n`)
console.log('| sandboxes | private per sandbox | proportional (PSS) per sandbox | resident (RSS) per sandbox | of which Node RSS (init + agent) | host process RSS |')
console.log('|---|---|---|---|---|---|')
const f = (v) => `${v.toFixed(1)} MB`
for (const r of rows) console.log(`| ${r.n} | ${f(r.own)} | ${f(r.pss)} | ${f(r.rss)} | ${f(r.node)} | ${r.host.toFixed(0)} MB |`)
process.exit(0)

// Memory of idle local sandboxes: N sandboxes of local(), each with its agent started from the
// pool's bundle and nothing else running; the resident memory of their processes (bwrap, the
// engine's init, the agent) per sandbox, and of this host process (`npm run bench:memory`).
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const { local } = await import(path.join(repo, 'dist/providers/local.js'))
const { Bundles, startAgent } = await import(path.join(repo, 'dist/pool/transfer.js'))
const COUNTS = (process.env.BENCH_SANDBOXES ?? '1,4,16').split(',').map(Number)

/** Resident memory (kB) of this process's descendants, by command name. */
function descendants() {
  const kids = new Map()
  const names = new Map()
  for (const p of fs.readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
    try {
      const stat = fs.readFileSync(`/proc/${p}/stat`, 'utf8')
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1])
      if (!kids.has(ppid)) kids.set(ppid, [])
      kids.get(ppid).push(Number(p))
      names.set(Number(p), stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')')))
    } catch {}
  }
  const byName = {}
  const walk = (pid) => {
    for (const c of kids.get(pid) ?? []) {
      try {
        const kb = Number(/VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${c}/status`, 'utf8'))?.[1] ?? 0)
        byName[names.get(c)] = (byName[names.get(c)] ?? 0) + kb
      } catch {}
      walk(c)
    }
  }
  walk(process.pid)
  return byName
}

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
    const byName = descendants()
    const total = Object.values(byName).reduce((a, b) => a + b, 0)
    rows.push({ n, perSandbox: total / 1024 / n, byName, host: process.memoryUsage().rss / 1024 ** 2 })
    await Promise.all(sandboxes.map((s) => s.kill()))
  }
} finally {
  await session.close()
  await bundles.dispose()
}
console.log(`Idle local sandboxes (bwrap + the engine's init + the agent); ${os.cpus().length} CPUs, Node ${process.versions.node}, ${new Date().toISOString().slice(0, 10)}\n`)
console.log('| sandboxes | per sandbox | of which Node (init + agent) | host process |')
console.log('|---|---|---|---|')
for (const r of rows) console.log(`| ${r.n} | ${r.perSandbox.toFixed(1)} MB | ${((r.byName.node ?? 0) / 1024 / r.n).toFixed(1)} MB | ${r.host.toFixed(0)} MB |`)
process.exit(0)

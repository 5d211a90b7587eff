// Local engine benchmark, through the protocol exactly as the pool uses it (client -> server ->
// bubblewrap): sandbox create from a snapshot (p50/p95), process start (p50), and 1 MiB
// stdin -> stdout round-trip throughput, with 1, 4 and 8 sandboxes at once.
// Prints a Markdown table with the machine and date; paste it into the README.
import { randomBytes } from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { startLocalEngine } from '../dist/engine/index.js'
import { RuntimeClient } from '../dist/protocol/client.js'

const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 8)
const STARTS = 10
const state = fs.mkdtempSync(path.join(os.tmpdir(), 'vps-bench-'))
fs.chmodSync(state, 0o755)
const engine = await startLocalEngine({ stateDir: state })
const client = new RuntimeClient({ url: engine.url, token: engine.token })

const pct = (xs, p) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor((p / 100) * xs.length))]
const ms = (x) => x.toFixed(1)

// A template like a small project's node_modules: 2,000 files, ~20 MB.
const builder = await client.createSandbox()
await builder.run('/bin/sh', ['-c', 'for d in $(seq 1 100); do mkdir -p /deps/node_modules/p$d; for f in $(seq 1 20); do head -c 10000 /dev/urandom > /deps/node_modules/p$d/f$f.js; done; done'])
const snap = await client.snapshot(builder.id, { name: 'bench-template' })
await client.killSandbox(builder.id)

async function roundTrip(sbx) {
  const data = randomBytes(1024 * 1024)
  const t = performance.now()
  const proc = await sbx.start({ cmd: 'cat', stdin: true })
  let got = 0
  proc.on('stdout', (b) => (got += b.length))
  for (let i = 0; i < data.length; i += 256 * 1024) await proc.write(data.subarray(i, i + 256 * 1024))
  await proc.closeStdin()
  await proc.exited
  if (got !== data.length) throw new Error(`round trip lost bytes: ${got}`)
  return performance.now() - t
}

const rows = []
for (const n of [1, 4, 8]) {
  const creates = []
  const starts = []
  const trips = []
  for (let r = 0; r < ROUNDS; r++) {
    const sandboxes = await Promise.all(
      Array.from({ length: n }, async () => {
        const t = performance.now()
        const s = await client.createSandbox({ template: snap.id })
        creates.push(performance.now() - t)
        return s
      }),
    )
    await Promise.all(
      sandboxes.map(async (s) => {
        for (let i = 0; i < STARTS; i++) {
          const t = performance.now()
          const p = await s.start({ cmd: 'true' })
          starts.push(performance.now() - t)
          await p.exited
        }
        trips.push(await roundTrip(s))
      }),
    )
    await Promise.all(sandboxes.map((s) => client.killSandbox(s.id)))
  }
  // Aggregate throughput: n sandboxes each moving 1 MiB each way at the same time.
  const mibPerSec = (n * 1000) / pct(trips, 50)
  rows.push(`| ${n} | ${ms(pct(creates, 50))} | ${ms(pct(creates, 95))} | ${ms(pct(starts, 50))} | ${ms(pct(trips, 50))} | ${mibPerSec.toFixed(1)} |`)
}

const cpu = os.cpus()[0]?.model ?? 'unknown CPU'
console.log(`Local engine, ${new Date().toISOString().slice(0, 10)}, ${os.cpus().length} × ${cpu}, ${Math.round(os.totalmem() / 2 ** 30)} GiB, Linux ${os.release()}, Node ${process.version}, bubblewrap ${engine.engine.host.bwrapVersion}; ${ROUNDS} rounds, template of 2,000 files / 20 MB.`)
console.log('')
console.log('| sandboxes at once | create p50 (ms) | create p95 (ms) | process start p50 (ms) | 1 MiB stdin→stdout p50 (ms) | aggregate MiB/s |')
console.log('|---|---|---|---|---|---|')
for (const r of rows) console.log(r)

await client.close()
await engine.close()
fs.rmSync(state, { recursive: true, force: true })

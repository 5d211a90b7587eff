// Runs an embedded engine in its own process (for attacks that need the engine's own process:
// inherited descriptors, SIGKILL of the engine). Prints {url, token} as one JSON line.
import { startLocalEngine } from '../../dist/engine/index.js'

const handle = await startLocalEngine({ stateDir: process.argv[2] })
process.stdout.write(`${JSON.stringify({ url: handle.url, token: handle.token })}\n`)
process.on('SIGTERM', async () => {
  await handle.close()
  process.exit(0)
})

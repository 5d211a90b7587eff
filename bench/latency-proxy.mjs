// A TCP proxy on loopback that delays every chunk by half the round trip each way and limits each
// direction's bandwidth, so a loopback server behaves like one across a network. Bytes are relayed
// unchanged and in order (HTTP and WebSocket alike). Bytes up are also counted by connection kind:
// plain HTTP (API calls, file uploads) and WebSocket (process streams: RPC, module code).
import net from 'node:net'

/**
 * @param {{ target: { host: string, port: number }, rttMs?: number, bytesPerSecond?: number }} opts
 * @returns {Promise<{ port: number, url: string, rttMs: number, bytes: { up: number, down: number, httpUp: number, streamUp: number }, close(): Promise<void> }>}
 */
export async function startLatencyProxy({ target, rttMs = 0, bytesPerSecond = Infinity }) {
  const bytes = { up: 0, down: 0, httpUp: 0, streamUp: 0 }
  const sockets = new Set()
  // One lane per direction of a connection: a chunk leaves after the delay, and not before the
  // lane has sent the previous chunks at the bandwidth limit.
  const lane = (to, count) => {
    let free = 0
    const queue = []
    let timer
    const pump = () => {
      timer = undefined
      while (queue.length && queue[0].at <= performance.now()) if (!to.destroyed) to.write(queue.shift().chunk)
      if (queue.length) timer = setTimeout(pump, queue[0].at - performance.now())
    }
    return (chunk) => {
      count(chunk.length)
      if (rttMs === 0 && bytesPerSecond === Infinity) return void to.write(chunk)
      const start = Math.max(performance.now() + rttMs / 2, free)
      free = start + (chunk.length / bytesPerSecond) * 1000
      queue.push({ at: free, chunk })
      timer ??= setTimeout(pump, free - performance.now())
    }
  }
  const server = net.createServer((client) => {
    const upstream = net.connect(target)
    sockets.add(client).add(upstream)
    client.setNoDelay(true)
    upstream.setNoDelay(true)
    let kind
    const up = lane(upstream, (n) => {
      bytes.up += n
      bytes[kind] += n
    })
    client.on('data', (chunk) => {
      kind ??= /\r\nupgrade:\s*websocket\r\n/i.test(chunk.toString('latin1', 0, 4096)) ? 'streamUp' : 'httpUp'
      up(chunk)
    })
    upstream.on('data', lane(client, (n) => (bytes.down += n)))
    const end = (other) => () => setTimeout(() => other.end(), rttMs / 2 + 1)
    client.on('end', end(upstream))
    upstream.on('end', end(client))
    for (const s of [client, upstream]) {
      s.on('error', () => (client.destroy(), upstream.destroy()))
      s.on('close', () => sockets.delete(s))
    }
  })
  await new Promise((r) => server.listen(0, '127.0.0.1', r))
  const port = server.address().port
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    rttMs,
    bytes,
    close: async () => {
      for (const s of sockets) s.destroy()
      await new Promise((r) => server.close(r))
    },
  }
}

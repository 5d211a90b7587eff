/**
 * A faulty network between a client and a real server: an HTTP and WebSocket relay on loopback
 * that answers chosen requests with an error status (429 with Retry-After, 5xx) and can cut every
 * relayed WebSocket at once, or process sockets just as their process starts. Used in front of
 * `vitest-sandbox serve` to show what watasu() does when Watasu misbehaves.
 */
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import WebSocket, { WebSocketServer } from 'ws'

export interface ProxyFault {
  method?: string
  path: RegExp
  status: number
  times: number
}

export async function startFaultProxy(target: string) {
  const upstream = new URL(target)
  const faults: ProxyFault[] = []
  const sockets = new Set<WebSocket>()
  const seen: Array<{ method: string; path: string; status?: number }> = []
  /** Process sockets still to cut at the server's `started`, which the client then never gets. */
  let cutsAtStarted = 0

  /** Until then every request and every WebSocket upgrade is answered 503 or 429 in turn. */
  let outageUntil = 0
  let outageAnswers = 0
  const take = (method: string, path: string): { status: number } | undefined => {
    if (Date.now() < outageUntil) return { status: outageAnswers++ % 2 ? 429 : 503 }
    const f = faults.find((x) => x.times > 0 && (!x.method || x.method === method) && x.path.test(path))
    if (f) f.times--
    return f
  }

  const server = http.createServer((req, res) => {
    const path = new URL(req.url!, 'http://proxy').pathname
    const fault = take(req.method!, path)
    seen.push({ method: req.method!, path, status: fault?.status })
    if (fault) {
      req.resume()
      res.writeHead(fault.status, { 'content-type': 'application/json', ...(fault.status === 429 ? { 'retry-after': '0' } : {}) })
      return void res.end(JSON.stringify({ error: 'injected', message: `injected ${fault.status}` }))
    }
    const out = http.request({ host: upstream.hostname, port: upstream.port, method: req.method, path: req.url, headers: { ...req.headers, host: upstream.host } }, (b) => {
      res.writeHead(b.statusCode!, b.headers)
      b.pipe(res)
    })
    out.on('error', () => res.destroy())
    req.pipe(out)
  })

  const wss = new WebSocketServer({ noServer: true, maxPayload: 0 })
  server.on('upgrade', (req, socket, head) => {
    const path = new URL(req.url!, 'http://proxy').pathname
    if (Date.now() < outageUntil) {
      const status = take('WS', path)!.status
      seen.push({ method: 'WS', path, status })
      return void socket.end(`HTTP/1.1 ${status} Unavailable\r\nconnection: close\r\ncontent-length: 0\r\n\r\n`)
    }
    seen.push({ method: 'WS', path })
    const headers = { authorization: String(req.headers.authorization ?? '') }
    const backend = new WebSocket(`ws://${upstream.host}${req.url}`, { headers, maxPayload: 0 })
    backend.once('unexpected-response', (_r, res) => {
      socket.end(`HTTP/1.1 ${res.statusCode} ${res.statusMessage}\r\nconnection: close\r\n\r\n`)
    })
    backend.once('error', () => socket.destroy())
    backend.once('open', () => {
      wss.handleUpgrade(req, socket, head, (client) => {
        sockets.add(client)
        client.on('message', (d: Buffer, binary) => backend.readyState === WebSocket.OPEN && backend.send(d, { binary }))
        backend.on('message', (d: Buffer, binary) => {
          if (cutsAtStarted > 0 && !binary && d.toString().includes('"type":"started"')) {
            cutsAtStarted--
            return void client.terminate()
          }
          if (client.readyState === WebSocket.OPEN) client.send(d, { binary })
        })
        backend.on('close', (code, reason) => client.readyState === WebSocket.OPEN && client.close(code === 1005 || code === 1006 ? 1011 : code, reason))
        client.on('close', () => {
          sockets.delete(client)
          backend.terminate()
        })
      })
    })
  })

  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()))
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    seen,
    inject(fault: Omit<ProxyFault, 'times'> & { times?: number }): void {
      faults.push({ times: 1, ...fault })
    },
    /** Cut the next `times` process sockets when the server says `started`, before the client hears it. */
    cutAtStarted(times: number): void {
      cutsAtStarted = times
    },
    /** For the next `ms`, answer every request and upgrade with 503 or 429 (the relayed sockets stay). */
    outage(ms: number): void {
      outageUntil = Date.now() + ms
    },
    /** Cut every relayed WebSocket without a close frame; returns how many. */
    dropSockets(): number {
      const n = sockets.size
      for (const s of sockets) s.terminate()
      return n
    },
    async close(): Promise<void> {
      for (const s of sockets) s.terminate()
      server.closeAllConnections()
      await new Promise((r) => server.close(r))
    },
  }
}

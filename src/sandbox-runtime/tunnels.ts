/**
 * Debugger tunnels, inside a sandbox: the host relays a debugger's connection (only when the user
 * asked for one, for that run) and the agent joins it to a port on the sandbox's own loopback,
 * where a worker's inspector listens. Nothing else is reachable this way: the agent connects only
 * to 127.0.0.1, and only when the host asks. Runs inside sandboxes: Node built-ins only.
 */
import net from 'node:net'
import { frame, Kind } from './wire.js'

/** What a tunnel may hold for a debugger that does not read before it is closed. */
const UNREAD_LIMIT = 16 * 1024 * 1024

export function createTunnels(send: (frame: Buffer) => void): (id: number, kind: number, payload: Buffer) => void {
  const open = new Map<number, net.Socket>()
  const closed = (id: number) => {
    if (open.delete(id)) send(frame(id, Kind.INSPECTOR_CLOSED))
  }
  return (id, kind, payload) => {
    if (kind === Kind.INSPECTOR_OPEN) {
      const { port } = JSON.parse(payload.toString()) as { port: unknown }
      if (open.has(id) || !Number.isInteger(port) || (port as number) < 1 || (port as number) > 65535) return void send(frame(id, Kind.INSPECTOR_CLOSED))
      const socket = net.connect({ host: '127.0.0.1', port: port as number })
      open.set(id, socket)
      socket.on('data', (d: Buffer) => send(frame(id, Kind.INSPECTOR_OUT, d)))
      socket.on('error', () => {})
      socket.on('close', () => closed(id))
    } else if (kind === Kind.INSPECTOR_IN) {
      const socket = open.get(id)
      if (!socket) return
      socket.write(Buffer.from(payload))
      if (socket.writableLength > UNREAD_LIMIT) socket.destroy()
    } else if (kind === Kind.INSPECTOR_CLOSE) {
      open.get(id)?.destroy()
    }
  }
}

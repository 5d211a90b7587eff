/**
 * The debugger, relayed. With `--inspect`/`--inspect-brk` (or `test.inspector`), a sandboxed
 * worker opens its inspector on the sandbox's own loopback, where no debugger on the host can
 * reach it. The host then listens on its loopback at that port, for that run only, and joins each
 * connection to the worker last started with the inspector on, through its sandbox's link (the
 * agent's tunnels, on every provider). Nothing listens unless the user asked for the inspector.
 */
import net from 'node:net'
import type { AgentLink } from './agent-link.js'

/** Node's default inspector port, which Vitest's `--inspect` without a value means. */
export const DEFAULT_INSPECTOR_PORT = 9229
/** What the host holds for a debugger that does not read before the connection is closed. */
const UNREAD_LIMIT = 16 * 1024 * 1024

export class InspectorRelay {
  private listening?: Promise<number>
  private server?: net.Server
  private target?: { link: AgentLink; port: number }
  private readonly sockets = new Set<net.Socket>()

  /** Listen on the host's loopback at `port` (0: a free one), once; resolves with the port. */
  listen(port: number): Promise<number> {
    this.listening ??= new Promise<number>((resolve, reject) => {
      const server = (this.server = net.createServer((socket) => this.join(socket)))
      server.once('error', (err) =>
        reject(new Error(`sandbox: cannot relay the debugger on 127.0.0.1:${port} (${err.message}); give the inspector a free port, e.g. --inspect-brk=127.0.0.1:9230 or test.inspector.port`)),
      )
      server.listen(port, '127.0.0.1', () => resolve((server.address() as net.AddressInfo).port))
    })
    return this.listening
  }

  /** Send debuggers that connect from now on to `port` in the sandbox of `link`; returns the undo. */
  attach(link: AgentLink, port: number): () => void {
    const target = { link, port }
    this.target = target
    return () => {
      if (this.target === target) this.target = undefined
    }
  }

  private join(socket: net.Socket): void {
    const target = this.target
    if (!target?.link.alive) return void socket.destroy()
    this.sockets.add(socket)
    const tunnel = target.link.tunnel(target.port, {
      data: (bytes) => {
        socket.write(bytes)
        if (socket.writableLength > UNREAD_LIMIT) socket.destroy()
      },
      closed: () => socket.destroy(),
    })
    socket.on('data', (bytes: Buffer) => tunnel.write(bytes))
    socket.on('error', () => {})
    socket.on('close', () => {
      this.sockets.delete(socket)
      tunnel.close()
    })
  }

  close(): void {
    this.server?.close()
    for (const socket of this.sockets) socket.destroy()
  }
}

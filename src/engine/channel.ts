/**
 * A sandbox's direct channel: a Unix socket the engine listens on in the sandbox's state folder,
 * bound read-only into the sandbox at CHANNEL_PATH, so its processes reach this process in one hop
 * instead of through the init's stdio. Only the embedded engine offers it (`allowChannels`): its
 * caller is this machine's own Vitest run. Every connection is untrusted until the caller accepts
 * it; the engine only bounds how many there are and how long one may stay unclaimed.
 */
import { EventEmitter } from 'node:events'
import fsp from 'node:fs/promises'
import net from 'node:net'
import path from 'node:path'

/** Where the socket appears inside the sandbox. */
export const CHANNEL_PATH = '/.vitest-sandbox/channel.sock'
/** Connections open at once; more are refused (a process flooding it gets nothing from the host). */
const MAX_CONNECTIONS = 256
/** Longest a Unix socket path may be (sun_path, with its terminating NUL). */
const MAX_SOCKET_PATH = 107

export class HostChannel extends EventEmitter<{ connection: [socket: net.Socket] }> {
  readonly path = CHANNEL_PATH

  private constructor(private readonly server: net.Server, readonly hostPath: string) {
    super()
    server.maxConnections = MAX_CONNECTIONS
    server.on('connection', (socket) => {
      socket.on('error', () => {})
      // Unclaimed sockets are the caller's to end; with no caller at all, nobody may hold one.
      if (!this.listenerCount('connection')) socket.destroy()
      else this.emit('connection', socket)
    })
  }

  /**
   * Listen at `<stateDir>/channel.sock`, owned by `owner` (the uid the sandbox maps to) with mode
   * 0600. Undefined when the path is too long for a socket: the sandbox then works without it.
   */
  static async open(stateDir: string, owner?: { uid: number; gid: number }): Promise<HostChannel | undefined> {
    const hostPath = path.join(stateDir, 'channel.sock')
    if (Buffer.byteLength(hostPath) > MAX_SOCKET_PATH) return undefined
    const server = net.createServer()
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(hostPath, () => resolve())
    })
    await fsp.chmod(hostPath, 0o600)
    if (owner) await fsp.chown(hostPath, owner.uid, owner.gid)
    return new HostChannel(server, hostPath)
  }

  close(): void {
    this.server.close()
    this.removeAllListeners()
  }
}

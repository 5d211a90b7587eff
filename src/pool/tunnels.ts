/**
 * Host side of a sandbox's debugger tunnels (see sandbox-runtime/tunnels.ts): each one a numbered
 * stream over the agent link, opened only by the host, to a port on the sandbox's loopback. Frames
 * for a tunnel the host did not open, or closed, are dropped.
 */
import { frame, jsonFrame, Kind } from '../sandbox-runtime/wire.js'

/** One debugger's tunnel to a port on the sandbox's loopback (inspector.ts). */
export interface Tunnel {
  write(bytes: Buffer): void
  close(): void
}

export interface TunnelHandlers {
  data(bytes: Buffer): void
  /** The sandbox's end closed, or the link was lost. */
  closed(): void
}

export class Tunnels {
  private readonly open = new Map<number, TunnelHandlers>()
  private next = 1

  /** `send` puts a frame on the link; `alive` says whether the link still carries one. */
  constructor(private readonly send: (frame: Buffer) => void, private readonly alive: () => boolean) {}

  connect(port: number, handlers: TunnelHandlers): Tunnel {
    const id = this.next++
    if (this.alive()) {
      this.open.set(id, handlers)
      this.send(jsonFrame(id, Kind.INSPECTOR_OPEN, { port }))
    } else queueMicrotask(() => handlers.closed())
    return {
      write: (bytes) => void (this.open.has(id) && this.send(frame(id, Kind.INSPECTOR_IN, bytes))),
      close: () => {
        if (this.open.delete(id)) this.send(frame(id, Kind.INSPECTOR_CLOSE))
      },
    }
  }

  /** A frame from the agent: true when it was a tunnel's (handled here). */
  fromAgent(id: number, kind: number, payload: Buffer): boolean {
    if (kind === Kind.INSPECTOR_OUT) this.open.get(id)?.data(Buffer.from(payload))
    else if (kind === Kind.INSPECTOR_CLOSED) this.end(id)
    else return false
    return true
  }

  /** The link is gone: every tunnel is closed. */
  closeAll(): void {
    for (const id of [...this.open.keys()]) this.end(id)
  }

  private end(id: number): void {
    const h = this.open.get(id)
    this.open.delete(id)
    h?.closed()
  }
}

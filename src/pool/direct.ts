/**
 * Workers' direct channels: where a sandbox has a socket to this process (`ProviderSandbox.channel`,
 * local sandboxes), each worker connects to it and presents a one-time token, and its messages skip
 * the agent, the init and the engine (three hops each way). Anything else that connects is
 * dropped: a connection that does not present a token it was given within CLAIM_TIMEOUT_MS.
 */
import { randomBytes } from 'node:crypto'
import type { Socket } from 'node:net'
import type { DirectChannel } from '../providers/types.js'

const TOKEN_LENGTH = 32 // hex characters, then '\n'
const CLAIM_TIMEOUT_MS = 10_000

export interface DirectClaim {
  /** The value of DIRECT_ENV for the worker. */
  env: string
  /** The worker's socket, once it has presented the token. */
  socket: Promise<Socket>
  /** The worker is gone: the token is void. */
  cancel(): void
}

export class DirectClaims {
  private readonly waiting = new Map<string, (socket: Socket) => void>()

  constructor(private readonly channel: DirectChannel, private readonly claimTimeoutMs = CLAIM_TIMEOUT_MS) {
    channel.on('connection', (socket) => this.claim(socket))
  }

  expect(): DirectClaim {
    const token = randomBytes(TOKEN_LENGTH / 2).toString('hex')
    const socket = new Promise<Socket>((resolve) => this.waiting.set(token, resolve))
    return { env: `${this.channel.path}#${token}`, socket, cancel: () => this.waiting.delete(token) }
  }

  private claim(socket: Socket): void {
    socket.setTimeout(this.claimTimeoutMs, () => socket.destroy())
    const onReadable = () => {
      const head = socket.read(TOKEN_LENGTH + 1) as Buffer | null
      if (!head) return
      socket.off('readable', onReadable)
      const token = head.subarray(0, TOKEN_LENGTH).toString('latin1')
      const claimant = head[TOKEN_LENGTH] === 0x0a ? this.waiting.get(token) : undefined
      if (!claimant) return void socket.destroy()
      this.waiting.delete(token)
      socket.setTimeout(0)
      claimant(socket)
    }
    socket.on('readable', onReadable)
  }

  /** The link is gone: no worker may claim a socket any more. */
  close(): void {
    this.waiting.clear()
  }
}

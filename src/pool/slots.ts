/**
 * The one queue of a run: files wait in the order they asked (Vitest's, longest first) and each
 * takes the first free slot of any live sandbox, the least-loaded first. Knows nothing of how
 * sandboxes are made: when files wait and no slot is free it says so, and the fleet creates more.
 */
import type { SandboxUsage } from './usage.js'

export interface SlotHost {
  /** Slots in use. */
  active: number
  link: { readonly alive: boolean }
  usage: SandboxUsage
}

export interface Lease<H> {
  host: H
  release(): void
}

interface Waiter<H> {
  grant(host: H): void
  fail(error: Error): void
}

export class SlotQueue<H extends SlotHost> {
  readonly hosts: H[] = []
  private readonly waiting: Array<Waiter<H>> = []

  /**
   * `starved`: files wait and every live slot is taken (create or replace sandboxes).
   * `fileDone`: a file released its slot after `ms`.
   */
  constructor(private readonly concurrency: number, private readonly starved: () => void, private readonly fileDone: (ms: number) => void) {}

  get waiters(): number {
    return this.waiting.length
  }

  /** A slot; `signal` withdraws the request while it waits. */
  async lease(signal?: AbortSignal): Promise<Lease<H>> {
    const host = await new Promise<H>((resolve, reject) => {
      const waiter: Waiter<H> = { grant: resolve, fail: reject }
      signal?.addEventListener('abort', () => {
        const i = this.waiting.indexOf(waiter)
        if (i >= 0) this.waiting.splice(i, 1)
        reject(new Error('the worker was stopped before it got a sandbox'))
      }, { once: true })
      this.waiting.push(waiter)
      this.dispatch()
    })
    const started = Date.now()
    let released = false
    return {
      host,
      release: () => {
        if (released) return
        released = true
        host.active--
        host.usage.end()
        this.fileDone(Date.now() - started)
        this.dispatch()
      },
    }
  }

  /** A host joined, or one was lost: hand out what is free. */
  dispatch(): void {
    while (this.waiting.length) {
      const free = this.hosts.filter((h) => h.link.alive && h.active < this.concurrency).sort((a, b) => a.active - b.active)[0]
      if (!free) break
      free.active++
      free.usage.begin()
      this.waiting.shift()!.grant(free)
    }
    if (this.waiting.length) this.starved()
  }

  /** Every waiting file fails with `error` (no sandbox can come). */
  failAll(error: Error): void {
    for (const w of this.waiting.splice(0)) w.fail(error)
  }
}

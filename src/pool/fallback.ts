/**
 * `fallback: 'forks'`: when the provider cannot be reached at all (connection refused, a rejected
 * key, no quota), each file runs on Vitest's own forks pool on this machine instead, after a loud
 * warning. Off by default: the point of the pool is that untrusted code never runs on the host.
 */
import path from 'node:path'
import { pathToFileURL } from 'node:url'
import type { PoolOptions, PoolWorker } from 'vitest/node'
import type { Fleet } from './fleet.js'

type ForksPoolWorkerClass = new (options: PoolOptions) => PoolWorker

/** The running Vitest's own forks worker (its dist folder, not whichever copy this package resolves). */
async function forksWorker(options: PoolOptions): Promise<PoolWorker> {
  const node = (await import(pathToFileURL(path.join(options.distPath, 'node.js')).href)) as { ForksPoolWorker: ForksPoolWorkerClass }
  return new node.ForksPoolWorker(options)
}

/** A PoolWorker that is the sandbox worker, or the forks worker once the provider proved unreachable. */
export class FallbackWorker implements PoolWorker {
  readonly name = 'sandbox'
  private inner?: PoolWorker

  constructor(private readonly fleet: Fleet, private readonly options: PoolOptions, private readonly sandboxWorker: () => PoolWorker) {}

  async start(): Promise<void> {
    const unreachable = await this.fleet.unreachable()
    if (unreachable) this.fleet.warnFallback(unreachable)
    this.inner = unreachable ? await forksWorker(this.options) : this.sandboxWorker()
    return this.inner.start()
  }

  private get worker(): PoolWorker {
    if (!this.inner) throw new Error('vitest-pool-sandbox: the worker was used before it started')
    return this.inner
  }

  on(event: string, callback: (...args: any[]) => void): void {
    this.worker.on(event, callback)
  }

  off(event: string, callback: (...args: any[]) => void): void {
    this.worker.off(event, callback)
  }

  send(message: Parameters<PoolWorker['send']>[0]): void {
    this.worker.send(message)
  }

  deserialize(data: unknown): unknown {
    return this.worker.deserialize(data)
  }

  stop(): Promise<void> {
    return this.inner ? this.inner.stop() : Promise.resolve()
  }
}

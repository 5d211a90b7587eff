/**
 * Vitest's worker responses (`started`, `testfileFinished`, `stopped`): the host resolves a
 * worker's start, a file's run and the worker's stop on them, and catches the error one carries.
 * So each passes only when the host waits for it (one per request it sent), rebuilt of the fields
 * Vitest reads; a run ends only after each of its files reported its final result, or with the
 * error that stopped it.
 */
import { ProtocolViolation } from './violation.js'

/** The response each request of the host waits for. */
const RESPONSE_TO: Record<string, string> = { start: 'started', run: 'testfileFinished', collect: 'testfileFinished', stop: 'stopped' }
const RESPONSES = new Set(Object.values(RESPONSE_TO))
/** Result states of a finished task. */
const FINISHED = new Set(['pass', 'fail', 'skip', 'todo'])

export class Responses {
  /** Responses the host waits for, by type. */
  private readonly awaited = new Map<string, number>()
  /** The run the host asked for: the worker's files that reported their final result. */
  private running?: Set<string>

  /** The host sent the worker a request: the response it now waits for. */
  requested(type: string): void {
    const response = RESPONSE_TO[type]
    if (response) this.awaited.set(response, (this.awaited.get(response) ?? 0) + 1)
    if (type === 'run') this.running = new Set()
    if (type === 'collect') this.running = undefined
  }

  /** Is the host waiting for a response of this type? */
  awaits(type: string): boolean {
    return (this.awaited.get(type) ?? 0) > 0
  }

  /** An `onTaskUpdate` of the worker's own tasks (checked): the files it finishes. */
  updated(packs: unknown[], ownFiles: string[]): void {
    if (!this.running) return
    for (const [id, result] of packs as Array<[unknown, { state?: unknown } | undefined]>) {
      if (ownFiles.includes(id as string) && typeof result?.state === 'string' && FINISHED.has(result.state)) this.running.add(id as string)
    }
  }

  /**
   * A response, rebuilt. `screenError` screens the error it carries as an unhandled one; `ownFiles`
   * are the task ids of the worker's files.
   */
  response(m: Record<string, unknown>, screenError: (error: unknown) => unknown, ownFiles: string[]): Record<string, unknown> {
    const type = m.type
    if (typeof type !== 'string' || !RESPONSES.has(type)) throw new ProtocolViolation(`an unknown worker response ${JSON.stringify(String(type)).slice(0, 80)}`)
    const waiting = this.awaited.get(type) ?? 0
    if (waiting === 0) throw new ProtocolViolation(`a "${type}" response the host is not waiting for`)
    const out: Record<string, unknown> = { __vitest_worker_response__: true, type }
    if (m.error !== undefined && m.error !== null) out.error = screenError(m.error)
    else if (type === 'testfileFinished' && this.running && !ownFiles.every((id) => this.running!.has(id))) {
      throw new ProtocolViolation('"testfileFinished" before its file reported a result')
    }
    if (typeof m.usedMemory === 'number') out.usedMemory = m.usedMemory
    this.awaited.set(type, waiting - 1)
    return out
  }
}

/**
 * A test file that could not run in a sandbox (its worker could not start), reported as Vitest
 * reports a file that fails to load: queued, collected with the error, finished early. These are
 * the RPC calls a worker would make for it, in order.
 */
import path from 'node:path'
import { generateFileHash } from 'vitest/node'

export interface RpcCall {
  method: string
  args: unknown[]
}

export function failedFileCalls(filepath: string, project: { name: string; config: { root: string } }, error: Error): RpcCall[] {
  const name = path.relative(project.config.root, filepath)
  const file: Record<string, unknown> = { id: generateFileHash(name, project.name), name, fullName: name, type: 'suite', mode: 'run', filepath, tasks: [], meta: {}, projectName: project.name, pool: 'sandbox' }
  file.file = file
  file.result = { state: 'fail', errors: [{ name: error.name, message: error.message, stack: `${error.name}: ${error.message}` }] }
  return [
    { method: 'onQueued', args: [file] },
    { method: 'onCollected', args: [[file]] },
    { method: 'onTaskUpdate', args: [[[file.id, file.result, file.meta]], [[file.id, 'suite-failed-early', undefined]]] },
  ]
}

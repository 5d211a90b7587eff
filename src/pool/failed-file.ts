/**
 * A test file that could not run in a sandbox (its worker could not start), reported as Vitest
 * reports a file that fails to load: queued, collected with the error, finished early. These are
 * the RPC calls a worker would make for it, in order.
 */
import path from 'node:path'

export interface RpcCall {
  method: string
  args: unknown[]
}

/** The task id the host's own Vitest gives a test file (its hash differs between majors). */
export function fileTaskId(project: TaskProject, filepath: string): string {
  return project.createSpecification(filepath).taskId
}

interface TaskProject {
  name: string
  config: { root: string }
  createSpecification(moduleId: string): { taskId: string }
}

export function failedFileCalls(filepath: string, project: TaskProject, error: Error): RpcCall[] {
  const name = path.relative(project.config.root, filepath)
  const file: Record<string, unknown> = { id: fileTaskId(project, filepath), name, fullName: name, type: 'suite', mode: 'run', filepath, tasks: [], meta: {}, projectName: project.name, pool: 'sandbox' }
  file.file = file
  file.result = { state: 'fail', errors: [{ name: error.name, message: error.message, stack: `${error.name}: ${error.message}` }] }
  return [
    { method: 'onQueued', args: [file] },
    { method: 'onCollected', args: [[file]] },
    { method: 'onTaskUpdate', args: [[[file.id, file.result, file.meta]], [[file.id, 'suite-failed-early', undefined]]] },
  ]
}

/** Where the pool's own files are, and small helpers to run setup steps inside a sandbox and fail with their output. */
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import type { ProviderSandbox } from '../providers/types.js'

/** The host folder of what runs inside sandboxes (agent, worker entry, snapshot environment). */
export const RUNTIME_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../sandbox-runtime')
/** The snapshot environment module test workers load (it sends snapshot I/O to the host). */
export const SNAPSHOT_ENVIRONMENT = path.join(RUNTIME_DIR, 'snapshot-environment.js')

/** Where the pool stages its files inside a sandbox (the agent, the worker entry, tarballs). */
export const STAGING = '/tmp/.vitest-sandbox'

/** Run a shell script in the sandbox; rejects with its exit code and the tail of its output. */
export async function runScript(sandbox: ProviderSandbox, script: string, cwd: string): Promise<string> {
  const proc = await sandbox.start({ cmd: '/bin/sh', args: ['-c', script], cwd })
  let output = ''
  const keep = (b: Buffer) => (output = (output + b.toString()).slice(-8000))
  proc.on('stdout', keep)
  proc.on('stderr', keep)
  const { exitCode } = await proc.exited
  if (exitCode !== 0) {
    const tail = output.trim().split('\n').slice(-20).join('\n')
    throw new Error(`\`${script}\` failed in sandbox ${sandbox.id} (exit ${exitCode})${tail ? `:\n${tail}` : ''}`)
  }
  return output
}

/** Setup steps inside any provider's sandbox: where the pool stages files, and running a script that fails with its output. */
import type { ProviderSandbox } from './types.js'

/** Where the pool stages its files inside a sandbox (the agent, the worker entry, tarballs). */
export const STAGING = '/tmp/.vitest-sandbox'

/** Run a shell script in the sandbox; rejects with its exit code and the tail of its output. */
export async function runScript(sandbox: ProviderSandbox, script: string, cwd: string): Promise<string> {
  const proc = await sandbox.start({ cmd: '/bin/sh', args: ['-c', script], cwd })
  let output = ''
  const keep = (b: Buffer) => (output = (output + b.toString()).slice(-8000))
  proc.on('stdout', keep)
  proc.on('stderr', keep)
  const { exitCode, error } = await proc.exited
  if (exitCode !== 0) {
    const tail = output.trim().split('\n').slice(-20).join('\n')
    throw new Error(`\`${script}\` failed in sandbox ${sandbox.id} (exit ${exitCode}${error ? `: ${error}` : ''})${tail ? `:\n${tail}` : ''}`)
  }
  return output
}

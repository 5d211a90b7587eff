/**
 * Helpers over any provider's sandbox: where the pool stages files, running a script that fails
 * with its output, and keeping a sandbox's TTL renewed while it is in use.
 */
import type { ProviderSandbox } from './types.js'
import { debug } from '../debug.js'

const log = debug('ttl')

/** `s` as one single-quoted shell word, for scripts run in a sandbox. */
export function singleQuoted(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`
}

/** Where the pool stages its files inside a sandbox (the agent, the worker entry, tarballs). */
export const STAGING = '/tmp/.vitest-sandbox'

export interface ScriptOptions {
  /** Variables for this process only. */
  env?: Record<string, string>
  /** Each chunk of output as it arrives (stdout and stderr). */
  onOutput?: (chunk: Buffer) => void
  /** Shown in the error instead of the script (which may be long). */
  label?: string
}

/** Run a shell script in the sandbox; rejects with its exit code and the tail of its output. */
export async function runScript(sandbox: ProviderSandbox, script: string, cwd: string, opts: ScriptOptions = {}): Promise<string> {
  const proc = await sandbox.start({ cmd: '/bin/sh', args: ['-c', script], cwd, env: opts.env })
  let output = ''
  const keep = (b: Buffer) => {
    output = (output + b.toString()).slice(-8000)
    opts.onOutput?.(b)
  }
  proc.on('stdout', keep)
  proc.on('stderr', keep)
  const { exitCode, error } = await proc.exited
  if (exitCode !== 0) {
    const tail = output.trim().split('\n').slice(-20).join('\n')
    throw new Error(`\`${opts.label ?? script}\` failed in sandbox ${sandbox.id} (exit ${exitCode}${error ? `: ${error}` : ''})${tail ? `:\n${tail}` : ''}`)
  }
  return output
}

/**
 * The TTL is there for a host that dies: while `inUse()` holds, the sandbox's TTL of `seconds` is
 * started again every third of it. Returns the function that stops renewing.
 */
export function renewTtl(sandbox: ProviderSandbox, seconds: number, inUse: () => boolean = () => true): () => void {
  const timer = setInterval(() => {
    if (!inUse()) return clearInterval(timer)
    sandbox.setTimeout(seconds).catch((err: Error) => log('renewing the TTL of %s failed: %s', sandbox.id, err.message))
  }, Math.max(5, Math.floor(seconds / 3)) * 1000)
  timer.unref()
  return () => clearInterval(timer)
}

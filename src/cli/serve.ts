/**
 * `vitest-sandbox serve`: the local engine as a standalone server. Runs until SIGINT/SIGTERM,
 * then kills every sandbox before exiting.
 */
import { startLocalEngine } from '../engine/index.js'

export interface ServeOptions {
  host: string
  port: string
  token?: string
  stateDir?: string
  maxSandboxes?: string
  /** A JSON file of more tenants (`{ "<name>": "<token>" }`), each with its own sandboxes and templates. */
  tenants?: string
  /** Per-sandbox limits (`--memory 2g --disk 4g --cpus 1 --processes N --open-files N`): a client may ask for less. */
  limits: { memory?: string; disk?: string; cpus?: string; processes?: string; openFiles?: string }
  allowNetwork: boolean
  log: (line: string) => void
}

function integer(name: string, value: string, min: number, max: number): number {
  const n = Number(value)
  if (!Number.isInteger(n) || n < min || n > max) throw new Error(`--${name} must be a whole number from ${min} to ${max} (got '${value}')`)
  return n
}

/** Resolves to -1: the process keeps running until a signal stops it. */
export async function serve(opts: ServeOptions): Promise<number> {
  const port = integer('port', opts.port, 0, 65535)
  const maxSandboxes = opts.maxSandboxes === undefined ? undefined : integer('max-sandboxes', opts.maxSandboxes, 1, 10_000)
  if (opts.token !== undefined && opts.token.length < 16) throw new Error('--token must be at least 16 characters (or leave it out for a random one)')
  const { memory, disk, cpus, processes, openFiles } = opts.limits
  const limits = {
    memory,
    disk,
    cpus: cpus === undefined ? undefined : Number(cpus),
    processes: processes === undefined ? undefined : integer('processes', processes, 1, 1_000_000),
    openFiles: openFiles === undefined ? undefined : integer('open-files', openFiles, 1, 1_000_000),
  }
  const handle = await startLocalEngine({ host: opts.host, port, token: opts.token, tenantsFile: opts.tenants, stateDir: opts.stateDir, maxSandboxes, limits, allowNetwork: opts.allowNetwork })
  for (const u of handle.engine.limitsReport().unenforced) opts.log(`warning: sandboxes run without a ${u.limit} limit: ${u.reason} (fix: ${u.fix})`)
  // One write: whoever reads the address from the output has the token line with it.
  opts.log(`vitest-sandbox engine listening on ${handle.url}\n${opts.token ? 'token: (as given)' : `token: ${handle.token}`}`)
  if (!['127.0.0.1', 'localhost', '::1'].includes(opts.host)) {
    opts.log('warning: plain HTTP on a non-loopback address; put a TLS proxy in front of it before using it across machines')
  }
  const stop = async (signal: string) => {
    opts.log(`${signal}: killing all sandboxes`)
    await handle.close()
    process.exit(0)
  }
  process.once('SIGINT', () => void stop('SIGINT'))
  process.once('SIGTERM', () => void stop('SIGTERM'))
  return -1
}

import { spawn, type ChildProcess } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { tempDir, waitFor } from './engine.js'
import { REPO } from './vitest-run.js'

export const CLI = path.join(REPO, 'dist/cli/index.js')

/** `vitest-sandbox serve` as its own process (a self-hosted Watasu-compatible backend), on a free port. */
export async function startServe(opts: { token?: string; tenants?: Record<string, string>; args?: string[] } = {}): Promise<{ apiUrl: string; token: string; child: ChildProcess; close: () => Promise<void> }> {
  const state = tempDir('serve')
  const token = opts.token ?? `serve-token-${Math.random().toString(36).slice(2)}-for-tests`
  const tenants = opts.tenants ? [path.join(state, 'tenants.json')] : []
  if (opts.tenants) fs.writeFileSync(tenants[0], JSON.stringify(opts.tenants))
  const child = spawn(process.execPath, [CLI, 'serve', '--port', '0', '--token', token, '--state-dir', state, '--allow-network', ...(tenants.length ? ['--tenants', tenants[0]] : []), ...(opts.args ?? [])], { stdio: ['ignore', 'pipe', 'inherit'] })
  let out = ''
  child.stdout!.on('data', (d) => (out += d))
  await waitFor(() => /listening on (http:\S+)/.test(out), 15_000, 'vitest-sandbox serve to listen')
  return {
    apiUrl: `${/listening on (http:\S+)/.exec(out)![1]}/v1`,
    token,
    child,
    close: async () => {
      if (child.exitCode === null) {
        child.kill('SIGTERM')
        await new Promise((r) => child.once('exit', r))
      }
      fs.rmSync(state, { recursive: true, force: true })
    },
  }
}

// A `vitest-sandbox serve` for the benchmarks that go through a network: its own state folder,
// a random token, up to 64 sandboxes; `watasu()` reaches it with WATASU_API_URL/SANDBOX_URL/API_KEY.
import { spawn } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')

export async function startServe() {
  const state = fs.mkdtempSync(path.join(os.tmpdir(), 'vps-bench-serve-'))
  fs.chmodSync(state, 0o755)
  const token = `bench-${Math.random().toString(36).slice(2)}`
  const child = spawn(process.execPath, [path.join(repo, 'dist/cli/index.js'), 'serve', '--port', '0', '--token', token, '--state-dir', state, '--allow-network', '--max-sandboxes', '64'], { stdio: ['ignore', 'pipe', 'inherit'] })
  return new Promise((resolve, reject) => {
    let out = ''
    child.stdout.on('data', (d) => {
      out += d
      const m = /listening on http:\/\/([\d.]+):(\d+)/.exec(out)
      if (m) resolve({ child, token, state, host: m[1], port: Number(m[2]) })
    })
    child.once('exit', (code) => reject(new Error(`serve exited (${code}): ${out}`)))
  })
}

/** The environment that points `watasu()` at `serve` through `proxy`. */
export function watasuEnv(serve, proxy) {
  return { WATASU_API_URL: `${proxy.url}/v1`, WATASU_SANDBOX_URL: proxy.url, WATASU_API_KEY: serve.token }
}

export async function stopServe(serve) {
  serve.child.kill('SIGTERM')
  await new Promise((r) => serve.child.once('exit', r))
  fs.rmSync(serve.state, { recursive: true, force: true })
}

/** The `vitest-sandbox` command: doctor's findings and fixes, and `serve` as a real server. */
import { execFileSync, spawn, spawnSync } from 'node:child_process'
import fs from 'node:fs'
import net from 'node:net'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { RuntimeClient } from '../src/protocol/client.js'
import { hostProcessesMatching, tempDir, waitFor } from './support/engine.js'

const CLI = path.resolve(import.meta.dirname, '../dist/cli/index.js')

describe('vitest-sandbox doctor', () => {
  it('passes on a machine with bubblewrap and runs a real sandbox', () => {
    const r = spawnSync(process.execPath, [CLI, 'doctor'], { encoding: 'utf8' })
    expect(r.stdout).toMatch(/✔ bubblewrap: .*bwrap \d+\.\d+/)
    expect(r.stdout).toMatch(/✔ sandbox: started a sandbox and ran node v\d+/)
    expect(r.stdout).toMatch(/· watasu: WATASU_API_KEY/)
    expect(r.stdout).toMatch(/The local sandbox engine is ready/)
    expect(r.status).toBe(0)
  })

  it('names the missing bubblewrap and the command that installs it', () => {
    const bin = tempDir('doctor-bin')
    for (const tool of ['unshare', 'prlimit', 'setpriv', 'sh']) fs.symlinkSync(execFileSync('which', [tool], { encoding: 'utf8' }).trim(), path.join(bin, tool))
    try {
      const r = spawnSync(process.execPath, [CLI, 'doctor'], { encoding: 'utf8', env: { PATH: bin } })
      expect(r.stdout).toMatch(/✘ bubblewrap: bwrap is not installed\n {4}fix: .*apt-get install -y bubblewrap/)
      expect(r.stdout).toMatch(/1 problem\(s\)/)
      expect(r.status).toBe(1)
    } finally {
      fs.rmSync(bin, { recursive: true, force: true })
    }
  })

  it('rejects unknown commands and bad serve options with the accepted values', () => {
    const bad = spawnSync(process.execPath, [CLI, 'serv'], { encoding: 'utf8' })
    expect(bad.status).toBe(1)
    expect(bad.stderr).toMatch(/unknown command 'serv'[\s\S]*usage: vitest-sandbox/)
    const port = spawnSync(process.execPath, [CLI, 'serve', '--port', 'eighty'], { encoding: 'utf8' })
    expect(port.status).toBe(1)
    expect(port.stderr).toMatch(/--port must be a whole number from 0 to 65535 \(got 'eighty'\)/)
    const token = spawnSync(process.execPath, [CLI, 'serve', '--token', 'short'], { encoding: 'utf8' })
    expect(token.stderr).toMatch(/--token must be at least 16 characters/)
  })
})

describe('vitest-sandbox serve', () => {
  it('serves the engine with the given token and kills every sandbox on SIGTERM', async () => {
    const state = tempDir('serve')
    const token = 'a-token-of-32-characters-for-tests'
    const child = spawn(process.execPath, [CLI, 'serve', '--port', '0', '--token', token, '--state-dir', state], { stdio: ['ignore', 'pipe', 'inherit'] })
    let out = ''
    child.stdout!.on('data', (d) => (out += d))
    try {
      await waitFor(() => /listening on (http:\S+)/.test(out), 10_000, 'the server to listen')
      expect(out).toContain('token: (as given)')
      const url = /listening on (http:\S+)/.exec(out)![1]
      const client = new RuntimeClient({ url, token })
      const s = await client.createSandbox()
      const marker = `6${Date.now() % 100000}.5`
      await s.run('/bin/sh', ['-c', `setsid sleep ${marker} </dev/null >/dev/null 2>&1 &`])
      await waitFor(() => hostProcessesMatching(`sleep ${marker}`).length === 1, 5000, 'the sleep')
      await client.close()
      // A client without the token whose WebSocket upgrade was refused, and which keeps its half
      // of the connection open: it held the server's close, so no sandbox was killed.
      const held = net.connect({ port: Number(new URL(url).port), host: '127.0.0.1', allowHalfOpen: true })
      held.on('error', () => {})
      held.write(`GET /runtime/v1/sandboxes/${s.id}/processes HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n`)
      held.resume()
      await new Promise((r) => setTimeout(r, 500))
      child.kill('SIGTERM')
      const code = await new Promise((r) => child.once('exit', r))
      expect(code).toBe(0)
      expect(out).toMatch(/SIGTERM: killing all sandboxes/)
      // The kernel ends a sandbox's processes as its namespace's init goes: moments after the server.
      await waitFor(() => hostProcessesMatching(`sleep ${marker}`).length === 0, 5000, 'the sleep to end with its sandbox')
      held.destroy()
    } finally {
      child.kill('SIGKILL')
      fs.rmSync(state, { recursive: true, force: true })
    }
  })
})

describe('vitest-sandbox check', () => {
  const check = (fixture: string, env: Record<string, string> = {}) =>
    spawnSync(process.execPath, [CLI, 'check'], { cwd: path.resolve(import.meta.dirname, '../fixtures', fixture), encoding: 'utf8', env: { ...process.env, CI: 'true', ...env } })

  it('finds no difference where forks and sandboxes agree, failing tests included', () => {
    const r = check('basic')
    expect(r.stdout).toMatch(/forks {3}6 tests \(5 passed, 1 failed, 0 skipped\) in \d+\.\d s, exit code 1/)
    expect(r.stdout).toMatch(/sandbox 6 tests \(5 passed, 1 failed, 0 skipped\) in \d+\.\d s, exit code 1/)
    expect(r.stdout).toMatch(/wall time: sandbox \d+\.\d\d× forks/)
    expect(r.stdout).toMatch(/ 0 differences/)
    expect(r.status, r.stdout + r.stderr).toBe(0)
  })

  it('prints each test whose result differs, with both results', () => {
    const r = check('differs', { VPS_CHECK_HOST_VAR: 'from-the-host' })
    expect(r.stdout).toMatch(/ 3 differences:/)
    expect(r.stdout).toMatch(/✗ test\/env\.test\.ts > sees a host variable \(not forwarded to sandboxes\)\n {6}forks: {3}passed\n {6}sandbox: failed: AssertionError: expected undefined to be 'from-the-host'/)
    expect(r.stdout).toMatch(/✗ exit code: forks 0, sandbox 1/)
    expect(r.stdout).not.toMatch(/is the same everywhere/)
    expect(r.status).toBe(1)
  })
})

/**
 * Escape attempts: each test is one attack a malicious test file could make from inside a local
 * sandbox, run for real against bubblewrap, with the result the attacker gets.
 */
import { spawn, spawnSync } from 'node:child_process'
import fs from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { CHANNEL_PATH } from '../src/engine/channel.js'
import { Engine } from '../src/engine/engine.js'
import { DirectClaims } from '../src/pool/direct.js'
import { RuntimeClient, type SandboxClient } from '../src/protocol/client.js'
import { descendants, hostProcessesMatching, startTestEngine, tempDir, waitFor } from './support/engine.js'

let env: Awaited<ReturnType<typeof startTestEngine>>
let sbx: SandboxClient
const hostDir = tempDir('host')
const workspace = path.join(hostDir, 'workspace')
const sibling = path.join(hostDir, 'sibling')
const HOST_SECRET = `host-secret-${process.pid}-${Date.now()}`

/** Run a shell script in the sandbox. */
async function sh(script: string, s = sbx) {
  return s.run('/bin/sh', ['-c', script])
}

/** Run a Node script in the sandbox. */
async function node(script: string, s = sbx) {
  return s.run('node', ['-e', script])
}

beforeAll(async () => {
  process.env.VPS_HOST_SECRET = HOST_SECRET
  fs.mkdirSync(workspace, { recursive: true })
  fs.mkdirSync(sibling, { recursive: true })
  fs.writeFileSync(path.join(sibling, 'secret.txt'), HOST_SECRET)
  fs.writeFileSync(path.join(os.homedir(), `.vps-secret-${process.pid}`), HOST_SECRET)
  env = await startTestEngine({ limits: { processes: 64 } })
  sbx = await env.client.createSandbox({ timeout: 300, metadata: { suite: 'escape' } })
  // The sandbox is given the workspace (at the host's path) and nothing else.
  await sbx.writeFile(path.join(workspace, 'index.js'), 'module.exports = 1\n')
})

afterAll(async () => {
  delete process.env.VPS_HOST_SECRET
  fs.rmSync(path.join(os.homedir(), `.vps-secret-${process.pid}`), { force: true })
  fs.rmSync(hostDir, { recursive: true, force: true })
  await env?.close()
})

describe('escape attempts: host files', () => {
  it('reading /etc/shadow finds no such file', async () => {
    const r = await sh('cat /etc/shadow')
    expect(r.exitCode).not.toBe(0)
    expect(r.stderr).toMatch(/No such file/)
  })

  it("reading the host user's home (~/.ssh, a secret file) finds nothing", async () => {
    const home = os.homedir()
    const r = await sh(`ls -a ${home}/.ssh; cat ${home}/.vps-secret-${process.pid}; ls ${home}`)
    expect(r.stdout).not.toContain(HOST_SECRET)
    expect(r.stderr).toMatch(/No such file/)
  })

  it("the workspace's siblings on the host are absent, by absolute and by ../ path", async () => {
    const r = await sh(`cat ${sibling}/secret.txt; cd ${workspace} && cat ../sibling/secret.txt; ls ${hostDir}`)
    expect(r.stdout).not.toContain(HOST_SECRET)
    expect(r.stdout.trim()).toBe('workspace') // only what it was given
  })

  it('the file API resolves ../ and absolute paths inside the sandbox, never on the host', async () => {
    await expect(sbx.readFile('/etc/shadow')).rejects.toMatchObject({ status: 404, code: 'file_not_found' })
    await expect(sbx.readFile(`${sibling}/secret.txt`)).rejects.toMatchObject({ status: 404 })
    await expect(sbx.readFile(`${workspace}/../sibling/secret.txt`)).rejects.toMatchObject({ status: 404 })
    const before = fs.readFileSync('/etc/hostname', 'utf8')
    await sbx.writeFile('../../../../../../etc/hostname', 'pwned\n')
    expect(fs.readFileSync('/etc/hostname', 'utf8')).toBe(before)
    expect((await sbx.readFile('/etc/hostname')).toString()).toBe('pwned\n') // its own copy
  })

  it('a symlink pointing out of the sandbox leads nowhere', async () => {
    await sh(`ln -s ${sibling}/secret.txt /home/sandbox/link && ln -s /proc/1/root/etc/shadow /home/sandbox/link2`)
    await expect(sbx.readFile('/home/sandbox/link')).rejects.toMatchObject({ status: 404 })
    await expect(sbx.readFile('/home/sandbox/link2')).rejects.toMatchObject({ status: 404 })
    const r = await sh('cat /home/sandbox/link')
    expect(r.stdout).not.toContain(HOST_SECRET)
  })

  it('the system directories are read-only', async () => {
    const r = await sh('touch /usr/bin/pwned; echo x > /etc/ssl/pwned')
    expect(r.stderr).toMatch(/Read-only file system/)
    await expect(sbx.writeFile('/usr/local/bin/pwned', 'x')).rejects.toMatchObject({ status: 403 })
    expect(fs.existsSync('/usr/bin/pwned')).toBe(false)
  })

  it('writing /proc/sys (core_pattern, drop_caches) fails and the host value is unchanged', async () => {
    const before = fs.readFileSync('/proc/sys/kernel/core_pattern', 'utf8')
    const r = await sh('echo "|/tmp/pwn" > /proc/sys/kernel/core_pattern; echo 1 > /proc/sys/vm/drop_caches')
    expect(r.stderr).toMatch(/Read-only file system|Permission denied/)
    expect(fs.readFileSync('/proc/sys/kernel/core_pattern', 'utf8')).toBe(before)
  })

  it('/sys and host devices are absent', async () => {
    const r = await sh('ls /sys; ls /dev')
    expect(r.stderr).toMatch(/\/sys.*No such file/)
    expect(r.stdout.split(/\s+/)).not.toContain('vda')
  })
})

describe('escape attempts: processes, identity, kernel', () => {
  it('no host environment variable reaches the sandbox', async () => {
    const r = await node('console.log(JSON.stringify(process.env))')
    expect(r.stdout).not.toContain(HOST_SECRET)
    expect(Object.keys(JSON.parse(r.stdout)).sort()).toEqual(['HOME', 'LANG', 'PATH', 'TMPDIR', 'USER'])
    const init = await sh('cat /proc/1/environ /proc/2/environ /proc/*/cmdline 2>/dev/null | tr "\\0" "\\n"')
    expect(init.stdout).not.toContain(HOST_SECRET)
    expect(init.stdout).not.toContain(env.handle.token)
  })

  it('host processes are invisible and cannot be signalled', async () => {
    const r = await sh(`ls /proc | grep -E '^[0-9]+$' | wc -l; kill -0 ${process.pid}`)
    expect(Number(r.stdout.trim())).toBeLessThan(10)
    expect(r.stderr).toMatch(/No such process/)
  })

  it("a process cannot read or write another's memory, environment or descriptors in its sandbox: the init that started it, a sibling", async () => {
    const r = await node(`
      const { spawn } = require('child_process'); const fs = require('fs')
      const sibling = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 5000)'], { env: { SIBLING: 'sibling-secret' } })
      setTimeout(() => {
        const got = {}
        const tryIt = (name, f) => { try { f(); got[name] = 'allowed' } catch (e) { got[name] = e.code } }
        for (const [who, pid] of [['init', process.ppid], ['sibling', sibling.pid]]) {
          tryIt(who + ' status', () => fs.readFileSync('/proc/' + pid + '/status'))
          tryIt(who + ' environ', () => fs.readFileSync('/proc/' + pid + '/environ'))
          tryIt(who + ' mem', () => fs.closeSync(fs.openSync('/proc/' + pid + '/mem', 'r+')))
          tryIt(who + ' fd', () => fs.readdirSync('/proc/' + pid + '/fd'))
        }
        console.log(JSON.stringify(got)); sibling.kill()
      }, 300)`)
    const got = JSON.parse(r.stdout)
    // Both are there (their status is public), and closed: every process runs an execute-only
    // Node, so each is non-dumpable (a plain Node lets a sibling read all three).
    expect(got).toEqual({
      'init status': 'allowed', 'init environ': 'EACCES', 'init mem': 'EACCES', 'init fd': 'EACCES',
      'sibling status': 'allowed', 'sibling environ': 'EACCES', 'sibling mem': 'EACCES', 'sibling fd': 'EACCES',
    })
  })

  it("holds nothing of the engine's link in the sandbox's pid 1, bubblewrap's own init, whose memory its processes can write", async () => {
    const r = await node(`
      const fs = require('fs')
      const fds = Object.fromEntries(fs.readdirSync('/proc/1/fd').map((fd) => [fd, fs.readlinkSync('/proc/1/fd/' + fd)]))
      let mem
      try { fs.closeSync(fs.openSync('/proc/1/mem', 'r+')); mem = 'allowed' } catch (e) { mem = e.code }
      console.log(JSON.stringify({ cmd: fs.readFileSync('/proc/1/cmdline', 'utf8').split('\\0')[0], fds, mem }))`)
    const got = JSON.parse(r.stdout)
    // Where pid 1 is open to writes, what it holds is a test's: the link (the engine's requests,
    // each worker's channel token) would be read and forged through it.
    expect(got.cmd).toMatch(/bwrap$/)
    if (got.mem === 'allowed') expect(got.fds).toMatchObject({ 0: '/dev/null', 1: '/dev/null' })
    // Its stderr is bubblewrap's own errors, read by the engine only until the sandbox is ready.
    expect(Object.entries(got.fds).filter(([fd, l]) => fd !== '2' && /^(socket|pipe):/.test(String(l)))).toEqual([])
  })

  it('runs without capabilities, with no_new_privs, and as an unprivileged host uid', async () => {
    const r = await sh('grep -E "^(CapEff|CapBnd|NoNewPrivs|Seccomp):" /proc/self/status; id -u')
    expect(r.stdout).toMatch(/CapEff:\s+0000000000000000/)
    expect(r.stdout).toMatch(/CapBnd:\s+0000000000000000/)
    expect(r.stdout).toMatch(/NoNewPrivs:\s+1/)
    const sandbox = env.handle.engine.get(sbx.id)!
    const hostUid = Number(/^Uid:\s+(\d+)/m.exec(fs.readFileSync(`/proc/${sandbox.hostPid}/status`, 'utf8'))![1])
    expect(hostUid).not.toBe(0)
    if (process.getuid!() === 0) expect(hostUid).toBe(65534)
  })

  it('seccomp is in place and refuses user namespaces and ptrace-class calls', async () => {
    const r = await sh('grep Seccomp: /proc/self/status; unshare --user --map-root-user id; unshare --user id')
    expect(r.stdout).toMatch(/Seccomp:\s+2/)
    expect(r.stdout).not.toMatch(/uid=0/)
    expect(r.stderr).toMatch(/Operation not permitted/)
  })

  it('mount and chroot are refused', async () => {
    const r = await sh('mount -t tmpfs none /tmp; chroot / true')
    expect(r.stderr).toMatch(/permission denied|Operation not permitted|must be superuser/i)
  })

  it('no file descriptors leak in from the engine process', async () => {
    // An engine whose own parent leaked it a descriptor on a secret file (fd 40, not close-on-exec;
    // a low number would be reused by the engine's own pipes before any sandbox starts).
    const state = tempDir('fd-state')
    const secretFile = path.join(hostDir, 'fd-secret.txt')
    fs.writeFileSync(secretFile, HOST_SECRET)
    const fd = fs.openSync(secretFile, 'r')
    const child = spawn(process.execPath, [path.join(import.meta.dirname, 'support/engine-process.mjs'), state], { stdio: ['ignore', 'pipe', 'inherit', ...Array(37).fill('ignore'), fd] })
    fs.closeSync(fd)
    try {
      const line = await new Promise<string>((resolve) => child.stdout!.once('data', (d) => resolve(d.toString())))
      const { url, token } = JSON.parse(line)
      const client = new RuntimeClient({ url, token })
      const s = await client.createSandbox()
      // Every descriptor of every process in the sandbox: where it points, and the content of
      // those that are regular files (pipes are skipped: reading them would block).
      const r = await sh('for f in /proc/[0-9]*/fd/*; do readlink "$f"; [ -f "$f" ] && head -c 1000 "$f"; done 2>/dev/null', s)
      expect(r.stdout).toMatch(/socket:|pipe:/) // the listing itself worked
      expect(r.stdout).not.toContain(HOST_SECRET)
      expect(r.stdout).not.toContain('fd-secret')
      await client.close()
    } finally {
      child.kill('SIGTERM')
      await new Promise((r) => child.once('exit', r))
      fs.rmSync(state, { recursive: true, force: true })
    }
  })
})

describe('escape attempts: network', () => {
  it("cannot reach a TCP server on the host's loopback", async () => {
    const server = net.createServer((c) => c.end(HOST_SECRET))
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
    const { port } = server.address() as net.AddressInfo
    try {
      const r = await node(`require('net').connect(${port}, '127.0.0.1').on('data', d => console.log(String(d))).on('error', e => console.log(e.code))`)
      expect(r.stdout.trim()).toBe('ECONNREFUSED')
    } finally {
      server.close()
    }
  })

  it('cannot reach an abstract unix socket on the host', async () => {
    const name = `\0vps-abstract-${process.pid}`
    const server = net.createServer((c) => c.end(HOST_SECRET))
    await new Promise<void>((r) => server.listen(name, r))
    try {
      const r = await node(`require('net').connect(${JSON.stringify(name)}).on('data', d => console.log(String(d))).on('error', e => console.log(e.code))`)
      expect(r.stdout.trim()).toBe('ECONNREFUSED')
    } finally {
      server.close()
    }
  })

  it("resolves names only when it shares the host's network (network: 'allow')", async () => {
    const lookup = `require('dns').lookup('registry.npmjs.org', (e, a) => console.log(e ? e.code : 'resolved'))`
    expect((await node(lookup)).stdout.trim()).not.toBe('resolved')
    const open = await env.client.createSandbox({ allowInternetAccess: true })
    try {
      const r = await open.run('node', ['-e', lookup])
      expect(r.stdout.trim(), r.stderr).toBe('resolved')
    } finally {
      await env.client.killSandbox(open.id)
    }
  })

  it('has only a loopback interface, which works inside the sandbox', async () => {
    const r = await node(`
      console.log(Object.keys(require('os').networkInterfaces()).join(','))
      const s = require('net').createServer(c => c.end('own-loopback')).listen(0, '127.0.0.1', () => {
        require('net').connect(s.address().port, '127.0.0.1').on('data', d => { console.log(String(d)); s.close() })
      })`)
    expect(r.stdout.trim().split('\n')).toEqual(['lo', 'own-loopback'])
  })
})

describe('escape attempts: resources and lifetime', () => {
  it('a fork bomb ends inside the sandbox and the host keeps working', async () => {
    const s = await env.client.createSandbox()
    const hostPid = env.handle.engine.get(s.id)!.hostPid!
    // Every process forks two more and stays alive: exponential, and it holds what it got.
    const bomb = await s.start({ cmd: '/bin/sh', args: ['-c', 'b() { b & b & sleep 1000; }; b'] })
    let stderr = ''
    bomb.on('stderr', (d) => (stderr += d))
    // Watch the sandbox's process count from the host while the bomb runs.
    await waitFor(() => /Cannot fork/.test(stderr), 10_000, 'the bomb to hit its limit')
    await new Promise((r) => setTimeout(r, 500))
    const peak = descendants(hostPid).length
    // The host can still start processes while the bomb is at its limit.
    expect(spawnSync('/bin/true').status).toBe(0)
    // The quota is 64 tasks (threads count too: the init's Node has ~11), plus bwrap's pid 1.
    expect(peak).toBeGreaterThan(20)
    expect(peak).toBeLessThanOrEqual(64 + 2)
    await env.client.killSandbox(s.id)
    expect(fs.existsSync(`/proc/${hostPid}`)).toBe(false)
  })

  it('killing a sandbox kills everything in it, including detached background processes', async () => {
    const s = await env.client.createSandbox()
    const marker = `3${Date.now() % 100000}.25`
    await sh(`setsid sleep ${marker} </dev/null >/dev/null 2>&1 & nohup sleep ${marker} >/dev/null 2>&1 &`, s)
    await waitFor(() => hostProcessesMatching(`sleep ${marker}`).length === 2, 5000, 'the background sleeps')
    await env.client.killSandbox(s.id)
    await waitFor(() => hostProcessesMatching(`sleep ${marker}`).length === 0, 5000, 'no sleeps left')
  })

  // x86-64 machine code written into the sandbox's pid 1 (bubblewrap's own init, writable through
  // /proc/1/mem by the sandbox's processes): clear its parent-death signal, then become a
  // long-lived process with a marker in its arguments.
  it.runIf(process.arch === 'x64')('a process that took over the sandbox\'s pid 1 and cleared its parent-death signal dies with the sandbox', async () => {
    const s = await env.client.createSandbox()
    const marker = `vps-pid1-survivor-${process.pid}-${Date.now()}`
    const r = await node(`
      const fs = require('fs'); const { execSync } = require('child_process')
      const sc = fs.readFileSync('/proc/1/syscall', 'utf8').trim().split(' ')
      const at = BigInt(sc[sc.length - 1])
      const u64 = (n) => { const b = Buffer.alloc(8); b.writeBigUInt64LE(n); return b }
      const strings = [process.execPath, '-e', 'setInterval(() => {}, 1000)', ${JSON.stringify(marker)}].map((t) => Buffer.from(t + '\\0'))
      const CODE = 50
      const offsets = []; let o = CODE
      for (const t of strings) { offsets.push(o); o += t.length }
      const argvAt = (o + 7) & ~7
      const code = Buffer.concat([
        Buffer.from([0xbf, 1, 0, 0, 0, 0x31, 0xf6, 0xb8, 157, 0, 0, 0, 0x0f, 0x05]), // prctl(PR_SET_PDEATHSIG, 0)
        Buffer.from([0x48, 0xbf]), u64(at + BigInt(offsets[0])), // rdi = path
        Buffer.from([0x48, 0xbe]), u64(at + BigInt(argvAt)), // rsi = argv
        Buffer.from([0x31, 0xd2, 0xb8, 59, 0, 0, 0, 0x0f, 0x05]), // execve(path, argv, NULL)
        Buffer.from([0xb8, 60, 0, 0, 0, 0x0f, 0x05]), // exit
      ])
      const image = Buffer.concat([code, ...strings, Buffer.alloc(argvAt - o), ...offsets.map((x) => u64(at + BigInt(x))), u64(0n)])
      const fd = fs.openSync('/proc/1/mem', 'r+')
      fs.writeSync(fd, image, 0, image.length, Number(at))
      fs.closeSync(fd)
      execSync('sh -c "sleep 0.1 &"') // an orphan's exit returns pid 1's wait() into the code
      console.log('written')`, s)
    expect(r.stdout, r.stderr).toContain('written')
    // The takeover worked (where pid 1 is writable, as here): the marked process is pid 1 now.
    await waitFor(() => hostProcessesMatching(marker).length === 1, 5000, 'the marked process in pid 1')
    await env.client.killSandbox(s.id)
    await waitFor(() => hostProcessesMatching(marker).length === 0, 5000, 'the taken-over pid 1 to die with its sandbox')
  })

  it('a sandbox past its timeout is killed', async () => {
    const s = await env.client.createSandbox({ timeout: 1 })
    const marker = `4${Date.now() % 100000}.5`
    await sh(`sleep ${marker} & echo started`, s)
    await waitFor(() => hostProcessesMatching(`sleep ${marker}`).length === 0, 5000, 'expiry')
    await expect(env.client.getSandbox(s.id)).rejects.toMatchObject({ status: 404 })
  })

  it('a sandbox never outlives the engine process, even when the engine is SIGKILLed', async () => {
    const state = tempDir('kill-state')
    const child = spawn(process.execPath, [path.join(import.meta.dirname, 'support/engine-process.mjs'), state], { stdio: ['ignore', 'pipe', 'inherit'] })
    const marker = `5${Date.now() % 100000}.75`
    try {
      const { url, token } = JSON.parse(await new Promise<string>((resolve) => child.stdout!.once('data', (d) => resolve(d.toString()))))
      const client = new RuntimeClient({ url, token })
      const s = await client.createSandbox()
      await sh(`setsid sleep ${marker} </dev/null >/dev/null 2>&1 & echo ok`, s)
      await waitFor(() => hostProcessesMatching(`sleep ${marker}`).length === 1, 5000, 'the sleep')
      await client.close()
      child.kill('SIGKILL')
      await waitFor(() => hostProcessesMatching(`sleep ${marker}`).length === 0, 5000, 'the sandbox to die with the engine')
      // What it left (its sandbox's filesystem still mounted, its cgroups) goes at the next start.
      const mounted = () => fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').filter((l) => l.split(' ')[4]?.startsWith(state)).length
      const groups = () => spawnSync('sh', ['-c', `find /sys/fs/cgroup -maxdepth 4 -type d -name 'vitest-sandbox-${child.pid}-*' 2>/dev/null`], { encoding: 'utf8' }).stdout.trim()
      if (process.getuid?.() === 0) {
        expect(mounted()).toBeGreaterThan(0)
        expect(groups()).not.toBe('')
      }
      const next = await Engine.start({ stateDir: state })
      await next.close()
      expect(mounted()).toBe(0)
      expect(groups()).toBe('')
    } finally {
      child.kill('SIGKILL')
      fs.rmSync(state, { recursive: true, force: true })
    }
  })
})

describe('escape attempts: processes of the same sandbox', () => {
  it("cannot open another process's debugger: SIGUSR1 is refused, other signals are not", async () => {
    // The agent and every worker are Node: SIGUSR1 would open a debugger on loopback that a test
    // could drive to rewrite another file's results (an outside attack did so before this rule).
    const r = await sh(`node -e 'setTimeout(() => {}, 5000)' & sleep 0.5; kill -USR1 $! ; echo "usr1=$?"; sleep 0.3; grep -c ':240D ' /proc/net/tcp || true; kill -USR2 $!; echo "usr2=$?"`)
    expect(r.stdout).toMatch(/usr1=1/)
    expect(r.stderr + r.stdout).toMatch(/Operation not permitted/)
    expect(r.stdout).toMatch(/^0$/m) // nothing listens on 9229
    expect(r.stdout).toMatch(/usr2=0/)
    // Nor through the kernel: a descriptor's owner sent SIGUSR1 on I/O (F_SETOWN + F_SETSIG).
    const io = await sh(`perl -e 'pipe(my $r, my $w); print fcntl($r, 10, 10) ? "usr1 set" : "usr1 refused: $!", "\\n"; print fcntl($r, 10, 12) ? "usr2 set" : "usr2 refused: $!", "\\n"; print fcntl($r, 1, 0) ? "getfd ok" : "getfd refused", "\\n"'`)
    expect(io.stdout).toBe('usr1 refused: Operation not permitted\nusr2 set\ngetfd ok\n')
  })
})

describe('escape attempts: other sandboxes', () => {
  it("cannot see another sandbox's files, processes or loopback", async () => {
    const a = await env.client.createSandbox()
    const b = await env.client.createSandbox()
    await a.writeFile('/tmp/a-secret', HOST_SECRET)
    const server = await a.start({ cmd: 'node', args: ['-e', `require('net').createServer(c => c.end('${HOST_SECRET}')).listen(45678, '127.0.0.1', () => console.log('up'))`] })
    await new Promise<void>((r) => server.on('stdout', () => r()))
    const r = await node(`
      require('fs').readFile('/tmp/a-secret', (e) => console.log(e ? e.code : 'READ'))
      require('net').connect(45678, '127.0.0.1').on('data', d => console.log(String(d))).on('error', e => console.log(e.code))`, b)
    expect(r.stdout.split('\n').sort().filter(Boolean)).toEqual(['ECONNREFUSED', 'ENOENT'])
    const ps = await sh('cat /proc/[0-9]*/cmdline | tr "\\0" " "', b)
    expect(ps.stdout).not.toContain('45678')
    await env.client.killSandbox(a.id)
    await env.client.killSandbox(b.id)
  })
})

describe("escape attempts: the host's node_modules (the zero-copy dependency layer)", () => {
  /** Every entry under `dir` with its type, mode, size, and content hash or link target. */
  function tree(dir: string): string[] {
    const out: string[] = []
    const walk = (d: string) => {
      for (const name of fs.readdirSync(d).sort()) {
        const p = path.join(d, name)
        const st = fs.lstatSync(p)
        const rel = path.relative(dir, p)
        if (st.isSymbolicLink()) out.push(`${rel} -> ${fs.readlinkSync(p)}`)
        else if (st.isDirectory()) {
          out.push(`${rel}/ ${(st.mode & 0o7777).toString(8)}`)
          walk(p)
        } else out.push(`${rel} ${(st.mode & 0o7777).toString(8)} ${fs.readFileSync(p, 'base64')}`)
      }
    }
    walk(dir)
    return out
  }

  it('reads the host packages, and whatever it writes, deletes or swaps never reaches the host', async () => {
    const project = path.join(hostDir, 'deps-project')
    const nm = path.join(project, 'node_modules')
    fs.mkdirSync(path.join(nm, 'dep/lib'), { recursive: true })
    fs.writeFileSync(path.join(nm, 'dep/package.json'), '{"name":"dep","main":"lib/index.js"}')
    fs.writeFileSync(path.join(nm, 'dep/lib/index.js'), 'module.exports = "the host dep"\n')
    fs.mkdirSync(path.join(nm, '.bin'))
    fs.symlinkSync('../dep/lib/index.js', path.join(nm, '.bin/dep'))
    const before = tree(nm)
    const engine = await startTestEngine({ allowHostLayers: true })
    try {
      const s = await engine.client.createSandbox({ hostLayers: [nm] })
      expect((await node(`console.log(require(${JSON.stringify(path.join(nm, 'dep'))}))`, s)).stdout).toBe('the host dep\n')
      const attack = await sh(
        [
          `cd ${nm}`,
          'echo pwned > dep/lib/index.js; echo "overwrite $?"',
          'chmod 777 dep/lib/index.js; echo "chmod $?"',
          'rm -rf dep/lib; echo "rm $?"',
          'mv dep dep-moved; echo "mv $?"',
          'ln -sfn /etc dep; echo "swap $?"',
          'mkdir -p .cache/evil && echo x > .cache/evil/f; echo "create $?"',
          'ln -sf /bin/sh .bin/dep; echo "relink $?"',
          'mount --bind /tmp dep 2>/dev/null; echo "mount $?"',
        ].join('\n'),
        s,
      )
      expect(attack.stdout).toMatch(/mount [1-9]/)
      // Inside, the sandbox may see its own changes; the host sees none, during or after.
      expect(tree(nm)).toEqual(before)
      await engine.client.killSandbox(s.id)
      expect(tree(nm)).toEqual(before)
      // A fresh sandbox starts from the host's tree again.
      const fresh = await engine.client.createSandbox({ hostLayers: [nm] })
      expect((await node(`console.log(require(${JSON.stringify(path.join(nm, 'dep'))}))`, fresh)).stdout).toBe('the host dep\n')
    } finally {
      await engine.close()
    }
  })

  it("sees none of the host's caches in its read-only dependencies, and writes its own there", async () => {
    // Vitest's module caches (node_modules/.vitest-cache, 4.1's .experimental-vitest-cache) hold the host's whole import.meta.env.
    const project = path.join(hostDir, 'cache-project')
    const nm = path.join(project, 'node_modules')
    fs.mkdirSync(path.join(nm, 'dep'), { recursive: true })
    fs.writeFileSync(path.join(nm, 'dep/index.js'), 'module.exports = 1\n')
    for (const c of ['.vitest-cache', '.experimental-vitest-cache', '.cache', '.vite']) {
      fs.mkdirSync(path.join(nm, c), { recursive: true })
      fs.writeFileSync(path.join(nm, c, 'entry.json'), `{"VITE_KEY":"${HOST_SECRET}"}`)
    }
    const engine = await startTestEngine({ allowHostLayers: true })
    try {
      const s = await engine.client.createSandbox({ hostLayers: [nm], readOnly: [nm] })
      const r = await sh(`cd ${nm}; for c in .vitest-cache .experimental-vitest-cache .cache .vite; do echo "$c: $(ls -A $c | tr '\\n' ' ')"; cat $c/entry.json 2>/dev/null; echo mine > $c/own && echo "$c writable"; done; cat dep/index.js`, s)
      expect(r.stdout).not.toContain(HOST_SECRET)
      expect(r.stdout).toContain('.vitest-cache: \n')
      expect(r.stdout).toMatch(/\.vitest-cache writable[\s\S]*\.experimental-vitest-cache writable[\s\S]*\.cache writable[\s\S]*\.vite writable/)
      expect(r.stdout).toContain('module.exports = 1')
      expect(fs.existsSync(path.join(nm, '.vitest-cache/own'))).toBe(false)
    } finally {
      await engine.close()
    }
  })

  it('an engine that has not allowed host layers (vitest-sandbox serve) refuses them, and any folder that is not a real node_modules', async () => {
    const nm = path.join(hostDir, 'refused/node_modules')
    fs.mkdirSync(nm, { recursive: true })
    fs.symlinkSync(path.join(hostDir, 'refused'), path.join(hostDir, 'refused-link'))
    await expect(env.client.createSandbox({ hostLayers: [nm] })).rejects.toThrow(/this engine does not layer host folders into sandboxes \(vitest-sandbox serve never does\)/)
    const engine = await startTestEngine({ allowHostLayers: true })
    try {
      for (const [dir, why] of [
        ['/etc', /is not a node_modules folder/],
        [os.homedir(), /is not a node_modules folder/],
        ['relative/node_modules', /must be a normalized absolute path/],
        [`${nm}/../node_modules`, /must be a normalized absolute path/],
        [path.join(hostDir, 'refused-link/node_modules'), /is reached through a symbolic link/],
        [path.join(hostDir, 'absent/node_modules'), /does not exist/],
      ] as const) {
        await expect(engine.client.createSandbox({ hostLayers: [dir] }), dir).rejects.toThrow(why)
      }
    } finally {
      await engine.close()
    }
  })
})

describe('escape attempts: the direct channel to the host (local sandboxes)', () => {
  let chan: Awaited<ReturnType<typeof startTestEngine>>
  let csbx: SandboxClient
  let claims: DirectClaims
  beforeAll(async () => {
    chan = await startTestEngine({ allowChannels: true })
    csbx = await chan.client.createSandbox({ timeout: 300 })
    claims = new DirectClaims(chan.handle.engine.get(csbx.id)!.channel!, 1500)
  })
  afterAll(() => chan?.close())

  /** Connect from inside the sandbox, send `send`, and report what the host answered and how it ended. */
  const attempt = (send: string) =>
    node(`
      const s = require('net').connect(${JSON.stringify(CHANNEL_PATH)}, () => s.write(${JSON.stringify(send)}))
      let got = ''
      s.on('data', (d) => (got += d))
      s.on('error', (e) => console.log('error', e.code))
      s.on('close', () => console.log('closed', JSON.stringify(got)))`, csbx)

  it('a worker that presents its token gets a socket to the host; the token works once', async () => {
    const claim = claims.expect()
    const token = claim.env.slice(claim.env.lastIndexOf('#') + 1)
    expect(claim.env.startsWith(`${CHANNEL_PATH}#`)).toBe(true)
    void claim.socket.then((s) => s.on('data', (d) => s.end(`echo:${d}`)))
    expect((await attempt(`${token}\nhello`)).stdout.trim()).toBe('closed "echo:hello"')
    // The same token again is nobody's.
    expect((await attempt(`${token}\nagain`)).stdout.trim()).toBe('closed ""')
  })

  it('a connection with a wrong or no token is dropped, and gets nothing', async () => {
    const claim = claims.expect()
    let claimed = false
    void claim.socket.then(() => (claimed = true))
    expect((await attempt(`${'0'.repeat(32)}\nhello`)).stdout.trim()).toBe('closed ""')
    expect((await attempt(`${claim.env.slice(-32).toUpperCase()}\n`)).stdout.trim()).toBe('closed ""')
    // Silent: dropped after the claim timeout.
    const t = Date.now()
    expect((await attempt('')).stdout.trim()).toBe('closed ""')
    expect(Date.now() - t).toBeGreaterThanOrEqual(1400)
    expect(claimed).toBe(false)
    claim.cancel()
  })

  it('a flood of connections is bounded by the host, which keeps working', async () => {
    const r = await node(`
      let closed = 0, open = 0
      for (let i = 0; i < 400; i++) {
        const s = require('net').connect(${JSON.stringify(CHANNEL_PATH)})
        s.on('connect', () => open++)
        s.on('error', () => {})
        s.on('close', () => closed++)
      }
      setTimeout(() => console.log(open, closed), 800)`, csbx)
    const [, closedEarly] = r.stdout.trim().split(' ').map(Number)
    // At most 256 are held at once; the rest are closed on arrival, before any claim timeout.
    expect(closedEarly).toBeGreaterThanOrEqual(400 - 256)
    const claim = claims.expect()
    void claim.socket.then((s) => s.end('ok'))
    await waitFor(async () => (await attempt(`${claim.env.slice(-32)}\n`)).stdout.trim() === 'closed "ok"', 10_000)
  })

  it('the socket cannot be removed, replaced or opened as a file', async () => {
    const r = await node(`
      const fs = require('fs'), p = ${JSON.stringify(CHANNEL_PATH)}
      for (const [name, f] of [['rm', () => fs.rmSync(p)], ['rename', () => fs.renameSync(p, '/tmp/x')], ['chmod', () => fs.chmodSync(p, 0o777)], ['open', () => fs.openSync(p, 'r')]])
        try { f(); console.log(name, 'ok') } catch (e) { console.log(name, e.code) }
      require('net').createServer().listen(p).on('error', (e) => console.log('listen', e.code))`, csbx)
    const lines = r.stdout.trim().split('\n')
    for (const op of ['rm', 'rename', 'chmod', 'open', 'listen']) expect(lines.find((l) => l.startsWith(`${op} `))).not.toBe(`${op} ok`)
    expect(fs.statSync(chan.handle.engine.get(csbx.id)!.channel!.hostPath).isSocket()).toBe(true)
  })

  it('an engine that has not allowed channels (vitest-sandbox serve) gives sandboxes none', async () => {
    expect(env.handle.engine.get(sbx.id)!.channel).toBeUndefined()
    expect((await node(`require('net').connect(${JSON.stringify(CHANNEL_PATH)}).on('error', (e) => console.log(e.code))`)).stdout.trim()).toBe('ENOENT')
  })
})

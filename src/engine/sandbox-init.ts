/**
 * The init process of one local sandbox: the first program bubblewrap starts inside it. It runs
 * with the sandbox's view of the filesystem, so every file operation it performs on the engine's
 * behalf resolves inside the sandbox (`..`, absolute paths and symlinks cannot reach the host,
 * because the host is not mounted here). It starts processes, relays their stdio as frames on its
 * link to the engine (fd 4), and exits when the engine's end closes, which ends the sandbox.
 *
 * It imports nothing but Node built-ins and this package's framing, and writes nothing to its link
 * but frames.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import fs from 'node:fs'
import net from 'node:net'
import path from 'node:path'
import { createFrameDecoder, encodeFrame, type Header } from './frames.js'

const O_CLOEXEC = 0o2000000
/** The engine's link: not stdio, which bubblewrap's own init (the sandbox's pid 1, open to its processes) also holds. */
const LINK_FD = 4
const CHUNK = 1024 * 1024
const HOME = process.env.HOME || '/'

closeInheritedDescriptors()

// SIGUSR1 would open Node's debugger in the init, which speaks for the sandbox to the engine (the
// sandbox's seccomp filter refuses the signal; this keeps it closed however it comes).
process.on('SIGUSR1', () => {})
// One socket both ways (Node marks it close-on-exec: no process the init starts gets it).
const link = new net.Socket({ fd: LINK_FD, readable: true, writable: true })
const processes = new Map<string, ChildProcess>()
interface Upload { file: string; fd: number; queue: Promise<void>; failed?: boolean; queued: number; written: number }
const uploads = new Map<string, Upload>()

function send(header: Header, body?: Uint8Array): boolean {
  return link.write(encodeFrame(header, body))
}

/**
 * bubblewrap passes through every descriptor its parent did not mark close-on-exec (the
 * reference measured a harness pipe and a file on fd 7 readable inside). Node's own descriptors
 * are all opened with O_CLOEXEC, so any descriptor above 2 without that flag was inherited:
 * close it before any untrusted process can be started.
 */
function closeInheritedDescriptors(): void {
  for (const name of fs.readdirSync('/proc/self/fd')) {
    const fd = Number(name)
    if (fd <= 2 || fd === LINK_FD) continue
    try {
      const info = fs.readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8')
      const flags = Number.parseInt(/flags:\s*([0-7]+)/.exec(info)?.[1] ?? '0', 8)
      if (!(flags & O_CLOEXEC)) fs.closeSync(fd)
    } catch {
      // The descriptor used to list the directory is gone by now; nothing to close.
    }
  }
}

function resolvePath(p: unknown): string {
  if (typeof p !== 'string' || p === '' || p.includes('\0')) throw Object.assign(new Error('path must be a non-empty string'), { code: 'EINVAL' })
  return path.resolve(HOME, p)
}

function errorInfo(err: unknown) {
  const e = err as NodeJS.ErrnoException
  return { ok: false, code: e.code ?? 'EIO', message: e.message }
}

function startProcess(h: Header): void {
  const id = String(h.id)
  let child: ChildProcess
  try {
    child = spawn(String(h.cmd), Array.isArray(h.args) ? h.args.map(String) : [], {
      cwd: typeof h.cwd === 'string' ? resolvePath(h.cwd) : HOME,
      env: (h.env as Record<string, string>) ?? {},
      stdio: [h.stdin ? 'pipe' : 'ignore', 'pipe', 'pipe'],
      // Its own session and process group, so a kill can reach everything it started.
      detached: true,
    })
  } catch (err) {
    send({ op: 'spawn_error', id, ...errorInfo(err) })
    return
  }
  processes.set(id, child)
  let exitInfo: { code: number | null; signal: NodeJS.Signals | null } | undefined
  let reported = false
  const report = () => {
    if (reported || !exitInfo) return
    reported = true
    processes.delete(id)
    send({ op: 'exit', id, code: exitInfo.code, signal: exitInfo.signal })
  }
  child.once('error', (err) => {
    // ENOENT/EACCES for the command itself: spawn reports it here, with no 'spawn' event.
    if (!child.pid) {
      processes.delete(id)
      reported = true
      send({ op: 'spawn_error', id, ...errorInfo(err) })
    }
  })
  child.once('spawn', () => send({ op: 'started', id, pid: child.pid }))
  child.stdout!.on('data', (d: Buffer) => send({ op: 'stdout', id }, d))
  child.stderr!.on('data', (d: Buffer) => send({ op: 'stderr', id }, d))
  child.stdin?.on('error', () => {})
  // 'close' waits for stdout/stderr to drain, so output always precedes the exit frame. A
  // background grandchild can hold the pipes open forever: stop waiting a moment after exit.
  child.once('close', (code, signal) => {
    exitInfo ??= { code, signal }
    report()
  })
  child.once('exit', (code, signal) => {
    exitInfo = { code, signal }
    // A loop that was starved (a loaded machine) runs expired timers before it reads the pipes:
    // one more turn reads what is already there before the pipes are given up.
    const giveUp = () => {
      if (reported) return
      if (child.stdout!.isPaused() || child.stderr!.isPaused()) return // the reader is behind, not gone
      child.stdout!.destroy()
      child.stderr!.destroy()
      report()
    }
    setTimeout(() => setImmediate(() => setImmediate(giveUp)), 2000).unref()
  })
}

function signalProcess(h: Header): void {
  const child = processes.get(String(h.id))
  if (!child?.pid) return
  const sig = (typeof h.signal === 'string' ? h.signal : 'SIGKILL') as NodeJS.Signals
  try {
    process.kill(h.group === false ? child.pid : -child.pid, sig)
  } catch {
    // Already gone.
  }
}

function setFlow(h: Header, paused: boolean): void {
  const child = processes.get(String(h.id))
  const streams = [child?.stdout, child?.stderr]
  for (const s of streams) if (s) paused ? s.pause() : s.resume()
}

function openUpload(h: Header): void {
  const req = String(h.req)
  try {
    const file = resolvePath(h.path)
    fs.mkdirSync(path.dirname(file), { recursive: true })
    const fd = openRegular(file, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_TRUNC, typeof h.mode === 'number' ? h.mode : 0o644)
    uploads.set(req, { file, fd, queue: Promise.resolve(), queued: 0, written: 0 })
  } catch (err) {
    uploads.set(req, { file: '', fd: -1, queue: Promise.resolve(), failed: true, queued: 0, written: 0 })
    send({ op: 'reply', req, ...errorInfo(err) })
  }
}

function writeUpload(h: Header, body: Buffer): void {
  const up = uploads.get(String(h.req))
  if (!up || up.failed) return
  const data = Buffer.from(body) // the frame buffer is reused by the decoder
  up.queued += data.length
  if (up.queued > 8 * CHUNK) link.pause()
  up.queue = up.queue.then(async () => {
    if (up.failed) return
    try {
      let off = 0
      while (off < data.length) off += await new Promise<number>((res, rej) => fs.write(up.fd, data, off, data.length - off, (e, n) => (e ? rej(e) : res(n))))
      up.written += data.length
    } catch (err) {
      up.failed = true
      send({ op: 'reply', req: String(h.req), ...errorInfo(err) })
    } finally {
      up.queued -= data.length
      if (up.queued <= 2 * CHUNK) link.resume()
    }
  })
}

function closeUpload(h: Header): void {
  const req = String(h.req)
  const up = uploads.get(req)
  if (!up) return void send({ op: 'reply', req, ok: false, code: 'EINVAL', message: 'no such upload' })
  uploads.delete(req)
  void up.queue.then(() => {
    if (up.fd >= 0) fs.closeSync(up.fd)
    if (!up.failed) send({ op: 'reply', req, ok: true, entry: entryInfo(up.file, fs.lstatSync(up.file)) })
  })
}

/**
 * Opens a regular file only, without blocking: this loop serves every request of the sandbox, and
 * opening a FIFO waits for its other end (reading a device or a pipe would never end).
 */
function openRegular(file: string, flags: number, mode?: number): number {
  const fd = fs.openSync(file, flags | fs.constants.O_NONBLOCK, mode)
  const st = fs.fstatSync(fd)
  if (st.isFile()) return fd
  fs.closeSync(fd)
  if (st.isDirectory()) throw Object.assign(new Error(`${file} is a directory`), { code: 'EISDIR' })
  throw Object.assign(new Error(`${file} is not a regular file (a pipe, socket or device)`), { code: 'EINVAL' })
}

/** Reads the host paused (its reader is slow: it holds what it has not passed on) or cancelled (its reader left). */
const reads = new Map<string, { paused: boolean; cancelled: boolean; wake?: () => void }>()

function setRead(h: Header, change: 'read_pause' | 'read_resume' | 'read_cancel'): void {
  const r = reads.get(String(h.req))
  if (!r) return
  if (change === 'read_pause') r.paused = true
  else if (change === 'read_resume') r.paused = false
  else r.cancelled = true
  if (!r.paused || r.cancelled) r.wake?.()
}

async function readFile(h: Header): Promise<void> {
  const req = String(h.req)
  const flow: { paused: boolean; cancelled: boolean; wake?: () => void } = { paused: false, cancelled: false }
  reads.set(req, flow)
  let fd = -1
  try {
    const file = resolvePath(h.path)
    fd = openRegular(file, fs.constants.O_RDONLY)
    const st = fs.fstatSync(fd)
    send({ op: 'read_start', req, size: st.size, mode: st.mode & 0o7777 })
    const buf = Buffer.alloc(CHUNK)
    for (;;) {
      while (flow.paused && !flow.cancelled) await new Promise<void>((r) => (flow.wake = r))
      if (flow.cancelled) break
      const n = fs.readSync(fd, buf, 0, CHUNK, null)
      if (n === 0) break
      if (!send({ op: 'data', req }, buf.subarray(0, n))) await new Promise((r) => link.once('drain', r))
    }
    send({ op: 'reply', req, ok: true })
  } catch (err) {
    send({ op: 'reply', req, ...errorInfo(err) })
  } finally {
    reads.delete(req)
    if (fd >= 0) fs.closeSync(fd)
  }
}

function entryInfo(file: string, st: fs.Stats) {
  const type = st.isDirectory() ? 'dir' : st.isSymbolicLink() ? 'symlink' : 'file'
  let target: string | null = null
  if (type === 'symlink') target = fs.readlinkSync(file)
  return { name: path.basename(file), path: file, type, bytes: st.size, mode: st.mode & 0o7777, uid: st.uid, gid: st.gid, modified_time: st.mtime.toISOString(), symlink_target: target }
}

/** Small filesystem requests: stat, list, mkdir -p, rm -rf. */
function fsOp(h: Header): void {
  const req = String(h.req)
  try {
    const file = resolvePath(h.path)
    switch (h.kind) {
      case 'stat':
        return void send({ op: 'reply', req, ok: true, entry: entryInfo(file, fs.lstatSync(file)) })
      case 'list': {
        const entries = fs.readdirSync(file).map((name) => entryInfo(path.join(file, name), fs.lstatSync(path.join(file, name))))
        return void send({ op: 'reply', req, ok: true, entries })
      }
      case 'mkdir':
        fs.mkdirSync(file, { recursive: true })
        return void send({ op: 'reply', req, ok: true, entry: entryInfo(file, fs.lstatSync(file)) })
      case 'remove':
        fs.lstatSync(file) // a missing path is an error, not a silent success
        fs.rmSync(file, { recursive: true, force: true })
        return void send({ op: 'reply', req, ok: true })
      default:
        throw Object.assign(new Error(`unknown fs operation ${JSON.stringify(h.kind)}`), { code: 'EINVAL' })
    }
  } catch (err) {
    send({ op: 'reply', req, ...errorInfo(err) })
  }
}

function handle(h: Header, body: Buffer): void {
  switch (h.op) {
    case 'spawn': return startProcess(h)
    case 'stdin': {
      const child = processes.get(String(h.id))
      child?.stdin?.write(Buffer.from(body))
      return
    }
    case 'close_stdin': return void processes.get(String(h.id))?.stdin?.end()
    case 'signal': return signalProcess(h)
    case 'pause': return setFlow(h, true)
    case 'resume': return setFlow(h, false)
    case 'write_open': return openUpload(h)
    case 'write_chunk': return writeUpload(h, body)
    case 'write_close': return closeUpload(h)
    case 'read': return void readFile(h)
    case 'read_pause':
    case 'read_resume':
    case 'read_cancel': return setRead(h, h.op)
    case 'fs': return fsOp(h)
    default: send({ op: 'protocol_error', message: `unknown op ${JSON.stringify(h.op)}` })
  }
}

function shutdown(): never {
  for (const child of processes.values()) {
    try {
      if (child.pid) process.kill(-child.pid, 'SIGKILL')
    } catch {
      // Already gone.
    }
  }
  process.exit(0)
}

link.on('data', createFrameDecoder(handle, () => shutdown()))
link.on('end', shutdown)
link.on('error', shutdown)
send({ op: 'ready', pid: process.pid })

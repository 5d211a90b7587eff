/**
 * The Node binary as sandboxes run it: an execute-only copy (mode 0111) of the host's. Linux
 * makes a process that executes a file it cannot read non-dumpable, and the /proc files of a
 * non-dumpable process (mem, environ, fd, maps) are closed to every other process without
 * CAP_SYS_PTRACE. So the sandbox's init, its agent and each test worker share a uid yet stay out
 * of each other's reach: a test cannot read or write a sibling worker's or the agent's memory.
 */
import { createHash } from 'node:crypto'
import fs from 'node:fs'
import fsp from 'node:fs/promises'
import path from 'node:path'

/** The copy of `file` under `dir`, made once per binary (by its path, size and time). */
export async function execOnlyCopy(dir: string, file: string): Promise<string> {
  const real = fs.realpathSync(file)
  const stat = fs.statSync(real)
  const key = createHash('sha256').update(`${real}\0${stat.size}\0${stat.mtimeMs}`).digest('hex').slice(0, 16)
  const target = path.join(dir, key, path.basename(real))
  if (fs.existsSync(target)) return target
  await fsp.mkdir(path.dirname(target), { recursive: true, mode: 0o755 })
  await fsp.chmod(dir, 0o755)
  await fsp.chmod(path.dirname(target), 0o755)
  const tmp = `${target}.tmp-${process.pid}`
  await fsp.copyFile(real, tmp)
  await fsp.chmod(tmp, 0o111)
  await fsp.rename(tmp, target)
  return target
}

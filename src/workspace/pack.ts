/**
 * Packs files into a tar stream (tar-stream), straight from disk, for upload into a sandbox.
 * Paths in the archive are relative; the sandbox extracts them at the host's absolute root.
 *
 * Each file is packed as read at one moment: its size is taken from the open descriptor, a file
 * that grows meanwhile is cut at that size, one that shrinks is padded with zero bytes, and one
 * that is gone (or was replaced by something other than a regular file) is left out. A log the
 * run itself writes under the root can never fail the run.
 */
import fs from 'node:fs'
import fsp from 'node:fs/promises'
import path from 'node:path'
import tar from 'tar-stream'
import type { WorkspaceFile } from './collect.js'

const CHUNK = 1024 * 1024

/** Files read from `root`, stored in the archive under `prefix` (relative, or '' for the top). */
export interface PackedTree {
  root: string
  files: Iterable<WorkspaceFile>
  prefix?: string
}

/** The tar stream of `files` (read from `root`), as an async iterable of chunks. */
export function packFiles(root: string, files: Iterable<WorkspaceFile>): AsyncIterable<Uint8Array> {
  return packTrees([{ root, files }])
}

/** One tar stream of several trees, each under its own prefix (one upload for all of them). */
export function packTrees(trees: PackedTree[]): AsyncIterable<Uint8Array> {
  const pack = tar.pack()
  ;(async () => {
    for (const { root, files, prefix = '' } of trees) {
      for (const f of files) {
        // The reader went away (an upload answered with an error before it read it all).
        if (pack.destroyed) return
        const abs = path.join(root, f.path)
        const name = prefix ? `${prefix}/${f.path}` : f.path
        if (f.link !== undefined) {
          const linkname = await fsp.readlink(abs).catch(() => undefined)
          if (linkname !== undefined) pack.entry({ name, type: 'symlink', linkname, mode: 0o777 })
          continue
        }
        await packFile(pack, name, abs)
      }
    }
    pack.finalize()
  })().catch((err) => pack.destroy(err))
  return pack as AsyncIterable<Uint8Array>
}

async function packFile(pack: tar.Pack, name: string, abs: string): Promise<void> {
  let handle: fsp.FileHandle
  try {
    // O_NOFOLLOW: a file replaced by a link since it was listed is not followed out of the root.
    handle = await fsp.open(abs, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK)
  } catch {
    return // gone, or no longer a plain file
  }
  try {
    const st = await handle.stat()
    if (!st.isFile()) return
    const size = st.size
    let entry!: ReturnType<tar.Pack['entry']>
    const packed = new Promise<void>((resolve, reject) => {
      entry = pack.entry({ name, size, mode: st.mode & 0o7777, mtime: st.mtime }, (err) => (err ? reject(err) : resolve()))
    })
    packed.catch(() => {}) // awaited below; the pack can be destroyed before that

    let written = 0
    while (written < size) {
      const buf = Buffer.allocUnsafe(Math.min(CHUNK, size - written))
      const { bytesRead } = await handle.read(buf, 0, buf.length, written)
      // Shrunk since the stat: the rest is zeros, so the entry still has the size it announced.
      if (bytesRead === 0) buf.fill(0)
      const chunk = bytesRead === 0 ? buf : buf.subarray(0, bytesRead)
      written += chunk.length
      if (!entry.write(chunk)) await drained(entry)
      if (entry.destroyed) break
    }
    entry.end(undefined as never)
    await packed
  } finally {
    await handle.close()
  }
}

/** Until the entry takes more (or is gone); the listener not called is removed, or a large file would pile them up. */
function drained(entry: NodeJS.WritableStream): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      entry.off('drain', done)
      entry.off('close', done)
      resolve()
    }
    entry.once('drain', done)
    entry.once('close', done)
  })
}

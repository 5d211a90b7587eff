/**
 * Packs files into a tar stream (tar-stream), straight from disk, for upload into a sandbox.
 * Paths in the archive are relative; the sandbox extracts them at the host's absolute root.
 */
import fs from 'node:fs'
import path from 'node:path'
import { pipeline } from 'node:stream/promises'
import tar from 'tar-stream'
import type { WorkspaceFile } from './collect.js'

/** The tar stream of `files` (read from `root`), as an async iterable of chunks. */
export function packFiles(root: string, files: Iterable<WorkspaceFile>): AsyncIterable<Uint8Array> {
  const pack = tar.pack()
  ;(async () => {
    for (const f of files) {
      if (f.link !== undefined) {
        pack.entry({ name: f.path, type: 'symlink', linkname: f.link, mode: 0o777 })
        continue
      }
      const entry = pack.entry({ name: f.path, size: f.size, mode: f.mode, mtime: new Date(f.mtimeMs) })
      await pipeline(fs.createReadStream(path.join(root, f.path)), entry)
    }
    pack.finalize()
  })().catch((err) => pack.destroy(err))
  return pack as AsyncIterable<Uint8Array>
}

/** What a sandbox is given of the host: the workspace root, the one predicate, options, limits, packing. */
import fs from 'node:fs'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import tar from 'tar-stream'
import { collectWorkspace, findWorkspaceRoot, WorkspaceTooLargeError } from '../src/workspace/collect.js'
import { packFiles } from '../src/workspace/pack.js'
import { tempDir } from './support/engine.js'

let root: string

function write(rel: string, content = 'x') {
  fs.mkdirSync(path.dirname(path.join(root, rel)), { recursive: true })
  fs.writeFileSync(path.join(root, rel), content)
}

async function unpack(chunks: AsyncIterable<Uint8Array>): Promise<Record<string, string>> {
  const entries: Record<string, string> = {}
  const extract = tar.extract()
  const done = new Promise<void>((resolve, reject) => {
    extract.on('entry', (header, stream, next) => {
      const parts: Buffer[] = []
      stream.on('data', (d: Buffer) => parts.push(d))
      stream.on('end', () => {
        entries[header.name] = header.type === 'symlink' ? `-> ${header.linkname}` : Buffer.concat(parts).toString()
        next()
      })
    })
    extract.on('finish', resolve)
    extract.on('error', reject)
  })
  for await (const chunk of chunks) extract.write(chunk)
  extract.end()
  await done
  return entries
}

beforeAll(() => {
  root = tempDir('ws')
  write('package-lock.json', '{}')
  write('.gitignore', 'dist/\n*.log\n')
  write('src/index.ts')
  write('src/app.log')
  write('dist/bundle.js')
  write('packages/a/.gitignore', 'generated/\n')
  write('packages/a/src/a.ts')
  write('packages/a/generated/big.ts')
  write('packages/a/node_modules/dep/index.js')
  write('node_modules/vitest/index.js')
  write('docs/big.bin', 'y'.repeat(5000))
  write('docs/readme.md')
  fs.mkdirSync(path.join(root, '.git/info'), { recursive: true })
  fs.writeFileSync(path.join(root, '.git/info/exclude'), 'local-notes.txt\n')
  write('local-notes.txt')
  fs.symlinkSync('src/index.ts', path.join(root, 'entry.ts'))
  // Secrets, caches and this run's outputs.
  for (const f of ['.env', '.env.local', 'packages/a/.env.production', '.npmrc', '.yarnrc.yml', 'certs/server.key', 'certs/server.pem', 'id_ed25519', '.ssh/config', '.aws/credentials']) write(f, 'secret')
  for (const f of ['.env.example', '.env.sample', 'packages/a/.env.template']) write(f, 'KEY=')
  write('node_modules/.vite/vitest/results.json', '{}')
  write('.vitest-cache/x.js')
  write('coverage/index.html')
  write('reports/junit.xml')
})
afterAll(() => fs.rmSync(root, { recursive: true, force: true }))

describe('workspace', () => {
  it('finds the root by its lockfile, from any folder below it', () => {
    expect(findWorkspaceRoot(path.join(root, 'packages/a/src'))).toBe(root)
  })

  it('sends what tests see on the host, gitignored build outputs included; not dependencies, .git, caches, outputs or secrets', async () => {
    const ws = await collectWorkspace(root, { outputs: [path.join(root, 'coverage'), path.join(root, 'reports/junit.xml')] })
    expect(ws.files.map((f) => f.path)).toEqual([
      '.env.example', '.env.sample', '.gitignore', 'dist/bundle.js', 'docs/big.bin', 'docs/readme.md', 'entry.ts', 'local-notes.txt',
      'package-lock.json', 'packages/a/.env.template', 'packages/a/.gitignore', 'packages/a/generated/big.ts', 'packages/a/src/a.ts', 'src/app.log', 'src/index.ts',
    ])
    expect(ws.files.find((f) => f.path === 'entry.ts')!.link).toBe('src/index.ts') // a link, not followed
    expect(ws.secrets).toEqual(['.aws/credentials', '.env', '.env.local', '.npmrc', '.ssh/config', '.yarnrc.yml', 'certs/server.key', 'certs/server.pem', 'id_ed25519', 'packages/a/.env.production'])
    // The one predicate, for files that exist and files the run may create.
    const why = (rel: string) => ws.whyNot(path.join(root, rel))
    expect(why('dist/new-chunk.js')).toBeUndefined()
    expect(why('src/__snapshots__/new.test.ts.snap')).toBeUndefined()
    expect(why('.env')).toBe('secret')
    expect(why('node_modules/vitest/index.js')).toBe('never')
    expect(why('.git/config')).toBe('never')
    expect(why('.vitest-cache/x.js')).toBe('cache')
    expect(why('coverage/lcov.info')).toBe('output')
    expect(why('../outside.txt')).toBe('outside')
    expect(ws.isGiven('/etc/passwd')).toBe(false)
  })

  it('adds back with include, leaves out more with exclude (which wins), and keeps to git-tracked files with gitignore: true', async () => {
    const ws = await collectWorkspace(root, { include: ['.env', 'certs/'], exclude: ['docs/*.bin', 'certs/server.pem'] })
    const paths = ws.files.map((f) => f.path)
    expect(paths).toContain('.env')
    expect(paths).toContain('certs/server.key')
    expect(paths).not.toContain('certs/server.pem')
    expect(paths).not.toContain('docs/big.bin')
    expect(paths).not.toContain('.env.local')
    expect(ws.whyNot(path.join(root, 'docs/other.bin'))).toBe('excluded')
    const tracked = await collectWorkspace(root, { gitignore: true, include: ['dist/'] })
    const trackedPaths = tracked.files.map((f) => f.path)
    expect(trackedPaths).toContain('dist/bundle.js') // included back
    for (const p of ['src/app.log', 'packages/a/generated/big.ts', 'local-notes.txt']) expect(trackedPaths).not.toContain(p)
    expect(tracked.whyNot(path.join(root, 'src/other.log'))).toBe('gitignored')
  })

  it('refuses a workspace over the limit before anything is sent, naming the biggest folders and the options', async () => {
    const err = await collectWorkspace(root, { maxBytes: 1000 }).catch((e) => e)
    expect(err).toBeInstanceOf(WorkspaceTooLargeError)
    expect(err.message).toMatch(/is \d+\.\d KiB, over the limit of 1\.0 KiB \(workspace\.maxBytes\)/)
    expect(err.message.split('\n')[2]).toMatch(/^ {2}docs\/ /) // the biggest first
    expect(err.message).toMatch(/workspace: \{ exclude: \['docs\/'\] \}.*workspace: \{ gitignore: true \}.*raise workspace\.maxBytes/)
  })

  it('packs files and links into a tar with relative paths and contents', async () => {
    const ws = await collectWorkspace(root, { exclude: ['*', '!src/', '!src/index.ts', '!entry.ts'] })
    expect(await unpack(packFiles(root, ws.files))).toEqual({ 'entry.ts': '-> src/index.ts', 'src/index.ts': 'x' })
  })

  it('packs each file as read at one moment: growing, shrinking, replaced and deleted files never fail it', async () => {
    const dir = tempDir('ws-moving')
    try {
      const put = (rel: string, content: string) => fs.writeFileSync(path.join(dir, rel), content)
      put('package-lock.json', '{}')
      put('grows.log', 'a'.repeat(100))
      put('shrinks.txt', 'b'.repeat(100))
      put('deleted.txt', 'c')
      put('replaced.txt', 'd')
      const ws = await collectWorkspace(dir)
      // Changed after the listing, before the packing.
      put('grows.log', 'a'.repeat(5000))
      put('shrinks.txt', 'b'.repeat(10))
      fs.rmSync(path.join(dir, 'deleted.txt'))
      fs.rmSync(path.join(dir, 'replaced.txt'))
      fs.symlinkSync('/etc/passwd', path.join(dir, 'replaced.txt'))
      const entries = await unpack(packFiles(dir, ws.files))
      expect(Object.keys(entries).sort()).toEqual(['grows.log', 'package-lock.json', 'shrinks.txt'])
      expect(entries['grows.log']).toBe('a'.repeat(5000)) // its size when it was opened
      expect(entries['shrinks.txt']).toBe('b'.repeat(10))
      // A file that keeps growing while it is packed: cut at the size it had when opened.
      const big = path.join(dir, 'busy.log')
      fs.writeFileSync(big, 'z'.repeat(3 * 1024 * 1024))
      const busy = await collectWorkspace(dir)
      const writer = setInterval(() => fs.appendFileSync(big, 'more\n'), 1)
      try {
        const packed = await unpack(packFiles(dir, busy.files))
        expect(packed['busy.log'].length).toBeGreaterThanOrEqual(3 * 1024 * 1024)
      } finally {
        clearInterval(writer)
      }
    } finally {
      fs.rmSync(dir, { recursive: true, force: true })
    }
  })
  it('stops packing cleanly when its reader goes away mid-file (an upload answered early with an error)', async () => {
    const dir = tempDir('pack-abort')
    try {
      fs.writeFileSync(path.join(dir, 'package-lock.json'), '{}')
      for (let i = 0; i < 3; i++) fs.writeFileSync(path.join(dir, `big${i}.bin`), Buffer.alloc(8 * 1024 * 1024, i))
      const ws = await collectWorkspace(dir)
      const unhandled: unknown[] = []
      const onUnhandled = (err: unknown) => unhandled.push(err)
      process.on('unhandledRejection', onUnhandled)
      try {
        let seen = 0
        for await (const chunk of packFiles(dir, ws.files)) {
          seen += chunk.length
          if (seen > 1024 * 1024) break // destroys the stream, as undici does with a request body
        }
        await new Promise((r) => setTimeout(r, 300))
        expect(unhandled).toEqual([])
      } finally {
        process.off('unhandledRejection', onUnhandled)
      }
    } finally {
      fs.rmSync(dir, { recursive: true, force: true })
    }
  })
})

/** What a sandbox is given of the host: the workspace root, .gitignore rules, options, limits. */
import fs from 'node:fs'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { collectWorkspace, findWorkspaceRoot, WorkspaceTooLargeError } from '../src/workspace/collect.js'
import { packFiles } from '../src/workspace/pack.js'
import tar from 'tar-stream'
import { tempDir } from './support/engine.js'

let root: string

function write(rel: string, content = 'x') {
  fs.mkdirSync(path.dirname(path.join(root, rel)), { recursive: true })
  fs.writeFileSync(path.join(root, rel), content)
}

beforeAll(() => {
  root = tempDir('ws')
  write('package-lock.json', '{}')
  write('.gitignore', 'dist/\n*.log\n.env\n')
  write('src/index.ts')
  write('src/app.log')
  write('.env', 'SECRET=1')
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
})
afterAll(() => fs.rmSync(root, { recursive: true, force: true }))

describe('workspace', () => {
  it('finds the root by its lockfile, from any folder below it', () => {
    expect(findWorkspaceRoot(path.join(root, 'packages/a/src'))).toBe(root)
  })

  it('sends what git would track: nested .gitignore files, .git/info/exclude, no node_modules', async () => {
    const ws = await collectWorkspace(root)
    expect(ws.files.map((f) => f.path)).toEqual(['.gitignore', 'docs/big.bin', 'docs/readme.md', 'entry.ts', 'package-lock.json', 'packages/a/.gitignore', 'packages/a/src/a.ts', 'src/index.ts'])
    expect(ws.files.find((f) => f.path === 'entry.ts')!.link).toBe('src/index.ts') // a link, not followed
    expect(ws.includes('.env')).toBe(false)
    expect(ws.includes('src/new.test.ts.snap')).toBe(true) // a file the run may create
    expect(ws.includes('../outside.txt')).toBe(false)
  })

  it('narrows with include and exclude', async () => {
    const ws = await collectWorkspace(root, { include: ['src/**', 'docs/**'], exclude: ['docs/*.bin'] })
    expect(ws.files.map((f) => f.path)).toEqual(['docs/readme.md', 'src/index.ts'])
    expect(ws.includes('docs/other.bin')).toBe(false)
  })

  it('refuses a workspace over the limit before anything is sent, naming the biggest folders', async () => {
    const err = await collectWorkspace(root, { maxBytes: 1000 }).catch((e) => e)
    expect(err).toBeInstanceOf(WorkspaceTooLargeError)
    expect(err.message).toMatch(/is \d+\.\d KiB, over the limit of 1\.0 KiB \(workspace\.maxBytes\)/)
    expect(err.message.split('\n')[2]).toMatch(/^ {2}docs\/ /) // the biggest first
    expect(err.message).toMatch(/Fix: add what tests don't need to \.gitignore or to sandbox\(\{ workspace: \{ exclude/)
  })

  it('packs files and links into a tar with relative paths and contents', async () => {
    const ws = await collectWorkspace(root, { include: ['src/**', 'entry.ts'] })
    const entries: Record<string, string> = {}
    const extract = tar.extract()
    const done = new Promise<void>((resolve, reject) => {
      extract.on('entry', (header, stream, next) => {
        let body = ''
        stream.on('data', (d: Buffer) => (body += d))
        stream.on('end', () => {
          entries[header.name] = header.type === 'symlink' ? `-> ${header.linkname}` : body
          next()
        })
      })
      extract.on('finish', resolve)
      extract.on('error', reject)
    })
    for await (const chunk of packFiles(root, ws.files)) extract.write(chunk)
    extract.end()
    await done
    expect(entries).toEqual({ 'entry.ts': '-> src/index.ts', 'src/index.ts': 'x' })
  })
})

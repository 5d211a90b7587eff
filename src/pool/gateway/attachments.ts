/**
 * Attachments (`annotate(…, { path })`, an artifact's `attachments`): Vitest copies the file a path
 * names into its attachments folder (`resolveTestAttachment`, on the host). In a sandbox that file
 * is the sandbox's, so its bytes come in the message (`sandboxBytes`, see
 * sandbox-runtime/host-reads.ts) and the host never reads the path: the gateway stages the bytes
 * in a folder of its own and hands Vitest the staged file, and the copy Vitest makes of it is then
 * named as under forks (by the hash of the path the test gave), unless another test file's
 * attachment has that name.
 */
import { createHash } from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { isPlainPath } from './module-ids.js'

/** The longest file name staged (file systems take 255 bytes). */
const MAX_NAME = 200

let stageDir: string | undefined
let staged = 0
/** Staged file → the path the test gave (resolved as Vitest resolves it). */
const givenPaths = new Map<string, string>()

/**
 * Every attachment of an artifact: an annotation's one and an artifact's list, whatever its type
 * (Vitest reads one by the type, its HTML reporter the list of every artifact).
 */
export function attachmentsOf(artifact: any): any[] {
  return [artifact?.annotation?.attachment, ...(Array.isArray(artifact?.attachments) ? artifact.attachments : [])].filter((a) => a !== undefined)
}

/** Characters of file bytes an artifact carries: they go to the attachments folder, not into what Vitest keeps. */
export function carriedBytes(artifact: unknown): number {
  return attachmentsOf(artifact).reduce((n, a) => n + (typeof a?.sandboxBytes === 'string' ? a.sandboxBytes.length : 0), 0)
}

/**
 * Each attachment of the artifact that names a file: its bytes from the sandbox staged, and Vitest
 * given the staged path (in place: the gateway's copy). `count` is told each file's size before
 * it is written. Returns why an attachment is refused, if one is.
 */
export function stageAttachments(artifact: unknown, projectRoot: string, count: (bytes: number) => void): string | undefined {
  for (const a of attachmentsOf(artifact)) {
    if (a === null || typeof a !== 'object') continue
    const bytes = a.sandboxBytes
    delete a.sandboxBytes
    const p = a.path
    if (p === undefined) continue
    if (typeof p !== 'string') return `attachment path ${String(p).slice(0, 200)} is not a string`
    if (/^https?:\/\//.test(p)) continue
    // Vitest resolves it with pathe, which reads `\\` as a separator.
    const given = path.resolve(projectRoot, p)
    const name = path.basename(given)
    if (p.includes('\\') || !isPlainPath(given) || name.length > MAX_NAME) return `attachment path ${p.slice(0, 200)} is not a plain path of at most ${MAX_NAME} characters in its name`
    if (typeof bytes !== 'string') return `attachment ${p.slice(0, 200)}: its file was not sent from the sandbox (it is missing there, not a regular file, or over 32 MiB)`
    const data = Buffer.from(bytes, 'base64')
    count(data.length)
    stageDir ??= fs.mkdtempSync(path.join(os.tmpdir(), 'vitest-sandbox-attachments-'))
    const file = path.join(stageDir, String(++staged), name)
    fs.mkdirSync(path.dirname(file))
    fs.writeFileSync(file, data)
    givenPaths.set(file, given)
    a.path = file
  }
  return undefined
}

process.once('exit', () => stageDir && fs.rmSync(stageDir, { recursive: true, force: true }))

/** Each attachment named as under forks → the test file it is of. */
const owners = new Map<string, unknown>()

type Resolve = (this: unknown, test: unknown, attachment: { path?: string }, filename?: string) => Promise<unknown>
const wrapped = new WeakSet<object>()

/**
 * Vitest's copy of a staged file named as under forks: its name holds the hash of the path it
 * read, which is the staged one; it is renamed to the hash of the path the test gave. Once per
 * class of the running Vitest's test run (`vitest._testRun`).
 */
export function nameAttachmentsAsForks(testRun: unknown): void {
  const proto = testRun && Object.getPrototypeOf(testRun)
  if (!proto || typeof proto.resolveTestAttachment !== 'function' || wrapped.has(proto)) return
  wrapped.add(proto)
  const resolve: Resolve = proto.resolveTestAttachment
  proto.resolveTestAttachment = async function (this: unknown, test: unknown, attachment: { path?: string }, filename?: string) {
    const from = attachment?.path
    const given = from === undefined ? undefined : givenPaths.get(from)
    const result = await resolve.call(this, test, attachment, filename)
    if (given === undefined || from === undefined) return result
    givenPaths.delete(from)
    fs.rmSync(path.dirname(from), { recursive: true, force: true })
    const copy = attachment.path
    const hash = (p: string) => createHash('sha1').update(p).digest('hex')
    const name = copy && path.basename(copy)
    if (!copy || !name || !name.includes(hash(from))) return result
    const renamed = path.join(path.dirname(copy), name.replace(hash(from), hash(given)))
    // Forks' name holds only the message and the path: a file of another sandbox that gives both
    // would replace this one's bytes. Another test file's name is never taken: the copy keeps its own.
    const owner = (test as { module?: { moduleId?: unknown } } | undefined)?.module?.moduleId
    if (owners.has(renamed) && owners.get(renamed) !== owner) return result
    owners.set(renamed, owner)
    fs.renameSync(copy, renamed)
    attachment.path = renamed
    return result
  }
}

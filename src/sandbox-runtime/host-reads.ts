/**
 * Files a worker would have the host read, inside a sandbox, where the host's disk does not hold
 * them: the worker sends their bytes in the message instead. The host gateway treats the bytes
 * like any other the sandbox sends (screened, bounded) and writes what Vitest reads itself.
 * - Vitest 5's coverage: its workers write each file's coverage as JSON into the host's
 *   `coverage/.tmp` folder and send only the file's name (`onAfterSuiteRun`). Here they write into
 *   a folder of the sandbox, and the data goes in the message (as Vitest 4's workers send it).
 * - Attachments (`annotate(…, { path })`, artifacts' `attachments`): Vitest copies the file from
 *   the path into its attachments folder; here its bytes go along as `sandboxBytes` (base64).
 * Node built-ins only.
 */
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import type { RpcFrame } from './wire.js'

/** An attachment larger than this is not sent (a message is at most 64 MiB, base64 takes a third more). */
export const MAX_ATTACHMENT = 32 * 1024 * 1024

let coverageFolder: string | undefined
/** The project root Vitest reads an attachment's path from. */
let root = process.cwd()

/** The project root the worker's config names (Vitest reads attachment paths and `/x` urls from it). */
export function projectRoot(): string {
  return root
}

/** A worker request carrying the config: its coverage files go to a folder of this sandbox. */
export function fromConfig(msg: unknown): void {
  const config = (msg as { context?: { config?: { root?: unknown; coverage?: { coverageFilesDirectory?: unknown } } } } | undefined)?.context?.config
  if (typeof config?.root === 'string') root = config.root
  const coverage = config?.coverage
  if (typeof coverage?.coverageFilesDirectory !== 'string') return
  coverageFolder ??= fs.mkdtempSync(path.join(os.tmpdir(), 'vitest-coverage-'))
  coverage.coverageFilesDirectory = coverageFolder
}

/** A call about to go to the host: the files it names in its data. */
export function withFiles(msg: unknown): void {
  const call = msg as RpcFrame | undefined
  if (call?.t !== 'q') return
  if (call.m === 'onAfterSuiteRun') inlineCoverageFile(call.a?.[0] as { coverage?: unknown } | undefined)
  if (call.m === 'onTaskArtifactRecord') for (const attachment of attachmentsOf(call.a?.[1])) inlineAttachment(attachment)
}

function inlineCoverageFile(meta: { coverage?: unknown } | undefined): void {
  const file = meta?.coverage
  if (coverageFolder === undefined || typeof file !== 'string' || path.dirname(file) !== coverageFolder) return
  meta!.coverage = JSON.parse(fs.readFileSync(file, 'utf8'))
  fs.rmSync(file, { force: true })
}

function attachmentsOf(artifact: any): any[] {
  const list = artifact?.type === 'internal:annotation' ? [artifact.annotation?.attachment] : Array.isArray(artifact?.attachments) ? artifact.attachments : []
  return list.filter((a: any) => a && typeof a === 'object')
}

function inlineAttachment(attachment: { path?: unknown; sandboxBytes?: string }): void {
  const file = attachment.path
  if (typeof file !== 'string' || /^https?:\/\//.test(file)) return
  try {
    const resolved = path.resolve(root, file)
    if (fs.statSync(resolved).isFile() && fs.statSync(resolved).size <= MAX_ATTACHMENT) attachment.sandboxBytes = fs.readFileSync(resolved).toString('base64')
  } catch {
    // Missing: the host says so, as Vitest would fail to copy it.
  }
}

/**
 * Vitest 5's coverage files, inside a sandbox. Its workers write each file's coverage as JSON into
 * the host's `coverage/.tmp` folder and send only the file's name (`onAfterSuiteRun`), which the
 * host would read from its own disk. Here the worker writes into a folder of the sandbox instead,
 * and the data itself goes to the host in the message, where the gateway screens it and writes
 * the file the host reads (Vitest 4's workers send the data that way themselves). Node built-ins only.
 */
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import type { RpcFrame } from './wire.js'

let folder: string | undefined

/** A worker request carrying the config: its coverage files go to a folder of this sandbox. */
export function redirectCoverageFiles(msg: unknown): void {
  const coverage = (msg as { context?: { config?: { coverage?: { coverageFilesDirectory?: unknown } } } } | undefined)?.context?.config?.coverage
  if (typeof coverage?.coverageFilesDirectory !== 'string') return
  folder ??= fs.mkdtempSync(path.join(os.tmpdir(), 'vitest-coverage-'))
  coverage.coverageFilesDirectory = folder
}

/** An `onAfterSuiteRun` call naming a coverage file of that folder: the data in place of the name. */
export function inlineCoverageFile(msg: unknown): void {
  const call = msg as RpcFrame | undefined
  const meta = call?.t === 'q' && call.m === 'onAfterSuiteRun' ? (call.a?.[0] as { coverage?: unknown } | undefined) : undefined
  const file = meta?.coverage
  if (folder === undefined || typeof file !== 'string' || path.dirname(file) !== folder) return
  meta!.coverage = JSON.parse(fs.readFileSync(file, 'utf8'))
  fs.rmSync(file, { force: true })
}

/**
 * The recorded durations of the files a run is about to run, from Vitest's results cache (written
 * after each run: 4.1 keys it `<project>:<path from the root>`, 5.x by test specification).
 */
import path from 'node:path'
import type { Vitest } from 'vitest/node'
import type { RunHistory } from './schedule.js'

interface FileResult {
  duration?: number
  failed?: boolean
}

/** The result Vitest recorded for `file` in `project` at its last run, if any. */
function recorded(vitest: Vitest, project: Vitest['projects'][number], file: string): FileResult | undefined {
  const cache = vitest.cache as unknown as {
    getTestSpecificationResult?: (spec: unknown) => FileResult | undefined
    getFileTestResults?: (key: string) => FileResult | undefined
  }
  if (typeof cache.getTestSpecificationResult === 'function') return cache.getTestSpecificationResult(project.createSpecification(file))
  return cache.getFileTestResults?.(`${project.name}:${path.relative(vitest.config.root, file)}`)
}

/**
 * The history of the run's files: Vitest has collected their paths (before the pool starts) and
 * each is looked up in every project; a file no project has a duration for counts as unknown.
 */
export function runHistory(vitest: Vitest): RunHistory {
  const history: RunHistory = { durations: [], unknown: 0 }
  for (const file of vitest.state.getPaths()) {
    const found = vitest.projects.map((p) => recorded(vitest, p, file)?.duration).filter((d): d is number => typeof d === 'number' && d >= 0)
    if (found.length) history.durations.push(...found)
    else history.unknown++
  }
  return history
}

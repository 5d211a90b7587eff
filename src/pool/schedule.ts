/**
 * The arithmetic of fanning files out: the ideal wall time of a set of file durations on a number
 * of slots, the wall time of Vitest's own order (longest first, each file to the first free slot),
 * and how many sandboxes `sandboxes: 'auto'` asks for.
 */

/** What is known of the files a run is about to run. */
export interface RunHistory {
  /** Recorded durations (ms) of the files that have one. */
  durations: number[]
  /** Files with no recorded duration (new, or never run with the cache on). */
  unknown: number
}

/** Assumed for a file with no history, and added to each file: a worker's start in a sandbox. */
export const UNKNOWN_FILE_MS = 1000
export const FILE_OVERHEAD_MS = 300
/** `'auto'` takes the fewest sandboxes whose schedule is within this factor of the best one. */
export const AUTO_TOLERANCE = 1.1

/** The best any schedule can do: max(longest file, total ÷ slots). */
export function idealWallMs(durations: number[], slots: number): number {
  if (!durations.length) return 0
  return Math.max(Math.max(...durations), durations.reduce((a, b) => a + b, 0) / slots)
}

/** Wall time of longest-first greedy placement (what a FIFO queue over Vitest's order gives). */
export function greedyWallMs(durations: number[], slots: number): number {
  const free = new Array<number>(Math.max(1, slots)).fill(0)
  for (const d of [...durations].sort((a, b) => b - a)) {
    let i = 0
    for (let j = 1; j < free.length; j++) if (free[j] < free[i]) i = j
    free[i] += d
  }
  return Math.max(...free)
}

/** The durations a run's history predicts, one per file, each with the per-file overhead. */
export function expectedDurations(history: RunHistory): number[] {
  const known = history.durations.map((d) => d + FILE_OVERHEAD_MS)
  return [...known, ...new Array<number>(history.unknown).fill(UNKNOWN_FILE_MS + FILE_OVERHEAD_MS)]
}

/**
 * `sandboxes: 'auto'`: the fewest sandboxes (of `concurrency` slots each, at most `max`) whose
 * greedy schedule is within AUTO_TOLERANCE of the best `max` sandboxes could do, and never more
 * than there are files to fill them.
 */
export function autoSandboxes(history: RunHistory, concurrency: number, max: number): number {
  const files = expectedDurations(history)
  if (!files.length) return 1
  const cap = Math.max(1, Math.min(max, Math.ceil(files.length / concurrency)))
  const target = AUTO_TOLERANCE * idealWallMs(files, cap * concurrency)
  for (let n = 1; n < cap; n++) if (greedyWallMs(files, n * concurrency) <= target) return n
  return cap
}

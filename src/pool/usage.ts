/**
 * What a run used: per sandbox its files, busy and idle time and how long it took to create; for
 * the run its wall time against the ideal for the files it ran, and the sandbox-seconds it held.
 * Printed when the fleet closes; as JSON to `usageFile` or with DEBUG=vitest-pool-sandbox:usage.
 */
import { autoSandboxes, greedyWallMs, idealWallMs } from './schedule.js'

/** Below this efficiency the report says what another sandbox count would have done. */
const LOW_EFFICIENCY = 0.75
/** Sandbox counts the report considers when it suggests one. */
const SUGGEST_UP_TO = 64

export interface SandboxUsageReport {
  id: string
  files: number
  /** From the create request to the agent's hello. */
  createMs: number
  /** From the create request to the end of the run (or the sandbox's loss). */
  lifetimeMs: number
  /** Time with at least one file running; the rest of its lifetime is idle. */
  busyMs: number
  idleMs: number
  /** Module fetches and resolutions the host answered for its workers (the agent's cache answers the rest). */
  moduleRequests: number
  lost?: string
}

export interface UsageReport {
  provider: string
  runId: string
  sandboxes: SandboxUsageReport[]
  /** Slots of the sandboxes that ran (sandboxes × concurrency). */
  slots: number
  files: number
  /** Duration of each file as its slot saw it (worker start to end), in ms. */
  fileMs: number[]
  /** From the fleet's start to the last file's end. */
  wallMs: number
  /** max(longest file, Σ files ÷ slots). */
  idealMs: number
  /** idealMs ÷ wallMs. */
  efficiency: number
  sandboxSeconds: number
  /** When efficiency is low: a sandbox count that would have come closer, and its expected wall time. */
  suggestion?: { sandboxes: number; wallMs: number }
}

/** One sandbox's account. */
export class SandboxUsage {
  readonly requestedAt = Date.now()
  readyAt?: number
  endedAt?: number
  lost?: string
  files = 0
  moduleRequests = 0
  private active = 0
  private busySince = 0
  private busyMs = 0

  constructor(public id = '') {}

  /** A file starts on one of its slots. */
  begin(): void {
    if (this.active++ === 0) this.busySince = Date.now()
    this.files++
  }

  end(): void {
    if (--this.active === 0) this.busyMs += Date.now() - this.busySince
  }

  /** The sandbox is done (the run ended, or it was lost). */
  close(lost?: string): void {
    if (this.endedAt !== undefined) return
    if (this.active > 0) this.busyMs += Date.now() - this.busySince
    this.active = 0
    this.endedAt = Date.now()
    if (lost) this.lost = lost
  }

  report(now: number): SandboxUsageReport {
    const lifetimeMs = (this.endedAt ?? now) - this.requestedAt
    const busyMs = Math.min(this.busyMs + (this.active > 0 ? now - this.busySince : 0), lifetimeMs)
    return {
      id: this.id,
      files: this.files,
      createMs: (this.readyAt ?? now) - this.requestedAt,
      lifetimeMs,
      busyMs,
      idleMs: lifetimeMs - busyMs,
      moduleRequests: this.moduleRequests,
      ...(this.lost ? { lost: this.lost } : {}),
    }
  }
}

/** The run's account. */
export class RunUsage {
  readonly startedAt = Date.now()
  private lastEnd = this.startedAt
  readonly sandboxes: SandboxUsage[] = []
  readonly fileMs: number[] = []

  constructor(private readonly provider: string, private readonly runId: string, private readonly concurrency: number) {}

  /** A file ran for `ms` on a slot. */
  fileDone(ms: number): void {
    this.fileMs.push(ms)
    this.lastEnd = Date.now()
  }

  report(now = Date.now()): UsageReport {
    const ran = this.sandboxes.filter((s) => s.readyAt !== undefined)
    const slots = Math.max(1, ran.length * this.concurrency)
    const wallMs = (this.fileMs.length ? this.lastEnd : now) - this.startedAt
    const idealMs = idealWallMs(this.fileMs, slots)
    const sandboxes = this.sandboxes.map((s) => s.report(now))
    const efficiency = wallMs > 0 && this.fileMs.length ? Math.min(1, idealMs / wallMs) : 1
    const report: UsageReport = {
      provider: this.provider,
      runId: this.runId,
      sandboxes,
      slots,
      files: this.fileMs.length,
      fileMs: this.fileMs,
      wallMs,
      idealMs,
      efficiency,
      sandboxSeconds: sandboxes.reduce((a, s) => a + s.lifetimeMs, 0) / 1000,
    }
    if (efficiency < LOW_EFFICIENCY && this.fileMs.length) {
      const better = autoSandboxes({ durations: this.fileMs, unknown: 0 }, this.concurrency, SUGGEST_UP_TO)
      // The time the run spent before and around its files stays; the files' part is rescheduled.
      const overhead = Math.max(0, wallMs - greedyWallMs(this.fileMs, slots))
      if (better !== ran.length) report.suggestion = { sandboxes: better, wallMs: overhead + greedyWallMs(this.fileMs, better * this.concurrency) }
    }
    return report
  }
}

const seconds = (ms: number) => `${(ms / 1000).toFixed(1)}s`

/** The report as the lines printed at the end of a run. */
export function formatUsage(r: UsageReport): string[] {
  const n = r.sandboxes.length
  const lines = [`sandbox: ${n} sandbox${n === 1 ? '' : 'es'} (${r.provider}), ${r.files} file${r.files === 1 ? '' : 's'} in ${seconds(r.wallMs)}:`]
  for (const s of r.sandboxes) {
    lines.push(`  ${s.id}: ${s.files} file${s.files === 1 ? '' : 's'}, busy ${seconds(s.busyMs)}, idle ${seconds(s.idleMs)}, created in ${seconds(s.createMs)}${s.lost ? ` (lost: ${s.lost})` : ''}`)
  }
  if (r.files) {
    lines.push(`  efficiency ${Math.round(r.efficiency * 100)}%: ideal ${seconds(r.idealMs)} on ${r.slots} slot${r.slots === 1 ? '' : 's'} (the longest file, or all files' time ÷ slots); ${r.sandboxSeconds.toFixed(1)} sandbox-seconds`)
  }
  if (r.suggestion) {
    lines.push(`  sandboxes: ${r.suggestion.sandboxes} would have taken about ${seconds(r.suggestion.wallMs)} (sandboxes: 'auto' sizes the fleet from these durations next time)`)
  }
  return lines
}

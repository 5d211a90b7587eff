/**
 * What a process does before the caller of `start()` has had a turn to add its listeners (output,
 * even its exit) waits, in order, until the turn after `release()`. Every process class needs it:
 * `start()` resolves, and only then can the caller listen.
 */
export interface EarlyEvents {
  /** Run `f` now, or in order after the release if it has not come yet. */
  deliver(f: () => void): void
  /** Run what waits on the next turn, and everything after it at once. */
  release(): void
}

export function earlyEvents(): EarlyEvents {
  let held: (() => void)[] | undefined = []
  return {
    deliver(f) {
      if (held) held.push(f)
      else f()
    },
    release() {
      setImmediate(() => {
        const early = held ?? []
        held = undefined
        for (const f of early) f()
      })
    },
  }
}

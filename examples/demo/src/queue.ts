/** Runs async jobs with at most `limit` in flight, in submission order. */
export function createQueue(limit: number) {
  let active = 0
  const waiting: Array<() => void> = []
  return async function run<T>(job: () => Promise<T>): Promise<T> {
    if (active >= limit) await new Promise<void>((r) => waiting.push(r))
    active++
    try {
      return await job()
    } finally {
      active--
      waiting.shift()?.()
    }
  }
}

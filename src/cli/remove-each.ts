/** Removing a listed set of things from a provider, as `reap` and `template prune` do. */
export interface RemoveEachOptions<T> {
  /** List only. */
  dryRun: boolean
  /** How an item is named in the output. */
  name(item: T): string
  /** Why an item must stay, if it must (asked before removing it). */
  keep?(item: T): Promise<string | undefined>
  /** Remove it; false if it was already gone. */
  remove(item: T): Promise<boolean>
  /** The verb for the output: 'kill', 'delete'. */
  verb: string
  log(line: string): void
}

/** Remove each item, or say it would; a failure is reported and counted, and the rest go on. */
export async function removeEach<T>(items: T[], opts: RemoveEachOptions<T>): Promise<number> {
  const done = opts.verb.endsWith('e') ? `${opts.verb}d` : `${opts.verb}ed`
  let failed = 0
  for (const item of items) {
    const what = opts.name(item)
    const why = await opts.keep?.(item)
    if (why) {
      opts.log(`  kept ${what}: ${why}`)
      continue
    }
    if (opts.dryRun) {
      opts.log(`  would ${opts.verb} ${what}`)
      continue
    }
    try {
      opts.log(`  ${(await opts.remove(item)) ? done : 'already gone'}: ${what}`)
    } catch (err) {
      failed++
      opts.log(`  could not ${opts.verb} ${what}: ${(err as Error).message}`)
    }
  }
  return failed
}

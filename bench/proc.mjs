// Reading processes from /proc for the benchmarks: resident memory of a process tree, CPU time.
import fs from 'node:fs'

/**
 * Memory (bytes) of `pid`'s descendants (and of `pid` itself when `self`), in total and by command
 * name. `total` is resident memory (RSS), which counts pages shared with other processes (the Node
 * binary's code) once per process; `pss` shares them out among their users, and `private` is what
 * the processes alone hold: what N more of them would cost.
 */
export function treeRss(pid, { self = false } = {}) {
  const children = new Map()
  const names = new Map()
  for (const p of fs.readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
    try {
      const stat = fs.readFileSync(`/proc/${p}/stat`, 'utf8')
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1])
      if (!children.has(ppid)) children.set(ppid, [])
      children.get(ppid).push(Number(p))
      names.set(Number(p), stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')')))
    } catch {}
  }
  const byName = {}
  let total = 0
  let pss = 0
  let own = 0
  const add = (p) => {
    try {
      const rollup = fs.readFileSync(`/proc/${p}/smaps_rollup`, 'utf8')
      const kb = (field) => Number(new RegExp(`^${field}:\\s+(\\d+)`, 'm').exec(rollup)?.[1] ?? 0) * 1024
      const bytes = kb('Rss')
      byName[names.get(p)] = (byName[names.get(p)] ?? 0) + bytes
      total += bytes
      pss += kb('Pss')
      own += kb('Private_Clean') + kb('Private_Dirty')
    } catch {}
  }
  const walk = (p) => {
    for (const c of children.get(p) ?? []) {
      add(c)
      walk(c)
    }
  }
  if (self) add(pid)
  walk(pid)
  return { total, pss, private: own, byName }
}

/** CPU seconds (user + system) a process has used. */
export function cpuSeconds(pid) {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  return (Number(f[11]) + Number(f[12])) / 100
}

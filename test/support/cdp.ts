import WebSocket from 'ws'

export interface Pause {
  /** The paused frame's line (0-based, in the code the worker runs). */
  line: number
  /** Whether the breakpoint set by this debugger stopped it. */
  hit: boolean
  /** What `expression` gave in the paused frame (undefined where it threw). */
  value: unknown
}

/** A breakpoint by the script's URL, as an IDE sets one from a file's gutter. */
export interface Breakpoint {
  urlRegex: string
  lineNumber: number
}

/**
 * A debugger as an IDE attaches one: it finds the target on the inspector's HTTP endpoint,
 * speaks the Chrome DevTools Protocol over its WebSocket, sets `breakpoint`, evaluates
 * `expression` at every pause and resumes. Resolves when the target closes the connection.
 */
export async function attachDebugger(port: number, expression: string, breakpoint?: Breakpoint, timeoutMs = 60_000): Promise<Pause[]> {
  const deadline = Date.now() + timeoutMs
  let targets: { webSocketDebuggerUrl: string }[] = []
  while (!targets.length) {
    if (Date.now() > deadline) throw new Error(`no debugger target on 127.0.0.1:${port} within ${timeoutMs / 1000}s`)
    targets = await fetch(`http://127.0.0.1:${port}/json/list`).then((r) => r.json() as Promise<typeof targets>, () => [])
    if (!targets.length) await new Promise((r) => setTimeout(r, 200))
  }
  const ws = new WebSocket(targets[0].webSocketDebuggerUrl)
  let next = 0
  const waiting = new Map<number, (result: any) => void>()
  const call = (method: string, params: object = {}) =>
    new Promise<any>((resolve) => {
      const id = ++next
      waiting.set(id, resolve)
      ws.send(JSON.stringify({ id, method, params }))
    })
  const pauses: Pause[] = []
  ws.on('message', async (data) => {
    const msg = JSON.parse(String(data))
    if (msg.id !== undefined) return waiting.get(msg.id)?.(msg.result)
    if (msg.method !== 'Debugger.paused') return
    const top = msg.params.callFrames[0]
    const evaluated = await call('Debugger.evaluateOnCallFrame', { callFrameId: top.callFrameId, expression, returnByValue: true })
    pauses.push({ line: top.location.lineNumber, hit: (msg.params.hitBreakpoints ?? []).length > 0, value: evaluated?.exceptionDetails ? undefined : evaluated?.result?.value })
    await call('Debugger.resume')
  })
  await new Promise((resolve, reject) => {
    ws.once('open', resolve)
    ws.once('error', reject)
  })
  const closed = new Promise<void>((resolve) => ws.once('close', () => resolve()))
  await call('Runtime.enable')
  await call('Debugger.enable')
  if (breakpoint) await call('Debugger.setBreakpointByUrl', breakpoint)
  await call('Runtime.runIfWaitingForDebugger')
  const timer = setTimeout(() => ws.terminate(), Math.max(deadline - Date.now(), 0))
  await closed
  clearTimeout(timer)
  return pauses
}

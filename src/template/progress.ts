/**
 * How a template build shows itself: on a terminal, one live line (the step, the time since the
 * build began, and the last line of the step's output); elsewhere, one line per step. Either way
 * a failure prints the failing step's output (the build's error carries it).
 */
export interface TemplateProgress {
  /** A step begins. */
  step(text: string): void
  /** Output of the current step, as it arrives. */
  output(chunk: Buffer): void
  /** The build ended (the live line is cleared). */
  end(text: string): void
}

export interface ProgressSink {
  /** A whole line for the log (Vitest's logger). */
  log(text: string): void
  /** A terminal to draw the live line on, if there is one. */
  tty?: { write(text: string): unknown; columns?: number }
}

export function createProgress(title: string, sink: ProgressSink): TemplateProgress {
  const started = Date.now()
  const elapsed = () => `${((Date.now() - started) / 1000).toFixed(1)}s`
  let current = ''
  let tail = ''
  let partial = ''
  const tty = sink.tty
  const draw = () => {
    const width = Math.max(40, (tty?.columns ?? 100) - 1)
    const line = `${title}: ${current} (${elapsed()})${tail ? ` | ${tail}` : ''}`
    tty?.write(`\r\x1b[2K${line.length > width ? `${line.slice(0, width - 1)}…` : line}`)
  }
  const timer = tty ? setInterval(draw, 250) : undefined
  timer?.unref()
  return {
    step(text) {
      current = text
      tail = ''
      if (tty) draw()
      else sink.log(`${title}: ${text} (${elapsed()})`)
    },
    output(chunk) {
      if (!tty) return
      // The last complete, non-empty line (escape sequences removed), for the live line.
      const lines = (partial + chunk.toString()).split(/\r?\n|\r/)
      partial = lines.pop() ?? ''
      const last = [...lines, partial].map((l) => l.replace(/\x1b\[[0-9;?]*[A-Za-z]/g, '').trim()).filter(Boolean).pop()
      if (last) tail = last
    },
    end(text) {
      if (timer) clearInterval(timer)
      if (tty) tty.write('\r\x1b[2K')
      sink.log(`${title}: ${text} (${elapsed()})`)
    },
  }
}

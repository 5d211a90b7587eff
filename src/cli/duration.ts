/** `30s`, `15m`, `2h`, `7d` (or plain seconds) to milliseconds; the error names the flag. */
export function parseDuration(flag: string, text: string): number {
  const m = /^(\d+(?:\.\d+)?)([smhd]?)$/.exec(text.trim())
  if (!m) throw new Error(`--${flag} must be a duration such as 90s, 30m, 2h or 7d (got '${text}')`)
  const unit = { '': 1, s: 1, m: 60, h: 3600, d: 86400 }[m[2] as '' | 's' | 'm' | 'h' | 'd']
  return Number(m[1]) * unit * 1000
}

/**
 * Text that came from a sandbox (error messages, reasons, names), as the host prints it and
 * writes it to reports: control characters escaped, so a terminal escape sequence sent by tested
 * code moves no cursor and rewrites no earlier line of the host's output. Line breaks and tabs stay.
 */
const CONTROL = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f]/g

export function printable(text: string, max = 4000): string {
  const cut = text.length > max ? `${text.slice(0, max)}… (${text.length - max} more characters)` : text
  return cut.replace(CONTROL, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`)
}

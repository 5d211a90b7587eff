/**
 * A byte link through a terminal, for process APIs that are a shell on a PTY (Heyo's shell
 * stream). A PTY echoes input, turns `\n` into `\r\n`, takes ^C, ^D and ^Z as signals and end of
 * input, holds at most 4096 bytes per line in canonical mode, merges stderr into stdout and mixes
 * the shell's prompt into it. So the host first puts the terminal in raw mode without echo, and in
 * case that did not take, everything crosses as short lines of base64:
 *
 * - relay → host: `<token><kind><base64>\n`. The token is random and holds `~`, which base64 and
 *   the host's own lines never do, so frames are told apart from echo and the shell's output.
 *   Kinds: R (running), O (stdout), E (stderr), A (input taken: `<bytes>,<eof 0|1>`), X (the exit,
 *   as JSON).
 * - host → relay: `I<offset>,<base64>\n` (numbered input: a part the relay already has is skipped,
 *   so a reconnect may send it again), `C<offset>\n` (end of input after `offset` bytes), `K\n`
 *   (kill the process group).
 *
 * The relay reads its process's spec from a file that it then deletes, so the typed command stays
 * short. It ends its process's group when the terminal hangs up (the session ended) or it is asked
 * to stop (SIGTERM, SIGINT), so nothing outlives the link; only a SIGKILL of the relay itself would
 * leave the group to the sandbox's own end.
 */
import { randomBytes } from 'node:crypto'
import os from 'node:os'
import type { ProcessExit, ProcessSpec } from './types.js'

/** The relay, run as `node <file> <spec file>`. */
export const LINE_RELAY = [
  'const fs=require("fs"),{spawn}=require("child_process");',
  'const file=process.argv[2];const s=JSON.parse(fs.readFileSync(file,"utf8"));fs.rmSync(file,{force:true});',
  'const out=(k,b)=>process.stdout.write(s.token+k+(b?Buffer.from(b).toString("base64"):"")+"\\n");',
  'let c,ended=false;',
  'const end=(r)=>{if(ended)return;ended=true;out("X",JSON.stringify(r));process.stdout.write("",()=>setTimeout(()=>process.exit(0),150))};',
  'const killGroup=()=>{try{process.kill(-c.pid,"SIGKILL")}catch{}};',
  'for(const [sig,n] of [["SIGHUP",1],["SIGTERM",15],["SIGINT",2]])process.on(sig,()=>{killGroup();process.exit(128+n)});',
  'try{c=spawn(s.cmd,s.args,{cwd:s.cwd||undefined,env:{...process.env,...s.env},stdio:["pipe","pipe","pipe"],detached:true})}catch(e){end({code:127,signal:null,error:e.message});return}',
  'c.on("error",(e)=>end({code:127,signal:null,error:e.message}));',
  'c.stdin.on("error",()=>{});if(!s.stdin)c.stdin.end();',
  'c.stdout.on("data",(b)=>out("O",b));c.stderr.on("data",(b)=>out("E",b));',
  'c.on("close",(code,signal)=>end({code,signal}));',
  'let buf="",taken=0,eof=0;',
  'const take=(l)=>{const k=l[0];',
  'if(k==="K")return killGroup();',
  'if(k==="C"){if(!eof&&Number(l.slice(1))===taken){eof=1;c.stdin.end()}return}',
  'if(k!=="I")return;const i=l.indexOf(","),off=Number(l.slice(1,i)),b=Buffer.from(l.slice(i+1),"base64");',
  'if(off<=taken&&off+b.length>taken){if(!c.stdin.writableEnded)c.stdin.write(b.subarray(taken-off));taken=off+b.length}};',
  'process.stdin.on("data",(d)=>{buf+=d.toString("latin1");let n;',
  'while((n=buf.indexOf("\\n"))>=0){take(buf.slice(0,n).replace(/\\r$/,""));buf=buf.slice(n+1)}',
  'out("A",taken+","+eof)});',
  'out("R");',
].join('')

/** Bytes of input per line: under the terminal's 4096-byte line once base64 makes it a third longer. */
export const INPUT_PART = 2048

export interface RelayExitReport {
  code: number | null
  signal: string | null
  error?: string
}

export interface RelaySpec extends Required<Pick<ProcessSpec, 'cmd'>> {
  token: string
  args: string[]
  cwd?: string
  env: Record<string, string>
  stdin: boolean
}

/** The relay's spec for `spec`, with a fresh token. */
export function relaySpec(spec: ProcessSpec): RelaySpec {
  return { token: `~vs${randomBytes(6).toString('hex')}~`, cmd: spec.cmd, args: spec.args ?? [], cwd: spec.cwd, env: spec.env ?? {}, stdin: spec.stdin ?? false }
}

/** The host's lines to the relay. */
export const relayInput = {
  part: (offset: number, data: Buffer) => `I${offset},${data.toString('base64')}\n`,
  end: (offset: number) => `C${offset}\n`,
  kill: () => 'K\n',
}

/**
 * Largest line the host keeps while looking for its end. The relay's lines are one pipe read
 * (64 KiB, a third more as base64), but code in the sandbox can write to the terminal itself: a
 * line that never ends must fail the process, not grow the host's memory.
 */
export const MAX_RELAY_LINE = 16 * 1024 * 1024

export interface RelayEvents {
  ready(): void
  stdout(b: Buffer): void
  stderr(b: Buffer): void
  ack(taken: number, eof: boolean): void
  exit(e: RelayExitReport): void
  /** What the terminal showed that is not a frame (the prompt, the echoed command, a shell's error). */
  noise(text: string): void
}

/** Parses the terminal's output, chunk by chunk, in order. */
export function createLineParser(token: string, on: RelayEvents): (chunk: Buffer) => void {
  let line = ''
  const take = (text: string) => {
    const at = text.indexOf(token)
    if (at < 0) return on.noise(text)
    if (at > 0) on.noise(text.slice(0, at))
    const kind = text[at + token.length]
    const body = text.slice(at + token.length + 1).replace(/\r$/, '')
    if (kind === 'O') on.stdout(Buffer.from(body, 'base64'))
    else if (kind === 'E') on.stderr(Buffer.from(body, 'base64'))
    else if (kind === 'A') {
      const [taken, eof] = Buffer.from(body, 'base64').toString().split(',')
      on.ack(Number(taken), eof === '1')
    } else if (kind === 'X') on.exit(JSON.parse(Buffer.from(body, 'base64').toString()))
    else if (kind === 'R') on.ready()
    else throw new Error(`the terminal relay sent an unknown frame kind ${JSON.stringify(kind)}`)
  }
  return (chunk) => {
    // latin1 keeps every byte one character: frames are ASCII, noise is only shown. Only the new
    // chunk is searched for line ends, so a long line costs its length, not its length squared.
    let text = chunk.toString('latin1')
    let n: number
    while ((n = text.indexOf('\n')) >= 0) {
      take(line + text.slice(0, n))
      line = ''
      text = text.slice(n + 1)
    }
    line += text
    if (line.length > MAX_RELAY_LINE) throw new Error(`the terminal relay sent a line of over ${MAX_RELAY_LINE} bytes`)
  }
}

export function exitOfReport(r: RelayExitReport): ProcessExit {
  if (r.signal) return { exitCode: 128 + (os.constants.signals[r.signal as NodeJS.Signals] ?? 0), error: null, signal: r.signal }
  return { exitCode: r.code ?? 1, error: r.error ?? null, signal: null }
}

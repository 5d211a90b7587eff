/**
 * Framed stdio for process APIs that cannot carry the whole contract by themselves: no stdin EOF,
 * no acknowledgement of input, a replay buffer that mixes stdout with stderr, an exit notice that
 * can overtake the last output (OpenSandbox's PTY pipe mode has all of these). A small Node relay
 * runs the command inside the sandbox and puts everything on its stdout as frames
 * `[kind u8][length u32 BE][bytes]`: stdout, stderr, input acknowledgements and, last, the exit.
 * Input goes the other way as the agent link's numbered chunks (`numberedChunk` in wire.ts:
 * `[offset u64 BE][length u32 BE][bytes]`, here length 0 meaning end of input); the offset lets the
 * host resend what a dropped connection may have lost and the relay skip what it already has.
 * Sandboxes always have Node (the pool runs on it).
 */
import { createFrameSplitter } from '../sandbox-runtime/wire.js'

export const Frame = { STDOUT: 1, STDERR: 2, EXIT: 3, ACK: 4 } as const

/**
 * The relay, for `node -e`. argv: stdin wanted ("1"/"0"), command, args. An ACK carries the input
 * bytes taken so far (u64) and whether end of input was taken (u8). The relay lingers a moment
 * after its exit frame so the provider's output pump has read it before the process is gone.
 */
export const RELAY = [
  'const {spawn}=require("child_process");',
  'const [want,cmd,...args]=process.argv.slice(1);',
  'const out=(k,b)=>{const h=Buffer.alloc(5);h[0]=k;h.writeUInt32BE(b.length,1);process.stdout.write(Buffer.concat([h,b]))};',
  'let ended=false;const end=(r)=>{if(ended)return;ended=true;out(3,Buffer.from(JSON.stringify(r)));process.stdout.write("",()=>setTimeout(()=>process.exit(0),150))};',
  'const c=spawn(cmd,args,{stdio:["pipe","pipe","pipe"]});',
  'c.on("error",(e)=>end({code:127,signal:null,error:e.message}));',
  'c.stdin.on("error",()=>{});if(want!=="1")c.stdin.end();',
  'c.stdout.on("data",(b)=>out(1,b));c.stderr.on("data",(b)=>out(2,b));',
  'c.on("close",(code,signal)=>end({code,signal}));',
  'let buf=Buffer.alloc(0),taken=0,eof=0;',
  'const ack=()=>{const a=Buffer.alloc(9);a.writeBigUInt64BE(BigInt(taken));a[8]=eof;out(4,a)};',
  'process.stdin.on("data",(d)=>{buf=buf.length?Buffer.concat([buf,d]):d;',
  'while(buf.length>=12){const off=Number(buf.readBigUInt64BE(0)),n=buf.readUInt32BE(8);if(buf.length<12+n)break;',
  'const body=buf.subarray(12,12+n);buf=buf.subarray(12+n);',
  'if(n===0){if(!eof){eof=1;c.stdin.end()}}',
  'else if(off<=taken&&off+n>taken){if(!c.stdin.writableEnded)c.stdin.write(body.subarray(taken-off));taken=off+n}',
  'ack()}});',
].join('')

export interface RelayExit {
  code: number | null
  signal: string | null
  error?: string
}

/**
 * Largest relay frame the host accepts. The relay sends what one read of a pipe gives (64 KiB),
 * but code in the sandbox can write to the relay's stdout itself: a frame claiming gigabytes must
 * fail the process, not grow the host's memory.
 */
export const MAX_RELAY_FRAME = 16 * 1024 * 1024

/** Parses the relay's output stream, chunk by chunk, in order. */
export function createRelayParser(on: { stdout(b: Buffer): void; stderr(b: Buffer): void; ack(taken: number, eof: boolean): void; exit(e: RelayExit): void }): (chunk: Buffer) => void {
  const length = (buf: Buffer, at: number) => {
    const n = buf.readUInt32BE(at + 1)
    if (n > MAX_RELAY_FRAME) throw new Error(`the stdio relay sent a frame of ${n} bytes, over the limit of ${MAX_RELAY_FRAME}`)
    return n
  }
  return createFrameSplitter(5, length, (frame) => {
    const kind = frame[0]
    const body = frame.subarray(5)
    if (kind === Frame.STDOUT) on.stdout(Buffer.from(body))
    else if (kind === Frame.STDERR) on.stderr(Buffer.from(body))
    else if (kind === Frame.ACK) on.ack(Number(body.readBigUInt64BE(0)), body[8] === 1)
    else if (kind === Frame.EXIT) on.exit(JSON.parse(body.toString()))
    else throw new Error(`the stdio relay sent an unknown frame kind ${kind}`)
  })
}

/** POSIX shell quoting. */
export function shellQuote(s: string): string {
  return /^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`
}
